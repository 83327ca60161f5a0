"""The GPU acceptance check (`gpuproxy-worker check-gpu`): the CUDA backend gives exactly what
the CPU backend gives, and the proofs it makes verify. Run on a GPU host before it joins the
pool, and after a driver, card or kernel change.

Checks, each one line with ok or FAIL and the seconds of both backends:
- MSM over G1 and G2 for each size, random scalars; then, at `edge_points` points: zero scalars,
  one point repeated (its buckets collide), scalars 1 and R-1 only, half zeros, points at
  infinity.
- NTT: intt, coset_ntt, to_coset and the fused quotient A*B - C, domains 2^1 .. 2^ntt_max.
- Per prove size, a demo circuit (INSECURE dev key): the prover's first steps from its witness
  (the constraints' values, NTTs and A*B - C: `witness_quotient`), then a Groth16 proof on
  both backends, verified, with their prove times and ratio (CPU / CUDA).
"""

from __future__ import annotations

import dataclasses
import pathlib
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import numpy as np
import py_arkworks_bls12381 as ark

from worker.groth16 import backends, curve, devsetup, field, ntt, prover, verifier, wtns, zkey

EDGE_POINTS = 1000
DISTINCT_POINTS = 1024  #: random points made per call; larger sets repeat them


def random_points(group: str, n: int, rng: np.random.Generator) -> zkey.Points:
    """n points of the group as a key stores them: up to 1024 distinct random points, repeated
    (an MSM's cost does not depend on its points being distinct)."""
    ks = [ark.Scalar(int(k)) for k in rng.integers(1, 2**62, size=min(n, DISTINCT_POINTS))]
    if group == "g1":
        limbs, base = 12, [curve.g1_to_lem(curve.from_ark_g1(ark.G1Point() * k)) for k in ks]
    else:
        limbs, base = 24, [curve.g2_to_lem(curve.from_ark_g2(ark.G2Point() * k)) for k in ks]
    distinct = np.frombuffer(b"".join(base), dtype=np.uint64).reshape(-1, limbs)
    return np.resize(distinct, (n, limbs))


def random_scalars(n: int, rng: np.random.Generator) -> field.FrVector:
    """n random scalars below 2^254 (so below R), as an FrVector."""
    v = rng.integers(0, 2**64, size=(n, 4), dtype=np.uint64)
    v[:, 3] &= np.uint64(0x3FFFFFFFFFFFFFFF)
    return v


def cell(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.4f}"


def ratio(cpu_s: float | None, cuda_s: float | None) -> str:
    return "-" if cpu_s is None or cuda_s is None else f"{cpu_s / cuda_s:.1f}x"


@dataclasses.dataclass(frozen=True)
class Outcome:
    name: str
    ok: bool
    cuda_s: float | None
    cpu_s: float | None
    note: str = ""

    def line(self) -> str:
        verdict = "ok" if self.ok else "FAIL"
        return (f"{verdict:>4}  {self.name:<34} {cell(self.cuda_s):>9} {cell(self.cpu_s):>9} "
                f"{ratio(self.cpu_s, self.cuda_s):>9}  {self.note}").rstrip()


HEADER = f"{'':>4}  {'check':<34} {'cuda s':>9} {'cpu s':>9} {'cpu/cuda':>9}"


def compare(name: str, cuda_fn: Callable[[], Any], cpu_fn: Callable[[], Any]) -> Outcome:
    """Run both; equal results (points, or Fr vectors element for element) pass, and a CUDA
    error fails the check with its message."""
    start = time.perf_counter()
    try:
        got = cuda_fn()
    except Exception as exc:
        return Outcome(name, False, time.perf_counter() - start, None,
                       f"{type(exc).__name__}: {exc}")
    cuda_s = time.perf_counter() - start
    start = time.perf_counter()
    want = cpu_fn()
    cpu_s = time.perf_counter() - start
    same = np.array_equal(got, want) if isinstance(want, np.ndarray) else got == want
    return Outcome(name, bool(same), cuda_s, cpu_s)


