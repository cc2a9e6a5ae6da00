"""The torchrun agent of `momentumgs train` in k processes: torchrun's own launcher, with its failure report
kept as data for the caller instead of a traceback.

`python -m momentumgs.train.launch REPORT TORCHRUN-ARGS...` runs `torchrun TORCHRUN-ARGS...` (same options,
same rendezvous, no restarts) and, when workers fail, writes REPORT: {rank: {"exitcode", "signal"}} for every
failed worker, so that `run.train_in_processes` can print one line naming the lost worker. It dies with its
parent (Linux), so that a killed `momentumgs train` leaves no workers training behind.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path


def die_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent dies (then torchrun stops its workers, which
    save a checkpoint); elsewhere nothing."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def failure_report(failures: dict) -> dict[str, dict]:
    """{rank: {"exitcode", "signal"}} of torchrun's `ProcessFailure`s (a negative exit code: a signal)."""
    report = {}
    for rank, failure in failures.items():
        sig = signal.Signals(-failure.exitcode).name if failure.exitcode < 0 else None
        report[str(rank)] = {"exitcode": failure.exitcode, "signal": sig}
    return report


def main(argv: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    die_with_parent()
    os.environ["MOMENTUMGS_LAUNCHED"] = "1"  # workers leave the report of a lost worker to the launcher
    report_path, torchrun_args = Path(argv[0]), argv[1:]
    # the caller reports failures in one line; torchrun's own log lines and summary would repeat them
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(parse_args(torchrun_args))
    except ChildFailedError as exc:
        report_path.write_text(json.dumps(failure_report(exc.failures)))
        return 1
    except SignalException as exc:  # Ctrl-C / SIGTERM: the workers were told and saved a checkpoint
        return 128 + int(exc.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
