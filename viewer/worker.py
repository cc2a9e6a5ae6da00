"""A per-client render thread that always renders the newest camera and never queues stale ones.

viser calls camera callbacks on its own threads, often many per second while the user drags. Rendering
there would block them and pile up frames nobody will see. Instead a callback only stores the latest
request; the worker renders it at the preview resolution, and once the camera has rested for `rest_s`
without a newer request, once more at the still resolution.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

# render(camera, max_res) -> image; deliver(image, still) sends it on
RenderFn = Callable[[Any, int], Any]
DeliverFn = Callable[[Any, bool], None]


class LatestRenderWorker:
    def __init__(
        self,
        render: RenderFn,
        deliver: DeliverFn,
        resolutions: Callable[[], tuple[int, int]],  # (preview, still), read at each render
        rest_s: float = 0.4,
        on_error: Callable[[BaseException], None] | None = None,
    ):
        self._render, self._deliver, self._resolutions = render, deliver, resolutions
        self.rest_s = rest_s
        self._on_error = on_error
        self._wake = threading.Condition()
        self._pending: Any = None
        self._stopped = False
        self.rendered = 0  # frames delivered (for tests and stats)
        self.last_seconds = 0.0  # time of the last render
        self._thread = threading.Thread(target=self._loop, name="viewer-render", daemon=True)
        self._thread.start()

    def request(self, camera: Any, refine: bool = True) -> None:
        """Render `camera` next, replacing any request not yet started. `refine=False` skips the still
        frame (a live model changes every few seconds: its preview is enough, and cheaper for training)."""
        with self._wake:
            self._pending = (camera, refine)
            self._wake.notify()

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self._thread.join(timeout=5)

    def _next(self, timeout: float | None) -> tuple[Any, bool] | None:
        """The newest request (camera, refine), taken, or None after `timeout` seconds or on stop."""
        with self._wake:
            if self._pending is None and not self._stopped:
                self._wake.wait(timeout)
            request, self._pending = self._pending, None
            return None if self._stopped else request

    def _loop(self) -> None:
        while True:
            request = self._next(None)
            if request is None:
                if self._stopped:
                    return
                continue
            # preview, then (if the camera rests) still; a newer request restarts the cycle
            while request is not None:
                camera, refine = request
                preview, still = self._resolutions()
                self._render_and_deliver(camera, preview, still=False)
                newer = self._next(self.rest_s if refine else 0)
                if newer is None and refine and not self._stopped and still > preview:
                    self._render_and_deliver(camera, still, still=True)
                    newer = self._next(0)
                request = newer

    def _render_and_deliver(self, camera: Any, max_res: int, still: bool) -> None:
        t0 = time.perf_counter()
        try:
            image = self._render(camera, max_res)
            self.last_seconds = time.perf_counter() - t0
            self._deliver(image, still)
            self.rendered += 1
        except Exception as exc:  # a failed frame must not kill the client's worker
            if self._on_error is not None:
                self._on_error(exc)
