"""Errors raised while resolving and reading model checkpoints."""

from __future__ import annotations


class UnknownModelError(ValueError):
    """A model name or path that resolves to no checkpoint."""


class UnsupportedModelError(ValueError):
    """A checkpoint whose architecture or options kvfleet cannot run."""
