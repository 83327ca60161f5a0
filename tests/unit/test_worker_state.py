from __future__ import annotations

import json
import pathlib

from structlog.testing import capture_logs

from worker import state


def test_worker_id_is_created_once_and_kept(tmp_path: pathlib.Path) -> None:
    first = state.load_or_create(tmp_path / "w", "gpu0")
    assert "-gpu0-" in first.worker_id
    assert state.load_or_create(tmp_path / "w", "gpu0") == first
    assert json.loads((tmp_path / "w" / state.STATE_FILE).read_text()) == {
        "worker_id": first.worker_id
    }


def test_corrupt_state_is_recreated_with_a_warning(tmp_path: pathlib.Path) -> None:
    path = tmp_path / state.STATE_FILE
    for garbage in ("{not json", "[]", '{"worker_id": ""}', "\x00\x01"):
        path.write_text(garbage)
        with capture_logs() as logs:
            recreated = state.load_or_create(tmp_path, "cpu")
        assert [e["log_level"] for e in logs] == ["warning"], garbage
        assert str(path) in logs[0]["path"]
        assert state.parse(path.read_text()) == recreated


def test_missing_state_is_created_without_a_warning(tmp_path: pathlib.Path) -> None:
    with capture_logs() as logs:
        state.load_or_create(tmp_path / "new", "gpu3")
    assert [e["log_level"] for e in logs] == ["info"]


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path: pathlib.Path) -> None:
    path = tmp_path / state.STATE_FILE
    state.save(path, state.WorkerState(worker_id="a"))
    state.save(path, state.WorkerState(worker_id="b"))
    assert [p.name for p in tmp_path.iterdir()] == [state.STATE_FILE]
    assert state.parse(path.read_text()).worker_id == "b"


def test_new_worker_ids_are_readable_and_unique() -> None:
    ids = {state.new_worker_id("gpu1", hostname="sealer3.example.com") for _ in range(50)}
    assert len(ids) == 50
    assert all(i.startswith("sealer3-gpu1-") for i in ids)
