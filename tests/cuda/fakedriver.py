"""A host stand-in for the part of pycuda.driver that worker/cuda/device.py uses.

worker.cuda.device.Device runs on it unchanged (its memory discipline, launches, error
mapping), and the kernel files run on the host (hostlib.build_kernels: each kernel's emu_ function).
It keeps the pycuda rules a GPU would hold us to (pycuda's src/cpp/cuda.hpp and driver.py):

- contexts: make_context() pushes the new context on the calling thread and remembers that
  thread; push/pop act on the calling thread's own stack; detach() of the current context
  destroys it, and with it every allocation made in it.
- memory: mem_alloc needs a current context. Freeing an allocation (explicitly or when the
  garbage collector takes it) needs its context current, or runs on the thread that made the
  context (pycuda pushes it there); on any other thread pycuda warns and the memory leaks:
  recorded in `leaks`. A second free raises. Device memory has a capacity: beyond it
  mem_alloc raises the driver's MemoryError.
- launches: each argument must be a numpy scalar or an allocation (pycuda's _build_arg_buf),
  and must match the kernel's parameter in the .cu source (a pointer or a 32-bit value). A
  launch or copy that names freed or unknown memory raises, as the GPU's illegal address would.
"""

from __future__ import annotations

import ctypes
import pathlib
import re
import threading
import types
from typing import Any

import numpy as np
import numpy.typing as npt

from worker.cuda import sources


class Error(Exception):
    pass


class LogicError(Error):
    pass


class OutOfMemory(Error):
    pass


class LaunchError(Error):
    pass


_KERNEL = re.compile(r'extern "C" __global__ void ([\w#]+)\(([^)]*)\)')


def kernel_parameters(module: str, kernels_dir: pathlib.Path = sources.KERNELS_DIR
                      ) -> dict[str, list[bool]]:
    """The kernels of one .cu file: name -> for each parameter, whether it is a pointer (the
    G1/G2 kernels that a macro makes are listed under both names)."""
    text = sources.load(module, kernels_dir).replace("\\\n", " ")
    return {name.replace("##G", group): ["*" in p for p in params.split(",")]
            for name, params in _KERNEL.findall(text) for group in ("g1", "g2")}


class FakeContext:
    def __init__(self, driver: FakeDriver) -> None:
        self._driver = driver
        self.thread = threading.get_ident()
        self.valid = True

    def push(self) -> None:
        if not self.valid:
            raise LogicError("cannot push invalid context")
        self._driver.stack().append(self)

    def pop(self) -> None:  # static in pycuda: pops whatever is current on this thread
        self._driver.Context.pop()

    @staticmethod
    def synchronize() -> None:
        pass  # launches run to completion on the host

    def detach(self) -> None:
        stack = self._driver.stack()
        current = bool(stack) and stack[-1] is self
        if current or self.thread == threading.get_ident():
            self.valid = False
            if current:
                stack.pop()
            self._driver.destroy(self)


class FakeAllocation:
    def __init__(self, driver: FakeDriver, context: FakeContext, nbytes: int) -> None:
        self._driver = driver
        self.context = context
        self.nbytes = nbytes
        raw = np.zeros(nbytes + 64, dtype=np.uint8)
        start = -raw.ctypes.data % 64  # aligned like a device allocation
        self.array: npt.NDArray[np.uint8] | None = raw[start:start + nbytes]
        self.address = int(self.array.ctypes.data)

    def __int__(self) -> int:
        return self.address

    def free(self) -> None:
        if self.array is None and self.context.valid:  # pycuda's second free
            raise LogicError("device_allocation::free failed: invalid resource handle")
        self._driver.release(self)

    def __del__(self) -> None:
        if self.array is not None:
            self._driver.release(self)


class _Context:
    """pycuda.driver.Context's static side."""

    def __init__(self, driver: FakeDriver) -> None:
        self._driver = driver

    def pop(self) -> None:
        stack = self._driver.stack()
        if not stack:
            raise LogicError("context::pop failed: cannot pop non-current context")
        stack.pop()


class FakeGpu:
    def __init__(self, driver: FakeDriver) -> None:
        self._driver = driver

    def name(self) -> str:
        return "host emulation"

    def compute_capability(self) -> tuple[int, int]:
        return (9, 0)

    def make_context(self) -> FakeContext:
        context = FakeContext(self._driver)
        self._driver.contexts.append(context)
        context.push()
        return context


class FakeFunction:
    def __init__(self, driver: FakeDriver, name: str, pointers: list[bool]) -> None:
        self._driver = driver
        self.name = name
        self._pointers = pointers
        self._fn = getattr(driver.lib, f"emu_{name}")
        self._fn.restype = None

    def __call__(self, *args: Any, block: tuple[int, int, int], grid: tuple[int, int]) -> None:
        self._driver.require_context(f"launching {self.name}")
        if len(args) != len(self._pointers):
            raise TypeError(f"{self.name} takes {len(self._pointers)} arguments, got {len(args)}")
        values = []
        for i, (arg, pointer) in enumerate(zip(args, self._pointers, strict=True)):
            if isinstance(arg, FakeAllocation):
                if not pointer:
                    raise TypeError(f"{self.name} parameter #{i} is a value, got an allocation")
                self._driver.resolve(arg.address, 0, f"launching {self.name}")
                values.append(arg.address)
            elif isinstance(arg, np.number):
                if pointer or arg.dtype.itemsize != 4:
                    raise TypeError(f"{self.name} parameter #{i} is "
                                    f"{'a pointer' if pointer else '32-bit'}, got {arg.dtype}")
                values.append(int(arg))
            else:
                raise TypeError(f"invalid type on parameter #{i} (0-based)")
        if not 0 < block[0] <= 1024 or not 0 < grid[0] < 2**31:
            raise LogicError(f"cuLaunchKernel failed: invalid configuration {grid} x {block}")
        if self._driver.faults:  # an injected failure, as an Xid would end a launch
            fault = self._driver.faults.pop(0)
            raise fault if isinstance(fault, Error) else LaunchError(
                f"cuLaunchKernel failed: {fault}")
        self._driver.launches.append(self.name)
        self._fn(ctypes.c_uint64(grid[0]), ctypes.c_uint64(block[0]),
                 *(ctypes.c_uint64(v) for v in values))


    def get_attribute(self, attribute: str) -> int:
        assert attribute == "MAX_THREADS_PER_BLOCK", attribute
        return self._driver.max_threads.get(self.name, 1024)


