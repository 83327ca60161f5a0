#!/usr/bin/env bash
# Everything a GPU check needs, in one run on a machine with an NVIDIA GPU and no PyPI: install
# gpuproxy[gpu] from a wheelhouse, check the CUDA backend against the CPU backend
# (`gpuproxy-worker check-gpu`: MSMs, NTTs, verified proofs), then time MSM and NTT per build of
# the arithmetic beside the CPU (bench/msm.py, bench/ntt.py), and prove through a local broker
# and worker (`gpuproxy demo`). Each step's output goes to
# OUT_DIR (default $OUT, else /tmp/gpu-session) and to stdout.
#
#   # where PyPI and the CUDA toolkit are (no GPU needed), for the GPU host's Python:
#   PYTHON=python3.12 deploy/wheelhouse.sh .whl
#   # on the GPU host, from the repository root:
#   bash bench/gpu_session.sh .whl [OUT_DIR]
#
# CHECK_S bounds the check (default 280 s: the 2^20 demo circuit alone takes about 50 s to set
# up on 2 cores, 37 s on an H200 host's 16), BENCH_S each step after it (default 120 s): with
# the install, within a 10-minute device call. On an H200 host the whole run took 147 s with
# CHECK_S=240 BENCH_S=80 VARIANTS=chains,portable (bench/results/h200-2026-11-30).
# MSM_SIZES, NTT_SIZES, PROVE_SIZES, VARIANTS and CHECK_ARGS (more check-gpu flags) narrow or
# widen the run. Between the benches, `gpuproxy demo --log-size DEMO_LOG` (default 16) proves
# through a local broker and worker, the worker on the backend it picks (DEMO_LOG=0 skips it).
# Exit status 1 when a step failed or the install did, naming the steps.
set -uo pipefail
cd "$(dirname "$0")/.."
wheels=${1:?usage: bench/gpu_session.sh WHEELHOUSE [OUT_DIR]}
out=${2:-${OUT:-/tmp/gpu-session}}
check_s=${CHECK_S:-280}
bench_s=${BENCH_S:-120}
venv=${VENV:-/tmp/gpuproxy-gpu-venv}
export PYTHONUNBUFFERED=1
mkdir -p "$out"
# pycuda compiles the kernels with nvcc: the toolkit's usual place when PATH lacks it
command -v nvcc >/dev/null || export PATH=$PATH:/usr/local/cuda/bin

step() {  # step NAME SECONDS COMMAND...: run it within SECONDS, its output in OUT_DIR/NAME.txt
    local name=$1 seconds=$2
    shift 2
    echo "== $name (at most ${seconds} s): $*"
    timeout "$seconds" "$@" 2>&1 | tee "$out/$name.txt"
    status=${PIPESTATUS[0]}
    echo "== $name: exit $status"
    [ "$status" = 0 ] || failed+=("$name")
}
failed=()

python=${PYTHON:-python3}
if ! "$python" -m venv "$venv"; then  # no ensurepip (Debian without python3-venv): its pip
    pip_wheel=$(find "$wheels" -maxdepth 1 -name 'pip-*.whl' | head -1)  # from the wheelhouse
    [ -n "$pip_wheel" ] || { echo "no venv module and no pip wheel in $wheels" >&2; exit 1; }
    "$python" -m venv --without-pip "$venv" &&
        "$venv/bin/python" "$pip_wheel/pip" install -q --no-index --find-links "$wheels" pip ||
        exit 1
fi
"$venv/bin/pip" install -q --no-index --find-links "$wheels" 'gpuproxy[gpu]' || exit 1
command -v nvidia-smi >/dev/null && nvidia-smi | tee "$out/nvidia-smi.txt"
# shellcheck disable=SC2086  # CHECK_ARGS is a list of flags
step check "$check_s" "$venv/bin/gpuproxy-worker" check-gpu --prove-sizes "${PROVE_SIZES:-10,16,20}" \
    ${CHECK_ARGS:-}
if [ "$status" = 124 ]; then  # something hangs on this GPU: the benches would hang the same way
    echo "== the check ran out of time: no benches" >&2
    exit 1
fi
step msm "$bench_s" "$venv/bin/python" bench/msm.py --sizes "${MSM_SIZES:-16,18,20,22}" --cpu-max 20 \
    --variants "${VARIANTS:-chains,portable,inline}"
demo_log=${DEMO_LOG:-16}
[ "$demo_log" = 0 ] || step demo "$bench_s" "$venv/bin/gpuproxy" demo --log-size "$demo_log"
step ntt "$bench_s" "$venv/bin/python" bench/ntt.py --sizes "${NTT_SIZES:-16,20,22,24}" --cpu-max 22 \
    --variants "${VARIANTS:-chains,portable,inline}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "== failed: ${failed[*]}" >&2
    exit 1
fi
