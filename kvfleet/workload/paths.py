"""Where traces are read from and where unpacked data is cached.

Both are resolved when called (never at import): ``KVFLEET_TRACES_DIR`` defaults to
``<repo>/../shared/traces`` and ``KVFLEET_CACHE_DIR`` to ``~/.cache/kvfleet``.
"""

from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[2]


def traces_dir() -> Path:
    """The folder holding the shared public traces."""
    env = os.environ.get("KVFLEET_TRACES_DIR")
    return Path(env).expanduser() if env else (_REPO_ROOT.parent / "shared" / "traces")


def cache_dir() -> Path:
    """A writable folder for unpacked traces and derived data (created on demand)."""
    env = os.environ.get("KVFLEET_CACHE_DIR")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "kvfleet"
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_trace(name_or_path: str | Path) -> Path:
    """A trace path as given, or relative to the traces folder when not found as given."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    candidate = traces_dir() / path
    if candidate.exists():
        return candidate
    raise FileNotFoundError(
        f"trace not found: {name_or_path} (looked as given and under {traces_dir()}; "
        "set KVFLEET_TRACES_DIR to the traces folder)"
    )
