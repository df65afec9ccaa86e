"""vmrun's cache directory: downloaded packages, kernels and built images, keyed by content."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """$VMRUN_CACHE, else $XDG_CACHE_HOME/vmrun, else ~/.cache/vmrun (created on demand)."""
    root = os.environ.get("VMRUN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vmrun"
    )
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
