"""Evaluation domains of the prover, and a pure-Python NTT to check backends against.

A domain of 2^k points is {w^i} with w = ffjavascript's Fr.w[k]; the prover moves A, B and C
from the domain to the coset {g w^i} with g = Fr.w[k+1], where the vanishing polynomial is the
constant g^n - 1 = -2. The .zkey's H points are the Lagrange basis of the 2n-th roots of unity
at the odd indices (over delta), so the H multi-exponentiation takes a*b - c on that coset as it
is: no division by the vanishing polynomial is needed (snarkjs's convention, matched here).
"""

from __future__ import annotations

import dataclasses

from worker.groth16 import field


@dataclasses.dataclass(frozen=True)
class Domain:
    log_size: int

    @property
    def size(self) -> int:
        return 1 << self.log_size

    @property
    def root(self) -> int:
        return field.root_of_unity(self.log_size)

    @property
    def root_inverse(self) -> int:
        return pow(self.root, -1, field.R)

    @property
    def size_inverse(self) -> int:
        return pow(self.size, -1, field.R)

    @property
    def coset_shift(self) -> int:
        return field.coset_shift(self.log_size)


def transform(values: list[int], root: int, shift: int = 1, scale: int = 1) -> list[int]:
    """sum_j values[j] shift^j root^(ij), times scale: the reference for every backend's NTT
    (radix-2, Python ints; fine up to a few thousand points)."""
    n = len(values)
    if n & (n - 1):
        raise ValueError(f"NTT size {n} is not a power of two")
    a = [v * pow(shift, j, field.R) % field.R for j, v in enumerate(values)]
    if n == 1:
        return [a[0] * scale % field.R]
    even = transform(a[0::2], root * root % field.R)
    odd = transform(a[1::2], root * root % field.R)
    out = [0] * n
    w = 1
    for i in range(n // 2):
        t = w * odd[i] % field.R
        out[i] = (even[i] + t) * scale % field.R
        out[i + n // 2] = (even[i] - t) * scale % field.R
        w = w * root % field.R
    return out
