"""The per-GPU worker daemon: holds a stream to the broker, runs the tasks pushed to it."""

from __future__ import annotations

import importlib.metadata

try:
    __version__ = importlib.metadata.version("gpuproxy")
except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
