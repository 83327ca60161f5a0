"""The migrations produce the declared schema, re-opening changes nothing, and a database that
cannot be used is reported as StoreUnavailable."""

from __future__ import annotations

import dataclasses
import pathlib
import re
import sqlite3
import urllib.parse

import pymysql
import pytest

from broker import exceptions
from broker.models import Attempt, BlobRow, NewTask, Task
from broker.store import Store, migrations, open_store

DECLARED = {
    "schema_version": {"version", "name", "applied_at"},
    "tasks": {f.name for f in dataclasses.fields(Task)},
    "task_attempts": {f.name for f in dataclasses.fields(Attempt)},
    "blobs": {f.name for f in dataclasses.fields(BlobRow)},
    "blob_chunks": {"upload_id", "seq", "data"},
    "workers": {"worker_id", "hostname", "info", "registered_at", "last_seen_at"},
    "resources": {"sha256", "name", "size", "created_at"},
    "worker_drains": {"worker_id", "reason", "drained_at"},
}
INDEXES = {
    "tasks_claim": ["state", "task_type", "priority", "created_at", "id"],
    "tasks_list": ["created_at", "id"],
    "tasks_worker": ["worker_id"],
    "tasks_payload": ["payload_sha256"],
    "tasks_result": ["result_sha256"],
    "blobs_sha256": ["sha256"],
}


def _mysql(dsn: str) -> pymysql.connections.Connection:
    url = urllib.parse.urlsplit(dsn)
    return pymysql.connect(
        host=url.hostname, port=url.port or 3306, user=url.username or "",
        password=urllib.parse.unquote(url.password or ""), database=url.path.lstrip("/"),
    )


def db_query(dsn: str, sql: str) -> list[tuple[object, ...]]:
    """Rows of a query run with a plain driver connection, outside the store."""
    if dsn.startswith("sqlite"):
        with sqlite3.connect(dsn.removeprefix("sqlite:///")) as conn:
            return list(conn.execute(sql))
    conn = _mysql(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())
    finally:
        conn.close()


def _columns(dsn: str) -> dict[str, set[str]]:
    if dsn.startswith("sqlite"):
        sql = (
            "SELECT m.name, c.name FROM sqlite_master m, pragma_table_info(m.name) c "
            "WHERE m.type = 'table'"
        )
    else:
        sql = (
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = DATABASE()"
        )
    tables: dict[str, set[str]] = {}
    for table, column in db_query(dsn, sql):
        tables.setdefault(str(table), set()).add(str(column))
    return tables


def _indexes(dsn: str) -> dict[str, list[str]]:
    if dsn.startswith("sqlite"):
        sql = (
            "SELECT i.name, c.name FROM sqlite_master i, pragma_index_info(i.name) c "
            "WHERE i.type = 'index' AND i.sql IS NOT NULL ORDER BY i.name, c.seqno"
        )
    else:
        sql = (
            "SELECT index_name, column_name FROM information_schema.statistics "
            "WHERE table_schema = DATABASE() AND index_name <> 'PRIMARY' "
            "ORDER BY index_name, seq_in_index"
        )
    indexes: dict[str, list[str]] = {}
    for name, column in db_query(dsn, sql):
        indexes.setdefault(str(name), []).append(str(column))
    return indexes


async def test_migrating_a_fresh_database_yields_the_declared_schema(store: Store) -> None:
    assert _columns(store.dsn) == DECLARED
    assert {k: v for k, v in _indexes(store.dsn).items() if k in INDEXES} == INDEXES
    versions = db_query(store.dsn, "SELECT version, name FROM schema_version ORDER BY version")
    assert versions == [(m.version, m.name) for m in migrations.MIGRATIONS]


async def test_opening_again_is_a_no_op(store: Store) -> None:
    # Given a migrated database holding a task
    task, _ = await store.create_task(
        NewTask(
            id="t1", task_type="c2", miner="f01", comment="", priority=0, payload_size=1,
            payload_sha256="ab" * 32, max_attempts=3, created_at=1,
        )
    )
    before = db_query(store.dsn, "SELECT version, name, applied_at FROM schema_version")

    # When a second store opens the same database (twice)
    for _ in range(2):
        again = open_store(store.dsn)
        await again.open()
        try:
            # Then nothing was re-applied and the data is intact
            assert await again.get_task(task.id) == task
        finally:
            await again.close()
    assert db_query(store.dsn, "SELECT version, name, applied_at FROM schema_version") == before
    assert _columns(store.dsn) == DECLARED


