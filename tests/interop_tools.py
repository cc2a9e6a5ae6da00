"""The node tools of tools/interop (readers and renderers we did not write), for the interop tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools" / "interop"
MODULES = TOOLS / "node_modules"


def require_tools(needed: list[Path]) -> Path:
    """tools/interop when node and every path in `needed` exist; else a skip naming what is missing, or a
    failure when CI is set (CI installs them: .ci/run)."""
    missing = [str(p.relative_to(TOOLS)) for p in needed if not p.exists()]
    if shutil.which("node") is None:
        missing.insert(0, "node")
    if missing:
        message = f"needs the interop tools (npm ci --prefix tools/interop): missing {', '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return TOOLS
