"""The Groth16 verifier: one pairing check, through py-arkworks.

A proof (A, B, C) with public signals x verifies when
e(-A, B) * e(IC0 + sum x_i IC_i, gamma) * e(C, delta) * e(alpha, beta) == 1,
the check `snarkjs groth16 verify` makes. Points that are not on the curve or not in the
prime-order subgroup, and public signals not below r, fail it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import py_arkworks_bls12381 as ark

from worker.groth16 import curve, field


@dataclasses.dataclass(frozen=True)
class Proof:
    a: curve.G1
    b: curve.G2
    c: curve.G1


@dataclasses.dataclass(frozen=True)
class VerificationKey:
    alpha1: curve.G1
    beta2: curve.G2
    gamma2: curve.G2
    delta2: curve.G2
    ic: tuple[curve.G1, ...]  #: one point for the constant one, then one per public signal

    @property
    def n_public(self) -> int:
        return len(self.ic) - 1


def verify(vk: VerificationKey, proof: Proof, public: Sequence[int]) -> bool:
    """Whether `proof` proves the circuit of `vk` for the public signals `public`."""
    if len(public) != vk.n_public or not all(0 <= x < field.R for x in public):
        return False
    try:
        a, c = curve.to_ark_g1(proof.a), curve.to_ark_g1(proof.c)
        b = curve.to_ark_g2(proof.b)
        ic = [curve.to_ark_g1(p) for p in vk.ic]
        alpha, beta = curve.to_ark_g1(vk.alpha1), curve.to_ark_g2(vk.beta2)
        gamma, delta = curve.to_ark_g2(vk.gamma2), curve.to_ark_g2(vk.delta2)
    except (ValueError, TypeError):
        return False
    inputs = ic[0]
    for point, x in zip(ic[1:], public, strict=True):
        inputs = inputs + point * curve.scalar(x)
    return ark.GT.pairing_check([-a, inputs, c, alpha], [b, gamma, delta, beta])

