"""The CUDA backend's host side (MSM and NTT drivers, backend, device wrapper) run on a host
emulation of its kernels (tests/cuda/fakedevice.py: every kernel's per-thread step in a loop),
against py-arkworks and the CPU backend. No GPU involved: what remains for one is the kernels'
behaviour under real concurrency, and speed."""

from __future__ import annotations

import ctypes
import dataclasses
import pathlib
import random
import threading
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import py_arkworks_bls12381 as ark
import pytest
import structlog

from broker import policy
from tests.cuda import hostlib
from tests.cuda.fakedevice import FakeDevice
from tests.cuda.fakedriver import FakeModule, OutOfMemory
from worker.config import WorkerConfig
from worker.cuda import backend, exceptions, plan
from worker.cuda import msm as msm_driver
from worker.cuda import ntt as ntt_driver
from worker.exceptions import DeviceLost, TaskFailed
from worker.executors.base import Job
from worker.executors.groth16 import Groth16Executor
from worker.groth16 import (
    backends,
    curve,
    devsetup,
    field,
    keycache,
    native,
    ntt,
    proofjson,
    prover,
    verifier,
    wtns,
    zkey,
)
from worker.groth16.exceptions import Groth16Error

rng = random.Random(99)
T = TypeVar("T")


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    return hostlib.build_kernels(tmp_path_factory.mktemp("cuda_emu"))


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
    with dev.active("msm"):
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
    small = backend.CudaBackend(device=FakeDevice(lib, capacity=1 << 20), self_test=False)
    pts, lem = random_points("g1", 4)
    bases = small.load_bases("g1", lem)
    assert isinstance(bases, backend.CudaBases) and bases.device is None
    assert small.msm_g1(bases, field.to_vector([1, 2, 3, 4])) == reference("g1", pts, [1, 2, 3, 4])


@pytest.mark.parametrize("group", ["g1", "g2"])
@pytest.mark.parametrize("n", [3, 1000, 5000])
def test_an_msm_takes_no_more_memory_than_the_backend_leaves_it(lib: ctypes.CDLL, group: str,
                                                                 n: int) -> None:
    # The room kept free beside a resident section (msm.scratch_bytes) bounds what an MSM
    # over it allocates at its peak
    dev = FakeDevice(lib)
    _pts, lem = random_points(group, 1)
    points = np.repeat(lem, n, axis=0)
    scalars = field.to_vector([rng.randrange(hostlib.R) for _ in range(n)])
    with dev.active("msm"):
        buf = dev.upload(points)
        base = dev.driver.used
        dev.driver.peak = base
        msm_driver.msm(dev, group, buf, scalars)
        assert 0 < dev.driver.peak - base <= msm_driver.scratch_bytes(group, n)


def test_a_key_section_beyond_the_32_bit_bucket_indices_is_refused_by_name(
    cuda: backend.CudaBackend,
) -> None:
    huge = np.broadcast_to(np.zeros(96, np.uint8), (plan.MAX_POINTS + 1, 96))  # no memory taken
    with pytest.raises(exceptions.TooLarge, match=r"268435457 points .* --backend cpu"):
        cuda.load_bases("g1", huge)


def test_msm_refuses_a_scalar_count_that_differs_from_the_points(
    cuda: backend.CudaBackend,
) -> None:
    _pts, lem = random_points("g1", 3)
    with pytest.raises(ValueError, match="2 scalars for 3 g1 points"):
        cuda.msm_g1(cuda.load_bases("g1", lem), field.to_vector([1, 2]))


# --- NTT ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("log_n", [0, 1, 2, 5, 11, 12])  # 11, 12: two passes of 6 + 5, 6 + 6
def test_ntt_steps_match_the_cpu_backend(cuda: backend.CudaBackend, cpu: backends.Backend,
                                         log_n: int) -> None:
    domain = ntt.Domain(log_n)
    values = field.to_vector([rng.randrange(hostlib.R) for _ in range(domain.size)])
    for step in ("intt", "coset_ntt", "to_coset"):
        got = getattr(cuda, step)(domain, values)
        assert np.array_equal(got, getattr(cpu, step)(domain, values)), step


