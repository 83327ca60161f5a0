"""Shared by bench/msm.py and bench/ntt.py: the CUDA backend, in each build of its arithmetic
(worker.cuda.sources.VARIANTS), and the CPU backend side by side."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from broker import logs
from worker.cuda import backend as cuda_backend
from worker.cuda import select, sources
from worker.cuda.acceptance import cell, ratio
from worker.groth16 import backends

T = TypeVar("T")
DEFAULT_VARIANTS = "chains,portable"
COLUMN = 15


def open_backends(variants: Sequence[str]) -> tuple[dict[str, backends.Backend], str]:
    """({column name: backend} with a `cuda:<variant>` per variant and `cpu`, and a line
    naming the GPU or saying why there is none (then only the CPU)."""
    logs.configure("warning", "console")  # on stderr: stdout is the table
    unknown = [v for v in variants if v not in sources.VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(sources.VARIANTS)}")
    chosen, message = select.open_backend("auto")
    if not isinstance(chosen, cuda_backend.CudaBackend):
        return {"cpu": chosen}, f"CUDA unavailable: {message}\n{chosen.describe()}"
    cpu = backends.create("cpu")
    line = f"GPU: {chosen.device.name}, {chosen.device.arch}\n{cpu.describe()}"
    found: dict[str, backends.Backend] = {}
    for variant in variants:
        found[f"cuda:{variant}"] = (chosen if variant == chosen.device.variant
                                    else cuda_backend.create(variant=variant))
    if chosen.device.variant not in variants:
        chosen.close()
    return {**found, "cpu": cpu}, line


def timed(fn: Callable[[], T], runs: int) -> tuple[float, T]:
    """Median seconds of `runs` calls, and the last result."""
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    assert result is not None
    return statistics.median(times), result


def header(names: Sequence[str]) -> str:
    return " ".join(f"{name + ' s':>{COLUMN}}" for name in names) + f" {'cpu/cuda':>9}"


def row(names: Sequence[str], seconds: Mapping[str, float]) -> str:
    """The times in the columns of `names`, then the CPU time over the best CUDA time."""
    best = best_cuda(seconds)
    return " ".join(f"{cell(seconds.get(n)):>{COLUMN}}" for n in names) + \
        f" {ratio(seconds.get('cpu'), best[1] if best else None):>9}"


def best_cuda(seconds: Mapping[str, float]) -> tuple[str, float] | None:
    cuda = {n: s for n, s in seconds.items() if n.startswith("cuda:")}
    return min(cuda.items(), key=lambda item: item[1]) if cuda else None


def disagreeing(results: Mapping[str, object]) -> list[str]:
    """The backends whose result differs from the first one's."""
    first = next(iter(results.values()), None)
    return [name for name, result in results.items() if result != first]
