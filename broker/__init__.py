"""The gpuproxy broker: a gRPC server that keeps C2 tasks and their payloads."""

from __future__ import annotations

import importlib.metadata

try:
    __version__ = importlib.metadata.version("gpuproxy")
except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
