"""The BLS12-381 fields as snarkjs (ffjavascript) encodes them.

- q is the base field (point coordinates), r the scalar field (witness, coefficients).
- Point coordinates in a .zkey are Montgomery form: x * 2^384 mod q, 48 bytes little-endian.
- Witness values (.wtns, .r1cs) are normal form: x, 32 bytes little-endian.
- Constraint coefficients in a .zkey are x * R^2 mod r with R = 2^256 mod r, so that one
  Montgomery product with a normal-form witness value gives x * w in Montgomery form.
- Roots of unity: ffjavascript's w[k] = 5^((r-1)/2^32) squared 32-k times (5 is r's smallest
  quadratic non-residue); the prover's coset generator is w[k+1] for a domain of 2^k.

Vectors of Fr values are numpy arrays of shape (n, 4), dtype uint64: normal form, limbs
little-endian, the same bytes as a .wtns section.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

#: Base field modulus.
Q = int("1A0111EA397FE69A4B1BA7B6434BACD764774B84F38512BF"
        "6730D2A0F6B0F6241EABFFFEB153FFFFB9FEFFFFFFFFAAAB", 16)
#: Scalar field modulus (the group order).
R = 0x73EDA753299D7D483339D80809A1D80553BDA402FFFE5BFEFFFFFFFF00000001
#: snarkjs's default curve (bn128): named in errors when a file is for it.
BN128_Q = 21888242871839275222246405745257275088696311157297823662689037894645226208583
BN128_R = 21888242871839275222246405745257275088548364400416034343698204186575808495617

N8Q = 48  #: bytes of a base field element
N8R = 32  #: bytes of a scalar field element
FQ_MONT = pow(2, 384, Q)
FQ_MONT_INV = pow(FQ_MONT, -1, Q)
FR_MONT = pow(2, 256, R)
FR_COEF = FR_MONT * FR_MONT % R
FR_COEF_INV = pow(FR_COEF, -1, R)
TWO_ADICITY = 32
_R_LIMBS = [(R >> (64 * j)) & (2**64 - 1) for j in range(4)]
_NQR = 5

FrVector = npt.NDArray[np.uint64]


def curve_name(prime: int) -> str:
    """A human name for a field modulus found in a file."""
    names = {Q: "bls12381", R: "bls12381", BN128_Q: "bn128", BN128_R: "bn128"}
    return names.get(prime, f"unknown prime {prime:#x}")


def root_of_unity(log_n: int) -> int:
    """ffjavascript's Fr.w[log_n]: the primitive 2^log_n-th root of unity snarkjs uses."""
    if not 0 <= log_n <= TWO_ADICITY:
        raise ValueError(f"no 2^{log_n}-th root of unity in Fr")
    root = pow(_NQR, (R - 1) >> TWO_ADICITY, R)
    return pow(root, 1 << (TWO_ADICITY - log_n), R)


def coset_shift(log_n: int) -> int:
    """The generator of the coset the prover evaluates on for a domain of 2^log_n (< 2^32)."""
    return root_of_unity(log_n + 1)


def fq_from_mont(x: int) -> int:
    return x * FQ_MONT_INV % Q


def fq_to_mont(x: int) -> int:
    return x * FQ_MONT % Q


def coef_encode(value: int) -> int:
    """A constraint coefficient as a .zkey stores it."""
    return value * FR_COEF % R


def coef_decode(stored: int) -> int:
    return stored * FR_COEF_INV % R


def batch_inverse(values: list[int]) -> list[int]:
    """The inverses mod r of nonzero values, with one modular inversion."""
    prefix, acc = [], 1
    for v in values:
        prefix.append(acc)
        acc = acc * v % R
    inv = pow(acc, -1, R)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = inv * prefix[i] % R
        inv = inv * values[i] % R
    return out


def to_vector(values: list[int]) -> FrVector:
    """Python ints (each below r) as an Fr vector."""
    data = b"".join(v.to_bytes(N8R, "little") for v in values)
    return np.frombuffer(data, dtype="<u8").reshape(len(values), 4).copy()


def from_vector(vector: FrVector) -> list[int]:
    data = np.ascontiguousarray(vector, dtype="<u8").tobytes()
    return [int.from_bytes(data[i:i + N8R], "little") for i in range(0, len(data), N8R)]


def vector_from_bytes(data: bytes | memoryview, count: int) -> FrVector:
    """A read-only Fr vector over `count` 32-byte values, without copying."""
    return np.frombuffer(data, dtype="<u8", count=count * 4).reshape(count, 4)


def below_r(vector: FrVector) -> npt.NDArray[np.bool_]:
    """Per value of the Fr vector, whether it is below r (a reduced field element)."""
    below = np.zeros(len(vector), dtype=bool)
    equal = np.ones(len(vector), dtype=bool)
    for j in (3, 2, 1, 0):
        limb = np.uint64(_R_LIMBS[j])
        below |= equal & (vector[:, j] < limb)
        equal &= vector[:, j] == limb
    return below


def all_reduced(vector: FrVector) -> bool:
    return bool(below_r(vector).all())
