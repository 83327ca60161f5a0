"""The CUDA backend on the real pycuda, whose driver library is a host emulation
(tests/cuda/libcuda_emu.cpp): pycuda's contexts, memory, module loading and argument packing
exactly as on a GPU, the kernels compiled by nvcc as a worker compiles them (the cubins it
loads), and the same kernel files run on the host with CUDA's thread model
(tests/cuda/kernel_threads.h). What it cannot show is what only a GPU has: blocks running
at once, timing, speed."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from tests.cuda import pycuda_emu

RUNNER = pathlib.Path(pycuda_emu.__file__).with_name("pycuda_run.py")


@pytest.fixture(scope="module")
def emulated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return pycuda_emu.prepare(tmp_path_factory.mktemp("libcuda_emu"))


@pytest.mark.timeout(600)
def test_the_cuda_backend_runs_on_the_real_pycuda(emulated: dict[str, str]) -> None:
    result = subprocess.run([sys.executable, str(RUNNER)], env={**os.environ, **emulated},
                            capture_output=True,
                            text=True, timeout=540, cwd=pycuda_emu.ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # The backend opened as a worker with --backend cuda opens it: self-test passed
    assert report["message"] == "Groth16 backend: cuda (forced by --backend cuda)"
    assert report["backend"] == "cuda:GPU 0 (Host emulation)"
    # Every MSM, NTT and proof check equals the CPU backend
    assert report["checks"] == 36 and report["failed"] == []
    # A launch whose arguments do not fit its kernel is refused, as a GPU refuses it
    assert report["bad_launch"].startswith("DeviceFailed: CUDA failed on GPU 0 (Host emulation)")
    assert "invalid argument" in report["bad_launch"]


@pytest.mark.timeout(600)
def test_check_gpu_passes_on_the_emulated_card(emulated: dict[str, str]) -> None:
    result = subprocess.run(
        [str(pathlib.Path(sys.executable).parent / "gpuproxy-worker"), "check-gpu", "--gpu", "0",
         "--msm-sizes", "1,2,40", "--ntt-max", "3", "--prove-sizes", "4"],
        env={**os.environ, **emulated}, capture_output=True, text=True, timeout=540,
        stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Groth16 backend: cuda (forced by --backend cuda); cuda:GPU 0")
    assert re.match(r"against cpu: \d+ threads, field arithmetic ", lines[1])
    assert any(line.startswith("  ok  proof 2^4 constraints") for line in lines)
    assert lines[-1] == "30 of 30 checks passed"


@pytest.mark.timeout(600)
def test_check_gpu_names_a_kernel_whose_registers_do_not_allow_its_block(
    emulated: dict[str, str]
) -> None:
    # A card on which every kernel takes at most 64 threads per block (as the driver reports a
    # kernel's registers through pycuda): both builds fail their self-test before any launch
    result = subprocess.run(
        [str(pathlib.Path(sys.executable).parent / "gpuproxy-worker"), "check-gpu", "--gpu", "0",
         "--msm-sizes", "1", "--ntt-max", "3", "--prove-sizes", "4"],
        env={**os.environ, **emulated, "CUDA_EMU_MAX_THREADS": "64"}, capture_output=True,
        text=True, timeout=540, stdin=subprocess.DEVNULL)
    assert result.returncode == 1, result.stdout + result.stderr
    assert ("gpuproxy-worker check-gpu: FAIL: The CUDA backend on cuda:GPU 0 (Host emulation) "
            "failed its start-up check (msm_g1 of 64 points: msm_digits takes at most 64 "
            "threads per block in the portable build (its registers), not 128)") in result.stderr
    assert "msm_digits takes at most 64 threads per block in the chains build" in result.stderr


def test_check_gpu_without_pycuda_says_what_to_install() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(pathlib.Path(sys.executable).parent / "gpuproxy-worker"), "check-gpu"],
        env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "pip install 'gpuproxy[gpu]'" in result.stderr
    assert "this host cannot run CUDA" in result.stderr and "--backend" not in result.stderr
    assert result.stdout == ""


@pytest.mark.timeout(600)
@pytest.mark.parametrize("script", ["msm.py", "ntt.py"])
def test_the_gpu_benches_set_each_variant_beside_the_cpu_on_the_emulated_card(
    emulated: dict[str, str], script: str
) -> None:
    # The benches a GPU session runs: each build of the arithmetic compiled by nvcc through
    # pycuda, self-tested, timed and checked against the CPU backend
    sizes = ["--sizes", "3,5"] + (["--groups", "g1,g2"] if script == "msm.py" else [])
    result = subprocess.run(
        [sys.executable, str(pycuda_emu.ROOT / "bench" / script), *sizes, "--runs", "1",
         "--variants", "chains,portable"],
        env={**os.environ, **emulated}, capture_output=True, text=True, timeout=540,
        stdin=subprocess.DEVNULL, cwd=pycuda_emu.ROOT)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "GPU: GPU 0 (Host emulation), sm_90"
    assert re.match(r"cpu: \d+ threads, field arithmetic ", lines[1])  # what the CPU column ran
    assert "cuda:chains s" in lines[2] and "cuda:portable s" in lines[2] and "cpu s" in lines[2]
    rows = [line for line in lines if "2^" in line and "anchor" not in line]
    assert len(rows) == (4 if script == "msm.py" else 2)
    assert all(len(row.split()) == (6 if script == "msm.py" else 5) for row in rows), rows
