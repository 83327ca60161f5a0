"""MSM policy: the window width of Pippenger's method for a number of points, and how finely
the CPU cuts its windows for its threads (no I/O)."""

from __future__ import annotations

#: Cost of adding an affine point to a bucket, and of a full bucket addition, in field mults.
MIXED_ADD_COST = 10
FULL_ADD_COST = 14
SCALAR_BITS = 256  # 255-bit scalars, plus one bit for the signed-digit carry
MAX_WINDOW_BITS = 15


def windows(window_bits: int) -> int:
    return -(-SCALAR_BITS // window_bits)


def cost(points: int, window_bits: int) -> int:
    """Field multiplications of a Pippenger MSM with signed digits of `window_bits`."""
    buckets = 1 << (window_bits - 1)
    return windows(window_bits) * (points * MIXED_ADD_COST + 2 * buckets * FULL_ADD_COST)


def window_bits(points: int) -> int:
    """The window width (2..15 bits) that minimises `cost` for `points` points."""
    return min(range(2, MAX_WINDOW_BITS + 1), key=lambda c: (cost(max(points, 1), c), c))


MAX_PARTS = 8


def parts(points: int, window_bits: int, threads: int) -> int:
    """Point ranges per window for the CPU's threads: the p in 1..8 of least time, taking
    `threads` at a time, of the windows x p jobs, each a bucket pass over points / p points and
    a reduction of its own buckets (the smaller p on a tie). 18 windows on 16 threads, say, take
    two rounds of whole windows, the second on 2 threads; cut in 5, six rounds of jobs a fifth
    the size."""
    buckets = 1 << (window_bits - 1)
    jobs = windows(window_bits)

    def time(p: int) -> int:
        rounds = -(-jobs * p // max(threads, 1))
        return rounds * (-(-points // p) * MIXED_ADD_COST + 2 * buckets * FULL_ADD_COST)

    return min(range(1, MAX_PARTS + 1), key=lambda p: (time(p), p))
