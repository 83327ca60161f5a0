"""Shared by bench/msm.py and bench/ntt.py: the CUDA and CPU backends side by side."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TypeVar

from worker.cuda import select
from worker.cuda.backend import CudaBackend
from worker.groth16 import backends

T = TypeVar("T")


def open_backends() -> tuple[CudaBackend | None, backends.Backend, str]:
    """(the CUDA backend or None, the CPU backend, a line naming the GPU or why there is none)."""
    chosen, message = select.open_backend("auto")
    if not isinstance(chosen, CudaBackend):
        return None, chosen, f"CUDA unavailable: {message}"
    return chosen, backends.create("cpu"), f"GPU: {chosen.device.name}, {chosen.device.arch}"


def timed(fn: Callable[[], T], runs: int) -> tuple[float, T]:
    """Median seconds of `runs` calls, and the last result."""
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    assert result is not None
    return statistics.median(times), result