def msm_cases(sizes: list[int], rng: np.random.Generator, n: int = EDGE_POINTS
              ) -> Iterator[tuple[str, str, zkey.Points, field.FrVector]]:
    """(name, group, points, scalars) for every size and group, then the edge cases at n."""
    for size in sizes:
        for group in ("g1", "g2"):
            yield (f"msm {group} n={size} random", group, random_points(group, size, rng),
                   random_scalars(size, rng))
    for group in ("g1", "g2"):
        pts = random_points(group, n, rng)
        sc = random_scalars(n, rng)
        same = np.repeat(pts[:1], n, axis=0)
        half = sc.copy()
        half[::2] = 0
        ends = field.to_vector([1 if i % 2 else field.R - 1 for i in range(n)])
        infinity = pts.copy()
        infinity[::3] = 0  # (0, 0): the point at infinity in the key's layout
        yield f"msm {group} n={n} zero scalars", group, pts, np.zeros_like(sc)
        yield f"msm {group} n={n} one point repeated", group, same, sc
        yield f"msm {group} n={n} scalars 1 and R-1", group, pts, ends
        yield f"msm {group} n={n} half zero scalars", group, pts, half
        yield f"msm {group} n={n} points at infinity", group, infinity, sc


def check_msm(cuda: backends.Backend, cpu: backends.Backend, sizes: list[int],
              rng: np.random.Generator, edge_points: int) -> Iterator[Outcome]:
    for name, group, pts, sc in msm_cases(sizes, rng, edge_points):
        yield compare(name, partial(msm, cuda, group, pts, sc), partial(msm, cpu, group, pts, sc))


def msm(backend: backends.Backend, group: str, points: zkey.Points, scalars: field.FrVector
        ) -> object:
    """Load the points into the backend and run the MSM (a CUDA error in either fails the
    check that calls this)."""
    bases = backend.load_bases(group, points)
    return backend.msm_g1(bases, scalars) if group == "g1" else backend.msm_g2(bases, scalars)


def check_ntt(cuda: backends.Backend, cpu: backends.Backend, max_log: int,
              rng: np.random.Generator) -> Iterator[Outcome]:
    for k in range(1, max_log + 1):
        domain = ntt.Domain(k)
        a, b, c = (random_scalars(domain.size, rng) for _ in range(3))
        for step in ("intt", "coset_ntt", "to_coset"):
            yield compare(f"ntt {step} 2^{k}", partial(getattr(cuda, step), domain, a),
                          partial(getattr(cpu, step), domain, a))
        yield compare(f"ntt quotient 2^{k}", partial(cuda.quotient, domain, a, b, c),
                      partial(cpu.quotient, domain, a, b, c))


Loaded = dict[str, "backends.LoadedKey | str"]  #: backend name -> its loaded key, or the error


def load(cuda: backends.Backend, cpu: backends.Backend, key: zkey.ProvingKey) -> Loaded:
    """The key loaded into each backend, as a worker's key cache holds it before its tasks."""
    loaded: Loaded = {}
    for name, backend in (("cuda", cuda), ("cpu", cpu)):
        try:
            loaded[name] = backend.load(key)
        except Exception as exc:  # a CUDA error: both checks of this size fail with it
            loaded[name] = f"loading the key: {type(exc).__name__}: {exc}"
    return loaded


def check_witness_quotient(cuda: backends.Backend, cpu: backends.Backend, key: zkey.ProvingKey,
                           loaded: Loaded, witness: field.FrVector) -> Outcome:
    """h from a demo circuit's witness, as the prover makes it (the keys loaded beforehand)."""
    name = f"quotient from the witness 2^{key.log_domain}"
    a, b = loaded["cuda"], loaded["cpu"]
    if isinstance(a, str) or isinstance(b, str):
        return Outcome(name, False, None, None, "; ".join(
            f"{n}: {v}" for n, v in loaded.items() if isinstance(v, str)))
    domain = ntt.Domain(key.log_domain)
    return compare(name, partial(cuda.witness_quotient, a, witness, domain),
                   partial(cpu.witness_quotient, b, witness, domain))