class FakeModule:
    def __init__(self, driver: FakeDriver, name: str) -> None:
        self._driver = driver
        self._kernels = kernel_parameters(name)

    def get_function(self, name: str) -> FakeFunction:
        if name not in self._kernels:
            raise LogicError("cuModuleGetFunction failed: named symbol not found")
        return FakeFunction(self._driver, name, self._kernels[name])


class FakeDriver:
    """The module object a Device is given in place of pycuda.driver."""

    Error = Error
    LogicError = LogicError
    MemoryError = OutOfMemory
    function_attribute = types.SimpleNamespace(MAX_THREADS_PER_BLOCK="MAX_THREADS_PER_BLOCK")

    def __init__(self, lib: ctypes.CDLL, capacity: int = 1 << 40) -> None:
        self.lib = lib
        self.capacity = capacity
        self.used = 0
        self.peak = 0  #: the most memory in use at once
        self.leaks: list[str] = []  #: pycuda's "could not be cleaned up" warnings
        self.launches: list[str] = []
        #: kernel -> the most threads per block it takes (1024 unless named), as its registers
        #: would allow on a GPU
        self.max_threads: dict[str, int] = {}
        #: what the next launches fail with, one each: an Error, or a LaunchError's message
        self.faults: list[Error | str] = []
        self.contexts: list[FakeContext] = []  #: every context made
        self.Context = _Context(self)
        self._live: dict[int, FakeAllocation] = {}
        self._threads = threading.local()
        self._lock = threading.Lock()

    # --- pycuda.driver's functions -------------------------------------------------------------

    def init(self) -> None:
        pass

    def Device(self, index: int) -> FakeGpu:
        if index != 0:
            raise LogicError("cuDeviceGet failed: invalid device ordinal")
        return FakeGpu(self)

    def mem_alloc(self, nbytes: int) -> FakeAllocation:
        context = self.require_context("cuMemAlloc")
        with self._lock:
            if self.used + nbytes > self.capacity:
                raise OutOfMemory("cuMemAlloc failed: out of memory")
            self.used += nbytes
            self.peak = max(self.peak, self.used)
        buf = FakeAllocation(self, context, nbytes)
        self._live[buf.address] = buf
        return buf

    def mem_get_info(self) -> tuple[int, int]:
        return self.capacity - self.used, self.capacity

    def memcpy_htod(self, dst: FakeAllocation, src: npt.NDArray[Any]) -> None:
        raw = np.ascontiguousarray(src).view(np.uint8).reshape(-1)
        self.resolve(int(dst), raw.size, "cuMemcpyHtoD")[:] = raw

    def memcpy_dtoh(self, dst: npt.NDArray[Any], src: FakeAllocation | int) -> None:
        raw = dst.view(np.uint8).reshape(-1)
        raw[:] = self.resolve(int(src), raw.size, "cuMemcpyDtoH")

    def memcpy_dtod(self, dst: FakeAllocation, src: FakeAllocation, size: int) -> None:
        data = self.resolve(int(src), size, "cuMemcpyDtoD").copy()
        self.resolve(int(dst), size, "cuMemcpyDtoD")[:] = data

    def memset_d32(self, dst: FakeAllocation, value: int, count: int) -> None:
        self.resolve(int(dst), 4 * count, "cuMemsetD32").view(np.uint32)[:] = value

    # --- the emulation's own bookkeeping ---------------------------------------------------------

    def stack(self) -> list[FakeContext]:
        if not hasattr(self._threads, "stack"):
            self._threads.stack = []
        stack: list[FakeContext] = self._threads.stack
        return stack

    def require_context(self, what: str) -> FakeContext:
        stack = self.stack()
        if not stack:
            raise LogicError(f"{what} failed: no currently active context")
        return stack[-1]

    def resolve(self, address: int, nbytes: int, what: str) -> npt.NDArray[np.uint8]:
        """The live bytes at a device address, or the illegal-address error."""
        self.require_context(what)
        for buf in list(self._live.values()):
            if buf.address <= address and address + nbytes <= buf.address + buf.nbytes:
                assert buf.array is not None
                return buf.array[address - buf.address:address - buf.address + nbytes]
        raise Error(f"{what} failed: an illegal memory access was encountered "
                    f"({nbytes} bytes at {address:#x}: freed or never allocated)")

    def release(self, buf: FakeAllocation) -> None:
        """pycuda's device_allocation::free with its scoped context activation."""
        if buf.array is None:
            return
        if buf.context.valid:
            stack = self.stack()
            current = bool(stack) and stack[-1] is buf.context
            if not current and buf.context.thread != threading.get_ident():
                self.leaks.append(f"{buf.nbytes} bytes freed out of their context's thread")
                self._live.pop(buf.address, None)
                buf.array = None  # gone for us, still taken on the GPU
                return
        self._live.pop(buf.address, None)
        buf.array = None
        with self._lock:
            self.used -= buf.nbytes

    def destroy(self, context: FakeContext) -> None:
        for buf in [b for b in self._live.values() if b.context is context]:
            self.release(buf)
