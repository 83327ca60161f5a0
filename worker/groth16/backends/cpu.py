"""The CPU backend: the C helper's NTT and Pippenger MSM over the key's bytes in place."""

from __future__ import annotations

import dataclasses

from worker.groth16 import curve, field, msm, native, ntt, zkey
from worker.groth16.backends import base


@dataclasses.dataclass(frozen=True, eq=False)
class HostBases(base.Bases):
    group: str
    points: zkey.Points


class CpuBackend(base.Backend):
    threads: int

    def __init__(self, threads: int | None = None) -> None:
        self.threads = min(threads or native.default_threads(), native.MAX_THREADS)
        self.name = "cpu"
        native.library()  # build the helper now: a missing compiler is a start-up error

    def describe(self) -> str:
        return f"cpu: {self.threads} threads, field arithmetic {native.field_arithmetic()}"

    def load_bases(self, group: str, points: zkey.Points) -> base.Bases:
        return HostBases(group=group, points=points)

    def intt(self, domain: ntt.Domain, evaluations: field.FrVector) -> field.FrVector:
        return native.ntt(evaluations, domain.root_inverse, scale=domain.size_inverse,
                          threads=self.threads)

    def coset_ntt(self, domain: ntt.Domain, coefficients: field.FrVector) -> field.FrVector:
        return native.ntt(coefficients, domain.root, shift=domain.coset_shift,
                          threads=self.threads)

    def msm_g1(self, bases: base.Bases, scalars: field.FrVector) -> curve.G1:
        return curve.g1_from_lem(self._msm(bases, "g1", scalars).tobytes())

    def msm_g2(self, bases: base.Bases, scalars: field.FrVector) -> curve.G2:
        return curve.g2_from_lem(self._msm(bases, "g2", scalars).tobytes())

    def _msm(self, bases: base.Bases, group: str, scalars: field.FrVector) -> zkey.Points:
        assert isinstance(bases, HostBases) and bases.group == group
        c = msm.window_bits(len(scalars))
        return native.msm(group, bases.points, scalars, c, self.threads,
                          msm.parts(len(scalars), c, self.threads))
