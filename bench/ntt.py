"""NTT time over Fr: the CUDA backend beside the CPU backend, domains of 2^16 .. 2^24.

Prints the GPU model, then per size the time of the prover's NTT step for one vector
(`to_coset`: inverse NTT, coset shift, NTT), on CUDA and on the CPU, and their ratio
(CPU / CUDA); checks that both agree. Times are medians of --runs calls, values uploaded and
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

from bench.gpu import open_backends, timed
from worker.cuda.acceptance import cell, random_scalars, ratio
from worker.groth16 import ntt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16,17,18,19,20,21,22,23,24", help="log2 sizes")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cpu-max", type=int, default=24, help="largest log2 size on the CPU")
    args = parser.parse_args()
    cuda, cpu, gpu_line = open_backends()
    print(gpu_line)
    cpu_max = args.cpu_max if cuda is not None else min(args.cpu_max, 20)
    rng = np.random.default_rng(11)
    print(f"{'size':>6} {'cuda s':>9} {'cpu s':>9} {'cpu/cuda':>9}")
    for k in (int(x) for x in args.sizes.split(",")):
        if cuda is None and k > cpu_max:
            continue
        domain, values = ntt.Domain(k), random_scalars(1 << k, rng)
        results, seconds = [], {}
        for name, backend in (("cuda", cuda), ("cpu", cpu if k <= cpu_max else None)):
            if backend is None:
                continue
            backend.to_coset(domain, values)  # warm: kernels, twiddle tables
            seconds[name], result = timed(
                lambda: backend.to_coset(domain, values), args.runs)  # noqa: B023
            results.append(result)
        if len(results) == 2 and not np.array_equal(results[0], results[1]):
            raise SystemExit(f"2^{k}: CUDA and CPU disagree")
        print(f"{'2^' + str(k):>6} {cell(seconds.get('cuda')):>9} {cell(seconds.get('cpu')):>9} "
              f"{ratio(seconds.get('cpu'), seconds.get('cuda')):>9}", flush=True)


if __name__ == "__main__":
    main()
