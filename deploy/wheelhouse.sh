#!/usr/bin/env bash
# Build a wheelhouse for installing gpuproxy[gpu] on GPU hosts that cannot reach PyPI:
#
#   PYTHON=python3.12 deploy/wheelhouse.sh /srv/gpuproxy-wheels    # PYTHON: the hosts' version
#   # on each host (same Python minor version, x86-64 Linux):
#   python3 -m venv /opt/gpuproxy
#   /opt/gpuproxy/bin/pip install --no-index --find-links /srv/gpuproxy-wheels 'gpuproxy[gpu]'
#
# pycuda publishes no binary wheels, so it is compiled here with the CUDA toolkit (nvcc on PATH,
# or CUDA_ROOT). It links against libcuda.so.1, which only the NVIDIA driver installs: the build
# uses the toolkit's stub of it, or a stub made here when the toolkit has none. The real library
# is found on the GPU host at import time; a host without a driver gets a clear error from the
# worker (`--backend auto` then runs on the CPU).
#
# With --pycuda-only it builds pycuda and the packages it imports, nothing else (./dev does, for
# the test that runs the real pycuda on an emulated driver).
set -euo pipefail

only_pycuda=false
if [ "${1:-}" = "--pycuda-only" ]; then
    only_pycuda=true
    shift
fi
out=${1:?usage: deploy/wheelhouse.sh [--pycuda-only] OUT_DIR, with PYTHON=python3.X as on the GPU hosts}
PYTHON=${PYTHON:-python3}
PYCUDA_VERSION=${PYCUDA_VERSION:-2026.1}
root=$(cd "$(dirname "$0")/.." && pwd)

if [ -z "${CUDA_ROOT:-}" ]; then  # where nvcc lives, else the usual place
    nvcc=$(command -v nvcc || true)
    for CUDA_ROOT in ${nvcc:+"$(dirname "$(dirname "$(readlink -f "$nvcc")")")"} /usr/local/cuda; do
        [ -f "$CUDA_ROOT/include/cuda.h" ] && break
    done
fi
if [ ! -f "$CUDA_ROOT/include/cuda.h" ]; then
    echo "wheelhouse: no CUDA toolkit found (nvcc on PATH, or CUDA_ROOT=/usr/local/cuda): pycuda needs its headers" >&2
    exit 1
fi

mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$PYTHON" -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install -q --upgrade pip setuptools wheel numpy

if $only_pycuda; then
    "$py" -m pip wheel -q -w "$out" pytools platformdirs mako
else
    echo "wheelhouse: gpuproxy and its dependencies" >&2
    # pip too: a host whose Python lacks ensurepip makes its venv --without-pip and installs
    # pip into it from here (python pip-*.whl/pip install ...)
    "$py" -m pip wheel -q -w "$out" "$root" pytools platformdirs mako pip
fi

echo "wheelhouse: pycuda $PYCUDA_VERSION, compiled against $CUDA_ROOT" >&2
"$py" -m pip download -q --no-deps --no-binary pycuda -d "$work" "pycuda==$PYCUDA_VERSION"
tar -xzf "$work/pycuda-$PYCUDA_VERSION.tar.gz" -C "$work"
stubs="$CUDA_ROOT/lib64/stubs"
if [ ! -f "$stubs/libcuda.so" ]; then
    stubs="$work/stubs"
    mkdir -p "$stubs"
    echo 'void gpuproxy_libcuda_stub(void) {}' >"$work/stub.c"
    "${CC:-cc}" -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so" "$work/stub.c"
fi
(
    cd "$work/pycuda-$PYCUDA_VERSION"
    "$py" configure.py --cuda-root="$CUDA_ROOT" --cudadrv-lib-dir="$stubs" \
        --no-cuda-enable-curand >/dev/null
    # --no-as-needed: keep libcuda.so.1 as a dependency although the stub defines nothing.
    LDFLAGS="-Wl,--no-as-needed" "$py" -m pip wheel -q --no-deps --no-build-isolation -w "$out" .
)
echo "wheelhouse: $(find "$out" -name '*.whl' | wc -l) wheels, $(du -sh "$out" | cut -f1) in $out" >&2
