"""The C helper against Python ints and py-arkworks: Fr NTTs and G1/G2 MSMs."""

from __future__ import annotations

import os
import pathlib
import random
import subprocess
import sys

import numpy as np
import py_arkworks_bls12381 as ark
import pytest

from worker.groth16 import curve, exceptions, field, msm, native, ntt, zkey

RNG = random.Random(3)


def _random(n: int) -> list[int]:
    return [RNG.randrange(field.R) for _ in range(n)]


def test_roots_of_unity_are_ffjavascripts() -> None:
    for log_n in (1, 4, 16, 32):
        w = field.root_of_unity(log_n)
        assert pow(w, 1 << log_n, field.R) == 1
        assert log_n == 0 or pow(w, 1 << (log_n - 1), field.R) != 1
    assert field.root_of_unity(32) == pow(5, (field.R - 1) >> 32, field.R)
    assert pow(field.coset_shift(10), 1 << 10, field.R) == field.R - 1  # Z(g w^i) = -2


@pytest.mark.parametrize("log_n", [0, 1, 3, 6])
def test_ntt_matches_the_reference(log_n: int) -> None:
    domain = ntt.Domain(log_n)
    values = _random(domain.size)
    vector = field.to_vector(values)
    assert field.from_vector(native.ntt(vector, domain.root)) == ntt.transform(values,
                                                                                domain.root)
    coset = native.ntt(vector, domain.root, shift=domain.coset_shift)
    assert field.from_vector(coset) == ntt.transform(values, domain.root, domain.coset_shift)
    back = native.ntt(native.ntt(vector, domain.root), domain.root_inverse,
                      scale=domain.size_inverse)
    assert field.from_vector(back) == values
    assert field.from_vector(vector) == values  # the input is left alone


@pytest.mark.parametrize("threads", [2, 3, 7, 200, -1])
def test_ntt_on_threads_matches_the_reference(threads: int) -> None:
    # 2^12 and up run on threads: blocks of the first stages per thread, the last stages cut
    # across blocks (200 asks for more threads than the helper starts: it takes 64; -1 takes 1)
    for log_n in (12, 13):
        domain = ntt.Domain(log_n)
        values = _random(domain.size)
        vector = field.to_vector(values)
        coset = native.ntt(vector, domain.root, shift=domain.coset_shift, threads=threads)
        assert field.from_vector(coset) == ntt.transform(values, domain.root,
                                                         domain.coset_shift)
        back = native.ntt(native.ntt(vector, domain.root, threads=threads), domain.root_inverse,
                          scale=domain.size_inverse, threads=threads)
        assert field.from_vector(back) == values


def test_mul_sub() -> None:
    a, b, c = _random(9), _random(9), _random(9)
    out = native.mul_sub(field.to_vector(a), field.to_vector(b), field.to_vector(c))
    want = [(x * y - z) % field.R for x, y, z in zip(a, b, c, strict=True)]
    assert field.from_vector(out) == want


def _coefs(records: list[tuple[int, int, int, int]]) -> np.ndarray:
    coefs = np.zeros(len(records), dtype=zkey.COEF_DTYPE)
    for i, (m, row, sig, k) in enumerate(records):
        coefs[i] = (m, row, sig, field.to_vector([field.coef_encode(k)])[0])
    return coefs


@pytest.mark.parametrize("threads", [1, 2, 3, 7])
def test_qap_evaluations(threads: int) -> None:
    # each thread keeps the constraints of its range (7 threads for 4 constraints take 4)
    witness = [1, *_random(5)]
    records = [(0, 0, 1, 3), (0, 0, 2, field.R - 1), (1, 0, 0, 7), (1, 3, 5, 2), (0, 3, 4, 1)]
    coefs = _coefs(records)
    a, b, c = native.qap_evaluations(coefs, field.to_vector(witness), 4, threads)
    want_a = [(3 * witness[1] - witness[2]) % field.R, 0, 0, witness[4]]
    want_b = [7, 0, 0, 2 * witness[5] % field.R]
    assert field.from_vector(a) == want_a and field.from_vector(b) == want_b
    assert field.from_vector(c) == [x * y % field.R for x, y in zip(want_a, want_b, strict=True)]
    coefs["signal"][0] = 6
    with pytest.raises(Exception, match="constraint evaluations"):
        native.qap_evaluations(coefs, field.to_vector(witness), 4, threads)


