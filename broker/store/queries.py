"""Every statement of the SQL stores, named by operation, for SQLite and MariaDB/MySQL.

Statements use `?` placeholders; the MySQL store turns them into `%s` when it runs them (so no
statement here may contain a literal `?` or `%`). The two dialects differ only where locking or
upserts do: MySQL locks the rows it is about to change (`FOR UPDATE`, `SKIP LOCKED` for claims
and requeues), SQLite already holds the database lock of `BEGIN IMMEDIATE`. The schema itself
lives in `migrations.py`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from broker.models import (
    Attempt,
    BlobRow,
    Gpu,
    PageCursor,
    Task,
    TaskFilter,
    TaskState,
    WorkerRecord,
)

Row = Sequence[Any]
Statement = tuple[str, list[Any]]

TASK_COLUMNS = tuple(f.name for f in dataclasses.fields(Task))
ATTEMPT_COLUMNS = tuple(f.name for f in dataclasses.fields(Attempt))
BLOB_COLUMNS = tuple(f.name for f in dataclasses.fields(BlobRow))

_TASK = ", ".join(TASK_COLUMNS)
_ATTEMPT = ", ".join(ATTEMPT_COLUMNS)
_BLOB = ", ".join(BLOB_COLUMNS)
_WORKER = "worker_id, hostname, info, registered_at, last_seen_at"  #: worker_args' order
_CLAIM_ORDER = "ORDER BY priority DESC, created_at ASC, id ASC"


def _marks(n: int) -> str:
    return ", ".join("?" * n)


@dataclasses.dataclass(frozen=True)
class Queries:
    mysql: bool

    @property
    def _lock(self) -> str:
        return " FOR UPDATE" if self.mysql else ""

    @property
    def _skip_locked(self) -> str:
        return " FOR UPDATE SKIP LOCKED" if self.mysql else ""

    # -- tasks ---------------------------------------------------------------------------

    @property
    def insert_task(self) -> str:
        """Insert unless the id exists; the row count says which happened."""
        conflict = "ON DUPLICATE KEY UPDATE id = id" if self.mysql else "ON CONFLICT DO NOTHING"
        return f"INSERT INTO tasks ({_TASK}) VALUES ({_marks(len(TASK_COLUMNS))}) {conflict}"

    select_task = f"SELECT {_TASK} FROM tasks WHERE id = ?"

    @property
    def lock_task(self) -> str:
        return self.select_task + self._lock

    update_task = (
        "UPDATE tasks SET " + ", ".join(f"{c} = ?" for c in TASK_COLUMNS[1:]) + " WHERE id = ?"
    )
    delete_task = "DELETE FROM tasks WHERE id = ?"  # its attempts go by ON DELETE CASCADE

    def claimable(self, task_types: Sequence[str], now_ms: int, lock: bool = True,
                  avoid: tuple[str, int] | None = None) -> Statement:
        """The next init task of each type (MySQL) or of all types (SQLite); `lock` for a claim.
        `avoid` = (worker id, ms): not a task whose last run was that worker's, unless it was
        ready by then.

        MySQL: one branch per type, each read in index order, so that the claim locks one row
        per type; a single `task_type IN (...)` needs a filesort, which locks every init task
        and makes every other claimer find nothing.
        """
        where = "state = 1 AND not_before <= ?"
        head: list[Any] = [now_ms]
        if avoid is not None:
            where += " AND (worker_id <> ? OR not_before <= ?)"
            head += list(avoid)
        skip_locked = self._skip_locked if lock else ""
        if not self.mysql:
            sql = (
                f"SELECT {_TASK} FROM tasks WHERE {where} AND task_type IN "
                f"({_marks(len(task_types))}) {_CLAIM_ORDER} LIMIT 1"
            )
            return sql, [*head, *task_types]
        branch = (
            f"SELECT {_TASK} FROM tasks WHERE {where} AND task_type = ? "
            f"{_CLAIM_ORDER} LIMIT 1{skip_locked}"
        )
        if len(task_types) == 1:
            return branch, [*head, task_types[0]]
        sql = " UNION ALL ".join(f"({branch})" for _ in task_types)
        return sql, [arg for t in task_types for arg in (*head, t)]

    def expired(
        self, now_ms: int, processing_timeouts_ms: Mapping[str, int], limit: int
    ) -> Statement:
        """Running tasks whose lease expired or which ran past their type's timeout."""
        conditions = ["lease_expires_at <= ?"]
        args: list[Any] = [now_ms]
        for task_type, timeout_ms in sorted(processing_timeouts_ms.items()):
            if timeout_ms > 0:
                conditions.append("(task_type = ? AND started_at <= ?)")
                args += [task_type, now_ms - timeout_ms]
        sql = (
            f"SELECT {_TASK} FROM tasks WHERE state = 2 AND ({' OR '.join(conditions)}) "
            f"LIMIT ?{self._skip_locked}"
        )
        return sql, [*args, limit]

    select_terminal_before = (
        "SELECT id FROM tasks WHERE state IN (3, 4) AND finished_at < ? LIMIT ?"
    )

    @staticmethod
    def delete_terminal(ids: Sequence[str], cutoff_ms: int) -> Statement:
        # The state and time are checked again: a task may have been reset since it was listed.
        sql = (
            f"DELETE FROM tasks WHERE id IN ({_marks(len(ids))}) "
            "AND state IN (3, 4) AND finished_at < ?"
        )
        return sql, [*ids, cutoff_ms]

    @staticmethod
    def list_tasks(flt: TaskFilter, limit: int, after: PageCursor | None) -> Statement:
        conditions: list[str] = []
        args: list[Any] = []
        if flt.states:
            conditions.append(f"state IN ({_marks(len(flt.states))})")
            args += [int(s) for s in flt.states]
        if flt.task_types:
            conditions.append(f"task_type IN ({_marks(len(flt.task_types))})")
            args += list(flt.task_types)
        for column, value in (("miner", flt.miner), ("worker_id", flt.worker_id)):
            if value:
                conditions.append(f"{column} = ?")
                args.append(value)
        if after is not None:
            conditions.append("(created_at < ? OR (created_at = ? AND id < ?))")
            args += [after.created_at, after.created_at, after.task_id]
        where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
        sql = f"SELECT {_TASK} FROM tasks {where}ORDER BY created_at DESC, id DESC LIMIT ?"
        return sql, [*args, limit]

    task_counts = (
        "SELECT task_type, state, COUNT(*), "
        "MIN(CASE WHEN not_before > created_at THEN not_before ELSE created_at END) "
        "FROM tasks GROUP BY task_type, state"
    )

    referenced_blobs = (
        "SELECT payload_sha256 FROM tasks WHERE state <> 4 "
        "UNION SELECT result_sha256 FROM tasks WHERE result_sha256 <> '' "
        "UNION SELECT sha256 FROM resources"
    )
    payload_needed = (
        "SELECT 1 FROM tasks WHERE payload_sha256 = ? AND state <> 4 "
        "UNION ALL SELECT 1 FROM resources WHERE sha256 = ? LIMIT 1"
    )

    # -- resources -----------------------------------------------------------------------

    @property
    def insert_resource(self) -> str:
        conflict = (
            "ON DUPLICATE KEY UPDATE sha256 = sha256" if self.mysql else "ON CONFLICT DO NOTHING"
        )
        return ("INSERT INTO resources (sha256, name, size, created_at) VALUES (?, ?, ?, ?) "
                + conflict)

    select_resource = "SELECT sha256, name, size, created_at FROM resources WHERE sha256 = ?"
    list_resources = "SELECT sha256, name, size, created_at FROM resources ORDER BY created_at"
    delete_resource = "DELETE FROM resources WHERE sha256 = ?"
    # Groth16 tasks name their key in their comment (zkey=<sha256>, any case): the argument is
    # a lower-case LIKE pattern, since no statement here may hold a literal percent sign.
    # LOWER: MariaDB's binary collation compares case, SQLite's LIKE does not.
    task_naming = (
        "SELECT id FROM tasks WHERE state IN (1, 2) AND LOWER(comment) LIKE ? LIMIT 1"
    )

    # -- attempts ------------------------------------------------------------------------

    select_attempts = f"SELECT {_ATTEMPT} FROM task_attempts WHERE task_id = ? ORDER BY number"
    next_attempt_number = (
        "SELECT COALESCE(MAX(number), 0) + 1 FROM task_attempts WHERE task_id = ?"
    )
    insert_attempt = f"INSERT INTO task_attempts ({_ATTEMPT}) VALUES ({_marks(7)})"
    close_attempt = (
        "UPDATE task_attempts SET ended_at = ?, outcome = ?, reason = ? "
        "WHERE task_id = ? AND outcome = 'running'"
    )

    # -- blobs ---------------------------------------------------------------------------

    insert_blob = f"INSERT INTO blobs ({_BLOB}) VALUES (?, ?, ?, 0, ?)"

    # Written only into an upload that exists and is not ready (else no row changes); REPLACE
    # makes a resent chunk harmless.
    put_chunk = (
        "REPLACE INTO blob_chunks (upload_id, seq, data) "
        "SELECT ?, ?, ? FROM blobs WHERE upload_id = ? AND ready = 0"
    )

    select_upload_sha256 = "SELECT sha256 FROM blobs WHERE upload_id = ?"

    @property
    def lock_uploads_of_sha256(self) -> str:
        return "SELECT upload_id, ready FROM blobs WHERE sha256 = ?" + self._lock

    touch_upload = "UPDATE blobs SET created_at = ? WHERE upload_id = ?"
    touch_blob = "UPDATE blobs SET created_at = ? WHERE sha256 = ? AND ready = 1"
    set_ready = "UPDATE blobs SET ready = 1 WHERE upload_id = ?"
    unset_ready = "UPDATE blobs SET ready = 0 WHERE upload_id = ?"

    @property
    def delete_chunks(self) -> str:
        """Delete up to `?` chunks of an upload (one bounded transaction)."""
        if self.mysql:
            return "DELETE FROM blob_chunks WHERE upload_id = ? ORDER BY seq LIMIT ?"
        return (
            "DELETE FROM blob_chunks WHERE upload_id = ? AND seq IN "
            "(SELECT seq FROM blob_chunks WHERE upload_id = ? ORDER BY seq LIMIT ?)"
        )

    def delete_chunks_args(self, upload_id: str, limit: int) -> list[Any]:
        return [upload_id, limit] if self.mysql else [upload_id, upload_id, limit]

    delete_blob = "DELETE FROM blobs WHERE upload_id = ?"
    find_blob = (
        f"SELECT {_BLOB} FROM blobs WHERE sha256 = ? AND ready = 1 "
        "ORDER BY created_at, upload_id LIMIT 1"
    )
    @staticmethod
    def extend_leases(until_ms: int, skip_workers: Sequence[str], lease_ms: int) -> Statement:
        # Only a lease its worker renewed last (within half a lease of its last heartbeat),
        # not one a grace extended since: a worker gone for good gets one grace, not one at
        # every start of a broker
        sql = ("UPDATE tasks SET lease_expires_at = ? WHERE state = 2 AND lease_expires_at < ? "
               "AND lease_expires_at <= COALESCE((SELECT last_seen_at FROM workers WHERE "
               "workers.worker_id = tasks.worker_id), lease_expires_at - ?) + ?")
        if skip_workers:
            sql += f" AND worker_id NOT IN ({_marks(len(skip_workers))})"
        return sql, [until_ms, until_ms, lease_ms, lease_ms * 3 // 2, *skip_workers]

    @property
    def database_time(self) -> str | None:
        """The database server's clock in ms; None for SQLite, which runs on this host."""
        return "SELECT ROUND(UNIX_TIMESTAMP(NOW(3)) * 1000)" if self.mysql else None

    # -- workers -------------------------------------------------------------------------

    @property
    def upsert_drain(self) -> str:
        """Drain a worker; draining it again keeps when, and takes the new reason if any."""
        update = ("ON DUPLICATE KEY UPDATE reason = "
                  "IF(VALUES(reason) = '', reason, VALUES(reason))" if self.mysql else
                  "ON CONFLICT (worker_id) DO UPDATE SET reason = "
                  "CASE WHEN excluded.reason = '' THEN reason ELSE excluded.reason END")
        return ("INSERT INTO worker_drains (worker_id, reason, drained_at) VALUES (?, ?, ?) "
                + update)

    list_drains = "SELECT worker_id, reason, drained_at FROM worker_drains ORDER BY worker_id"
    delete_drain = "DELETE FROM worker_drains WHERE worker_id = ?"

    @property
    def upsert_worker(self) -> str:
        """Replace a registration but keep when the worker first registered."""
        if self.mysql:
            update = ("ON DUPLICATE KEY UPDATE hostname = VALUES(hostname), info = VALUES(info), "
                      "last_seen_at = VALUES(last_seen_at)")
        else:
            update = ("ON CONFLICT (worker_id) DO UPDATE SET hostname = excluded.hostname, "
                      "info = excluded.info, last_seen_at = excluded.last_seen_at")
        return f"INSERT INTO workers ({_WORKER}) VALUES (?, ?, ?, ?, ?) {update}"

    @property
    def insert_worker(self) -> str:
        """A first registration; the row count says whether the id was new."""
        conflict = ("ON DUPLICATE KEY UPDATE worker_id = worker_id" if self.mysql
                    else "ON CONFLICT DO NOTHING")
        return f"INSERT INTO workers ({_WORKER}) VALUES (?, ?, ?, ?, ?) {conflict}"

    touch_worker = "UPDATE workers SET last_seen_at = ? WHERE worker_id = ?"

    get_worker = f"SELECT {_WORKER} FROM workers WHERE worker_id = ?"

    @property
    def lock_worker(self) -> str:
        return self.get_worker + self._lock

    list_workers = f"SELECT {_WORKER} FROM workers ORDER BY worker_id"
    delete_worker = "DELETE FROM workers WHERE worker_id = ?"
    # A drained worker is kept however long it is away (a card sent for repair): it comes back
    # drained, under its id.
    forget_workers = ("DELETE FROM workers WHERE last_seen_at < ? "
                      "AND worker_id NOT IN (SELECT worker_id FROM worker_drains)")
    forget_drains = ("DELETE FROM worker_drains "
                     "WHERE worker_id NOT IN (SELECT worker_id FROM workers)")

    read_chunk = "SELECT data FROM blob_chunks WHERE upload_id = ? AND seq = ?"
    list_blobs = f"SELECT {_BLOB} FROM blobs ORDER BY created_at, upload_id"


SQLITE = Queries(mysql=False)
MYSQL = Queries(mysql=True)


# -- rows <-> records ------------------------------------------------------------------------


def task_from_row(row: Row) -> Task:
    values = dict(zip(TASK_COLUMNS, row, strict=True))
    values["state"] = TaskState(values["state"])
    values["progress_fraction"] = float(values["progress_fraction"])
    return Task(**values)


def task_args(task: Task) -> list[Any]:
    """Values in TASK_COLUMNS order, for insert_task."""
    return [int(v) if isinstance(v, TaskState) else v for v in dataclasses.astuple(task)]


def task_update_args(task: Task) -> list[Any]:
    """Values for update_task: every column but the id, then the id."""
    values = task_args(task)
    return [*values[1:], values[0]]


def attempt_from_row(row: Row) -> Attempt:
    return Attempt(**dict(zip(ATTEMPT_COLUMNS, row, strict=True)))


def attempt_args(attempt: Attempt) -> list[Any]:
    return list(dataclasses.astuple(attempt))


def blob_from_row(row: Row) -> BlobRow:
    values = dict(zip(BLOB_COLUMNS, row, strict=True))
    values["ready"] = bool(values["ready"])
    return BlobRow(**values)


def worker_args(w: WorkerRecord) -> list[Any]:
    info = {
        "addresses": list(w.addresses), "version": w.version, "task_types": list(w.task_types),
        "max_tasks": w.max_tasks, "gpus": [dataclasses.asdict(g) for g in w.gpus],
        "resident_keys": list(w.resident_keys), "paused_until": w.paused_until,
        "pause_reason": w.pause_reason, "instance": w.instance, "session": w.session,
        "disconnected_at": w.disconnected_at, "handed_off_at": w.handed_off_at,
        "broker": w.broker,
    }
    return [w.worker_id, w.hostname, json.dumps(info), w.registered_at, w.last_seen_at]


def worker_from_row(row: Row) -> WorkerRecord:
    worker_id, hostname, info_json, registered_at, last_seen_at = row
    info = json.loads(info_json)
    return WorkerRecord(
        worker_id=worker_id, hostname=hostname, addresses=tuple(info["addresses"]),
        version=info["version"], task_types=tuple(info["task_types"]),
        max_tasks=int(info["max_tasks"]), gpus=tuple(Gpu(**g) for g in info["gpus"]),
        registered_at=int(registered_at), last_seen_at=int(last_seen_at),
        resident_keys=tuple(info.get("resident_keys", ())),
        paused_until=int(info.get("paused_until", 0)), pause_reason=info.get("pause_reason", ""),
        instance=info.get("instance", ""), session=info.get("session", ""),
        disconnected_at=int(info.get("disconnected_at", 0)),
        handed_off_at=int(info.get("handed_off_at", 0)), broker=info.get("broker", ""),
    )
