"""What `gpuproxy demo` says of the backend its worker proved on, read from the worker's log
(lines as the worker writes them: its start-up message, and the one for a GPU proof that did
not verify)."""

from __future__ import annotations

import pathlib

from broker import demo
from worker.cuda import select
from worker.executors.groth16 import GPU_PROOF_MADE_AGAIN

CPU_START = select.choose("auto", select.Probe("ImportError: libcuda.so.1", 0)).message
CUDA_START = select.choose("auto", select.Probe(None, 1)).message


def worker_log(tmp_path: pathlib.Path, *events: str) -> pathlib.Path:
    path = tmp_path / "worker.log"
    path.write_text("".join(f"2026-11-30T11:35:0{i}Z [info     ] {event} worker_id=w\n"
                            for i, event in enumerate(events)))
    return path


def test_the_backend_is_the_one_the_last_start_named(tmp_path: pathlib.Path) -> None:
    # A kept folder: an earlier demo on the CPU, then one on a GPU
    log = worker_log(tmp_path, f"{CPU_START} backend=cpu",
                     f"{CUDA_START} backend='cuda:GPU 0 (NVIDIA H200)'")
    assert demo._backend_of(log) == "cuda"


def test_a_proof_made_again_on_the_cpu_is_said(tmp_path: pathlib.Path) -> None:
    log = worker_log(tmp_path, f"{CUDA_START} backend='cuda:GPU 0 (NVIDIA H200)'",
                     f"{GPU_PROOF_MADE_AGAIN} task_id=t backend='cuda:GPU 0 (NVIDIA H200)'")
    assert demo._backend_of(log) == (
        "cuda, whose proof did not verify: made again on the cpu, see its log")
    # ... but not when it was an earlier demo's worker, in a kept folder
    log = worker_log(tmp_path, f"{CUDA_START} backend='cuda:GPU 0'",
                     f"{GPU_PROOF_MADE_AGAIN} task_id=t", f"{CUDA_START} backend='cuda:GPU 0'")
    assert demo._backend_of(log) == "cuda"


def test_a_log_without_a_start_line_says_unknown(tmp_path: pathlib.Path) -> None:
    assert demo._backend_of(worker_log(tmp_path, "worker ready")) == "unknown"
    assert demo._backend_of(tmp_path / "missing.log") == "unknown"
