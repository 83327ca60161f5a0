"""Errors of the CUDA backend. Each class docstring is the default message, phrased as the fix.

They derive from the Groth16 engine's root error, so the groth16 executor reports them as a
retryable failure of the attempt and the worker keeps serving.
"""

from __future__ import annotations

from worker.groth16.exceptions import Groth16Error


class CudaError(Groth16Error):
    """The CUDA backend failed: see the log for details."""


class CudaUnavailable(CudaError):
    """CUDA cannot be used here: {detail}. Install the [gpu] extra (pip install 'gpuproxy[gpu]')
    on a host with an NVIDIA driver and GPU, or run with --backend cpu."""


class CompileFailed(CudaError):
    """Compiling {module} for {arch} failed: {detail}. Check that nvcc (CUDA >= 12) is on PATH
    and supports this GPU."""


class DeviceFailed(CudaError):
    """CUDA failed on {gpu} during {operation}: {detail}. The attempt is retried; if it keeps
    failing, check the card (nvidia-smi, Xid lines in dmesg) or free its memory."""

    detail: str = ""  #: what failed, without the GPU and the advice
    #: The context is unusable from now on (any CUDA error but out of memory: a launch failure
    #: or an illegal address poisons the context for good); the process must start again.
    lost: bool = False
    #: The GPU had no room for an allocation (the context is fine).
    out_of_memory: bool = False


class LaunchRefused(DeviceFailed):
    """{gpu} cannot run {kernel} with {block} threads per block in the {variant} build of the
    kernels: its registers allow at most {most}. This GPU needs another build: run the worker
    with --backend cpu meanwhile, and report the GPU model."""


class TooLarge(CudaError):
    """An MSM of {points} points is more than the CUDA backend takes at once ({limit}); run
    such circuits with --backend cpu."""


class SelfTestFailed(CudaError):
    """The CUDA backend on {gpu} failed its start-up check ({operation}: {detail}): the
    kernels or the card are faulty. Run with --backend cpu and report the GPU model."""
