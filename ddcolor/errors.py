"""Exceptions a user can trigger. Every message names the file or input, what was wrong, and what to do."""

from __future__ import annotations


class DDColorError(ValueError):
    """Base class of every error this package raises on purpose."""


class CheckpointError(DDColorError):
    """A weights file or folder that cannot be loaded (missing, empty, truncated, unsafe, mismatched)."""


class UnsupportedModelError(CheckpointError):
    """A state dict that is not a DDColor network this package can build."""


class InputImageError(DDColorError):
    """An image tensor that cannot be colorized (wrong shape, dtype, NaN, empty)."""
