"""One CUDA device as the MSM and NTT drivers use it: memory, launches, a prefix sum.

Wraps pycuda (imported lazily, when a Device is made). Every call runs inside `active`, with
the device's context pushed on the calling thread, so the prover may call from any thread;
calls are serialised by a lock. A pycuda error becomes exceptions.DeviceFailed naming the GPU.

Memory is freed explicitly, never by the garbage collector: pycuda frees an allocation that
dies outside its context only on the thread that made the context, and otherwise warns and
leaks it. So what an operation allocates is scratch, freed when its outermost `active` ends;
`keep` hands an allocation to an owner object (a key's resident points, NTT tables), and it is
freed in the next operation after the owner is gone, or at `close`.
"""

from __future__ import annotations

import contextlib
import pathlib
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from worker.cuda import compiler, exceptions, sources

BLOCK = 128  #: threads per block of the arithmetic kernels (register-heavy)
SCAN_BLOCK = 1024
SCAN_PER_BLOCK = 2 * SCAN_BLOCK  #: values per block of scan_blocks
#: The most threads per block of the kernels not launched with BLOCK (ntt_pass: half of one
#: of ntt.cuh's tiles of 2^10 values). A kernel's registers times its block must fit the GPU's
#: 64K registers per block: tests/unit/test_cuda_compile.py checks this table against ptxas.
BLOCKS = {"scan_blocks": SCAN_BLOCK, "scan_add": 256, "fr_bit_reverse": 256, "ntt_pass": 512}