def test_ntt_stages_are_spread_evenly_over_as_few_passes_as_tiles_allow() -> None:
    assert ntt_driver.passes(10) == [10] and ntt_driver.passes(11) == [6, 5]
    assert ntt_driver.passes(21) == [7, 7, 7] and ntt_driver.passes(31) == [8, 8, 8, 7]
    assert all(sum(ntt_driver.passes(k)) == k and max(ntt_driver.passes(k), default=0) <= 10
               for k in range(32))


def test_quotient_on_the_device_matches_the_prover_steps(
    cuda: backend.CudaBackend, cpu: backends.Backend,
) -> None:
    domain = ntt.Domain(6)
    a, b, c = (field.to_vector([rng.randrange(hostlib.R) for _ in range(domain.size)])
               for _ in range(3))
    want = native.mul_sub(*(cpu.to_coset(domain, v) for v in (a, b, c)))
    assert np.array_equal(cuda.quotient(domain, a, b, c), want)


def test_a_proof_on_the_gpu_makes_h_there_from_the_witness(
    cuda: backend.CudaBackend, groth16_demo: Callable[..., devsetup.DemoFiles],
) -> None:
    # Given a loaded key and a witness
    demo = groth16_demo(5, 1)
    loaded = cuda.load(zkey.read(demo.zkey.read_bytes()))
    driver = cuda.device.driver
    driver.launches.clear()
    # When the prover makes a proof on the GPU
    proof, public = prover.prove(loaded, wtns.read(demo.wtns.read_bytes()), cuda)
    # Then it verifies, and A.w, B.w, C.w, their NTTs and A*B - C were made on the device in
    # one go: the witness went up in normal form (no conversion), h came down once
    assert verifier.verify(loaded.key.verification_key(), proof, public)
    assert driver.launches.count("fr_constraints") == 1
    assert driver.launches.count("fr_ab_minus_c") == 1
    assert driver.launches.count("fr_to_mont") == 0 and driver.launches.count("fr_from_mont") == 1


