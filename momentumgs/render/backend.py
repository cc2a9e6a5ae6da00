"""Whether gsplat's CUDA kernels run on a device, checked once before a command renders there.

gsplat 1.5.3 compiles its kernels with nvcc the first time `gsplat.cuda._backend` is imported (unless a
prebuilt `gsplat.csrc` is installed). Without a CUDA toolkit it sets `_C = None`, and each later call fails
with an AttributeError; a failed build raises RuntimeError ("Error building extension") or OSError
("CUDA_HOME environment variable is not set"), which gsplat then turns into an ImportError when it falls
back to loading a prebuilt .so. Unchecked, this surfaces as a traceback at the first render, after the
scene is loaded; importing the backend and rendering one Gaussian up front takes seconds.
"""

from __future__ import annotations

import contextlib
import functools
import io
import sys
import threading

import torch

from momentumgs.errors import UserError

# What a failed JIT build or load of gsplat's extension raises (torch.utils.cpp_extension and gsplat).
BUILD_ERRORS = (ImportError, OSError, RuntimeError, ValueError)
CUDA_FIX = "install the CUDA toolkit (nvcc) and set CUDA_HOME to it"
BUILD_NOTICE_S = 10.0  # an import of gsplat's backend this long is a build, not a failure


def check_render_device(device: torch.device, cpu_option: str) -> None:
    """Raise a one-line UserError when `device` is a GPU that gsplat cannot render on. `cpu_option` is
    how this command is told to use the CPU rasterizer instead (e.g. "--set train.device=cpu")."""
    if device.type != "cuda":
        return  # the CPU path never touches gsplat's CUDA side
    problem = gsplat_problem(str(device))
    if problem is not None:
        fix = f"{CUDA_FIX}, or pass {cpu_option} (slow)"
        raise UserError(f"gsplat cannot render on {device}: {problem}; {fix}")


@functools.cache
def gsplat_problem(device: str) -> str | None:
    """Why gsplat's CUDA kernels do not run on `device` (one line), or None when a test render works."""
    try:
        backend = load_gsplat_backend()
    except BUILD_ERRORS as exc:
        return f"its CUDA kernels failed to build or load ({_build_cause(exc)}; VERBOSE=1 shows the build)"
    if backend is None:
        return "no CUDA toolkit (nvcc) was found to build its kernels"
    try:
        _render_one_gaussian(torch.device(device))
    except RuntimeError as exc:  # torch's CUDA errors (no kernel image for this GPU, ...) are RuntimeErrors
        return f"a test render failed ({_one_line(exc)})"
    return None


def load_gsplat_backend():
    """gsplat's compiled extension module, or None when gsplat found no CUDA toolkit. Builds it the first
    time (minutes: a line says so once it has taken BUILD_NOTICE_S); gsplat's own console lines are held
    back, so that a failure (which comes in seconds) reads as one line."""
    notice = threading.Timer(BUILD_NOTICE_S, _announce_build)
    notice.daemon = True
    notice.start()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from gsplat.cuda._backend import _C
    finally:
        notice.cancel()
    return _C


def _announce_build() -> None:
    print("momentumgs: building gsplat's CUDA kernels (first use: minutes)", file=sys.stderr, flush=True)


def _render_one_gaussian(device: torch.device) -> None:
    from momentumgs.render.rasterize import rasterize

    def tensor(values):
        return torch.tensor(values, dtype=torch.float32, device=device)

    colors, _, _ = rasterize(
        tensor([[0.0, 0.0, 2.0]]),  # [1, 3] two units in front of the camera
        tensor([[1.0, 0.0, 0.0, 0.0]]),  # [1, 4]
        tensor([[0.1, 0.1, 0.1]]),  # [1, 3]
        tensor([0.9]),  # [1]
        tensor([[1.0, 0.5, 0.25]]),  # [1, 3]
        torch.eye(4, device=device)[None],  # [1, 4, 4]
        tensor([[[8.0, 0.0, 4.0], [0.0, 8.0, 4.0], [0.0, 0.0, 1.0]]]),  # [1, 3, 3]
        8,
        8,
    )
    torch.cuda.synchronize(device)  # kernel launch errors are reported here at the latest
    if not torch.isfinite(colors).all():
        raise RuntimeError("the test render is not finite")


def _build_cause(exc: BaseException) -> str:
    """The build's own error in gsplat's chain of exceptions (gsplat re-raises it as an ImportError while
    looking for a prebuilt .so), else the exception itself."""
    chain = [exc]
    while chain[-1].__context__ is not None and len(chain) < 8:
        chain.append(chain[-1].__context__)
    for link in chain:
        if isinstance(link, (RuntimeError, OSError)):
            return _one_line(link)
    return _one_line(exc)


def _one_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's text (a build error goes on with the compiler's log)."""
    lines = str(exc).strip().splitlines()
    text = " ".join(lines[0].split()) if lines else type(exc).__name__
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}"
