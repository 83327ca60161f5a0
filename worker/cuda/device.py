"""One CUDA device as the MSM and NTT drivers use it: memory, launches, a prefix sum.

Wraps pycuda (imported lazily, when a Device is made). Every call runs with the device's
context pushed on the calling thread, so the prover may call from any thread; calls are
serialised by a lock. A pycuda error becomes exceptions.DeviceFailed naming the GPU.
"""

from __future__ import annotations

import contextlib
import pathlib
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from worker.cuda import compiler, exceptions, sources

BLOCK = 128  #: threads per block of the arithmetic kernels (register-heavy)
SCAN_BLOCK = 1024
SCAN_PER_BLOCK = 2 * SCAN_BLOCK  #: values per block of scan_blocks


class Device:
    """The GPU at `index` among the visible ones, with the kernel files loaded."""

    def __init__(self, index: int = 0, cache_dir: pathlib.Path = compiler.DEFAULT_CACHE_DIR
                 ) -> None:
        try:
            import pycuda.driver as cuda  # type: ignore[import-not-found,import-untyped,unused-ignore]
        except ImportError as exc:
            raise exceptions.CudaUnavailable(detail=f"pycuda is not installed ({exc})") from exc
        self._cuda: Any = cuda
        self._lock = threading.RLock()
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
        with self.active("loading kernels"):
            modules = [compiler.load(name, self.arch, cache_dir) for name in sources.MODULES]
        self._modules = modules
        self._functions: dict[str, Any] = {}

    @contextlib.contextmanager
    def active(self, operation: str) -> Iterator[None]:
        """This device's context on this thread; pycuda errors become DeviceFailed."""
        with self._lock:
            self._context.push()
            try:
                yield
                self._context.synchronize()  # surface asynchronous launch failures here
            except self._cuda.Error as exc:
                raise exceptions.DeviceFailed(gpu=self.name, operation=operation,
                                              detail=f"{type(exc).__name__}: {exc}") from exc
            finally:
                self._cuda.Context.pop()

    def close(self) -> None:
        with self._lock:
            self._context.detach()

    # --- memory (call inside `active`) ---------------------------------------------------------

    def alloc(self, nbytes: int) -> Any:
        return self._cuda.mem_alloc(max(nbytes, 4))

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
        values = [np.uint32(a) if isinstance(a, int) else a for a in args]
        self.function(name)(*values, block=(block, 1, 1), grid=(grid, 1))

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
            self.launch("scan_add", m, out, m, block_offsets, block=256)
