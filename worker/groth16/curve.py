"""BLS12-381 points: as snarkjs stores them, as ints, and as py-arkworks points.

In a .zkey a point is affine, each coordinate in Montgomery form, little-endian ("LEM"): G1 is
x, y (2 x 48 bytes), G2 is x.c0, x.c1, y.c0, y.c1 (4 x 48 bytes); infinity is all zeros. Here a
point is a tuple of normal-form ints: G1 = (x, y), G2 = ((x0, x1), (y0, y1)), infinity is zeros.
py-arkworks does the few additions and multiplications a proof needs beyond the MSMs.
"""

from __future__ import annotations

import py_arkworks_bls12381 as ark

from worker.groth16 import field

G1 = tuple[int, int]
G2 = tuple[tuple[int, int], tuple[int, int]]
G1_BYTES = 2 * field.N8Q
G2_BYTES = 4 * field.N8Q
G1_ZERO: G1 = (0, 0)
G2_ZERO: G2 = ((0, 0), (0, 0))


def _coords(data: bytes | memoryview, count: int) -> list[int]:
    raw = bytes(data)
    if len(raw) != count * field.N8Q:
        raise ValueError(f"expected {count * field.N8Q} bytes, got {len(raw)}")
    step = field.N8Q
    return [field.fq_from_mont(int.from_bytes(raw[i:i + step], "little"))
            for i in range(0, len(raw), step)]


def _lem(coords: list[int]) -> bytes:
    return b"".join(field.fq_to_mont(c).to_bytes(field.N8Q, "little") for c in coords)


def g1_from_lem(data: bytes | memoryview) -> G1:
    x, y = _coords(data, 2)
    return (x, y)


def g2_from_lem(data: bytes | memoryview) -> G2:
    x0, x1, y0, y1 = _coords(data, 4)
    return ((x0, x1), (y0, y1))


def g1_to_lem(p: G1) -> bytes:
    return _lem([p[0], p[1]])


def g2_to_lem(p: G2) -> bytes:
    return _lem([p[0][0], p[0][1], p[1][0], p[1][1]])


def _le(coords: list[int]) -> bytes:
    return b"".join(c.to_bytes(field.N8Q, "little") for c in coords)


def to_ark_g1(p: G1) -> ark.G1Point:
    """The arkworks point; ValueError unless it is on the curve and in the subgroup."""
    if p == G1_ZERO:
        return ark.G1Point.identity()
    return ark.G1Point.from_xy_bytes_le(_le([p[0], p[1]]))


def to_ark_g2(p: G2) -> ark.G2Point:
    if p == G2_ZERO:
        return ark.G2Point.identity()
    return ark.G2Point.from_xy_bytes_le(_le([p[0][0], p[0][1], p[1][0], p[1][1]]))


def from_ark_g1(p: ark.G1Point) -> G1:
    raw = p.to_xy_bytes_le()
    x, y = (int.from_bytes(raw[i:i + field.N8Q], "little") for i in (0, field.N8Q))
    return (x, y)


def from_ark_g2(p: ark.G2Point) -> G2:
    raw = p.to_xy_bytes_le()
    x0, x1, y0, y1 = (int.from_bytes(raw[i:i + field.N8Q], "little")
                      for i in range(0, 4 * field.N8Q, field.N8Q))
    return ((x0, x1), (y0, y1))


def scalar(value: int) -> ark.Scalar:
    return ark.Scalar(value % field.R)


def g1_generator() -> G1:
    return from_ark_g1(ark.G1Point())


def g2_generator() -> G2:
    return from_ark_g2(ark.G2Point())