def test_qap_evaluations_on_threads_match_python() -> None:
    # many records in no order over 1000 constraints, on 1 and 5 threads
    domain, nvars = 1000, 300
    witness = _random(nvars)
    records = [(RNG.randrange(2), RNG.randrange(domain), RNG.randrange(nvars), RNG.randrange(9))
               for _ in range(5000)]
    want: list[list[int]] = [[0] * domain, [0] * domain]
    for m, row, sig, k in records:
        want[m][row] = (want[m][row] + k * witness[sig]) % field.R
    for threads in (1, 5):
        a, b, c = native.qap_evaluations(_coefs(records), field.to_vector(witness), domain,
                                         threads)
        assert field.from_vector(a) == want[0] and field.from_vector(b) == want[1]
        assert field.from_vector(c) == [x * y % field.R for x, y in zip(*want, strict=True)]


def _points(group: str, n: int) -> np.ndarray:
    base = curve.g1_to_lem(curve.g1_generator()) if group == "g1" else \
        curve.g2_to_lem(curve.g2_generator())
    return native.batch_mul(group, np.frombuffer(base, dtype="<u8"),
                            field.to_vector([0, *_random(n - 1)]), 2)


@pytest.mark.parametrize(("group", "n"), [("g1", 8), ("g2", 8), ("g1", 2100), ("g2", 1100)])
def test_batch_mul_matches_arkworks(group: str, n: int) -> None:
    # 8, then more than one chunk of 1024 per thread (their additions batched per window):
    # zero scalars, small ones (most bytes zero), the largest, and random ones
    small = [RNG.randrange(1 << RNG.choice([8, 16, 64])) for _ in range(n // 4)]
    scalars = [0, 1, 2, field.R - 1, *_random(4), *small, *_random(n)][:n]
    g1 = group == "g1"
    base = curve.g1_generator() if g1 else curve.g2_generator()
    lem = curve.g1_to_lem(base) if g1 else curve.g2_to_lem(base)  # type: ignore[arg-type]
    out = native.batch_mul(group, np.frombuffer(lem, dtype="<u8"), field.to_vector(scalars), 2)
    gen = ark.G1Point() if g1 else ark.G2Point()
    decode = curve.g1_from_lem if g1 else curve.g2_from_lem
    encode = curve.from_ark_g1 if g1 else curve.from_ark_g2
    got = [decode(p.tobytes()) for p in out]
    want = [encode(gen * ark.Scalar(s)) for s in scalars]  # type: ignore[arg-type, operator]
    assert got == want


def _ark_msm(group: str, points: np.ndarray, scalars: list[int]) -> curve.G1 | curve.G2:
    ark_scalars = [ark.Scalar(s) for s in scalars]
    if group == "g1":
        ark_points = [curve.to_ark_g1(curve.g1_from_lem(p.tobytes())) for p in points]
        return curve.from_ark_g1(ark.G1Point.multiexp_unchecked(ark_points, ark_scalars))
    ark2 = [curve.to_ark_g2(curve.g2_from_lem(p.tobytes())) for p in points]
    return curve.from_ark_g2(ark.G2Point.multiexp_unchecked(ark2, ark_scalars))


def _native_msm(group: str, points: np.ndarray, scalars: list[int], window_bits: int,
                threads: int, parts: int = 1) -> curve.G1 | curve.G2:
    out = native.msm(group, points, field.to_vector(scalars), window_bits, threads, parts)
    return (curve.g1_from_lem if group == "g1" else curve.g2_from_lem)(out.tobytes())


@pytest.mark.parametrize(("group", "n", "window_bits", "threads", "parts"), [
    ("g1", 0, 4, 1, 1), ("g1", 1, 2, 1, 1), ("g1", 37, 3, 2, 1), ("g1", 300, 7, 3, 1),
    ("g1", 64, 15, 2, 1), ("g2", 1, 5, 1, 1), ("g2", 50, 4, 2, 1),
    # windows cut into point ranges: more parts than points, affine buckets per range, more
    # threads than jobs, and more than the helper starts (it takes 64)
    ("g1", 3, 5, 4, 8), ("g1", 300, 7, 3, 4), ("g1", 2000, 13, 16, 5), ("g2", 50, 4, 200, 3),
])
def test_msm_matches_arkworks(group: str, n: int, window_bits: int, threads: int,
                              parts: int) -> None:
    points = _points(group, max(n, 1))[:n]
    scalars = [field.R - 1, 0, 1, *_random(max(n - 3, 0))][:n]
    assert _native_msm(group, points, scalars, window_bits, threads, parts) == \
        _ark_msm(group, points, scalars)


def _negated(group: str, points: np.ndarray) -> np.ndarray:
    """-P for each LEM point: its y (Montgomery, one or two base-field elements) is q - y."""
    out = points.copy()
    half = points.shape[1] // 2  # x limbs, then y limbs
    for row in out:
        for at in range(half, points.shape[1], 6):
            y = sum(int(w) << (64 * i) for i, w in enumerate(row[at:at + 6]))
            row[at:at + 6] = [((field.Q - y) % field.Q >> (64 * i)) & (2**64 - 1)
                              for i in range(6)]
    return out


@pytest.mark.parametrize("group", ["g1", "g2"])
@pytest.mark.parametrize("case", ["random", "mostly ones", "one point", "opposite points"])
def test_msm_with_affine_buckets_matches_arkworks(group: str, case: str) -> None:
    # Windows of 13 bits and more keep their buckets affine and batch their additions
    # (curve.h window_affine): batches flushed many times, a bucket holding most points (its
    # additions spilled to XYZZ), doublings of a repeated point, and opposite points emptying
    # a bucket that then fills again
    n = 3000 if group == "g1" else 1000
    points, scalars = _points(group, n), _random(n)
    if case == "mostly ones":
        scalars = [1 if i % 3 else s for i, s in enumerate(scalars)]
    elif case == "one point":
        points = np.repeat(points[1:2], n, axis=0)
    elif case == "opposite points":  # P, -P, P with one scalar: the sum is s P per three
        third = points[1:n // 3 + 1]
        points = np.stack([third, _negated(group, third), third], axis=1).reshape(-1,
                                                                                 points.shape[1])
        scalars = [s for s in scalars[:len(third)] for _ in range(3)]
    got = _native_msm(group, points, scalars, 13, 2)
    assert got == _ark_msm(group, points, scalars)
    if case == "opposite points":
        assert got == _ark_msm(group, third, scalars[::3])


def test_msm_of_equal_and_opposite_points() -> None:
    p = _points("g1", 2)[1]
    points = np.stack([p, p, p])
    out = native.msm("g1", points, field.to_vector([5, 5, field.R - 10]), 3, 1)
    assert curve.g1_from_lem(out.tobytes()) == curve.G1_ZERO
    out = native.msm("g1", points, field.to_vector([1, 1, 1]), 3, 1)
    want = curve.to_ark_g1(curve.g1_from_lem(p.tobytes())) * ark.Scalar(3)
    assert curve.g1_from_lem(out.tobytes()) == curve.from_ark_g1(want)


#: modulus, limbs, Montgomery radix of each field
FIELDS = {"fp": (field.Q, 6, 2**384), "fr": (field.R, 4, 2**256)}


def _limbs(values: list[int], limbs: int) -> np.ndarray:
    return np.array([[(v >> (64 * i)) & (2**64 - 1) for i in range(limbs)] for v in values],
                    dtype=np.uint64)


def _results(name: str, values: list[int]) -> dict[str, tuple[list[int], list[int]]]:
    """Every pair's product, sum and difference in field `name` from the helper, and from
    Python ints."""
    m, limbs, radix = FIELDS[name]
    pairs = [(x, y) for x in values for y in values]
    a, b = _limbs([x for x, _ in pairs], limbs), _limbs([y for _, y in pairs], limbs)
    inv = pow(radix, -1, m)
    want = {"mul": [x * y * inv % m for x, y in pairs],
            "add": [(x + y) % m for x, y in pairs], "sub": [(x - y) % m for x, y in pairs]}
    return {op: ([sum(int(w) << (64 * i) for i, w in enumerate(row))
                  for row in native.field_op(name, op, a, b)], want[op]) for op in want}


def edges(name: str) -> list[int]:
    """Values whose products, sums and differences stress the carries: 0, 1, m - 1 and its
    neighbours, limbs of all ones, single high bits, and m less a low or a high power of two."""
    m, limbs, _ = FIELDS[name]
    top = 64 * (limbs - 1)
    return [0, 1, 2, m - 1, m - 2, m - 3, (m - 1) // 2, 2**64 - 1, 2**64, 2**128 - 1,
            2**top - 1, 2**(m.bit_length() - 2), m - 2**64, m - 2**top]


@pytest.mark.parametrize("name", ["fp", "fr"])
@pytest.mark.parametrize("op", ["mul", "add", "sub"])
def test_field_arithmetic_matches_python_ints(name: str, op: str) -> None:
    m = FIELDS[name][0]
    got, want = _results(name, edges(name) + [RNG.randrange(m) for _ in range(30)])[op]
    assert got == want


def test_the_portable_arithmetic_matches_too() -> None:
    # the library picks its arithmetic once, when it loads: a fresh process with the C one
    script = ("import sys; sys.path[:0] = [{root!r}]; "
              "from tests.unit.test_groth16_native import _results, edges; "
              "from worker.groth16 import native; "
              "print(native.field_arithmetic(), all(got == want for name in ('fp', 'fr') "
              "for got, want in _results(name, edges(name)).values()))")
    root = str(pathlib.Path(__file__).parents[2])
    done = subprocess.run([sys.executable, "-c", script.format(root=root)], text=True,
                          capture_output=True, check=True, timeout=300,
                          env={**os.environ, "GPUPROXY_NATIVE_PORTABLE": "1"})
    assert done.stdout.split() == ["portable", "C", "True"]


def test_windows_are_cut_for_many_threads_only() -> None:
    # 2^20 points take 18 windows of 15 bits: whole windows on 2 threads (9 each), cut in 5 on
    # 16 (90 jobs, six rounds, instead of two rounds of whole windows with 14 threads idle in
    # the second)
    assert msm.window_bits(1 << 20) == 15 and msm.windows(15) == 18
    assert [msm.parts(1 << 20, 15, t) for t in (1, 2, 16)] == [1, 1, 5]
    assert msm.parts(1 << 10, 8, 16) == 1  # 32 windows share 16 threads evenly as they are
    with pytest.raises(exceptions.NativeFailed):
        native.msm("g1", _points("g1", 4), field.to_vector([1, 2, 3, 4]), 4, 2, parts=65)


def test_window_policy() -> None:
    assert [msm.window_bits(1 << k) for k in (0, 8, 16, 20)] == [2, 6, 13, 15]
    for n in (10, 1000, 100_000):
        best = msm.window_bits(n)
        assert all(msm.cost(n, best) <= msm.cost(n, c) for c in range(2, 16))


def test_a_missing_compiler_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: pathlib.Path) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(native, "_lib", None)
    with pytest.raises(exceptions.NativeUnavailable, match="Install a C compiler"):
        native.library()
    assert list((tmp_path / "gpuproxy").iterdir()) == []  # no temp file left behind


def test_a_damaged_cached_build_is_made_again(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: pathlib.Path) -> None:
    # Given a cached build cut short (a full disk, a copy interrupted), and CC with arguments
    # (which win over the helper's own: -O0 builds in 2 s rather than 20)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", "gcc -O0")
    monkeypatch.setattr(native, "_lib", None)
    built = native.cached_build(["gcc", "-O0"])
    built.parent.mkdir(parents=True)
    built.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(93))  # the first 100 bytes of one
    # Then the helper is built again and works
    lib = native.library()
    assert lib is not None and built.stat().st_size > 1000
    assert [p.name for p in (tmp_path / "gpuproxy").iterdir()] == [built.name]


def test_a_cc_that_is_not_a_command_line_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: pathlib.Path) -> None:
    monkeypatch.setenv("CC", "gcc -DX='1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(native, "_lib", None)
    with pytest.raises(exceptions.NativeUnavailable, match="CC=\"gcc -DX='1\" is not a command"):
        native.library()
