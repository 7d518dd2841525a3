"""Where gradkit caches generated data: ``$GRADKIT_CACHE_DIR`` or ``~/.cache/gradkit``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Return the cache directory, creating it if needed."""
    root = os.environ.get("GRADKIT_CACHE_DIR")
    if root:
        path = Path(root)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = Path(base) / "gradkit"
    path.mkdir(parents=True, exist_ok=True)
    return path
