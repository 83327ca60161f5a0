"""The versioned schema of both SQL stores. Append-only: never edit an applied migration, add
a new version instead.

Each backend applies the versions missing from `schema_version` inside `open()`, serialized
between brokers that start at once (MySQL: GET_LOCK; SQLite: BEGIN IMMEDIATE). MySQL DDL is not
transactional, so its statements are written to be re-run after a crash half-way
(IF NOT EXISTS).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from broker import exceptions
from broker.models import now_ms

if TYPE_CHECKING:
    from broker.store.sql import Tx


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    name: str
    mysql: tuple[str, ...]
    sqlite: tuple[str, ...]


SCHEMA_VERSION_MYSQL = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INT NOT NULL PRIMARY KEY,
    name VARCHAR(128) NOT NULL,
    applied_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
"""

SCHEMA_VERSION_SQLITE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at INTEGER NOT NULL
)
"""

SELECT_VERSIONS = "SELECT version FROM schema_version"
INSERT_VERSION = "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)"

#: Binary collation: ids sort and compare byte-wise on both backends (list paging order).
_MYSQL_TABLE = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"

_V1_MYSQL = (
    f"""
CREATE TABLE IF NOT EXISTS tasks (
    id VARCHAR(36) NOT NULL PRIMARY KEY,
    task_type VARCHAR(64) NOT NULL,
    miner VARCHAR(128) NOT NULL,
    comment TEXT NOT NULL,
    priority INT NOT NULL,
    state TINYINT NOT NULL,
    payload_size BIGINT NOT NULL,
    payload_sha256 VARCHAR(64) NOT NULL,
    worker_id VARCHAR(255) NOT NULL,
    attempts INT NOT NULL,
    max_attempts INT NOT NULL,
    error_message MEDIUMTEXT NOT NULL,
    created_at BIGINT NOT NULL,
    started_at BIGINT NULL,
    finished_at BIGINT NULL,
    result_size BIGINT NOT NULL,
    result_sha256 VARCHAR(64) NOT NULL,
    version BIGINT NOT NULL,
    fence BIGINT NOT NULL,
    lease_expires_at BIGINT NULL,
    not_before BIGINT NOT NULL,
    progress_phase VARCHAR(255) NOT NULL,
    progress_fraction DOUBLE NOT NULL,
    KEY tasks_claim (state, task_type, priority DESC, created_at, id),
    KEY tasks_list (created_at, id),
    KEY tasks_worker (worker_id),
    KEY tasks_payload (payload_sha256),
    KEY tasks_result (result_sha256)
) {_MYSQL_TABLE}
""",
    f"""
CREATE TABLE IF NOT EXISTS task_attempts (
    task_id VARCHAR(36) NOT NULL,
    number INT NOT NULL,
    worker_id VARCHAR(255) NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT NULL,
    outcome VARCHAR(16) NOT NULL,
    reason MEDIUMTEXT NOT NULL,
    PRIMARY KEY (task_id, number),
    CONSTRAINT task_attempts_task FOREIGN KEY (task_id) REFERENCES tasks (id) ON DELETE CASCADE
) {_MYSQL_TABLE}
""",
    f"""
CREATE TABLE IF NOT EXISTS blobs (
    upload_id VARCHAR(64) NOT NULL PRIMARY KEY,
    sha256 VARCHAR(64) NOT NULL,
    size BIGINT NOT NULL,
    ready BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    KEY blobs_sha256 (sha256)
) {_MYSQL_TABLE}
""",
    f"""
CREATE TABLE IF NOT EXISTS blob_chunks (
    upload_id VARCHAR(64) NOT NULL,
    seq INT NOT NULL,
    data LONGBLOB NOT NULL,
    PRIMARY KEY (upload_id, seq),
    CONSTRAINT blob_chunks_blob FOREIGN KEY (upload_id) REFERENCES blobs (upload_id)
        ON DELETE CASCADE
) {_MYSQL_TABLE}
""",
)

_V1_SQLITE = (
    """
