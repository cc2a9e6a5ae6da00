"""Spill files for idle blocks: a state tree written tensor by tensor, checksummed, read straight into
tensors.

`save_checkpoint` serializes into a buffer, copies it and checksums it before writing, and
`load_checkpoint` reads the whole file and copies the payload before unpickling: about three transient
copies of a block each way. A spilled block is read and written on every rotation, so this format streams
instead: each tensor's bytes go from its own memory to the file and from the file into a freshly allocated
tensor, with the SHA-256 updated on the way. No pickle, so nothing in the file can run code.

Layout: magic (8 bytes, carries the format version) | u64 skeleton length | skeleton (JSON: the tree with
tensors replaced by dtype and shape) | tensor bytes, in tree order | SHA-256 of everything before it.

The file is written to a temporary name and renamed, so a crash leaves no partial file under the real name;
it is not fsynced: a spill file is scratch that only the process that wrote it reads back (after a power
loss the checksum rejects whatever the disk kept).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

import torch

from momentumgs.checkpoint import CheckpointError

MAGIC = b"MGSSPL01"
_U64 = struct.Struct("<Q")


# --- skeleton: the tree as JSON, tensors as placeholders ---------------------------------------------


def _encode(node: Any, tensors: list[torch.Tensor]) -> Any:
    if torch.is_tensor(node):
        tensors.append(node)
        return {"T": [str(node.dtype).removeprefix("torch."), list(node.shape)]}
    if isinstance(node, dict):
        return {"D": [[_encode(k, tensors), _encode(v, tensors)] for k, v in node.items()]}
    if isinstance(node, list):
        return {"L": [_encode(v, tensors) for v in node]}
    if isinstance(node, tuple):
        return {"U": [_encode(v, tensors) for v in node]}
    if node is None or isinstance(node, (bool, int, float, str)):
        return {"V": node}
    raise TypeError(f"cannot spill a {type(node).__name__} (tensors, numbers, strings, lists, dicts only)")


def _decode(node: Any, read_tensor) -> Any:
    ((tag, value),) = node.items()
    if tag == "T":
        dtype = getattr(torch, value[0], None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {value[0]!r}")
        return read_tensor(dtype, value[1])
    if tag == "D":
        return {_decode(k, read_tensor): _decode(v, read_tensor) for k, v in value}
    if tag == "L":
        return [_decode(v, read_tensor) for v in value]
    if tag == "U":
        return tuple(_decode(v, read_tensor) for v in value)
    if tag == "V":
        return value
    raise ValueError(f"unknown node tag {tag!r}")


def _as_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes, in row-major order, as a buffer (no copy when already contiguous)."""
    flat = tensor.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(bytearray())


# --- write / read -----------------------------------------------------------------------------------


def write_spill(path: str | Path, state: Any) -> None:
    """Write `state` (CPU tensors) to `path` via a temporary file and a rename."""
    path = Path(path)
    tensors: list[torch.Tensor] = []
    skeleton = json.dumps(_encode(state, tensors)).encode()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            digest = hashlib.sha256()
            for chunk in [MAGIC, _U64.pack(len(skeleton)), skeleton, *map(_as_bytes, tensors)]:
                digest.update(chunk)
                f.write(chunk)
            f.write(digest.digest())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def read_spill(path: str | Path) -> Any:
    """Read a file written by `write_spill`; CheckpointError if it is missing, truncated or corrupt."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _read(f, path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: spill file not found") from None


def _read(f: BinaryIO, path: Path) -> Any:
    digest = hashlib.sha256()

    def read_exact(buffer: memoryview) -> memoryview:
        if f.readinto(buffer) != len(buffer):
            raise CheckpointError(f"{path}: truncated spill file")
        digest.update(buffer)
        return buffer

    if bytes(read_exact(memoryview(bytearray(len(MAGIC))))) != MAGIC:
        raise CheckpointError(f"{path}: not a spill file of this version (bad magic bytes)")
    file_size = os.fstat(f.fileno()).st_size
    (skeleton_len,) = _U64.unpack(read_exact(memoryview(bytearray(_U64.size))))
    if skeleton_len > file_size:
        raise CheckpointError(f"{path}: corrupt spill file header")
    skeleton = bytes(read_exact(memoryview(bytearray(skeleton_len))))

    def read_tensor(dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
        nbytes = dtype.itemsize * torch.Size(shape).numel()
        if nbytes > file_size - f.tell():  # a damaged shape must not allocate before the checksum fails
            raise CheckpointError(f"{path}: truncated spill file (a tensor runs past its end)")
        tensor = torch.empty(shape, dtype=dtype)
        read_exact(_as_bytes(tensor))  # fills the tensor in place: the view shares its memory
        return tensor

    try:
        state = _decode(json.loads(skeleton), read_tensor)
    except (
        ValueError,
        TypeError,
        AttributeError,
        RuntimeError,
    ) as exc:  # a damaged skeleton: report, do not crash
        raise CheckpointError(f"{path}: corrupt spill file ({type(exc).__name__}: {exc})") from None
    if f.read(digest.digest_size + 1) != digest.digest():
        raise CheckpointError(f"{path}: spill file checksum mismatch (file corrupt)")
    return state