async def test_a_schema_newer_than_the_broker_stops_it_saying_to_upgrade(store: Store) -> None:
    # Given a database a newer broker migrated
    newest = migrations.MIGRATIONS[-1].version
    insert = ("INSERT INTO schema_version (version, name, applied_at) "
              f"VALUES ({newest + 1}, 'from the future', 1)")
    if store.dsn.startswith("sqlite"):
        db_query(store.dsn, insert)
    else:
        conn = _mysql(store.dsn)
        try:
            with conn.cursor() as cur:
                cur.execute(insert)
            conn.commit()
        finally:
            conn.close()
    # When this broker opens it, it refuses to serve, saying why
    again = open_store(store.dsn)
    with pytest.raises(exceptions.SchemaTooNew, match=(
            f"schema is version {newest + 1}, newer than this broker knows \\({newest}\\)")):
        await again.open()
    await again.close()


@pytest.mark.parametrize(
    ("change", "detail", "kind"),
    [
        ({"port": 1}, "is unreachable: .*Can't connect.* Is the server running",
         exceptions.StoreUnavailable),
        ({"password": "wrong-s3cret"}, "the server answered, but refused the login: Access "
         "denied.* Check the user and password in the DSN", exceptions.DatabaseLoginRefused),
        ({"database": "gpuproxy_no_such_db"}, "the server answered, but Unknown database.* "
         "Create it", exceptions.DatabaseMissing),
    ],
)
async def test_an_unusable_mysql_database_is_store_unavailable(
    mariadb_dsn: str, change: dict[str, object], detail: str,
    kind: type[exceptions.StoreUnavailable],
) -> None:
    url = urllib.parse.urlsplit(mariadb_dsn)
    user = url.username or ""
    password = str(change.get("password", urllib.parse.unquote(url.password or "")))
    netloc = f"{user}:{urllib.parse.quote(password)}@{url.hostname}:{change.get('port', url.port)}"
    dsn = f"mysql://{netloc}/{change.get('database', url.path.lstrip('/'))}"
    store = open_store(dsn)

    with pytest.raises(exceptions.StoreUnavailable, match=detail) as info:
        await store.open()

    assert type(info.value) is kind  # each a StoreUnavailable: a broker start fails with it
    assert isinstance(info.value.__cause__, pymysql.err.OperationalError)
    assert "wrong-s3cret" not in str(info.value)


async def test_an_unusable_sqlite_file_is_store_unavailable(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a-file").write_text("")
    (tmp_path / "garbage.db").write_bytes(b"this is not a database" * 100)

    for dsn in (f"sqlite:///{tmp_path}/a-file/x.db", f"sqlite:///{tmp_path}/garbage.db"):
        store = open_store(dsn)
        with pytest.raises(exceptions.StoreUnavailable, match=str(tmp_path)):
            await store.open()


async def test_a_damaged_sqlite_file_says_what_to_do(tmp_path: pathlib.Path) -> None:
    (tmp_path / "damaged.db").write_bytes(b"this is not a database" * 100)
    store = open_store(f"sqlite:///{tmp_path}/damaged.db")
    with pytest.raises(exceptions.SqliteUnusable) as info:
        await store.open()
    message = str(info.value)
    assert f"SQLite database {tmp_path}/damaged.db cannot be used: file is not a " \
        "database" in message
    assert "restore it from a backup, or move it aside" in message
    assert "server" not in message


def test_a_sqlite_dsn_with_two_slashes_is_refused_saying_how_to_write_it() -> None:
    with pytest.raises(exceptions.ConfigError, match="three slashes"):
        open_store("sqlite://relative.db")


def test_a_mysql_dsn_takes_charset_utf8mb4_and_refuses_options_it_would_ignore() -> None:
    from broker.store import mysql

    _, args = mysql._parse("mysql://root@127.0.0.1:3306/test?charset=utf8mb4")
    assert (args["db"], args["charset"]) == ("test", "utf8mb4")
    with pytest.raises(exceptions.ConfigError, match="'ssl=true'"):
        mysql._parse("mysql://root@127.0.0.1:3306/test?ssl=true")


@pytest.mark.parametrize("dsn", ["mysql://u:p@ss/w:rd@127.0.0.1:3306/db",
                                 "mysql://u:se#cret@127.0.0.1:3306/db",
                                 "mysql://u:se?cret@127.0.0.1:3306/db",
                                 "mysql://u:se[cret@127.0.0.1:3306/db"])
def test_a_password_that_needs_percent_encoding_is_refused_without_repeating_it(
    dsn: str,
) -> None:
    from broker.store import mysql

    with pytest.raises(exceptions.ConfigError, match="percent-encode") as info:
        mysql._parse(dsn)
    assert not {"rd", "cret"} & set(re.split(r"\W", str(info.value)))
    # Encoded, the same password is read whole, and masked in what the broker says
    masked, args = mysql._parse("mysql://u:p%40ss%2Fw%3Ard@127.0.0.1:3306/db")
    assert (args["password"], args["host"], args["db"]) == ("p@ss/w:rd", "127.0.0.1", "db")
    assert masked == "mysql://u:***@127.0.0.1:3306/db"
    with pytest.raises(exceptions.ConfigError, match="port 99999 is not from 1 to 65535"):
        mysql._parse("mysql://u:pw@127.0.0.1:99999/db")
