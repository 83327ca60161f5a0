"""A stand-in for worker.cuda.device.Device that runs every kernel on the host.

Memory is numpy arrays; a launch calls host_arith.cpp's emu_<kernel>, which runs the kernel's
per-thread step in a loop. The MSM and NTT drivers and the backend run on it unchanged, so their
launch sequences, buffer sizes and arguments are tested without a GPU; what it cannot show is
anything the GPU adds (concurrency between threads, shared memory, registers, speed).
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from worker.cuda.device import Device


class HostBuffer:
    def __init__(self, nbytes: int) -> None:
        self.array = np.zeros(max(nbytes, 4) + 64, dtype=np.uint8)
        start = -self.array.ctypes.data % 64  # aligned like a device allocation
        self.array = self.array[start:start + max(nbytes, 4)]

    def __int__(self) -> int:
        return int(self.array.ctypes.data)


class FakeDevice(Device):
    def __init__(self, lib: ctypes.CDLL, free_bytes: int = 1 << 40) -> None:  # no super: no GPU
        self._lib = lib
        self.name = "GPU 0 (host emulation)"
        self.model = "host emulation"
        self.arch = "sm_80"
        self.free_bytes = free_bytes
        self.launches: list[str] = []

    @contextlib.contextmanager
    def active(self, operation: str) -> Iterator[None]:
        yield

    def close(self) -> None:
        pass

    def alloc(self, nbytes: int) -> Any:
        return HostBuffer(nbytes)

    def zeros(self, nbytes: int) -> Any:
        return HostBuffer(nbytes)

    def upload(self, array: npt.NDArray[Any]) -> Any:
        buf = HostBuffer(array.nbytes)
        raw = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
        buf.array[:raw.size] = raw
        return buf

    def download(self, buf: Any, dtype: npt.DTypeLike, count: int, offset_bytes: int = 0
                 ) -> npt.NDArray[Any]:
        size = np.dtype(dtype).itemsize * count
        return buf.array[offset_bytes:offset_bytes + size].view(dtype).copy()

    def copy(self, buf: Any, nbytes: int) -> Any:
        out = HostBuffer(nbytes)
        out.array[:] = buf.array[:out.array.size]
        return out

    def free_memory(self) -> int:
        return self.free_bytes

    def launch(self, name: str, threads: int, *args: Any, block: int = 128) -> None:
        if threads > 0:
            self._call(name, threads, *args)

    def launch_grid(self, name: str, grid: int, block: int, *args: Any) -> None:
        self._call(name, grid, block, *args)

    def _call(self, name: str, *args: Any) -> None:
        self.launches.append(name)
        fn = getattr(self._lib, f"emu_{name}")
        fn.restype = None
        fn(*(ctypes.c_uint64(int(a)) for a in args))