def check_proof(cuda: backends.Backend, cpu: backends.Backend, key: zkey.ProvingKey,
                loaded: Loaded, witness: field.FrVector, setup_s: float) -> Outcome:
    """A proof on each backend (the keys loaded beforehand); the note gives each backend's
    seconds per prover step (where the time goes)."""
    seconds: dict[str, float | None] = {}
    valid: dict[str, bool] = {}
    errors: dict[str, str] = {}
    steps: dict[str, str] = {}
    for name, backend in (("cuda", cuda), ("cpu", cpu)):
        held = loaded[name]
        timings: dict[str, float] = {}
        seconds[name] = None
        if isinstance(held, str):
            valid[name], errors[name] = False, held
        else:
            start = time.perf_counter()
            try:
                proof, public = prover.prove(held, witness, backend, timings=timings)
                valid[name] = verifier.verify(key.verification_key(), proof, public)
            except Exception as exc:  # a CUDA error, or the prover's own check of the proof
                valid[name], errors[name] = False, f"{type(exc).__name__}: {exc}"
            seconds[name] = time.perf_counter() - start
        steps[name] = " ".join(f"{step} {t:.4f}" for step, t in timings.items())
    note = (f"verifies: cuda {valid['cuda']}, cpu {valid['cpu']}; setup {setup_s:.1f} s; "
            f"steps cuda: {steps['cuda']}; cpu: {steps['cpu']}")
    return Outcome(f"proof 2^{key.log_domain} constraints", valid["cuda"] and valid["cpu"],
                   seconds["cuda"], seconds["cpu"],
                   "; ".join([note, *(f"{k}: {v}" for k, v in errors.items())]))


def run(cuda: backends.Backend, cpu: backends.Backend, msm_sizes: list[int], ntt_max: int,
        prove_sizes: list[int], out: Callable[[str], None] = print,
        edge_points: int = EDGE_POINTS) -> list[Outcome]:
    """Every check, each written with `out` as it ends, then a summary line; the outcomes."""
    rng = np.random.default_rng(2024)
    outcomes: list[Outcome] = []
    out(HEADER)

    def record(outcome: Outcome) -> None:
        outcomes.append(outcome)
        out(outcome.line())

    for outcome in check_msm(cuda, cpu, msm_sizes, rng, edge_points):
        record(outcome)
    for outcome in check_ntt(cuda, cpu, ntt_max, rng):
        record(outcome)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as folder:
        for k in prove_sizes:
            start = time.perf_counter()
            files = devsetup.write_demo(pathlib.Path(folder) / f"2^{k}", k, 2, seed=k)
            setup_s = time.perf_counter() - start
            key = zkey.read(files.zkey.read_bytes())
            witness = wtns.read(files.wtns.read_bytes())
            loaded = load(cuda, cpu, key)
            record(check_witness_quotient(cuda, cpu, key, loaded, witness))
            record(check_proof(cuda, cpu, key, loaded, witness, setup_s))
            del loaded  # the GPU memory of this size's key, before the next one
    failed = [o.name for o in outcomes if not o.ok]
    out(f"{len(outcomes) - len(failed)} of {len(outcomes)} checks passed"
        + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return outcomes


def sizes(text: str) -> list[int]:
    """MSM sizes: '1,2,3,1000,16,20' -> [1, 2, 3, 1000, 65536, 1048576]: from 4 to 24 a log2
    size, otherwise a count."""
    values = [int(part) for part in text.split(",") if part.strip()]
    if any(v < 1 for v in values):
        raise ValueError(f"sizes must be positive: {text!r}")
    return [1 << v if 4 <= v <= 24 else v for v in values]


def log_sizes(text: str) -> list[int]:
    """Demo circuit sizes, log2 of the constraints: '10,16' -> [10, 16]; '' -> none."""
    values = [int(part) for part in text.split(",") if part.strip()]
    if any(not 2 <= v <= 24 for v in values):
        raise ValueError(f"log2 sizes go from 2 to 24: {text!r}")
    return values

