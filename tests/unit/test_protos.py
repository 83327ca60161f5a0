"""The committed stubs must match the .proto files: regenerate with `python -m protos.generate`."""

from __future__ import annotations

import pathlib

from protos import generate

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_generated_stubs_are_fresh(tmp_path: pathlib.Path) -> None:
    generate.generate(tmp_path)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*.py*"))
    assert fresh, "protoc produced nothing"
    for rel in fresh:
        committed = ROOT / rel
        assert committed.exists(), f"{rel} is not committed: run `python -m protos.generate`"
        assert committed.read_bytes() == (tmp_path / rel).read_bytes(), (
            f"{rel} is stale against its .proto: run `python -m protos.generate` and commit"
        )


def test_task_states_keep_gpuproxy_numbers() -> None:
    from broker.models import TaskState
    from protos.gpuproxy.v1 import tasks_pb2

    for state in TaskState:
        assert tasks_pb2.TaskState.Value(f"TASK_STATE_{state.name}") == state.value
