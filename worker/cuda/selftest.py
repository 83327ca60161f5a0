"""A start-up check of the CUDA backend on its GPU: small MSMs and NTTs against references.

Run once when the backend starts (a fraction of a second), so a miscompiled kernel or a faulty
card is found before any task, named in the log, and under --backend auto leaves the worker on
the CPU. Every proof is verified as well; this only makes the failure early and plain.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import py_arkworks_bls12381 as ark

from worker.cuda import exceptions
from worker.groth16 import curve, field, ntt, zkey
from worker.groth16.backends import Backend

MSM_POINTS = {"g1": 64, "g2": 16}
WRONG_RESULT = "a wrong result"
NTT_LOG_SIZE = 11  #: two passes of ntt_pass (10 stages in shared memory, then 1)


def check(backend: Backend, seed: int = 1) -> None:
    """Raise SelfTestFailed naming the first operation whose result is wrong."""
    rng = random.Random(seed)
    for group in ("g1", "g2"):
        _guarded(backend, f"msm_{group} of {MSM_POINTS[group]} points", _check_msm, group, rng)
    _guarded(backend, f"to_coset of 2^{NTT_LOG_SIZE}", _check_ntt, rng)


def _guarded(backend: Backend, operation: str, run: Callable[..., None], *args: Any) -> None:
    try:
        run(backend, *args)
    except exceptions.DeviceFailed as exc:
        raise exceptions.SelfTestFailed(gpu=backend.name, operation=operation,
                                        detail=exc.detail) from exc


def _check_msm(backend: Backend, group: str, rng: random.Random) -> None:
    n = MSM_POINTS[group]
    scalars = [0, 1, field.R - 1, *(rng.randrange(field.R) for _ in range(n - 3))]
    gen = ark.G1Point() if group == "g1" else ark.G2Point()
    pts = [gen * curve.scalar(rng.randrange(1, field.R)) for _ in range(n)]
    want = gen.multiexp_unchecked(pts, [curve.scalar(k) for k in scalars])  # type: ignore[arg-type]
    if group == "g1":
        lem = b"".join(curve.g1_to_lem(curve.from_ark_g1(p)) for p in pts)  # type: ignore[arg-type]
        got = backend.msm_g1(backend.load_bases("g1", _points(lem, 12)), field.to_vector(scalars))
        ok = got == curve.from_ark_g1(want)  # type: ignore[arg-type]
    else:
        lem = b"".join(curve.g2_to_lem(curve.from_ark_g2(p)) for p in pts)  # type: ignore[arg-type]
        got2 = backend.msm_g2(backend.load_bases("g2", _points(lem, 24)), field.to_vector(scalars))
        ok = got2 == curve.from_ark_g2(want)  # type: ignore[arg-type]
    if not ok:
        raise exceptions.SelfTestFailed(gpu=backend.name, operation=f"msm_{group} of {n} points",
                                        detail=WRONG_RESULT)


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
