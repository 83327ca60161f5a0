"""The CUDA backend's host side (MSM and NTT drivers, backend, device wrapper) run on a host
emulation of its kernels (tests/cuda/fakedevice.py: every kernel's per-thread step in a loop),
against py-arkworks and the CPU backend. No GPU involved: what remains for one is the kernels'
behaviour under real concurrency, and speed."""

from __future__ import annotations

import ctypes
import random
import threading
import types

import numpy as np
import py_arkworks_bls12381 as ark
import pytest

from tests.cuda import hostlib
from tests.cuda.fakedevice import FakeDevice
from worker.cuda import backend, exceptions, plan
from worker.cuda import msm as msm_driver
from worker.cuda.device import Device
from worker.groth16 import backends, curve, field, native, ntt
from worker.groth16.exceptions import Groth16Error

rng = random.Random(99)


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    return hostlib.build(tmp_path_factory.mktemp("cuda_emu"))


@pytest.fixture
def cuda(lib: ctypes.CDLL) -> backend.CudaBackend:
    return backend.CudaBackend(device=FakeDevice(lib), self_test=False)


@pytest.fixture(scope="module")
def cpu() -> backends.Backend:
    return backends.create("cpu", threads=1)


def random_points(group: str, n: int) -> tuple[list[object], np.ndarray]:
    """n points (every 7th at infinity) as py-arkworks points and as the key's LEM array."""
    gen = ark.G1Point() if group == "g1" else ark.G2Point()
    zero = ark.G1Point.identity() if group == "g1" else ark.G2Point.identity()
    pts = [zero if i % 7 == 3 else gen * hostlib.scalar(rng.randrange(1, hostlib.R))
           for i in range(n)]
    if group == "g1":
        lem = b"".join(curve.g1_to_lem(curve.from_ark_g1(p)) for p in pts)  # type: ignore[arg-type]
        return pts, np.frombuffer(lem, dtype=np.uint64).reshape(n, 12)
    lem = b"".join(curve.g2_to_lem(curve.from_ark_g2(p)) for p in pts)  # type: ignore[arg-type]
    return pts, np.frombuffer(lem, dtype=np.uint64).reshape(n, 24)


def reference(group: str, pts: list[object], scalars: list[int]) -> object:
    point = ark.G1Point if group == "g1" else ark.G2Point
    total = point.identity()
    for p, k in zip(pts, scalars, strict=True):
        total = total + p * hostlib.scalar(k)  # type: ignore[operator]
    return curve.from_ark_g1(total) if group == "g1" else curve.from_ark_g2(total)


def witness_like(n: int) -> list[int]:
    """Mostly 0 and 1 (bits), some -1 and small values, a few full-size: one huge bucket."""
    return [rng.choice([0, 1, 1, 1, 1, hostlib.R - 1, 2, 3, rng.randrange(hostlib.R)])
            for _ in range(n)]


@pytest.mark.parametrize("group", ["g1", "g2"])
@pytest.mark.parametrize(("n", "c", "chunk", "runs"), [
    (1, 4, 8, 1), (9, 2, 2, 1), (40, 3, 2, 2), (70, 5, 3, 4), (64, 8, 4, 16),
])
def test_msm_driver_with_small_plans(lib: ctypes.CDLL, group: str, n: int, c: int, chunk: int,
                                     runs: int) -> None:
    # Given points and witness-like scalars, and a plan that forces several rounds of chunks
    pts, lem = random_points(group, n)
    scalars = witness_like(n)
    dev = FakeDevice(lib)
    # When the driver runs its launches
    got = msm_driver.msm(dev, group, dev.upload(lem), field.to_vector(scalars),
                         plan.MsmPlan(points=n, window_bits=c, chunk=chunk, runs=runs))
    # Then the affine result is the sum, and the bucket rounds repeated where buckets were long
    from_lem = curve.g1_from_lem if group == "g1" else curve.g2_from_lem
    assert from_lem(got) == reference(group, pts, scalars)
    assert dev.launches.count(f"msm_sum_entries_{group}") == 1


def test_msm_of_zero_scalars_and_of_nothing(cuda: backend.CudaBackend) -> None:
    _pts, lem = random_points("g1", 5)
    assert cuda.msm_g1(cuda.load_bases("g1", lem), field.to_vector([0] * 5)) == curve.G1_ZERO
    empty = cuda.load_bases("g1", lem[:0])
    assert cuda.msm_g1(empty, field.to_vector([])) == curve.G1_ZERO


@pytest.mark.parametrize("n", [1, 2, 300])
def test_backend_msm_matches_the_cpu_backend(cuda: backend.CudaBackend, cpu: backends.Backend,
                                             n: int) -> None:
    for group in ("g1", "g2"):
        _pts, lem = random_points(group, n)
        scalars = field.to_vector([rng.randrange(hostlib.R) for _ in range(n)])
        run_cuda = cuda.msm_g1 if group == "g1" else cuda.msm_g2
        run_cpu = cpu.msm_g1 if group == "g1" else cpu.msm_g2
        assert run_cuda(cuda.load_bases(group, lem), scalars) == run_cpu(
            cpu.load_bases(group, lem), scalars)


