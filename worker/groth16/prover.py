"""The Groth16 prover, step for step as snarkjs's groth16_prove.js computes it.

1. A.w and B.w on the domain from the key's coefficients; C.w = (A.w)(B.w) (the key holds no
   C coefficients: for a satisfying witness they agree on the domain).
2. Each to the coset {g w^i}: inverse NTT, shift by g^i, NTT; then h = a*b - c there.
   Steps 1 and 2 are the backend's `witness_quotient`: a GPU runs them without leaving it.
3. MSMs: A, B1 (G1) and B2 (G2) by the witness, C by the private part of it, H by h.
4. Fresh random r and s: A += alpha + r delta, B += beta + s delta, C += s A + r B1 - rs delta.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Iterator

from worker.groth16 import curve, exceptions, field, ntt, zkey
from worker.groth16.backends import Backend, LoadedKey
from worker.groth16.verifier import Proof

#: Called between steps; returning True stops the proof (Cancelled).
StopFn = Callable[[], bool]


def prove(
    key: zkey.ProvingKey | LoadedKey,
    witness: field.FrVector,
    backend: Backend,
    *,
    timings: dict[str, float] | None = None,
    should_stop: StopFn | None = None,
) -> tuple[Proof, list[int]]:
    """A proof and its public signals for `witness` (a .wtns's values) under `key`.

    `timings`, when given, receives the seconds each step took. Raises Mismatch when the
    witness does not fit the key, Cancelled when `should_stop` says so.
    """
    times: dict[str, float] = {} if timings is None else timings

    def checkpoint() -> None:
        if should_stop is not None and should_stop():
            raise exceptions.Cancelled()

    @contextlib.contextmanager
    def step(name: str) -> Iterator[None]:
        checkpoint()
        start = time.perf_counter()
        yield
        times[name] = times.get(name, 0.0) + time.perf_counter() - start

    if isinstance(key, zkey.ProvingKey):
        with step("load"):
            key = backend.load(key)
    pk = key.key
    check_witness(pk, witness)
    domain = ntt.Domain(pk.log_domain)
    with step("quotient"):  # one step: a GPU runs it without a round trip to the host
        h = backend.witness_quotient(key, witness, domain)
    with step("msm_g1"):
        # A stop waits for one MSM at most, not for the four of them.
        pi_a = backend.msm_g1(key.a, witness)
        checkpoint()
        b1 = backend.msm_g1(key.b1, witness)
        checkpoint()
        pi_c = backend.msm_g1(key.c, witness[pk.n_public + 1:])
        checkpoint()
        pi_h = backend.msm_g1(key.h, h)
    with step("msm_g2"):
        pi_b = backend.msm_g2(key.b2, witness)
    with step("combine"):
        try:
            proof = _blind(pk, pi_a, b1, pi_b, pi_c, pi_h)
        except ValueError as exc:  # an MSM result off the curve or out of the subgroup
            raise exceptions.ProofInvalid(backend=backend.name, detail=str(exc)) from exc
    public = field.from_vector(witness[1:pk.n_public + 1])
    return proof, public


def check_witness(key: zkey.ProvingKey, witness: field.FrVector) -> None:
    if witness.ndim != 2 or witness.shape[1] != 4:
        raise exceptions.Mismatch(detail=f"witness array of shape {witness.shape}, not (n, 4)")
    if len(witness) != key.n_vars:
        raise exceptions.Mismatch(detail=f"the witness has {len(witness)} values, the key's "
                                  f"circuit {key.n_vars} signals")


def _blind(key: zkey.ProvingKey, a: curve.G1, b1: curve.G1, b2: curve.G2, c: curve.G1,
           h: curve.G1) -> Proof:
    r, s = secrets.randbelow(field.R), secrets.randbelow(field.R)
    g1, g2 = curve.to_ark_g1, curve.to_ark_g2
    delta1 = g1(key.delta1)
    pi_a = g1(a) + g1(key.alpha1) + delta1 * curve.scalar(r)
    pi_b = g2(b2) + g2(key.beta2) + g2(key.delta2) * curve.scalar(s)
    pi_b1 = g1(b1) + g1(key.beta1) + delta1 * curve.scalar(s)
    pi_c = (g1(c) + g1(h) + pi_a * curve.scalar(s) + pi_b1 * curve.scalar(r)
            - delta1 * curve.scalar(r * s))
    return Proof(a=curve.from_ark_g1(pi_a), b=curve.from_ark_g2(pi_b),
                 c=curve.from_ark_g1(pi_c))
