"""tests/cuda/kernel_threads.h, the thread model the kernel files run on in the host tests: it
must show what a GPU shows, including the faults a sequential loop would hide (a missing
barrier, a wrong warp-aggregated atomic)."""

from __future__ import annotations

import ctypes
import threading
import time

import numpy as np
import pytest

from tests.cuda import hostlib

KERNELS = r"""
#include "common.cuh"

// Reverses 2 * blockDim.x values per block through shared memory.
extern "C" __global__ void reverse_synced(uint32_t* a) {
    __shared__ uint32_t tile[2048];
    const uint32_t t = threadIdx.x, n = 2 * blockDim.x, base = blockIdx.x * n;
    tile[t] = a[base + t];
    tile[t + n / 2] = a[base + t + n / 2];
    __syncthreads();
    a[base + t] = tile[n - 1 - t];
    a[base + t + n / 2] = tile[n / 2 - 1 - t];
}

// The same without the barrier: a thread reads slots that others have not written yet.
extern "C" __global__ void reverse_racy(uint32_t* a) {
    __shared__ uint32_t tile[2048];
    const uint32_t t = threadIdx.x, n = 2 * blockDim.x, base = blockIdx.x * n;
    tile[t] = a[base + t];
    tile[t + n / 2] = a[base + t + n / 2];
    a[base + t] = tile[n - 1 - t];
    a[base + t + n / 2] = tile[n / 2 - 1 - t];
}

// Thread i claims a slot of counter keys[i]; only threads with an odd key take part, so the
// warps are divergent where the claims are made.
extern "C" __global__ void claim(const uint32_t* keys, uint32_t n, uint32_t* counters,
                                 uint32_t* slots, uint32_t* group_sizes) {
    GP_THREAD_INDEX(i, n)
    if (!(keys[i] & 1)) return;
    slots[i] = gp::counter_claim(counters, keys[i]);
    group_sizes[i] = cooperative_groups::coalesced_threads().size();
}
"""


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    src = tmp_path_factory.mktemp("threads_src")
    (src / "threads.cu").write_text(KERNELS)
    for header in hostlib.KERNELS.glob("*.cuh"):
        (src / header.name).write_text(header.read_text())
    return hostlib.build_kernels(tmp_path_factory.mktemp("threads"), kernels_dir=src,
                                 modules=("threads.cu",))


def _addr(a: np.ndarray) -> ctypes.c_uint64:
    return ctypes.c_uint64(a.ctypes.data)


def _launch(lib: ctypes.CDLL, name: str, grid: int, block: int, *args: object) -> None:
    u64 = [a if isinstance(a, ctypes.c_uint64) else ctypes.c_uint64(int(a))  # type: ignore[call-overload]
           for a in args]
    getattr(lib, f"emu_{name}")(ctypes.c_uint64(grid), ctypes.c_uint64(block), *u64)


@pytest.mark.parametrize("block", [1, 32, 100, 1024])
def test_a_barrier_makes_shared_memory_agree_and_its_absence_shows(lib: ctypes.CDLL,
                                                                 block: int) -> None:
    values = np.arange(3 * 2 * block, dtype=np.uint32)
    want = values.reshape(3, -1)[:, ::-1].ravel()
    synced = values.copy()
    _launch(lib, "reverse_synced", 3, block, _addr(synced))
    assert (synced == want).all()
    if block > 1:
        racy = values.copy()
        _launch(lib, "reverse_racy", 3, block, _addr(racy))
        assert (racy != want).any()


def test_warp_aggregated_claims_are_unique_and_counted(lib: ctypes.CDLL) -> None:
    rng = np.random.default_rng(7)
    n = 1000
    keys = rng.choice(np.array([1, 3, 3, 3, 5, 8, 9], dtype=np.uint32), size=n)
    counters = np.zeros(10, dtype=np.uint32)
    slots = np.full(n, 0xFFFFFFFF, dtype=np.uint32)
    sizes = np.zeros(n, dtype=np.uint32)
    _launch(lib, "claim", -(-n // 128), 128, _addr(keys), n, _addr(counters), _addr(slots),
            _addr(sizes))
    for key in range(10):
        mine = keys == key
        if key % 2:
            # Each thread of a key got its own slot, 0..count-1, and the counter says how many
            assert sorted(slots[mine].tolist()) == list(range(int(mine.sum())))
            assert counters[key] == mine.sum()
        else:
            assert counters[key] == 0 and (slots[mine] == 0xFFFFFFFF).all()
    # The threads of a warp that claim together make one group, as on a GPU
    claimed = keys % 2 == 1
    assert sizes[claimed].max() > 1 and sizes[claimed].max() <= 32


def test_threads_that_ran_kernels_give_their_fiber_stacks_back(lib: ctypes.CDLL) -> None:
    # Each host thread maps stacks for a block's fibers: about 2,000 mappings, of the kernel's
    # 65,530 per process. A test process runs kernels from many short-lived threads.
    def mappings() -> int:
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)

    values = np.arange(2 * 32, dtype=np.uint32)
    before = mappings()
    for _ in range(40):
        t = threading.Thread(target=_launch, args=(lib, "reverse_synced", 1, 32, _addr(values)))
        t.start()
        t.join()
    # (join returns before the thread's last C++ destructors have run: give them a moment)
    deadline = time.monotonic() + 5
    while mappings() >= before + 100 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert mappings() < before + 100
    assert (values == np.arange(64, dtype=np.uint32)).all()  # reversed an even number of times
