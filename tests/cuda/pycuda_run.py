"""Run by tests/integration/test_cuda_pycuda.py in a child process whose pycuda drives the
emulated driver (tests/cuda/pycuda_emu.py): the CUDA backend as a worker opens it (kernels
compiled by nvcc through pycuda, start-up self-test), the GPU acceptance check at small sizes,
and a launch whose arguments do not fit its kernel. Prints one JSON report."""

from __future__ import annotations

import json

import pycuda  # type: ignore[import-not-found]

from worker.cuda import acceptance, select
from worker.cuda.backend import CudaBackend
from worker.groth16 import backends


def main() -> None:
    backend, message = select.open_backend("cuda")
    assert isinstance(backend, CudaBackend)
    report: dict[str, object] = {"message": message, "backend": backend.name,
                                 "pycuda": pycuda.VERSION_TEXT}
    outcomes = acceptance.run(backend, backends.create("cpu", threads=1), [1, 2, 3, 100],
                             ntt_max=4, prove_sizes=[5], out=lambda line: None, edge_points=20)
    report["checks"] = len(outcomes)
    report["failed"] = [o.line() for o in outcomes if not o.ok]
    dev = backend.device
    try:
        with dev.active("a launch one argument short"):
            buf = dev.alloc(64)
            dev.launch("fr_scale", 2, buf, buf)
        report["bad_launch"] = "accepted"
    except Exception as exc:
        report["bad_launch"] = f"{type(exc).__name__}: {exc}"
    backend.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
