"""Pure policy of the CUDA backend: backend selection and MSM launch plans."""

from __future__ import annotations

import pytest

from worker.cuda import exceptions, plan, select
from worker.cuda.select import Probe

GPU = Probe(pycuda_error=None, devices=1)
NO_PYCUDA = Probe(pycuda_error="ModuleNotFoundError: No module named 'pycuda'", devices=0)
NO_DEVICE = Probe(pycuda_error=None, devices=0)
#: pycuda installed on a host without the NVIDIA driver (as deploy/wheelhouse.sh's wheel said)
NO_DRIVER = Probe(pycuda_error="ImportError: libcuda.so.1: cannot open shared object file: No "
                  "such file or directory", devices=0)


def test_auto_takes_cuda_when_a_device_is_present() -> None:
    chosen = select.choose("auto", GPU)
    assert (chosen.backend, chosen.error) == ("cuda", False)
    assert "a CUDA device is present" in chosen.message


@pytest.mark.parametrize(("probe", "reason"), [
    (NO_PYCUDA, "pycuda is unusable (ModuleNotFoundError"),
    (NO_DEVICE, "no CUDA device is visible"),
])
def test_auto_falls_back_to_cpu_and_says_why(probe: Probe, reason: str) -> None:
    chosen = select.choose("auto", probe)
    assert (chosen.backend, chosen.error) == ("cpu", False)
    assert reason in chosen.message


def test_forced_cpu_ignores_the_gpu() -> None:
    assert select.choose("cpu", GPU) == select.Selection(
        "cpu", "Groth16 backend: cpu (forced by --backend cpu)")


def test_forced_cuda_without_a_device_is_an_error_naming_the_fix() -> None:
    chosen = select.choose("cuda", NO_DEVICE)
    assert chosen.error
    assert "no CUDA device is visible" in chosen.message
    assert "--backend cpu" in chosen.message
    assert select.choose("cuda", GPU) == select.Selection(
        "cuda", "Groth16 backend: cuda (forced by --backend cuda)")


@pytest.mark.parametrize(("probe", "fix"), [
    (NO_PYCUDA, "(pip install 'gpuproxy[gpu]') on a host with an NVIDIA driver"),
    (NO_DRIVER, "install the NVIDIA driver on this host (it provides libcuda.so.1)"),
    (NO_DEVICE, "check that nvidia-smi lists a GPU and that CUDA_VISIBLE_DEVICES (--gpu) names it"),
])
def test_forced_cuda_names_the_fix_for_its_cause(probe: Probe, fix: str) -> None:
    chosen = select.choose("cuda", probe)
    assert chosen.error and f"{fix}, or use --backend cpu" in chosen.message


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        select.choose("opencl", GPU)


def test_probe_without_pycuda_reports_instead_of_raising() -> None:
    found = select.probe()
    assert found.devices == 0 or found.pycuda_error is None


@pytest.mark.parametrize(("log_n", "bits"), [(0, 4), (10, 8), (16, 13), (20, 16), (24, 18)])
def test_window_width_grows_with_size(log_n: int, bits: int) -> None:
    assert plan.window_bits(1 << log_n) == bits


def test_window_width_minimises_the_cost_model() -> None:
    for n in (3, 1000, 70_000, 1 << 20):
        best = plan.window_bits(n)
        assert all(plan.cost(n, best) <= plan.cost(n, c) for c in range(4, 19))


@pytest.mark.parametrize("log_n", range(0, 27))
def test_plan_fits_the_kernels(log_n: int) -> None:
    p = plan.msm_plan(1 << log_n)
    real_buckets = p.buckets - 1
    assert real_buckets % p.runs == 0  # msm_weigh splits each window evenly
    assert p.windows * p.window_bits >= 256  # the top digit never carries out
    assert plan.MIN_CHUNK <= p.chunk <= plan.MAX_CHUNK
    assert p.entries < 2**32  # 32-bit entry offsets


def test_plan_refuses_an_empty_msm_and_one_past_the_32_bit_indices() -> None:
    for points in (0, plan.MAX_POINTS + 1):
        with pytest.raises(ValueError, match=f"takes 1 to 268435456 points, got {points}"):
            plan.msm_plan(points)
    # The largest it takes keeps every bucket count, offset and entry within 32 bits
    largest = plan.msm_plan(plan.MAX_POINTS)
    assert largest.windows * largest.points < 2**32 and largest.points < 2**31


def test_open_backend_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(select, "probe", lambda: NO_DEVICE)
    chosen, message = select.open_backend("auto")
    assert chosen.name == "cpu"
    assert message == "Groth16 backend: cpu (auto: no CUDA device is visible)"
    with pytest.raises(exceptions.CudaUnavailable, match="--backend cpu"):
        select.open_backend("cuda")


def test_open_backend_falls_back_when_the_gpu_fails_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a visible device whose start fails (here: pycuda is not even installed)
    monkeypatch.setattr(select, "probe", lambda: GPU)
    chosen, message = select.open_backend("auto")
    if chosen.name != "cpu":
        pytest.skip("a working GPU is here")
    assert message.startswith("Groth16 backend: cpu (auto: the GPU failed: ")
    with pytest.raises(exceptions.CudaError):
        select.open_backend("cuda")
