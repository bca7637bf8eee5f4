"""Top-level stack commands: up, down, generate, chat."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the stack's top-level commands to ``app``."""