CREATE TABLE tasks (
    id TEXT NOT NULL PRIMARY KEY,
    task_type TEXT NOT NULL,
    miner TEXT NOT NULL,
    comment TEXT NOT NULL,
    priority INTEGER NOT NULL,
    state INTEGER NOT NULL,
    payload_size INTEGER NOT NULL,
    payload_sha256 TEXT NOT NULL,
    worker_id TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    error_message TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    started_at INTEGER NULL,
    finished_at INTEGER NULL,
    result_size INTEGER NOT NULL,
    result_sha256 TEXT NOT NULL,
    version INTEGER NOT NULL,
    fence INTEGER NOT NULL,
    lease_expires_at INTEGER NULL,
    not_before INTEGER NOT NULL,
    progress_phase TEXT NOT NULL,
    progress_fraction REAL NOT NULL
)
""",
    "CREATE INDEX tasks_claim ON tasks (state, task_type, priority DESC, created_at, id)",
    "CREATE INDEX tasks_list ON tasks (created_at, id)",
    "CREATE INDEX tasks_worker ON tasks (worker_id)",
    "CREATE INDEX tasks_payload ON tasks (payload_sha256)",
    "CREATE INDEX tasks_result ON tasks (result_sha256)",
    """
CREATE TABLE task_attempts (
    task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    worker_id TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    ended_at INTEGER NULL,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (task_id, number)
)
""",
    """
CREATE TABLE blobs (
    upload_id TEXT NOT NULL PRIMARY KEY,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    ready INTEGER NOT NULL,
    created_at INTEGER NOT NULL
)
""",
    "CREATE INDEX blobs_sha256 ON blobs (sha256)",
    """
CREATE TABLE blob_chunks (
    upload_id TEXT NOT NULL REFERENCES blobs (upload_id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (upload_id, seq)
)
""",
)

_V2_MYSQL = (
    f"""
CREATE TABLE IF NOT EXISTS workers (
    worker_id VARCHAR(255) NOT NULL PRIMARY KEY,
    hostname VARCHAR(255) NOT NULL,
    info MEDIUMTEXT NOT NULL,
    registered_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL
) {_MYSQL_TABLE}
""",
)

_V2_SQLITE = (
    """
CREATE TABLE workers (
    worker_id TEXT NOT NULL PRIMARY KEY,
    hostname TEXT NOT NULL,
    info TEXT NOT NULL,
    registered_at INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL
)
""",
)

_V3_MYSQL = (
    f"""
CREATE TABLE IF NOT EXISTS resources (
    sha256 VARCHAR(64) NOT NULL PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    size BIGINT NOT NULL,
    created_at BIGINT NOT NULL
) {_MYSQL_TABLE}
""",
)

_V3_SQLITE = (
    """
CREATE TABLE resources (
    sha256 TEXT NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at INTEGER NOT NULL
)
""",
)

# An operator's drain of a worker, apart from its registration, which every reconnect rewrites.
_V4_MYSQL = (
    f"""
CREATE TABLE IF NOT EXISTS worker_drains (
    worker_id VARCHAR(255) NOT NULL PRIMARY KEY,
    reason TEXT NOT NULL,
    drained_at BIGINT NOT NULL
) {_MYSQL_TABLE}
""",
)

_V4_SQLITE = (
    """
CREATE TABLE worker_drains (
    worker_id TEXT NOT NULL PRIMARY KEY,
    reason TEXT NOT NULL,
    drained_at INTEGER NOT NULL
)
""",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(version=1, name="tasks, attempts and blobs", mysql=_V1_MYSQL, sqlite=_V1_SQLITE),
    Migration(version=2, name="workers", mysql=_V2_MYSQL, sqlite=_V2_SQLITE),
    Migration(version=3, name="resources", mysql=_V3_MYSQL, sqlite=_V3_SQLITE),
    Migration(version=4, name="worker drains", mysql=_V4_MYSQL, sqlite=_V4_SQLITE),
)


def pending(applied: set[int]) -> list[Migration]:
    """The migrations still to apply, in version order."""
    return [m for m in MIGRATIONS if m.version not in applied]


async def apply(tx: Tx, *, mysql: bool) -> None:
    """Apply the missing versions; the caller holds the migration lock."""
    await tx.run(SCHEMA_VERSION_MYSQL if mysql else SCHEMA_VERSION_SQLITE)
    applied = {int(r[0]) for r in await tx.all(SELECT_VERSIONS)}
    if max(applied, default=0) > MIGRATIONS[-1].version:
        raise exceptions.SchemaTooNew(found=max(applied), known=MIGRATIONS[-1].version)
    for migration in pending(applied):
        for statement in migration.mysql if mysql else migration.sqlite:
            await tx.run(statement)
        await tx.run(INSERT_VERSION, [migration.version, migration.name, now_ms()])
