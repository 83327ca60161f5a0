"""The CUDA kernels' arithmetic, compiled for the host by g++, against Python integers and
py-arkworks: fields, Fp2, G1/G2 formulas and edge cases, scalar multiplication, signed digits.
The MSM and NTT pipelines are in test_cuda_drivers.py."""

from __future__ import annotations

import ctypes
import random
from collections.abc import Callable

import py_arkworks_bls12381 as ark
import pytest

from tests.cuda import hostlib
from tests.cuda.hostlib import FP_BYTES, FR_BYTES, P, R
from worker.cuda import sources

rng = random.Random(20261125)


@pytest.fixture(scope="module", params=["chains", "portable"])
def lib(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> ctypes.CDLL:
    """Each build of the arithmetic: carry chains (on the host, the flag is emulated
    instruction by instruction) and 64-bit sums."""
    return hostlib.build(tmp_path_factory.mktemp(f"cuda_host_{request.param}"),
                         sources.VARIANTS[request.param])


# --- Fp and Fr ---------------------------------------------------------------------------------

FIELDS = {"fp": (P, FP_BYTES), "fr": (R, FR_BYTES)}


def edge_values(m: int) -> list[int]:
    return [0, 1, 2, m - 1, m - 2, (m - 1) // 2, (m + 1) // 2, rng.randrange(m), rng.randrange(m)]


def field_call(lib: ctypes.CDLL, name: str, op: int, a: bytes, b: bytes, size: int) -> bytes:
    out = ctypes.create_string_buffer(size)
    assert getattr(lib, f"gp_{name}_op")(op, a, b, out) == 0
    return out.raw


@pytest.mark.parametrize("name", FIELDS)
def test_field_add_sub_mul_at_edge_values(lib: ctypes.CDLL, name: str) -> None:
    m, size = FIELDS[name]
    values = edge_values(m)
    for a in values:
        for b in values:
            am, bm = hostlib.mont(a, m, size), hostlib.mont(b, m, size)
            for op, want in ((hostlib.ADD, a + b), (hostlib.SUB, a - b), (hostlib.MUL, a * b)):
                got = field_call(lib, name, op, am, bm, size)
                assert got == hostlib.mont(want % m, m, size), (name, op, a, b)


@pytest.mark.parametrize("name", FIELDS)
def test_field_square_negate_invert(lib: ctypes.CDLL, name: str) -> None:
    m, size = FIELDS[name]
    zero = bytes(size)
    for a in edge_values(m):
        am = hostlib.mont(a, m, size)
        square = field_call(lib, name, hostlib.SQR, am, zero, size)
        assert square == hostlib.mont(a * a % m, m, size)
        negated = field_call(lib, name, hostlib.NEG, am, zero, size)
        assert negated == hostlib.mont(-a % m, m, size)
        inverse = pow(a, -1, m) if a else 0  # 0 has no inverse; the kernels map it to 0
        assert field_call(lib, name, hostlib.INV, am, zero, size) == hostlib.mont(inverse, m, size)


@pytest.mark.parametrize("name", FIELDS)
def test_field_montgomery_conversions(lib: ctypes.CDLL, name: str) -> None:
    m, size = FIELDS[name]
    zero = bytes(size)
    for a in edge_values(m):
        plain, am = hostlib.le(a, size), hostlib.mont(a, m, size)
        assert field_call(lib, name, hostlib.TO_MONT, plain, zero, size) == am
        assert field_call(lib, name, hostlib.FROM_MONT, am, zero, size) == plain


# --- Fp2 ---------------------------------------------------------------------------------------

def fp2_mul(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    return (a[0] * b[0] - a[1] * b[1]) % P, (a[0] * b[1] + a[1] * b[0]) % P


def test_fp2_mul_square_inverse(lib: ctypes.CDLL) -> None:
    samples = [(0, 0), (1, 0), (0, 1), (P - 1, P - 1)]
    samples += [(rng.randrange(P), rng.randrange(P)) for _ in range(6)]
    for a in samples:
        for b in samples:
            got = field_call(lib, "fp2", hostlib.MUL, hostlib.fp2_mont(*a), hostlib.fp2_mont(*b),
                             2 * FP_BYTES)
            assert hostlib.fp2_unmont(got) == fp2_mul(a, b)
        am, zero = hostlib.fp2_mont(*a), bytes(2 * FP_BYTES)
        square = field_call(lib, "fp2", hostlib.SQR, am, zero, 2 * FP_BYTES)
        assert hostlib.fp2_unmont(square) == fp2_mul(a, a)
        inverse = hostlib.fp2_unmont(field_call(lib, "fp2", hostlib.INV, am, zero, 2 * FP_BYTES))
        assert fp2_mul(a, inverse) == ((0, 0) if a == (0, 0) else (1, 0))


# --- G1 and G2 ---------------------------------------------------------------------------------

class Group:
    """One group's conversions and reference, so every point test runs on G1 and G2."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.point = ark.G1Point if name == "g1" else ark.G2Point
        self.to_device: Callable[..., bytes] = getattr(hostlib, f"{name}_to_device")
        self.from_device: Callable[[bytes], object] = getattr(hostlib, f"{name}_from_device")
        self.size = 2 * FP_BYTES if name == "g1" else 4 * FP_BYTES
        self.z_size = self.size // 2

    def random(self) -> object:
        return self.point() * hostlib.scalar(rng.randrange(1, R))

    def random_z(self) -> bytes:
        words = [rng.randrange(1, P) for _ in range(self.z_size // FP_BYTES)]
        return b"".join(hostlib.mont(w, P, FP_BYTES) for w in words)


@pytest.fixture(params=["g1", "g2"])
def g(request: pytest.FixtureRequest) -> Group:
    return Group(request.param)


def point_op(lib: ctypes.CDLL, g: Group, op: int, a: object, b: object) -> object:
    out = ctypes.create_string_buffer(g.size)
    rc = getattr(lib, f"gp_{g.name}_op")(
        op, g.to_device(a), g.random_z(), g.to_device(b), g.random_z(), out)
    assert rc == 0
    return g.from_device(out.raw)


def test_add_and_mixed_add_cover_identity_doubling_and_inverse(lib: ctypes.CDLL, g: Group) -> None:
    p, q, o = g.random(), g.random(), g.point.identity()
    cases = [(p, q), (p, p), (p, -p), (p, o), (o, p), (o, o), (-p, p)]
    for op in (hostlib.P_ADD, hostlib.P_ADD_AFFINE):
        for a, b in cases:
            assert point_op(lib, g, op, a, b) == a + b, (op, a == o, b == o)


def test_doubling_projective_and_affine(lib: ctypes.CDLL, g: Group) -> None:
    p, o = g.random(), g.point.identity()
    for op in (hostlib.P_DBL, hostlib.P_DBL_AFFINE):
        assert point_op(lib, g, op, p, o) == p + p
        assert point_op(lib, g, op, o, o) == o
    assert point_op(lib, g, hostlib.P_NEG, p, o) == -p


def test_equality_across_representations(lib: ctypes.CDLL, g: Group) -> None:
    p, q, o = g.random(), g.random(), g.point.identity()
    for a, b, want in ((p, p, 1), (p, q, 0), (p, -p, 0), (o, o, 1), (p, o, 0)):
        rc = getattr(lib, f"gp_{g.name}_op")(
            hostlib.P_EQUALS, g.to_device(a), g.random_z(), g.to_device(b), g.random_z(), None)
        assert rc == want


def test_scalar_multiplication_matches_arkworks(lib: ctypes.CDLL, g: Group) -> None:
    p = g.random()
    for k in (0, 1, 2, 3, R - 1, R - 2, (R - 1) // 2, rng.randrange(R), rng.randrange(R)):
        out = ctypes.create_string_buffer(g.size)
        getattr(lib, f"gp_{g.name}_mul")(g.to_device(p), hostlib.le(k, FR_BYTES), out)
        assert g.from_device(out.raw) == p * hostlib.scalar(k), k


# --- MSM ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("c", [2, 3, 5, 8, 13, 16])
def test_signed_digits_rebuild_the_scalar(lib: ctypes.CDLL, c: int) -> None:
    nwin = -(-256 // c)
    for k in (0, 1, R - 1, (1 << 255) - 1, (1 << c) - 1, *(rng.randrange(R) for _ in range(20))):
        out = (ctypes.c_uint32 * nwin)()
        lib.gp_signed_digits(hostlib.le(k, FR_BYTES), c, out)
        total = 0
        for w, e in enumerate(out):
            magnitude = e & 0x7FFFFFFF
            assert magnitude <= 1 << (c - 1)
            total += (-magnitude if e >> 31 else magnitude) << (c * w)
        assert total == k
