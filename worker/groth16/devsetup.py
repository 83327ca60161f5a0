"""INSECURE development setup: a .zkey for any R1CS from random toxic waste.

Whoever knows the toxic waste (tau, alpha, beta, gamma, delta) can forge proofs; this setup
draws it from Python's `random` and forgets it, which is fine for tests, benchmarks and the demo
and nothing else. Production keys come from a ceremony (`snarkjs groth16 setup` on a powers of
tau file, then contributions).

The key has snarkjs's layout: the extra A rows that bind each public signal, coefficients
scaled by R^2, and H points L_{2i+1}(tau)/delta for the Lagrange basis of the 2n-th roots of
unity (see ntt.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import random

import numpy as np
import numpy.typing as npt

from worker.groth16 import builder, curve, field, native, ntt, proofjson, r1cs, wtns, zkey

CIRCUIT_HASH = hashlib.blake2b(b"gpuproxy INSECURE development setup").digest()


@dataclasses.dataclass(frozen=True)
class ToxicWaste:
    tau: int
    alpha: int
    beta: int
    gamma: int
    delta: int

    @classmethod
    def draw(cls, rng: random.Random) -> ToxicWaste:
        return cls(*(rng.randrange(1, field.R) for _ in range(5)))


def domain_log_size(system: r1cs.R1cs) -> int:
    """snarkjs's domain: the smallest power of two above constraints + public signals."""
    return (len(system.constraints) + system.n_public).bit_length()


def lagrange_at(tau: int, log_size: int) -> list[int]:
    """L_j(tau) for the Lagrange basis of the 2^log_size-th roots of unity w^j. As
    L_j(x) = (1/n) sum_i x^i w^(-ij), they are the inverse NTT of tau's first n powers: n
    products and one native NTT, not n inversions."""
    n, domain = 1 << log_size, ntt.Domain(log_size)
    powers = [1] * n
    for i in range(1, n):
        powers[i] = powers[i - 1] * tau % field.R
    evaluations = native.ntt(field.to_vector(powers), domain.root_inverse,
                             scale=domain.size_inverse, threads=native.default_threads())
    return field.from_vector(evaluations)


def setup(system: r1cs.R1cs, rng: random.Random | None = None,
          threads: int | None = None) -> zkey.ProvingKey:
    """An INSECURE proving key for `system` (see the module docstring)."""
    rng = rng or random.Random()
    waste = ToxicWaste.draw(rng)
    log_size = domain_log_size(system)
    n_public, n_vars, n_constraints = system.n_public, system.n_wires, len(system.constraints)
    lag = lagrange_at(waste.tau, log_size)
    u, v, w = ([0] * n_vars for _ in range(3))
    records: list[tuple[int, int, int, int]] = []
    for row, constraint in enumerate(system.constraints):
        for matrix, lc, acc in ((0, constraint.a, u), (1, constraint.b, v), (2, constraint.c, w)):
            for signal, k in lc:
                acc[signal] = (acc[signal] + k * lag[row]) % field.R
                if matrix < 2:
                    records.append((matrix, row, signal, k))
    for signal in range(n_public + 1):  # snarkjs's extra rows: A[nC + s][s] = 1
        u[signal] = (u[signal] + lag[n_constraints + signal]) % field.R
        records.append((0, n_constraints + signal, signal, 1))
    mix = [(waste.beta * u[i] + waste.alpha * v[i] + w[i]) % field.R for i in range(n_vars)]
    gamma_inv, delta_inv = pow(waste.gamma, -1, field.R), pow(waste.delta, -1, field.R)
    odd = lagrange_at(waste.tau, log_size + 1)[1::2]
    threads = threads or native.default_threads()

    def g1(scalars: list[int]) -> zkey.Points:
        return native.batch_mul("g1", _lem(curve.g1_to_lem(curve.g1_generator())),
                                field.to_vector(scalars), threads)

    g2_base = _lem(curve.g2_to_lem(curve.g2_generator()))
    b2 = native.batch_mul("g2", g2_base, field.to_vector(v), threads)
    head = g1([waste.alpha, waste.beta, waste.delta])
    head2 = native.batch_mul("g2", g2_base, field.to_vector([waste.beta, waste.gamma,
                                                             waste.delta]), threads)
    ic = g1([m * gamma_inv % field.R for m in mix[:n_public + 1]])
    return zkey.ProvingKey(
        n_vars=n_vars, n_public=n_public, domain_size=1 << log_size,
        alpha1=_g1(head[0]), beta1=_g1(head[1]), delta1=_g1(head[2]),
        beta2=_g2(head2[0]), gamma2=_g2(head2[1]), delta2=_g2(head2[2]),
        ic=tuple(_g1(p) for p in ic), coefs=_coefs(records),
        a=g1(u), b1=g1(v), b2=b2, c=g1([m * delta_inv % field.R for m in mix[n_public + 1:]]),
        h=g1([x * delta_inv % field.R for x in odd]),
    )


def _lem(data: bytes) -> npt.NDArray[np.uint64]:
    return np.frombuffer(data, dtype="<u8")


def _g1(point: npt.NDArray[np.uint64]) -> curve.G1:
    return curve.g1_from_lem(point.tobytes())


def _g2(point: npt.NDArray[np.uint64]) -> curve.G2:
    return curve.g2_from_lem(point.tobytes())


def _coefs(records: list[tuple[int, int, int, int]]) -> npt.NDArray[np.void]:
    out = np.zeros(len(records), dtype=zkey.COEF_DTYPE)
    out["matrix"] = [r[0] for r in records]
    out["constraint"] = [r[1] for r in records]
    out["signal"] = [r[2] for r in records]
    out["value"] = field.to_vector([field.coef_encode(r[3]) for r in records])
    return out


@dataclasses.dataclass(frozen=True)
class DemoFiles:
    r1cs: pathlib.Path
    zkey: pathlib.Path
    wtns: pathlib.Path
    verification_key: pathlib.Path
    zkey_sha256: str


def write_demo(folder: pathlib.Path, log_size: int, n_public: int = 1,
               seed: int | None = None) -> DemoFiles:
    """Write a chain circuit of 2^log_size constraints (builder.chain), an INSECURE key for it
    and a witness into `folder` as circuit.r1cs, circuit.zkey, circuit.wtns and
    verification_key.json; return their paths and the key's sha256."""
    rng = random.Random(seed)
    circuit = builder.chain(log_size, n_public, seed=rng.randrange(2**32))
    key = setup(circuit.system, rng=rng)
    key_bytes = zkey.write(key, CIRCUIT_HASH)
    folder.mkdir(parents=True, exist_ok=True)
    files = DemoFiles(r1cs=folder / "circuit.r1cs", zkey=folder / "circuit.zkey",
                      wtns=folder / "circuit.wtns",
                      verification_key=folder / "verification_key.json",
                      zkey_sha256=hashlib.sha256(key_bytes).hexdigest())
    files.r1cs.write_bytes(r1cs.write(circuit.system))
    files.zkey.write_bytes(key_bytes)
    files.wtns.write_bytes(wtns.write(circuit.witness))
    vk = proofjson.verification_key_json(key.verification_key())
    files.verification_key.write_text(json.dumps(vk, indent=1))
    return files
