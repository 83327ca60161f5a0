"""The backend interface: the hot operations of a Groth16 proof, nothing else.

A backend moves a key's point sections in once (`load`), then runs NTTs over Fr and
multi-scalar multiplications over G1 and G2 on request. The prover does the rest (reading
files, the sparse constraint evaluations, the final few point additions), so a CUDA backend
replaces the CPU one operation by operation and is tested against it.

Vectors of Fr values are `field.FrVector`s in normal form; points come back as `curve` tuples.
"""

from __future__ import annotations

import abc
import dataclasses

from worker.groth16 import curve, field, native, ntt, zkey


class Bases(abc.ABC):  # noqa: B024 - a marker: each backend subclasses it with its handle
    """A backend's handle on one point section of a key (host arrays, or GPU memory)."""


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedKey:
    """A proving key with its point sections where the backend wants them."""

    key: zkey.ProvingKey
    backend: str
    a: Bases
    b1: Bases
    b2: Bases
    c: Bases
    h: Bases
    #: The backend's own form of the constraint coefficients (None: key.coefs as read).
    constraints: object = None


class Backend(abc.ABC):
    #: Names the backend (and its device) in logs and in a failed proof's error.
    name: str = "?"
    #: Threads for the steps the C helper runs on the host (None: one per CPU).
    threads: int | None = None

    def describe(self) -> str:
        """What it runs on, for the worker's start-up log and benchmark tables."""
        return self.name

    def load(self, key: zkey.ProvingKey) -> LoadedKey:
        """Move the key's point sections in, once per key."""
        return LoadedKey(key=key, backend=self.name, a=self.load_bases("g1", key.a),
                         b1=self.load_bases("g1", key.b1), b2=self.load_bases("g2", key.b2),
                         c=self.load_bases("g1", key.c), h=self.load_bases("g1", key.h))

    @abc.abstractmethod
    def load_bases(self, group: str, points: zkey.Points) -> Bases:
        """Take one point section ("g1" or "g2" LEM points)."""

    @abc.abstractmethod
    def intt(self, domain: ntt.Domain, evaluations: field.FrVector) -> field.FrVector:
        """Coefficients of the polynomial with these evaluations on the domain."""

    @abc.abstractmethod
    def coset_ntt(self, domain: ntt.Domain, coefficients: field.FrVector) -> field.FrVector:
        """Evaluations of the polynomial on the coset {g w^i} (g = domain.coset_shift)."""

    @abc.abstractmethod
    def msm_g1(self, bases: Bases, scalars: field.FrVector) -> curve.G1:
        """sum scalars[i] * bases[i]; len(scalars) == number of bases."""

    @abc.abstractmethod
    def msm_g2(self, bases: Bases, scalars: field.FrVector) -> curve.G2:
        """sum scalars[i] * bases[i] over G2."""

    def to_coset(self, domain: ntt.Domain, evaluations: field.FrVector) -> field.FrVector:
        """Evaluations on the domain -> evaluations on its coset (a backend may fuse this)."""
        return self.coset_ntt(domain, self.intt(domain, evaluations))

    def quotient(self, domain: ntt.Domain, a: field.FrVector, b: field.FrVector,
                 c: field.FrVector) -> field.FrVector:
        """h = A*B - C on the coset, from A, B and C on the domain."""
        return native.mul_sub(*(self.to_coset(domain, v) for v in (a, b, c)))

    def witness_quotient(self, key: LoadedKey, witness: field.FrVector,
                         domain: ntt.Domain) -> field.FrVector:
        """h for the H MSM: A.w, B.w and C.w = (A.w)(B.w) on the domain from the key's
        constraints, then `quotient` (a device backend does it all there: the witness goes
        up, h comes down)."""
        a, b, c = native.qap_evaluations(key.key.coefs, witness, domain.size, self.threads)
        return self.quotient(domain, a, b, c)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the backend holds (device memory, threads)."""
