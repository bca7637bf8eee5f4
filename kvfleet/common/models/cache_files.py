"""The shared model cache: where it is, and publishing into it safely when several processes
race."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def cache_dir() -> Path:
    """KVFLEET_CACHE_DIR, default ~/.cache/kvfleet; created on first use."""
    root = Path(os.environ.get("KVFLEET_CACHE_DIR") or Path.home() / ".cache" / "kvfleet")
    root.mkdir(parents=True, exist_ok=True)
    return root


def staging_dir(final: Path) -> Path:
    """A new, empty private directory beside ``final`` to write into before publishing."""
    tmp = final.with_name(f"{final.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish_dir(tmp: Path, final: Path) -> None:
    """Move a fully written ``tmp`` to ``final`` atomically. If another process published
    first, keep its copy (both were built from the same inputs) and drop ours."""
    try:
        tmp.replace(final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
