"""Checkpoint files: atomic, versioned, checksummed, and loaded without running code.

Layout of a file: the 8-byte magic, a little-endian u32 header length, a JSON header (format version,
SHA-256 of the payload, payload size), then the payload: a `torch.save` archive of plain tensors,
numbers, strings, lists and dicts, loaded with `weights_only=True` only after its checksum matched.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from pathlib import Path
from typing import Any

import torch

from momentumgs.errors import UserError
from momentumgs.io_utils import write_bytes_atomic

MAGIC = b"MGSCKPT\x00"
FORMAT_VERSION = 1


class CheckpointError(UserError):
    """A checkpoint that is missing, truncated, corrupt or of another format version."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically: a crash leaves the previous checkpoint intact."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    header = json.dumps(
        {
            "format_version": FORMAT_VERSION,
            "sha256": hashlib.sha256(payload).hexdigest(),
            "payload_bytes": len(payload),
        }
    ).encode()
    write_bytes_atomic(path, MAGIC + struct.pack("<I", len(header)) + header + payload)


def read_header(data: bytes, path: Path) -> tuple[dict, int]:
    if len(data) < len(MAGIC) + 4 or data[: len(MAGIC)] != MAGIC:
        raise CheckpointError(f"{path}: not a momentumgs checkpoint (bad magic bytes)")
    (header_len,) = struct.unpack("<I", data[len(MAGIC) : len(MAGIC) + 4])
    start = len(MAGIC) + 4
    try:
        header = json.loads(data[start : start + header_len])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: corrupt checkpoint header") from None
    return header, start + header_len


def verify_checkpoint(path: str | Path) -> None:
    """Raise CheckpointError unless `path` is a complete checkpoint whose checksum matches (nothing is
    unpickled)."""
    _verified_payload(Path(path))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and verify a checkpoint written by `save_checkpoint`."""
    path = Path(path)
    payload = _verified_payload(path)
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as exc:  # a checksummed payload that still fails to parse: report, do not crash
        raise CheckpointError(f"{path}: unreadable checkpoint payload ({type(exc).__name__})") from None


def _verified_payload(path: Path) -> bytes:
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    data = path.read_bytes()
    header, offset = read_header(data, path)
    if header.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {header.get('format_version')} (this version reads "
            f"{FORMAT_VERSION})"
        )
    payload = data[offset:]
    if len(payload) != header.get("payload_bytes"):
        raise CheckpointError(
            f"{path}: truncated checkpoint ({len(payload)} of {header.get('payload_bytes')} payload bytes)"
        )
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise CheckpointError(f"{path}: checkpoint checksum mismatch (file corrupt)")
    return payload
