"""worker/cuda/acceptance.py, the GPU acceptance check, on the host emulation of the kernels: it
passes on good kernels and names what fails on a faulty card."""

from __future__ import annotations

import ctypes
import re

import numpy as np
import pytest

from tests.cuda import hostlib
from tests.cuda.fakedevice import FakeDevice
from worker.cuda import acceptance, backend
from worker.groth16 import backends


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    return hostlib.build_kernels(tmp_path_factory.mktemp("cuda_emu"))


@pytest.fixture(scope="module")
def cpu() -> backends.Backend:
    return backends.create("cpu", threads=1)


def test_every_check_passes_on_good_kernels(lib: ctypes.CDLL, cpu: backends.Backend) -> None:
    cuda = backend.CudaBackend(device=FakeDevice(lib), self_test=False)
    lines: list[str] = []
    outcomes = acceptance.run(cuda, cpu, [1, 2, 3, 40], ntt_max=3, prove_sizes=[4],
                             out=lines.append, edge_points=30)
    names = [o.name for o in outcomes]
    assert all(o.ok for o in outcomes), [o.line() for o in outcomes if not o.ok]
    for expected in ("msm g2 n=3 random", "msm g1 n=30 zero scalars",
                     "msm g2 n=30 one point repeated", "msm g1 n=30 points at infinity",
                     "ntt quotient 2^3", "quotient from the witness 2^4",
                     "proof 2^4 constraints"):
        assert expected in names
    assert lines[-1] == f"{len(outcomes)} of {len(outcomes)} checks passed"
    # The proof's line says where each backend's time went, step by step
    # (the key loaded beforehand, as a worker holds it)
    proof_line = next(line for line in lines if "proof 2^4 constraints" in line)
    steps = r"quotient \d+\.\d{4} msm_g1 \d+\.\d{4} msm_g2 \d+\.\d{4} combine \d+\.\d{4}"
    assert re.search(f"steps cuda: {steps}; cpu: {steps}$", proof_line), proof_line


class FlakyDevice(FakeDevice):
    """A card whose NTT results come back with one bit flipped."""

    def download(self, buf: object, dtype: object, count: int, offset_bytes: int = 0
                 ) -> np.ndarray:
        out = super().download(buf, dtype, count, offset_bytes)  # type: ignore[arg-type]
        if np.dtype(dtype) == np.uint64 and count > 4:  # Fr vectors, not MSM window sums
            out.view(np.uint8)[:1] ^= 1
        return out


def test_a_faulty_card_fails_the_check_by_name(lib: ctypes.CDLL, cpu: backends.Backend) -> None:
    cuda = backend.CudaBackend(device=FlakyDevice(lib), self_test=False)
    lines: list[str] = []
    outcomes = acceptance.run(cuda, cpu, [2], ntt_max=2, prove_sizes=[4], out=lines.append,
                             edge_points=8)
    failed = {o.name for o in outcomes if not o.ok}
    assert "ntt to_coset 2^2" in failed and "proof 2^4 constraints" in failed
    assert "quotient from the witness 2^4" in failed
    assert "msm g1 n=2 random" not in failed
    assert "FAILED: " in lines[-1] and "ntt intt 2^1" in lines[-1]


def test_sizes_are_counts_or_log2_sizes() -> None:
    assert acceptance.sizes("1,2,3,1000,16,20") == [1, 2, 3, 1000, 1 << 16, 1 << 20]
    assert acceptance.log_sizes("10,16") == [10, 16] and acceptance.log_sizes("") == []
    for bad in ("0", "1,x"):
        with pytest.raises(ValueError):
            acceptance.sizes(bad)
    with pytest.raises(ValueError, match="from 2 to 24"):
        acceptance.log_sizes("30")
