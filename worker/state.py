"""The worker's small local state file: its worker id, kept across restarts.

Only the identity lives here; tasks are tracked by their leases at the broker, so losing this
file costs nothing but a new worker id. A missing or corrupt file is recreated with a warning.
Writes are atomic: a temp file in the same folder, fsynced, renamed, and the folder fsynced.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import secrets
import socket

import structlog

log = structlog.get_logger(__name__)

STATE_FILE = "state.json"


@dataclasses.dataclass(frozen=True)
class WorkerState:
    worker_id: str


def new_worker_id(label: str, hostname: str | None = None) -> str:
    """A readable, unique id: host, GPU label and a random suffix ("sealer3-gpu0-5f1c2a9e")."""
    host = (hostname or socket.gethostname()).split(".")[0] or "host"
    return f"{host}-{label}-{secrets.token_hex(4)}"


def load_or_create(folder: pathlib.Path, label: str) -> WorkerState:
    """The state in `folder`, created (or recreated, with a warning) when missing or corrupt."""
    path = folder / STATE_FILE
    try:
        return parse(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        log.info("no worker state yet; creating it", path=str(path))
    except (OSError, ValueError) as exc:
        log.warning("worker state is unreadable; recreating it with a new worker id",
                    path=str(path), error=str(exc))
    state = WorkerState(worker_id=new_worker_id(label))
    save(path, state)
    return state


def parse(text: str) -> WorkerState:
    """Raises ValueError when the text is not a state this version wrote."""
    data = json.loads(text)
    worker_id = data.get("worker_id") if isinstance(data, dict) else None
    if not isinstance(worker_id, str) or not worker_id.strip():
        raise ValueError("no worker_id in the state file")
    return WorkerState(worker_id=worker_id)


def save(path: pathlib.Path, state: WorkerState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(dataclasses.asdict(state), f)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
