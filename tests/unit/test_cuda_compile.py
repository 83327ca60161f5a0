"""Every CUDA kernel file compiles with nvcc, as the backend would give it to the compiler (local
headers inlined), for the GPUs the worker targets. No GPU needed; skipped without nvcc."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

from tests.cuda.fakedriver import kernel_parameters
from worker.cuda import sources


def find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found is None and os.access("/usr/local/cuda/bin/nvcc", os.X_OK):
        found = "/usr/local/cuda/bin/nvcc"
    return found


@pytest.fixture(scope="module")
def nvcc() -> str:
    found = find_nvcc()
    if found is None:
        pytest.skip("nvcc not found (PATH, /usr/local/cuda/bin): the kernels are not compiled")
    return found


# msm.cu takes about 5 s per architecture on 2 cores (portable: 8 s); ntt.cu about 1 s. The
# inline variant (40 s) is left to the benches.
@pytest.mark.parametrize(("arch", "variant"), [
    ("sm_80", "chains"), ("sm_90", "chains"), ("sm_90", "portable"),
])
@pytest.mark.parametrize("name", sources.MODULES)
def test_kernel_file_compiles(nvcc: str, tmp_path: pathlib.Path, name: str, arch: str,
                              variant: str) -> None:
    # Compiled as pycuda.compiler does it (nvcc --cubin), warnings as errors
    source = tmp_path / name
    source.write_text(sources.load(name))
    cubin = tmp_path / f"{name}.{arch}.cubin"
    result = subprocess.run(
        [nvcc, "--cubin", *sources.NVCC_OPTIONS, *sources.VARIANTS[variant], f"-arch={arch}",
         "-Werror", "all-warnings", str(source), "-o", str(cubin)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    # Every kernel the drivers launch is in it under its plain name (extern "C")
    assert cubin.read_bytes()[:4] == b"\x7fELF"
    for kernel in kernel_parameters(name):
        assert f".text.{kernel}\0".encode() in cubin.read_bytes(), kernel


def test_inlined_source_keeps_no_local_include() -> None:
    for name in sources.MODULES:
        text = sources.load(name)
        assert '#include "' not in text
        assert "#pragma once" not in text
        assert text.count("struct FpParams {") == 1  # each header once
