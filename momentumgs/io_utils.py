"""Atomic writes: a crash leaves the old file or the new one, never half of one. And the one rule for
earlier output: no command replaces an existing file or folder unless it is told to (`--force`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from momentumgs.errors import UserError, with_path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success fsync it and rename it over `target`.

    On any exception the temporary file is removed and `target` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:  # a failed write or fsync names no file: name the one being written
        tmp.unlink(missing_ok=True)
        named = with_path(exc, target)
        if named is exc:
            raise
        raise named from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask would race other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:  # this module's `open`: tests inject a full disk here
            f.write(data)


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(target, text.encode("utf-8"))


def refuse_existing(
    path: str | os.PathLike, force: bool, option: str = "--force", replaces: str = "replaces it"
) -> None:
    """Raise a UserError naming `path` when it exists (a file, or a folder holding anything) and `force` is
    not set: earlier output is never replaced silently. An empty folder holds nothing to lose. Also when a
    file stands where one of its folders would be made."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        blocker = next((p for p in path.parents if p.exists()), None)
        if blocker is not None and not blocker.is_dir():  # checked now: the write would fail only at the end
            raise UserError(f"{path}: cannot be written, {blocker} is a file")
        return
    if force:
        return
    if path.is_dir() and not path.is_symlink():
        if not any(path.iterdir()):
            return
        raise UserError(f"{path}: exists and is not empty; {option} {replaces}")
    raise UserError(f"{path}: exists; {option} {replaces}")


def replace_dir(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the finished folder `new` (made by mkdtemp beside `target`) at `target`; an earlier `target` is
    removed only after the rename, so a crash leaves the old folder or the new one (or both)."""
    new, target = Path(new), Path(target)
    os.chmod(new, 0o777 & ~_umask())  # mkdtemp makes 0700; give the folder the permissions mkdir would
    if not target.exists():
        os.replace(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.replace(target, old)  # a folder may be renamed over an empty one
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
