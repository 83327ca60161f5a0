"""Every CUDA kernel file compiles with nvcc, as the backend would give it to the compiler (local
headers inlined), for the GPUs the worker targets. No GPU needed; skipped without nvcc."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.cuda.fakedriver import kernel_parameters
from worker.cuda import device, sources

#: What every GPU the worker targets (sm_80 to sm_90) gives one block of threads.
REGISTERS_PER_BLOCK = 64 * 1024


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


#: msm.cu takes 5 to 35 s per architecture and variant on 2 cores; ntt.cu about 1 s. Each
#: variant once, on the Hopper cards the GPU sessions have, and the Ampere build once; the
#: inline variant (40 s and more) is left to the benches.
BUILDS = [("sm_90", "chains"), ("sm_80", "portable")]


@pytest.fixture(scope="module")
def builds(nvcc: str, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[dict[tuple[str, str, str], tuple[subprocess.Popen[bytes], pathlib.Path]]]:
    """Every build started at once, as pycuda.compiler runs nvcc (--cubin), warnings as errors:
    on 2 cores, in about half the time of one after another. Each: (nvcc, its cubin)."""
    folder = tmp_path_factory.mktemp("cubins")
    started = {}
    for name in sources.MODULES:
        source = folder / name
        source.write_text(sources.load(name))
        for arch, variant in BUILDS:
            out = folder / f"{name}.{arch}.{variant}"
            with out.with_suffix(".log").open("wb") as log:  # (a pipe could fill and stall)
                started[(name, arch, variant)] = (subprocess.Popen(
                    [nvcc, "--cubin", *sources.NVCC_OPTIONS, *sources.VARIANTS[variant],
                     f"-arch={arch}", "-Werror", "all-warnings", "--resource-usage",
                     str(source), "-o", str(out.with_suffix(".cubin"))],
                    stdout=log, stderr=subprocess.STDOUT), out)
    yield started
    for nvcc_run, _ in started.values():
        if nvcc_run.poll() is None:
            nvcc_run.kill()
            nvcc_run.wait()


@pytest.mark.parametrize(("arch", "variant"), BUILDS)
@pytest.mark.parametrize("name", sources.MODULES)
def test_kernel_file_compiles(
    builds: dict[tuple[str, str, str], tuple[subprocess.Popen[bytes], pathlib.Path]],
    name: str, arch: str, variant: str,
) -> None:
    nvcc_run, out = builds[(name, arch, variant)]
    nvcc_run.wait(timeout=300)
    cubin = out.with_suffix(".cubin")
    result = subprocess.CompletedProcess(nvcc_run.args, nvcc_run.returncode, "",
                                         out.with_suffix(".log").read_text())
    assert result.returncode == 0, result.stderr
    # Every kernel the drivers launch is in it under its plain name (extern "C")
    assert cubin.read_bytes()[:4] == b"\x7fELF"
    registers = kernel_registers(result.stderr)
    for kernel in kernel_parameters(name):
        assert f".text.{kernel}\0".encode() in cubin.read_bytes(), kernel
        # ... and its registers fit the block it is launched with (device.BLOCK, BLOCKS): a GPU
        # refuses a launch whose block needs more than one block gets, which no host emulation
        # shows (static shared memory past 48 KiB ptxas refuses itself)
        block = device.BLOCKS.get(kernel, device.BLOCK)
        assert block_registers(registers[kernel], block) <= REGISTERS_PER_BLOCK, (kernel, block)
    if variant == sources.DEFAULT_VARIANT:  # registers enough for every formula: no spills in
        # any kernel, nor in a device function it calls
        assert re.findall(r"(\d+) bytes spill stores", result.stderr) != []
        assert set(re.findall(r"(\d+) bytes spill stores", result.stderr)) == {"0"}


def kernel_registers(ptxas: str) -> dict[str, int]:
    """Registers per thread of each kernel, as `nvcc --resource-usage` reports them."""
    registers: dict[str, int] = {}
    kernel = ""
    for line in ptxas.splitlines():
        if entry := re.search(r"Compiling entry function '(\w+)'", line):
            kernel = entry.group(1)
        elif kernel and (used := re.search(r"Used (\d+) registers", line)):
            registers[kernel] = int(used.group(1))
            kernel = ""  # the lines after are the device functions it calls
    return registers


def block_registers(per_thread: int, block: int) -> int:
    """Registers a block of `block` threads takes: allocated per warp of 32, by 256."""
    return -(-block // 32) * -(-per_thread * 32 // 256) * 256


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
ptxas info    : Function properties for _ZN2gp5FieldINS_8FpParamsEE8mont_mulES2_S2_
ptxas info    : Used 40 registers
"""
    assert kernel_registers(report) == {"scan_blocks": 14, "msm_sum_xyzz_g2": 255}
    # 255 registers take 256 per thread: a block of 256 threads needs all 64K, 257 more
    assert block_registers(255, 256) == REGISTERS_PER_BLOCK
    assert block_registers(255, 257) > REGISTERS_PER_BLOCK
    assert block_registers(14, device.SCAN_BLOCK) == 16 * 1024


def test_inlined_source_keeps_no_local_include() -> None:
    for name in sources.MODULES:
        text = sources.load(name)
        assert '#include "' not in text
        assert "#pragma once" not in text
        assert text.count("struct FpParams {") == 1  # each header once
