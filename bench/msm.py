"""G1 and G2 MSM time: the CUDA backend beside the CPU backend, 2^16 .. 2^24 points.

Prints the GPU model, then per size the CUDA time of each build of the arithmetic (--variants:
carry chains, portable 64-bit sums, inlined products), the CPU time and the ratio of the CPU to
the best CUDA time, and checks that all give the same point. Times are medians of --runs calls
as the prover makes them: scalars uploaded, result downloaded; the points are loaded once
beforehand, as a key's are. Points are 1024 random points repeated (the cost does not depend
on their being distinct); scalars are random below 2^254. Without a GPU it says why and shows
the CPU up to --cpu-max.

    .venv/bin/python bench/msm.py
    .venv/bin/python bench/msm.py --sizes 16,18,20 --groups g1 --runs 5 --cpu-max 20
    .venv/bin/python bench/msm.py --sizes 20 --variants chains,portable,inline
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import numpy as np

from bench.gpu import DEFAULT_VARIANTS, best_cuda, disagreeing, header, open_backends, row, timed
from worker.cuda.acceptance import random_points, random_scalars

#: Published BLS12-381 G1 MSM times to set ours beside (log2 size -> seconds, where), read at the
#: source: ingonyama-zk/icicle, docs/versioned_docs/version-1.10.1/icicle/rust-bindings/
#: msm-pre-computation.md, "Benchmarks where performed on a Nvidia RTX 3090Ti", BLS12-381 2^20
#: without precomputed bases: 25.5 ms (17.2 ms with bases precomputed 8-fold, which ours are
#: not). No H100 or A100 figure for BLS12-381 is published there, nor in sppark (no timings);
#: speakspeak/cuZK's README gives 190 ms on a V100.
ANCHORS = {20: (0.0255, "ICICLE 1.10.1, RTX 3090 Ti, no precomputed bases")}
GOAL = 2.0  #: ours within this factor of the anchor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16,17,18,19,20,21,22,23,24", help="log2 sizes")
    parser.add_argument("--groups", default="g1,g2")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cpu-max", type=int, default=22, help="largest log2 size on the CPU")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS,
                        help="builds of the CUDA arithmetic to time (chains, portable, inline)")
    args = parser.parse_args()
    runners, gpu_line = open_backends(args.variants.split(","))
    print(gpu_line)
    on_gpu = len(runners) > 1
    cpu_max = args.cpu_max if on_gpu else min(args.cpu_max, 18)
    rng = np.random.default_rng(7)
    names = list(runners)
    print(f"{'group':>5} {'size':>6} {header(names)}")
    for group in args.groups.split(","):
        for k in (int(x) for x in args.sizes.split(",")):
            if not on_gpu and k > cpu_max:
                continue
            pts, sc = random_points(group, 1 << k, rng), random_scalars(1 << k, rng)
            results, seconds = {}, {}
            for name, backend in runners.items():
                if name == "cpu" and k > cpu_max:
                    continue
                bases = backend.load_bases(group, pts)
                run = backend.msm_g1 if group == "g1" else backend.msm_g2
                run(bases, sc)  # warm: kernels, tables, caches
                seconds[name], results[name] = timed(lambda: run(bases, sc), args.runs)  # noqa: B023
            if bad := disagreeing(results):
                raise SystemExit(f"{group} 2^{k}: {', '.join(bad)} disagree with {names[0]}")
            print(f"{group:>5} {'2^' + str(k):>6} {row(names, seconds)}", flush=True)
            best = best_cuda(seconds)
            if group == "g1" and k in ANCHORS and best:
                anchor, where = ANCHORS[k]
                print(f"      anchor 2^{k}: {anchor:.4f} s ({where}); best ours ({best[0]}) / "
                      f"anchor = {best[1] / anchor:.2f} (goal <= {GOAL:g})", flush=True)


if __name__ == "__main__":
    main()