def test_key_points_that_do_not_fit_stay_on_the_host(lib: ctypes.CDLL) -> None:
    small = backend.CudaBackend(device=FakeDevice(lib, free_bytes=1 << 20), self_test=False)
    pts, lem = random_points("g1", 4)
    bases = small.load_bases("g1", lem)
    assert isinstance(bases, backend.CudaBases) and bases.device is None
    assert small.msm_g1(bases, field.to_vector([1, 2, 3, 4])) == reference("g1", pts, [1, 2, 3, 4])


def test_msm_refuses_a_scalar_count_that_differs_from_the_points(
    cuda: backend.CudaBackend,
) -> None:
    _pts, lem = random_points("g1", 3)
    with pytest.raises(ValueError, match="2 scalars for 3 g1 points"):
        cuda.msm_g1(cuda.load_bases("g1", lem), field.to_vector([1, 2]))


# --- NTT ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("log_n", [0, 1, 2, 5, 11])  # 11: two passes of ntt_pass (10 + 1 stages)
def test_ntt_steps_match_the_cpu_backend(cuda: backend.CudaBackend, cpu: backends.Backend,
                                         log_n: int) -> None:
    domain = ntt.Domain(log_n)
    values = field.to_vector([rng.randrange(hostlib.R) for _ in range(domain.size)])
    for step in ("intt", "coset_ntt", "to_coset"):
        got = getattr(cuda, step)(domain, values)
        assert np.array_equal(got, getattr(cpu, step)(domain, values)), step


def test_quotient_on_the_device_matches_the_prover_steps(
    cuda: backend.CudaBackend, cpu: backends.Backend,
) -> None:
    domain = ntt.Domain(6)
    a, b, c = (field.to_vector([rng.randrange(hostlib.R) for _ in range(domain.size)])
               for _ in range(3))
    want = native.mul_sub(*(cpu.to_coset(domain, v) for v in (a, b, c)))
    assert np.array_equal(cuda.quotient(domain, a, b, c), want)


def test_ntt_refuses_a_size_that_is_not_the_domain(cuda: backend.CudaBackend) -> None:
    with pytest.raises(ValueError, match="3 values for a domain of 4"):
        cuda.intt(ntt.Domain(2), field.to_vector([1, 2, 3]))


# --- the device wrapper ------------------------------------------------------------------------

@pytest.mark.parametrize("m", [1, 2048, 2049, 3 * 2048 + 5, 2048 * 2048 + 3])
def test_device_scan_over_several_blocks(lib: ctypes.CDLL, m: int) -> None:
    dev = FakeDevice(lib)
    counts = np.random.default_rng(m).integers(0, 50, size=m, dtype=np.uint32)
    out = dev.alloc(4 * m)
    assert dev.scan(dev.upload(counts), out, m) == int(counts.sum())
    want = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.uint32)
    assert np.array_equal(dev.download(out, np.uint32, m), want)


class FakeCudaError(Exception):
    pass


def test_a_cuda_error_names_the_gpu_and_is_a_retryable_engine_error() -> None:
    # Given a Device whose pycuda raises (no GPU here: the driver module is a stand-in)
    dev = Device.__new__(Device)
    dev.name = "GPU 1 (NVIDIA H100 80GB HBM3)"
    dev._lock = threading.RLock()
    dev._cuda = types.SimpleNamespace(Error=FakeCudaError,
                                      Context=types.SimpleNamespace(pop=lambda: None))
    dev._context = types.SimpleNamespace(push=lambda: None, synchronize=lambda: None)
    # When a launch fails inside `active`
    with pytest.raises(exceptions.DeviceFailed) as caught:
        with dev.active("msm_g1 of 1048576 points"):
            raise FakeCudaError("cuLaunchKernel failed: out of memory")
    # Then the error says which GPU, which step and what, and the executor retries it
    text = str(caught.value)
    assert "GPU 1 (NVIDIA H100 80GB HBM3)" in text and "msm_g1 of 1048576 points" in text
    assert "out of memory" in text
    assert isinstance(caught.value, Groth16Error)


def test_backend_without_pycuda_is_unavailable_with_the_fix() -> None:
    try:
        import pycuda  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("pycuda is installed here")
    with pytest.raises(exceptions.CudaUnavailable, match=r"gpuproxy\[gpu\]"):
        backend.create()


class CorruptDevice(FakeDevice):
    """A card that flips a bit in everything it sends back."""

    def download(self, buf: object, dtype: object, count: int, offset_bytes: int = 0
                 ) -> np.ndarray:
        out = super().download(buf, dtype, count, offset_bytes)  # type: ignore[arg-type]
        out.view(np.uint8)[:1] ^= 1
        return out


def test_start_up_self_test_passes_on_good_kernels(lib: ctypes.CDLL) -> None:
    dev = FakeDevice(lib)
    backend.CudaBackend(device=dev, self_test=True)
    assert {"msm_sum_entries_g1", "msm_sum_entries_g2", "ntt_pass"} <= set(dev.launches)


def test_start_up_self_test_refuses_a_faulty_card(lib: ctypes.CDLL) -> None:
    with pytest.raises(exceptions.SelfTestFailed, match=r"host emulation.*msm_g1 of 64 points"):
        backend.CudaBackend(device=CorruptDevice(lib), self_test=True)
