"""Launch plans for the CUDA MSM: window width, chunk length, bucket runs (pure, no I/O).

The window width minimises the CPU engine's cost model (worker.groth16.msm: a mixed addition
per digit, two full additions per bucket), over a wider range: the GPU affords more buckets.
The GPU spreads both kinds of addition over threads, so the model only picks c; `chunk` and
`runs` set how finely the work is cut.
"""

from __future__ import annotations

import dataclasses

from worker.groth16.msm import cost, windows

MIN_WINDOW_BITS = 4
MAX_WINDOW_BITS = 18  #: 15 windows x 2^17 G2 buckets stay under 1 GiB
#: Threads wanted per launch to fill a large GPU (132 SMs x a few hundred resident threads).
TARGET_THREADS = 1 << 16
MIN_CHUNK = 8
MAX_CHUNK = 64
RUN_LENGTH = 32  #: buckets weighed by one thread


@dataclasses.dataclass(frozen=True)
class MsmPlan:
    points: int
    window_bits: int  #: c: signed digits in [-2^(c-1), 2^(c-1)]
    chunk: int  #: most entries one thread adds in a round of bucket sums
    runs: int  #: runs of buckets per window, one thread each, when weighing

    @property
    def windows(self) -> int:
        return windows(self.window_bits)

    @property
    def buckets(self) -> int:
        """Buckets per window, with the unused bucket 0 (digit 0)."""
        return (1 << (self.window_bits - 1)) + 1

    @property
    def entries(self) -> int:
        """Upper bound of (window, point) entries in the sorted lists."""
        return self.windows * self.points


__all__ = ["MsmPlan", "cost", "msm_plan", "window_bits", "windows"]


def window_bits(points: int) -> int:
    """The c in [4, 18] of least `cost` (the smaller on a tie)."""
    span = range(MIN_WINDOW_BITS, MAX_WINDOW_BITS + 1)
    return min(span, key=lambda c: (cost(max(points, 1), c), c))


def _floor_pow2(x: int) -> int:
    return 1 << (max(x, 1).bit_length() - 1)


#: The most points one MSM takes: bucket counts, offsets and sorted entries are 32-bit, and an
#: entry holds its point's index in 31 bits (windows x points < 2^32 holds up to 2^28).
MAX_POINTS = 1 << 28


def msm_plan(points: int) -> MsmPlan:
    """The plan for an MSM of `points` points (1 to MAX_POINTS)."""
    if not 1 <= points <= MAX_POINTS:
        raise ValueError(f"an MSM takes 1 to {MAX_POINTS} points, got {points}")
    c = window_bits(points)
    chunk = min(MAX_CHUNK, max(MIN_CHUNK, _floor_pow2(windows(c) * points // TARGET_THREADS)))
    runs = max(1, (1 << (c - 1)) // RUN_LENGTH)
    return MsmPlan(points=points, window_bits=c, chunk=chunk, runs=runs)
