"""The torchrun agent of `momentumgs train` in k processes: torchrun's own launcher, with its failure report
kept as data for the caller instead of a traceback.

`python -m momentumgs.train.launch REPORT TORCHRUN-ARGS...` runs `torchrun TORCHRUN-ARGS...` (same options,
same rendezvous, no restarts) and, when workers fail, writes REPORT: {rank: {"exitcode", "signal"}} for every
failed worker, so that `run_launch.train_in_processes` can print one line naming the lost worker. It dies with
its parent (Linux), so that a killed `momentumgs train` leaves no workers training behind.

A worker that stops on a clear error (a UserError, an OSError) leaves its one-line message in the folder
named by $MOMENTUMGS_ERRORS instead of printing it: every worker may meet the same error, and the caller
prints the first one, once.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

ERRORS_ENV = "MOMENTUMGS_ERRORS"  # the folder where workers leave their error messages (rankR.txt)


def leave_worker_error(message: str) -> bool:
    """In a worker of `run_launch.train_in_processes`: write `message` (one line) for the caller to print, and
    let a SIGTERM from torchrun (which stops the other workers now) end this process quietly (pycolmap's
    handler would print a stack dump). False elsewhere: the caller prints the message itself."""
    folder = os.environ.get(ERRORS_ENV)
    if not folder:
        return False
    try:
        (Path(folder) / f"rank{os.environ.get('RANK', '0')}.txt").write_text(message)
    except OSError:
        return False
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return True


def first_worker_error(folder: Path) -> str | None:
    """The message the workers left in `folder` first (by time, then rank), or None."""
    files = sorted(folder.glob("rank*.txt"), key=lambda f: (f.stat().st_mtime_ns, int(f.stem[4:])))
    for file in files:
        message = file.read_text().strip()
        if message:
            return message
    return None


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
    # torchrun's default for several processes per machine, set here: torchrun would print a banner about it
    os.environ.setdefault("OMP_NUM_THREADS", "1")
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
