"""A start-up check of the CUDA backend on its GPU: small MSMs and NTTs against references.

Run once when the backend starts (a fraction of a second), so a miscompiled kernel or a faulty
card is found before any task, named in the log, and under --backend auto leaves the worker on
the CPU. Every proof is verified as well; this only makes the failure early and plain.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import py_arkworks_bls12381 as ark

from worker.cuda import exceptions, plan
from worker.groth16 import curve, field, ntt, zkey
from worker.groth16.backends import Backend

if TYPE_CHECKING:
    from worker.cuda.backend import CudaBackend

MSM_POINTS = {"g1": 64, "g2": 16}
#: The plan of a large MSM on the same points: 10-bit windows, 16 runs of buckets weighed per
#: window (a few points take the 4-bit windows and single run of their own plan).
WIDE_WINDOW_BITS = 10
WRONG_RESULT = "a wrong result"
NTT_LOG_SIZE = 11  #: two passes of ntt_pass (10 stages in shared memory, then 1)


def check(backend: CudaBackend, seed: int = 1) -> None:
    """Raise SelfTestFailed naming the first operation whose result is wrong."""
    rng = random.Random(seed)
    for group in ("g1", "g2"):
        _guarded(backend, f"msm_{group} of {MSM_POINTS[group]} points", _check_msm, group, rng)
    _guarded(backend, f"to_coset of 2^{NTT_LOG_SIZE}", _check_ntt, rng)
    for group in ("g1", "g2"):  # and again as a large MSM is run
        n = MSM_POINTS[group]
        wide = plan.MsmPlan(points=n, window_bits=WIDE_WINDOW_BITS, chunk=plan.MIN_CHUNK,
                            runs=(1 << (WIDE_WINDOW_BITS - 1)) // plan.RUN_LENGTH)
        _guarded(backend, _wide_name(group, n), _check_msm, group, rng, wide)


def _wide_name(group: str, n: int) -> str:
    return f"msm_{group} of {n} points in {WIDE_WINDOW_BITS}-bit windows"


def _guarded(backend: Backend, operation: str, run: Callable[..., None], *args: Any) -> None:
    try:
        run(backend, *args)
    except exceptions.DeviceFailed as exc:
        raise exceptions.SelfTestFailed(gpu=backend.name, operation=operation,
                                        detail=exc.detail) from exc


def _check_msm(backend: CudaBackend, group: str, rng: random.Random,
               wide: plan.MsmPlan | None = None) -> None:
    n = MSM_POINTS[group]
    scalars = [0, 1, field.R - 1, *(rng.randrange(field.R) for _ in range(n - 3))]
    gen = ark.G1Point() if group == "g1" else ark.G2Point()
    pts = [gen * curve.scalar(rng.randrange(1, field.R)) for _ in range(n)]
    want = gen.multiexp_unchecked(pts, [curve.scalar(k) for k in scalars])  # type: ignore[arg-type]
    if group == "g1":
        lem = b"".join(curve.g1_to_lem(curve.from_ark_g1(p)) for p in pts)  # type: ignore[arg-type]
        bases = backend.load_bases("g1", _points(lem, 12))
        expected: curve.G1 | curve.G2 = curve.from_ark_g1(want)  # type: ignore[arg-type]
    else:
        lem = b"".join(curve.g2_to_lem(curve.from_ark_g2(p)) for p in pts)  # type: ignore[arg-type]
        bases = backend.load_bases("g2", _points(lem, 24))
        expected = curve.from_ark_g2(want)  # type: ignore[arg-type]
    vector = field.to_vector(scalars)
    if wide is not None:
        got = backend.msm_planned(bases, vector, wide)
    else:
        got = backend.msm_g1(bases, vector) if group == "g1" else backend.msm_g2(bases, vector)
    if got != expected:
        raise exceptions.SelfTestFailed(
            gpu=backend.name, detail=WRONG_RESULT,
            operation=_wide_name(group, n) if wide else f"msm_{group} of {n} points")


def _check_ntt(backend: Backend, rng: random.Random) -> None:
    domain = ntt.Domain(NTT_LOG_SIZE)
    values = [rng.randrange(field.R) for _ in range(domain.size)]
    coefficients = ntt.transform(values, domain.root_inverse, scale=domain.size_inverse)
    want = ntt.transform(coefficients, domain.root, shift=domain.coset_shift)
    got = backend.to_coset(domain, field.to_vector(values))
    if not np.array_equal(got, field.to_vector(want)):
        raise exceptions.SelfTestFailed(gpu=backend.name, detail=WRONG_RESULT,
                                        operation=f"to_coset of 2^{NTT_LOG_SIZE}")


def _points(lem: bytes, limbs: int) -> zkey.Points:
    return np.frombuffer(lem, dtype=np.uint64).reshape(-1, limbs)
