"""Every CUDA kernel file compiles with nvcc, as the backend would give it to the compiler (local
headers inlined), for the GPUs the worker targets. No GPU needed; skipped without nvcc."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shutil
import subprocess

import pytest

from tests.cuda.fakedriver import kernel_parameters
from worker.cuda import device, sources

#: What every GPU the worker targets (sm_80 to sm_90) gives one block of threads.
REGISTERS_PER_BLOCK = 64 * 1024
STATIC_SHARED_BYTES = 48 * 1024


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
         "-Werror", "all-warnings", "--resource-usage", str(source), "-o", str(cubin)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    # Every kernel the drivers launch is in it under its plain name (extern "C")
    assert cubin.read_bytes()[:4] == b"\x7fELF"
    usage = resource_usage(result.stderr)
    for kernel in kernel_parameters(name):
        assert f".text.{kernel}\0".encode() in cubin.read_bytes(), kernel
        # ... and fits the block it is launched with: a GPU refuses a launch whose block needs
        # more registers or shared memory than one block gets, which no host emulation shows
        block = device.BLOCKS.get(kernel, device.BLOCK)
        assert usage[kernel].block_registers(block) <= REGISTERS_PER_BLOCK, (kernel, block)
        assert usage[kernel].shared <= STATIC_SHARED_BYTES, kernel
        if variant == sources.DEFAULT_VARIANT:  # registers enough for every formula
            assert usage[kernel].spilled == 0, kernel


@dataclasses.dataclass
class Usage:
    registers: int = 0
    shared: int = 0  #: bytes of static shared memory
    spilled: int = 0  #: bytes of spill stores

    def block_registers(self, block: int) -> int:
        """Registers a block of `block` threads takes: per warp of 32, rounded to 256."""
        warps = -(-block // 32)
        return warps * -(-self.registers * 32 // 256) * 256


def resource_usage(ptxas: str) -> dict[str, Usage]:
    """Each kernel's resources as `nvcc --resource-usage` reports them (ptxas info lines)."""
    usage: dict[str, Usage] = {}
    kernel: Usage | None = None
    for line in ptxas.splitlines():
        if entry := re.search(r"Compiling entry function '(\w+)'", line):
            kernel = usage[entry.group(1)] = Usage()
        elif kernel is not None and (spill := re.search(r"(\d+) bytes spill stores", line)):
            kernel.spilled = int(spill.group(1))
        elif kernel is not None and (used := re.search(r"Used (\d+) registers", line)):
            kernel.registers = int(used.group(1))
            smem = re.search(r"(\d+) bytes smem", line)
            kernel.shared = int(smem.group(1)) if smem else 0
            kernel = None  # the lines after are the device functions it calls
    return usage


def test_the_resource_report_is_read_as_ptxas_writes_it() -> None:
    report = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'scan_blocks' for 'sm_90'
ptxas info    : Function properties for scan_blocks
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 14 registers, used 1 barriers, 4096 bytes smem
ptxas info    : Compiling entry function 'msm_sum_xyzz_g2' for 'sm_90'
ptxas info    : Function properties for msm_sum_xyzz_g2
    1104 bytes stack frame, 48 bytes spill stores, 40 bytes spill loads
ptxas info    : Used 255 registers, used 0 barriers, 1104 bytes cumulative stack size
ptxas info    : Function properties for _ZNK2gp4XyzzINS_3Fp2EEplERKS2_
    0 bytes stack frame, 788 bytes spill stores, 1292 bytes spill loads
"""
    usage = resource_usage(report)
    assert usage == {"scan_blocks": Usage(registers=14, shared=4096),
                     "msm_sum_xyzz_g2": Usage(registers=255, spilled=48)}
    # 255 registers take 256 per thread: a block of 256 threads needs all 64K, 257 more
    assert usage["msm_sum_xyzz_g2"].block_registers(256) == REGISTERS_PER_BLOCK
    assert usage["msm_sum_xyzz_g2"].block_registers(257) > REGISTERS_PER_BLOCK
    assert usage["scan_blocks"].block_registers(device.SCAN_BLOCK) == 16 * 1024


def test_inlined_source_keeps_no_local_include() -> None:
    for name in sources.MODULES:
        text = sources.load(name)
        assert '#include "' not in text
        assert "#pragma once" not in text
        assert text.count("struct FpParams {") == 1  # each header once
