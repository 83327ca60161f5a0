"""NTT time over Fr: the CUDA backend beside the CPU backend, domains of 2^16 .. 2^24.

Prints the GPU model, then per size the time of the prover's NTT step for one vector
(`to_coset`: inverse NTT, coset shift, NTT), on CUDA in each build of the arithmetic
(--variants) and on the CPU, and the ratio of the CPU to the best CUDA time; checks that all
agree. Times are medians of --runs calls, values uploaded and
downloaded each call as the prover does now. Without a GPU it says why and shows the CPU up to
--cpu-max.

    .venv/bin/python bench/ntt.py
    .venv/bin/python bench/ntt.py --sizes 16,20,24 --runs 5
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import numpy as np

from bench.gpu import DEFAULT_VARIANTS, disagreeing, header, open_backends, row, timed
from worker.cuda.acceptance import random_scalars
from worker.groth16 import ntt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16,17,18,19,20,21,22,23,24", help="log2 sizes")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cpu-max", type=int, default=24, help="largest log2 size on the CPU")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS,
                        help="builds of the CUDA arithmetic to time (chains, portable, inline)")
    args = parser.parse_args()
    runners, gpu_line = open_backends(args.variants.split(","))
    print(gpu_line)
    on_gpu = len(runners) > 1
    cpu_max = args.cpu_max if on_gpu else min(args.cpu_max, 20)
    rng = np.random.default_rng(11)
    names = list(runners)
    print(f"{'size':>6} {header(names)}")
    for k in (int(x) for x in args.sizes.split(",")):
        if not on_gpu and k > cpu_max:
            continue
        domain, values = ntt.Domain(k), random_scalars(1 << k, rng)
        results, seconds = {}, {}
        for name, backend in runners.items():
            if name == "cpu" and k > cpu_max:
                continue
            backend.to_coset(domain, values)  # warm: kernels, twiddle tables
            seconds[name], results[name] = timed(
                lambda: backend.to_coset(domain, values), args.runs)  # noqa: B023
        if bad := disagreeing({n: r.tobytes() for n, r in results.items()}):
            raise SystemExit(f"2^{k}: {', '.join(bad)} disagree with {names[0]}")
        print(f"{'2^' + str(k):>6} {row(names, seconds)}", flush=True)


if __name__ == "__main__":
    main()
