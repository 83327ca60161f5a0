"""The gpuproxy broker: a gRPC server that keeps C2 tasks and their payloads."""

from __future__ import annotations

import importlib.metadata
import os

# gRPC's core logs a failed TLS handshake at INFO on stderr, ahead of the one-line error our
# programs print for it; set before grpc is imported (every program imports this package
# first). GRPC_VERBOSITY=INFO (or DEBUG) in the environment brings its logs back.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

try:
    __version__ = importlib.metadata.version("gpuproxy")
except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
