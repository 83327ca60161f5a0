"""MSM policy: the window width of Pippenger's method for a number of points (no I/O)."""

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
