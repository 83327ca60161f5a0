"""Which Groth16 backend a worker runs: `--backend auto|cpu|cuda` and what this host offers.

`choose` is the policy (pure); `probe` looks at the host (imports pycuda, counts devices);
`open_backend` puts the two together and makes the backend.
"""

from __future__ import annotations

import dataclasses

from worker.groth16 import backends

CHOICES = ("auto", "cpu", "cuda")


@dataclasses.dataclass(frozen=True)
class Probe:
    pycuda_error: str | None  #: why pycuda cannot be used (import or driver failure), or None
    devices: int  #: CUDA devices visible (after CUDA_VISIBLE_DEVICES)


@dataclasses.dataclass(frozen=True)
class Selection:
    backend: str  #: "cpu" or "cuda"
    message: str  #: one line for the log, saying why
    error: bool = False  #: the requested backend cannot run here: refuse to start


def choose(requested: str, probe: Probe) -> Selection:
    """The backend for `requested` ("auto", "cpu" or "cuda") given what `probe` found."""
    if requested not in CHOICES:
        raise ValueError(f"backend must be one of {', '.join(CHOICES)}, not {requested!r}")
    why_not = _cuda_unusable(probe)
    if requested == "cpu":
        return Selection("cpu", "Groth16 backend: cpu (forced by --backend cpu)")
    if why_not is None:
        how = ("forced by --backend cuda" if requested == "cuda"
               else "auto: a CUDA device is present")
        return Selection("cuda", f"Groth16 backend: cuda ({how})")
    if requested == "cuda":
        return Selection("cuda", f"--backend cuda, but {why_not}: {_fix(probe)}, or use "
                         "--backend cpu", error=True)
    return Selection("cpu", f"Groth16 backend: cpu (auto: {why_not})")


def _cuda_unusable(probe: Probe) -> str | None:
    if probe.pycuda_error is not None:
        return f"pycuda is unusable ({probe.pycuda_error})"
    if probe.devices < 1:
        return "no CUDA device is visible"
    return None


def why_unusable(found: Probe) -> str | None:
    """Why CUDA cannot run on this host and what to do, or None when it can."""
    why_not = _cuda_unusable(found)
    return None if why_not is None else f"{why_not}: {_fix(found)}"


def _fix(probe: Probe) -> str:
    """What to do about what the probe found, by its cause."""
    error = probe.pycuda_error or ""
    if "libcuda" in error:  # pycuda is installed; its driver library is not
        return "install the NVIDIA driver on this host (it provides libcuda.so.1)"
    if error:
        return ("install the [gpu] extra (pip install 'gpuproxy[gpu]') on a host with an NVIDIA "
                "driver")
    return "check that nvidia-smi lists a GPU and that CUDA_VISIBLE_DEVICES (--gpu) names it"


def probe() -> Probe:
    """Import pycuda and count the devices; never raises."""
    try:
        import pycuda.driver as cuda  # type: ignore[import-not-found,unused-ignore]

        cuda.init()
        return Probe(pycuda_error=None, devices=int(cuda.Device.count()))
    except Exception as exc:
        return Probe(pycuda_error=f"{type(exc).__name__}: {exc}", devices=0)


def open_backend(requested: str, gpu: int = 0) -> tuple[backends.Backend, str]:
    """The backend for `requested` and the line to log. Under "auto" a GPU that fails to start
    (driver, compiler) falls back to the CPU, saying why; "cuda" raises CudaUnavailable."""
    from worker.cuda import exceptions

    chosen = choose(requested, probe())
    if chosen.error:
        raise exceptions.CudaUnavailable(chosen.message)
    if chosen.backend == "cpu":
        return backends.create("cpu"), chosen.message
    from worker.cuda import backend

    try:
        return backend.create(gpu), chosen.message
    except exceptions.CudaError as exc:
        if requested == "cuda":
            raise
        return backends.create("cpu"), f"Groth16 backend: cpu (auto: the GPU failed: {exc})"
