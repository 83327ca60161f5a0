"""The per-GPU worker daemon: holds a stream to the broker, runs the tasks pushed to it."""

from __future__ import annotations

from broker import __version__

__all__ = ["__version__"]
