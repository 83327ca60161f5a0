"""worker.cuda.device.Device on tests/cuda/fakedriver.py: the real Device code, with every
kernel of msm.cu and ntt.cu run on the host (hostlib.build_kernels, kernel_threads.h).

The MSM and NTT drivers and the backend run on it unchanged, so their launch sequences, buffer
sizes, arguments and memory lifetimes are tested without a GPU; what it cannot show is anything
only the GPU has (blocks running at once, registers, speed).
"""

from __future__ import annotations

import ctypes

from tests.cuda.fakedriver import FakeDriver, FakeModule
from worker.cuda.device import Device


class FakeDevice(Device):
    def __init__(self, lib: ctypes.CDLL, capacity: int = 1 << 40) -> None:
        self.driver = FakeDriver(lib, capacity)
        super().__init__(0, driver=self.driver)

    def _load_module(self, name: str) -> FakeModule:
        return FakeModule(self.driver, name)

    @property
    def launches(self) -> list[str]:
        return self.driver.launches