class Device:
    """The GPU at `index` among the visible ones, with the kernel files loaded. `driver` is
    pycuda.driver unless given (tests give a host emulation of it)."""

    def __init__(self, index: int = 0, cache_dir: pathlib.Path = compiler.DEFAULT_CACHE_DIR,
                 driver: Any = None, variant: str = sources.DEFAULT_VARIANT) -> None:
        if driver is None:
            try:
                import pycuda.driver as driver  # type: ignore[import-not-found,import-untyped,no-redef,unused-ignore]
            except ImportError as exc:
                raise exceptions.CudaUnavailable(
                    detail=f"pycuda is not installed ({exc})") from exc
        cuda = driver
        self._cuda: Any = cuda
        self._cache_dir = cache_dir
        self.variant = variant  #: the build of the arithmetic (sources.VARIANTS)
        self._lock = threading.RLock()
        self._depth = 0  #: nesting of `active` on the thread holding the lock
        self._scratch: dict[int, Any] = {}  #: id -> allocation of the running operation
        self._discarded: list[Any] = []  #: kept allocations whose owner is gone
        self._kept: dict[int, weakref.finalize[Any, Any]] = {}  #: id -> its owner's finalizer
        self._functions: dict[str, Any] = {}
        self._max_blocks: dict[str, int] = {}  #: kernel -> the most threads per block it takes
        self._closed = False
        self.lost: str | None = None  #: why the context is unusable (see DeviceFailed.lost)
        self.name = f"GPU {index}"
        try:
            cuda.init()
            dev = cuda.Device(index)
            self.name = f"GPU {index} ({dev.name()})"
            self.model: str = dev.name()
            self.arch = compiler.arch_of(dev.compute_capability())
            self._context: Any = dev.make_context()
            self._context.pop()
        except cuda.Error as exc:
            raise exceptions.CudaUnavailable(detail=f"{self.name}: {exc}") from exc
        try:
            with self.active("loading kernels"):
                self._modules = [self._load_module(name) for name in sources.MODULES]
        except BaseException:
            self.close()  # a worker falling back to the CPU keeps no GPU context
            raise

    def _load_module(self, name: str) -> Any:
        return self._cuda.module_from_buffer(
            compiler.cubin(name, self.arch, self._cache_dir, self.variant))

    @contextlib.contextmanager
    def active(self, operation: str) -> Iterator[None]:
        """This device's context on this thread; pycuda errors become DeviceFailed. The
        outermost `active` frees the operation's scratch at its end, however it ends."""
        with self._lock:
            if self.lost is not None or self._closed:
                raise exceptions.DeviceFailed(gpu=self.name, operation=operation,
                                              detail=self.lost or "the CUDA backend is closed",
                                              lost=self.lost is not None)
            self._context.push()
            self._depth += 1
            try:
                if self._depth == 1:
                    self._free(self._take_discarded(), operation)
                yield
                if self._depth == 1:
                    self._context.synchronize()  # surface asynchronous launch failures here
            except self._cuda.Error as exc:
                detail = f"{type(exc).__name__}: {exc}"
                lost = not isinstance(exc, self._cuda.MemoryError)
                if lost:
                    self.lost = detail = f"{detail}; the GPU context is lost"
                raise exceptions.DeviceFailed(gpu=self.name, operation=operation, detail=detail,
                                              lost=lost, out_of_memory=not lost) from exc
            finally:
                self._depth -= 1
                try:
                    if self._depth == 0:
                        scratch, self._scratch = self._scratch, {}
                        self._free(list(scratch.values()), operation)
                finally:
                    self._cuda.Context.pop()

    def close(self) -> None:
        """Free every allocation still kept and release the context (from any thread); once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._context.push()
                try:
                    self._free(self._take_discarded(), "closing")
                finally:
                    self._context.detach()  # current here, so it is destroyed and popped
            except (self._cuda.Error, exceptions.DeviceFailed):
                if self.lost is None:  # a lost context fails here too: it is given back anyway
                    raise

    # --- memory (call inside `active`) ---------------------------------------------------------

    def alloc(self, nbytes: int) -> Any:
        """Scratch memory of the running operation."""
        assert self._depth > 0, "device memory is allocated inside Device.active"
        buf = self._cuda.mem_alloc(max(nbytes, 4))
        self._scratch[id(buf)] = buf
        return buf

    def keep(self, owner: object, buf: Any) -> Any:
        """Let `buf` outlive the operation: it is freed after `owner` is garbage, or by
        `release`."""
        del self._scratch[id(buf)]
        self._kept[id(buf)] = weakref.finalize(owner, self._discarded.append, buf)
        return buf

    def release(self, buf: Any) -> None:
        """Free a kept allocation now (inside `active`), before its owner is gone."""
        finalizer = self._kept.pop(id(buf), None)
        if finalizer is not None and finalizer.detach() is not None:
            buf.free()

    def free(self, buf: Any) -> None:
        """Free scratch memory before the operation ends (a large temporary), once the
        launches queued before, which may read it, are done."""
        self._context.synchronize()
        del self._scratch[id(buf)]
        buf.free()

    def _take_discarded(self) -> list[Any]:
        self._kept = {k: f for k, f in self._kept.items() if f.alive}
        taken = []
        while self._discarded:  # finalizers append from any thread; pop is atomic
            taken.append(self._discarded.pop())
        return taken

    def _free(self, bufs: list[Any], operation: str) -> None:
        """Free them all, then report the first failure (pycuda raises for a second free; a
        failing cuMemFree it only prints)."""
        failed: Exception | None = None
        for buf in bufs:
            try:
                buf.free()
            except self._cuda.Error as exc:
                failed = failed or exc
        if failed is not None:
            raise exceptions.DeviceFailed(gpu=self.name, operation=f"{operation} (freeing memory)",
                                          detail=f"{type(failed).__name__}: {failed}")

    def zeros(self, nbytes: int) -> Any:
        buf = self.alloc(nbytes)
        self._cuda.memset_d32(buf, 0, max(nbytes, 4) // 4)
        return buf

    def upload(self, array: npt.NDArray[Any]) -> Any:
        buf = self.alloc(array.nbytes)
        if array.nbytes:
            self._cuda.memcpy_htod(buf, np.ascontiguousarray(array))
        return buf

    def download(self, buf: Any, dtype: npt.DTypeLike, count: int, offset_bytes: int = 0
                 ) -> npt.NDArray[Any]:
        out = np.empty(count, dtype=dtype)
        if count:
            self._cuda.memcpy_dtoh(out, int(buf) + offset_bytes)
        return out

    def copy(self, buf: Any, nbytes: int) -> Any:
        dst = self.alloc(nbytes)
        self._cuda.memcpy_dtod(dst, buf, max(nbytes, 4))
        return dst

    def free_memory(self) -> int:
        free, _total = self._cuda.mem_get_info()
        return int(free)

    # --- launches ------------------------------------------------------------------------------

    def function(self, name: str) -> Any:
        if name not in self._functions:
            for module in self._modules:
                try:
                    self._functions[name] = module.get_function(name)
                    break
                except self._cuda.LogicError:
                    continue
            else:
                raise KeyError(f"no kernel {name} in {', '.join(sources.MODULES)}")
        return self._functions[name]

    def launch(self, name: str, threads: int, *args: Any, block: int = BLOCK) -> None:
        """`name` over `threads` threads (nothing when 0); ints go as 32-bit values."""
        if threads <= 0:
            return
        grid = (threads + block - 1) // block
        self.launch_grid(name, grid, block, *args)

    def launch_grid(self, name: str, grid: int, block: int, *args: Any) -> None:
        function = self.function(name)
        most = self._max_block(name, function)
        if block > most:
            # Said before launching: CUDA would refuse it as "too many resources requested"
            raise exceptions.LaunchRefused(
                gpu=self.name, operation=f"launching {name}", kernel=name, most=most,
                block=block, variant=self.variant,
                detail=f"{name} takes at most {most} threads per block in the {self.variant} "
                       f"build (its registers), not {block}")
        # Every value parameter of the kernels is 32-bit: a numpy int64 passed through would
        # be packed as 8 bytes and shift the parameters after it
        values = [np.uint32(a) if isinstance(a, (int, np.integer)) else a for a in args]
        function(*values, block=(block, 1, 1), grid=(grid, 1))

    def _max_block(self, name: str, function: Any) -> int:
        if name not in self._max_blocks:
            self._max_blocks[name] = int(function.get_attribute(
                self._cuda.function_attribute.MAX_THREADS_PER_BLOCK))
        return self._max_blocks[name]

    def scan(self, counts: Any, out: Any, m: int) -> int:
        """out = exclusive prefix sum of m uint32 counts; returns their total."""
        if m == 0:
            return 0
        self._scan(counts, out, m)
        last = self.download(out, np.uint32, 1, 4 * (m - 1))[0]
        return int(last) + int(self.download(counts, np.uint32, 1, 4 * (m - 1))[0])

    def _scan(self, counts: Any, out: Any, m: int) -> None:
        blocks = -(-m // SCAN_PER_BLOCK)
        block_sums = self.alloc(4 * blocks)
        self.launch_grid("scan_blocks", blocks, SCAN_BLOCK, counts, out, m, block_sums)
        if blocks > 1:
            block_offsets = self.alloc(4 * blocks)
            self._scan(block_sums, block_offsets, blocks)
            self.launch("scan_add", m, out, m, block_offsets, block=BLOCKS["scan_add"])
