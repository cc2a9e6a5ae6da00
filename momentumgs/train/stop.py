"""A graceful stop: SIGTERM or SIGINT asks training to stop at the next step boundary, where it saves a
checkpoint and exits (the CLI's exit code is 128 + the signal's number), instead of dying mid-step."""

from __future__ import annotations

import signal
import threading

from momentumgs.errors import UserError

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingStopped(UserError):
    """Training stopped on a signal after saving a checkpoint; `signum` is the signal's number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class StopSignals:
    """While active (`with StopSignals() as stop:`), SIGTERM and SIGINT set `stop.signum` instead of
    ending the process; the same signal a second time ends it as it would have (a Ctrl-C reaches torchrun's
    workers, then torchrun sends them SIGTERM: that one must not cut the checkpoint short). Outside the
    main thread (where Python cannot install handlers) it does nothing."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if signum == self.signum:  # asked twice: stop now, the way the signal normally would
            self.__exit__(None, None, None)
            signal.raise_signal(signum)
            return
        self.signum = self.signum or signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
