"""Groth16 prove time: our CPU backend beside `snarkjs groth16 prove`, same zkey and witness.

For each size 2^k (constraints + public signals + 1 = 2^k) it writes a chain circuit with an
INSECURE dev key, proves it with our prover (from files, and with the key already loaded as a
worker's key cache has it) and with snarkjs, checks that both proofs verify, and prints the
times and their ratio. It also sets our G1 MSM beside py-arkworks's on the H points.

    .venv/bin/python bench/prove.py                 # 2^12 .. 2^18
    .venv/bin/python bench/prove.py --sizes 12,14 --runs 3
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import py_arkworks_bls12381 as ark

from worker.groth16 import (
    backends,
    curve,
    devsetup,
    field,
    proofjson,
    prover,
    verifier,
    wtns,
    zkey,
)

SNARKJS = pathlib.Path(__file__).resolve().parent.parent / ".tools/node_modules/.bin/snarkjs"


def ours(files: devsetup.DemoFiles, backend: backends.Backend, runs: int) -> dict[str, float]:
    """Median seconds from files (read, parse, load, prove) and with the key loaded."""
    from_files, loaded_times, steps = [], [], {}
    for _ in range(runs):
        start = time.perf_counter()
        key = zkey.read(files.zkey.read_bytes())
        witness = wtns.read(files.wtns.read_bytes())
        loaded = backend.load(key)
        proof, public = prover.prove(loaded, witness, backend)
        from_files.append(time.perf_counter() - start)
        start = time.perf_counter()
        steps = {}
        proof, public = prover.prove(loaded, witness, backend, timings=steps)
        loaded_times.append(time.perf_counter() - start)
        if not verifier.verify(key.verification_key(), proof, public):
            raise SystemExit("our proof does not verify")
    return {"files": statistics.median(from_files), "loaded": statistics.median(loaded_times),
            **{f"step {k}": v for k, v in steps.items()}}


def snarkjs(files: devsetup.DemoFiles, snarkjs_bin: pathlib.Path, runs: int) -> float | None:
    if not snarkjs_bin.exists():
        return None
    times = []
    out = files.zkey.parent
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([str(snarkjs_bin), "groth16", "prove", str(files.zkey), str(files.wtns),
                        str(out / "snarkjs_proof.json"), str(out / "snarkjs_public.json")],
                       check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    vk = proofjson.read_verification_key(files.verification_key.read_text())
    if not proofjson.verify_proof_json(vk, (out / "snarkjs_proof.json").read_text(),
                                       (out / "snarkjs_public.json").read_text()):
        raise SystemExit("snarkjs's proof does not verify")
    return statistics.median(times)


def msm_pair(key: zkey.ProvingKey, backend: backends.Backend) -> tuple[float, float]:
    """Seconds of one G1 MSM over the H points: ours, py-arkworks (conversion excluded)."""
    scalars = field.to_vector([(i * 0x9E3779B97F4A7C15 + 7) ** 3 % field.R
                               for i in range(len(key.h))])
    bases = backend.load_bases("g1", key.h)
    start = time.perf_counter()
    mine = backend.msm_g1(bases, scalars)
    ours_s = time.perf_counter() - start
    points = [curve.to_ark_g1(curve.g1_from_lem(p.tobytes())) for p in key.h]
    arks = [ark.Scalar(x) for x in field.from_vector(scalars)]
    start = time.perf_counter()
    theirs = ark.G1Point.multiexp_unchecked(points, arks)
    ark_s = time.perf_counter() - start
    if curve.from_ark_g1(theirs) != mine:
        raise SystemExit("our G1 MSM disagrees with py-arkworks")
    return ours_s, ark_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="12,13,14,15,16,17,18",
                        help="log2 of the domain sizes, comma separated")
    parser.add_argument("--runs", type=int, default=1, help="runs per size (median)")
    parser.add_argument("--public", type=int, default=2, help="public signals")
    parser.add_argument("--snarkjs", type=pathlib.Path, default=SNARKJS)
    parser.add_argument("--no-msm", action="store_true", help="skip the MSM comparison")
    args = parser.parse_args()
    backend = backends.create("cpu")
    print(f"backend {backend.describe()}; snarkjs: "
          f"{args.snarkjs if args.snarkjs.exists() else 'not installed (./dev test installs it)'}")
    print(f"{'size':>6} {'setup s':>8} {'ours s':>8} {'loaded s':>9} {'snarkjs s':>10} "
          f"{'ratio':>6} {'msm ours':>9} {'msm ark':>8}  steps (loaded)")
    for k in (int(x) for x in args.sizes.split(",")):
        folder = pathlib.Path(tempfile.mkdtemp(prefix=f"g16-bench-{k}-"))
        try:
            start = time.perf_counter()
            files = devsetup.write_demo(folder, k, args.public, seed=k)
            setup_s = time.perf_counter() - start
            mine = ours(files, backend, args.runs)
            theirs = snarkjs(files, args.snarkjs, args.runs)
            msm = (None, None) if args.no_msm else msm_pair(zkey.read(files.zkey.read_bytes()),
                                                            backend)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        ratio = f"{theirs / mine['files']:.2f}" if theirs else "-"
        steps = json.dumps({k[5:]: round(v, 3) for k, v in mine.items() if k.startswith("step")})
        print(f"  2^{k:<2} {setup_s:8.2f} {mine['files']:8.3f} {mine['loaded']:9.3f} "
              f"{theirs if theirs is not None else float('nan'):10.3f} {ratio:>6} "
              f"{_fmt(msm[0]):>9} {_fmt(msm[1]):>8}  {steps}", flush=True)
    print("ratio = snarkjs / ours (from files); above 1 means ours is faster")


def _fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.3f}"


if __name__ == "__main__":
    main()