@pytest.mark.parametrize("capacity", [1 << 40, 1 << 20], ids=["resident", "on the host"])
def test_constraints_in_any_order_give_the_cpu_backends_quotient(
    lib: ctypes.CDLL, cpu: backends.Backend, groth16_demo: Callable[..., devsetup.DemoFiles],
    capacity: int,
) -> None:
    # Given a key whose coefficient records come in no order: several on one constraint and
    # signal, A's and B's mixed, constraints with none (the odd ones), signals up to the last
    cuda = backend.CudaBackend(device=FakeDevice(lib, capacity=capacity), self_test=False)
    key = zkey.read(groth16_demo(5, 1).zkey.read_bytes())
    records = np.zeros(400, dtype=zkey.COEF_DTYPE)
    records["matrix"] = [rng.randrange(2) for _ in records]
    records["constraint"] = [2 * rng.randrange(key.domain_size // 2) for _ in records]
    records["signal"] = [rng.randrange(key.n_vars) for _ in records]
    records["value"] = field.to_vector([rng.randrange(hostlib.R) for _ in records])
    records[-1] = (1, key.domain_size - 2, key.n_vars - 1, records["value"][0])
    records[-2] = records[-3]
    key = dataclasses.replace(key, coefs=records)
    witness = field.to_vector([rng.randrange(hostlib.R) for _ in range(key.n_vars)])
    domain = ntt.Domain(key.log_domain)
    # When the CUDA backend evaluates them on the device (their sorted arrays kept there, or,
    # where the GPU has no room, uploaded for the operation)
    loaded = cuda.load(key)
    assert isinstance(loaded.constraints, backend.CudaConstraints)
    assert (loaded.constraints.device is None) == (capacity == 1 << 20)
    got = cuda.witness_quotient(loaded, witness, domain)
    # Then h is the CPU backend's, which reads the records as they come
    assert np.array_equal(got, cpu.witness_quotient(cpu.load(key), witness, domain))


def test_an_upload_of_key_arrays_that_fails_halfway_keeps_nothing(
    cuda: backend.CudaBackend, groth16_demo: Callable[..., devsetup.DemoFiles],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    demo = groth16_demo(5, 1)
    loaded = cuda.load(zkey.read(demo.zkey.read_bytes()))
    witness = wtns.read(demo.wtns.read_bytes())
    domain = ntt.Domain(loaded.key.log_domain)
    held = loaded.constraints
    assert isinstance(held, backend.CudaConstraints)
    cuda._evict()  # as an earlier operation that ran out of memory left it
    driver = cuda.device.driver
    before = driver.used
    # When keeping the constraints again fails at its second array (another process took the
    # memory meanwhile)
    real, calls = driver.mem_alloc, []

    def alloc_failing_once(nbytes: int) -> object:
        calls.append(nbytes)
        if len(calls) == 2:
            raise OutOfMemory("cuMemAlloc failed: out of memory")
        return real(nbytes)

    monkeypatch.setattr(driver, "mem_alloc", alloc_failing_once)
    want = cuda.witness_quotient(loaded, witness, domain)  # made after giving back, or with less
    monkeypatch.setattr(driver, "mem_alloc", real)
    # Then no array of the failed upload stays kept behind the backend's back: what is kept is
    # tracked, and giving it back returns the GPU to where it was
    assert np.array_equal(cuda.witness_quotient(loaded, witness, domain), want)
    cuda._evict()
    assert driver.used == before and held.device is None


def test_the_gpu_quotient_refuses_a_witness_or_domain_that_is_not_the_keys(
    cuda: backend.CudaBackend, groth16_demo: Callable[..., devsetup.DemoFiles],
) -> None:
    demo = groth16_demo(5, 1)
    loaded = cuda.load(zkey.read(demo.zkey.read_bytes()))
    witness = wtns.read(demo.wtns.read_bytes())
    domain = ntt.Domain(loaded.key.log_domain)
    # A kernel would read past the witness or the constraints: refused before any launch
    with pytest.raises(ValueError, match="witness values on a domain of"):
        cuda.witness_quotient(loaded, witness[:-4], domain)
    with pytest.raises(ValueError, match="witness values on a domain of"):
        cuda.witness_quotient(loaded, witness, ntt.Domain(loaded.key.log_domain - 1))


def test_ntt_refuses_a_size_that_is_not_the_domain(cuda: backend.CudaBackend) -> None:
    with pytest.raises(ValueError, match="3 values for a domain of 4"):
        cuda.intt(ntt.Domain(2), field.to_vector([1, 2, 3]))


# --- the device wrapper ------------------------------------------------------------------------

@pytest.mark.parametrize("m", [1, 2048, 2049, 3 * 2048 + 5, 2048 * 2048 + 3])
def test_device_scan_over_several_blocks(lib: ctypes.CDLL, m: int) -> None:
    dev = FakeDevice(lib)
    counts = np.random.default_rng(m).integers(0, 50, size=m, dtype=np.uint32)
    with dev.active("scan"):
        out = dev.alloc(4 * m)
        assert dev.scan(dev.upload(counts), out, m) == int(counts.sum())
        want = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.uint32)
        assert np.array_equal(dev.download(out, np.uint32, m), want)


def test_a_cuda_error_names_the_gpu_and_is_a_retryable_engine_error(lib: ctypes.CDLL) -> None:
    # Given a GPU with too little memory for an MSM of 300 points
    cuda = backend.CudaBackend(device=FakeDevice(lib, capacity=256 << 10), self_test=False)
    pts, lem = random_points("g1", 300)
    scalars = [rng.randrange(hostlib.R) for _ in range(300)]
    # When the MSM runs out of device memory
    with pytest.raises(exceptions.DeviceFailed) as caught:
        cuda.msm_g1(cuda.load_bases("g1", lem), field.to_vector(scalars))
    # Then the error says which GPU, which step and what, and the executor retries it
    text = str(caught.value)
    assert "GPU 0 (host emulation)" in text and "msm_g1 of 300 points" in text
    assert "out of memory" in text
    assert isinstance(caught.value, Groth16Error)
    # And the failed MSM left nothing allocated: a smaller one runs on the same GPU
    assert cuda.device.driver.used == 0
    assert cuda.msm_g1(cuda.load_bases("g1", lem[:4]), field.to_vector(scalars[:4])) == \
        reference("g1", pts[:4], scalars[:4])


# --- device memory lifetimes -------------------------------------------------------------------

def in_thread(fn: Callable[[], T]) -> T:
    """fn() on a new thread, as the worker's prover threads call the backend."""
    out: list[T] = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join()
    return out[0]


def test_the_emulated_driver_holds_pycuda_to_its_thread_rule(lib: ctypes.CDLL) -> None:
    # An allocation that dies outside its context, on another thread than the context's, is
    # leaked by pycuda: the emulation records it, so the tests below can see it happen
    dev = FakeDevice(lib)
    with dev.active("test"):
        buf = dev.driver.mem_alloc(1024)
    in_thread(lambda: buf.free())
    assert dev.driver.leaks == ["1024 bytes freed out of their context's thread"]


def test_kept_key_points_are_freed_once_the_key_is_dropped_from_any_thread(
    lib: ctypes.CDLL,
) -> None:
    # Given a backend made on one thread (as the executor makes it) and a key section resident
    cuda = in_thread(lambda: backend.CudaBackend(device=FakeDevice(lib), self_test=False))
    driver = cuda.device.driver
    pts, lem = random_points("g1", 40)
    scalars = field.to_vector(list(range(40)))
    held = [in_thread(lambda: cuda.load_bases("g1", lem))]  # as the key cache holds it
    assert driver.used == lem.nbytes
    # When MSMs run on other threads, they free all their scratch and keep the points
    for _ in range(2):
        assert in_thread(lambda: cuda.msm_g1(held[0], scalars)) == \
            reference("g1", pts, list(range(40)))
        assert driver.used == lem.nbytes
    # And when the key is dropped on yet another thread, its memory goes with the next operation
    in_thread(held.clear)
    assert driver.used == lem.nbytes  # not on a thread without the context: deferred
    in_thread(lambda: cuda.intt(ntt.Domain(2), field.to_vector([1, 2, 3, 4])))
    tables = driver.used
    assert 0 < tables < lem.nbytes  # only the 2^2 NTT tables remain
    # Then closing frees the rest, and pycuda never had to leak anything
    in_thread(cuda.close)
    assert driver.used == 0
    assert driver.leaks == []


def test_an_operation_frees_its_scratch_when_it_fails(lib: ctypes.CDLL) -> None:
    cuda = backend.CudaBackend(device=FakeDevice(lib), self_test=False)
    with pytest.raises(RuntimeError, match="interrupted"):
        with cuda.device.active("test"):
            cuda.device.upload(np.zeros(1000, dtype=np.uint64))
            raise RuntimeError("interrupted")
    assert cuda.device.driver.used == 0


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


def test_a_gpu_whose_kernels_do_not_compile_is_given_back(lib: ctypes.CDLL) -> None:
    drivers = []

    class Uncompilable(FakeDevice):
        def _load_module(self, name: str) -> FakeModule:
            drivers.append(self.driver)
            raise exceptions.CompileFailed(module=name, arch=self.arch, detail="nvcc: not found")

    with pytest.raises(exceptions.CompileFailed, match=r"msm\.cu for sm_90 failed: nvcc: not"):
        Uncompilable(lib)
    assert [c.valid for c in drivers[0].contexts] == [False] and drivers[0].stack() == []


def test_start_up_self_test_refuses_a_faulty_card(lib: ctypes.CDLL) -> None:
    dev = CorruptDevice(lib)
    with pytest.raises(exceptions.SelfTestFailed, match=r"host emulation.*msm_g1 of 64 points"):
        backend.CudaBackend(device=dev, self_test=True)
    # The card is given back (the worker goes on on the CPU): no context, no memory held
    assert not dev._context.valid and dev.driver.used == 0
    dev.close()  # closing again is harmless


def test_start_up_self_test_reaches_the_paths_of_large_msms(lib: ctypes.CDLL) -> None:
    class ShortWeighing(FakeDevice):
        """A card that weighs only the first block of runs when a window has several (the
        plan of MSMs of thousands of points and more)."""

        def launch_grid(self, name: str, grid: int, block: int, *args: object) -> None:
            if name.startswith("msm_weigh_") and int(args[3]) > 1:  # type: ignore[call-overload]
                grid = 1
            super().launch_grid(name, grid, block, *args)

    dev = ShortWeighing(lib)
    with pytest.raises(exceptions.SelfTestFailed,
                       match=r"host emulation.*msm_g1 of 64 points in 10-bit windows"):
        backend.CudaBackend(device=dev, self_test=True)
    assert not dev._context.valid


def test_proofs_on_the_emulated_gpu_verify_and_an_evicted_key_frees_its_memory(
    lib: ctypes.CDLL, groth16_demo: Callable[..., devsetup.DemoFiles], tmp_path: pathlib.Path,
) -> None:
    # Given the backend as the executor makes it (its own thread), with a cache of one key
    cuda = in_thread(lambda: backend.CudaBackend(device=FakeDevice(lib), self_test=True))
    driver = cuda.device.driver
    cache = keycache.KeyCache(cuda, max_keys=1)
    demos = [groth16_demo(5, 2), groth16_demo(6, 1)]
    shas = [keycache.install(d.zkey, tmp_path) for d in demos]
    tables: list[int] = []  # bytes besides the key's points: NTT tables, one set per domain
    for _ in range(3):
        for demo, sha in zip(demos, shas, strict=True):
            # When a task proves on a prover thread (loading its key, evicting the other)
            def task(demo: devsetup.DemoFiles = demo, sha: str = sha) -> bool:
                loaded = cache.get(tmp_path, sha)
                proof, public = prover.prove(loaded, wtns.read(demo.wtns.read_bytes()), cuda)
                return verifier.verify(loaded.key.verification_key(), proof, public)

            # Then the proof verifies
            assert in_thread(task)
            held = cache.get(tmp_path, sha).constraints
            assert isinstance(held, backend.CudaConstraints)
            key = cache.get(tmp_path, sha).key
            tables.append(driver.used - sum(p.nbytes for p in (key.a, key.b1, key.b2, key.c,
                                                                key.h)) - held.host.nbytes)
            del held  # the test holds no key arrays on the GPU: the cache decides
    # And the GPU holds only the loaded key's points and sorted constraints besides the tables,
    # which stop growing once both domains were seen: an evicted key's arrays went with it
    assert len(set(tables[1:])) == 1 and 0 < tables[0] < tables[1]
    in_thread(cuda.close)
    assert driver.used == 0 and driver.leaks == []


def test_a_new_key_takes_the_gpu_memory_of_the_key_it_replaces(
    lib: ctypes.CDLL, groth16_demo: Callable[..., devsetup.DemoFiles], tmp_path: pathlib.Path,
) -> None:
    # Given a GPU with room for one key's points (besides the room its MSMs need), a cache of one
    shas = [keycache.install(groth16_demo(6, n).zkey, tmp_path) for n in (1, 2)]
    keys = [keycache.read_key(keycache.key_path(tmp_path, sha), sha) for sha in shas]
    size = max(sum(p.nbytes for p in (k.a, k.b1, k.b2, k.c, k.h)) for k in keys)
    room = max(msm_room(g, len(p)) for k in keys
               for g, p in (("g1", k.a), ("g1", k.b1), ("g2", k.b2), ("g1", k.c), ("g1", k.h)))
    cuda = backend.CudaBackend(
        device=FakeDevice(lib, capacity=room + size * 3 // 2), self_test=False)
    cache = keycache.KeyCache(cuda, max_keys=1)
    # When the keys are used in turn, each replaces the other on the GPU
    for sha in [*shas, *shas]:
        loaded = cache.get(tmp_path, sha)
        sections = (loaded.a, loaded.b1, loaded.b2, loaded.c, loaded.h)
        assert all(isinstance(b, backend.CudaBases) and b.device is not None for b in sections)
        del loaded, sections  # as a finished task lets go of its key


def msm_room(group: str, points: int) -> int:
    """What the backend leaves free besides a resident key section: the headroom and the
    temporaries of an MSM over it."""
    return backend.HEADROOM_BYTES + msm_driver.scratch_bytes(group, points)


def _executor_on(lib: ctypes.CDLL, tmp_path: pathlib.Path, files: devsetup.DemoFiles
                 ) -> tuple[Groth16Executor, backend.CudaBackend, Job]:
    """The groth16 executor proving on the emulated GPU, and a job for the demo's witness."""
    executor = Groth16Executor(WorkerConfig(task_types=("groth16",), params_dir=tmp_path, gpu=0))
    cuda = backend.CudaBackend(device=FakeDevice(lib), self_test=False)
    executor._cache = keycache.KeyCache(cuda)
    sha = keycache.install(files.zkey, tmp_path)

    async def progress(phase: str, fraction: float) -> None:
        return None

    return executor, cuda, Job(task_id="t1", task_type="groth16", payload=files.wtns,
                               timeout_s=60.0, progress=progress, comment=policy.key_comment(sha))


async def test_out_of_gpu_memory_fails_the_attempt_and_the_worker_keeps_serving(
    lib: ctypes.CDLL, groth16_demo: Callable[..., devsetup.DemoFiles], tmp_path: pathlib.Path,
) -> None:
    files = groth16_demo(5, 1)
    executor, cuda, job = _executor_on(lib, tmp_path, files)
    # When the GPU runs out of memory during a proof, and again once the memory kept for later
    # (resident key arrays, NTT tables) is given back, and again in the quotient's fallback
    # (the constraints on the host, one vector at a time on the GPU), before and after giving
    # back what was kept
    cuda.device.driver.faults += [OutOfMemory("cuMemAlloc failed: out of memory")] * 4
    with pytest.raises(TaskFailed, match=r"CUDA failed on GPU 0 \(host emulation\) during .*"
                       "out of memory") as caught:
        await executor.run(job)
    # Then the attempt fails as retryable, and the next attempt on this worker proves
    assert caught.value.retryable and not isinstance(caught.value, DeviceLost)
    vk = proofjson.read_verification_key(files.verification_key.read_text())
    assert proofjson.verify_proof_json(vk, await executor.run(job))
    assert executor.resident_keys() == [job.comment.removeprefix("zkey=")]
    # And when the worker stops, the GPU is given back whole
    await executor.close()
    driver = cuda.device.driver
    assert driver.used == 0 and driver.leaks == [] and not any(c.valid for c in driver.contexts)
    assert executor.resident_keys() == []


GAVE_BACK = "GPU memory ran out: resident key arrays and NTT tables given back; trying again"
WITH_LESS = ("GPU memory too small for the quotient in one go: A, B and C made on the host, "
             "moved to the coset one at a time")


@pytest.mark.parametrize(("faults", "warnings"), [(1, [GAVE_BACK]), (2, [GAVE_BACK, WITH_LESS])],
                         ids=["once", "again after giving back"])
async def test_running_out_of_gpu_memory_gives_back_what_is_kept_and_proves(
    lib: ctypes.CDLL, groth16_demo: Callable[..., devsetup.DemoFiles], tmp_path: pathlib.Path,
    faults: int, warnings: list[str],
) -> None:
    # Given a proof made once, so that its key arrays and NTT tables are kept on the GPU
    files = groth16_demo(5, 1)
    executor, cuda, job = _executor_on(lib, tmp_path, files)
    vk = proofjson.read_verification_key(files.verification_key.read_text())
    assert proofjson.verify_proof_json(vk, await executor.run(job))
    kept = cuda.device.driver.used
    assert kept > 0
    # When the GPU runs out of memory in the next proof (a key admitted while it was emptier),
    # and maybe again once what was kept is given back (a card too small for the quotient)
    cuda.device.driver.faults += [OutOfMemory("cuMemAlloc failed: out of memory")] * faults
    # Then what was kept is given back and the step runs again, then if need be with the least
    # GPU memory (the constraints on the host, one vector on the GPU at a time), said in the
    # log, and the proof verifies
    with structlog.testing.capture_logs() as logs:
        assert proofjson.verify_proof_json(vk, await executor.run(job))
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == warnings
    await executor.close()
    assert cuda.device.driver.used == 0 and cuda.device.driver.leaks == []


async def test_a_launch_failure_loses_the_gpu_and_asks_for_a_restart(
    lib: ctypes.CDLL, groth16_demo: Callable[..., devsetup.DemoFiles], tmp_path: pathlib.Path,
) -> None:
    executor, cuda, job = _executor_on(lib, tmp_path, groth16_demo(5, 1))
    # When a kernel launch fails (an Xid): the context is poisoned for good on a real GPU
    cuda.device.driver.faults.append("unspecified launch failure")
    with pytest.raises(DeviceLost, match=r"unspecified launch failure; the GPU context is lost"
                       ".*This worker stops") as caught:
        await executor.run(job)
    # Then the attempt is retryable elsewhere, and this worker never touches the GPU again
    assert caught.value.retryable
    launches = len(cuda.device.driver.launches)
    with pytest.raises(DeviceLost, match="the GPU context is lost"):
        await executor.run(job)
    assert len(cuda.device.driver.launches) == launches
    await executor.close()  # giving a lost GPU back does not fail


def test_a_key_section_left_on_the_host_moves_to_the_gpu_once_there_is_room(
    lib: ctypes.CDLL,
) -> None:
    # Given a section loaded while the GPU was full (another key still in use)
    pts, lem = random_points("g1", 8)
    dev = FakeDevice(lib, capacity=msm_room("g1", 8) + 4 * lem.nbytes)
    cuda = backend.CudaBackend(device=dev, self_test=False)
    dev.driver.capacity = msm_room("g1", 8)  # as if taken by the other key
    bases = cuda.load_bases("g1", lem)
    assert isinstance(bases, backend.CudaBases) and bases.device is None
    # When the memory is free again, the next MSM keeps the points on the GPU
    dev.driver.capacity = msm_room("g1", 8) + 4 * lem.nbytes
    scalars = list(range(1, 9))
    assert cuda.msm_g1(bases, field.to_vector(scalars)) == reference("g1", pts, scalars)
    assert bases.device is not None and dev.driver.used == lem.nbytes


def test_a_default_build_that_fails_its_self_test_gives_way_to_the_portable_one(
    lib: ctypes.CDLL, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a card on which the carry-chain build computes wrong results (a compiler that
    # mistreats the carry flag) and the portable build right ones
    built: list[str] = []

    def device(gpu: int, cache_dir: object, variant: str) -> FakeDevice:
        built.append(variant)
        dev = CorruptDevice(lib) if variant == "chains" else FakeDevice(lib)
        dev.variant = variant
        return dev

    monkeypatch.setattr(backend, "Device", device)
    # When the backend starts, the self-test refuses the first and the second serves
    with structlog.testing.capture_logs() as logs:
        cuda = backend.create()
    assert built == ["chains", "portable"] and cuda.device.variant == "portable"
    assert any(e["event"].startswith("the default build of the CUDA arithmetic failed")
               and "msm_g1 of 64 points: a wrong partial sum" in e["error"] for e in logs)
    # A build asked for by name is not replaced
    with pytest.raises(exceptions.SelfTestFailed):
        backend.create(variant="chains")


def test_a_kernel_launched_with_more_threads_than_its_registers_allow_is_refused_by_name(
    lib: ctypes.CDLL, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a build whose G2 kernels take at most 64 threads per block on this GPU (CUDA would
    # refuse the launch as "too many resources requested"), and a portable build that fits
    made: list[FakeDevice] = []

    def device(gpu: int, cache_dir: object, variant: str) -> FakeDevice:
        dev = FakeDevice(lib)
        dev.variant = variant
        if variant == "chains":
            dev.driver.max_threads["msm_sum_entries_g2"] = 64
        made.append(dev)
        return dev

    monkeypatch.setattr(backend, "Device", device)
    # When the backend starts, the self-test's G2 MSM is refused before its launch, saying
    # which kernel, how many threads it takes and how many it was given
    with structlog.testing.capture_logs() as logs:
        cuda = backend.create()
    assert cuda.device.variant == "portable"
    [failed] = [e for e in logs if e["event"].startswith("the default build")]
    assert ("(msm_g2 of 16 points: msm_sum_entries_g2 takes at most 64 threads per block in "
            "the chains build (its registers), not 128)") in failed["error"]
    assert "msm_sum_entries_g1" in made[0].launches
    assert "msm_sum_entries_g2" not in made[0].launches
    assert "msm_sum_entries_g2" in made[1].launches
