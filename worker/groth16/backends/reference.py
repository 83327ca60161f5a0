"""The reference backend: py-arkworks MSMs and the pure-Python NTT. Slow; it is the
independent implementation that the CPU (and CUDA) backends are tested against, and the MSM
the benchmark sets beside ours."""

from __future__ import annotations

import dataclasses

import py_arkworks_bls12381 as ark

from worker.groth16 import curve, field, ntt, zkey
from worker.groth16.backends import base


@dataclasses.dataclass(frozen=True, eq=False)
class ArkBases(base.Bases):
    points: list[ark.G1Point] | list[ark.G2Point]


class ReferenceBackend(base.Backend):
    name = "reference"

    def load_bases(self, group: str, points: zkey.Points) -> base.Bases:
        if group == "g1":
            return ArkBases([curve.to_ark_g1(curve.g1_from_lem(p.tobytes())) for p in points])
        return ArkBases([curve.to_ark_g2(curve.g2_from_lem(p.tobytes())) for p in points])

    def intt(self, domain: ntt.Domain, evaluations: field.FrVector) -> field.FrVector:
        values = ntt.transform(field.from_vector(evaluations), domain.root_inverse,
                               scale=domain.size_inverse)
        return field.to_vector(values)

    def coset_ntt(self, domain: ntt.Domain, coefficients: field.FrVector) -> field.FrVector:
        values = ntt.transform(field.from_vector(coefficients), domain.root,
                               shift=domain.coset_shift)
        return field.to_vector(values)

    def msm_g1(self, bases: base.Bases, scalars: field.FrVector) -> curve.G1:
        assert isinstance(bases, ArkBases)
        points: list[ark.G1Point] = bases.points  # type: ignore[assignment]
        return curve.from_ark_g1(ark.G1Point.multiexp_unchecked(points, _scalars(scalars)))

    def msm_g2(self, bases: base.Bases, scalars: field.FrVector) -> curve.G2:
        assert isinstance(bases, ArkBases)
        points: list[ark.G2Point] = bases.points  # type: ignore[assignment]
        return curve.from_ark_g2(ark.G2Point.multiexp_unchecked(points, _scalars(scalars)))


def _scalars(vector: field.FrVector) -> list[ark.Scalar]:
    return [ark.Scalar(x) for x in field.from_vector(vector)]
