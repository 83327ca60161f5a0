"""The SQLite store: one file, one connection per store, write transactions BEGIN IMMEDIATE.

BEGIN IMMEDIATE takes the database's write lock before the first read, so the read-decide-write
of a claim or a requeue is serialized across connections and processes; WAL lets readers run
meanwhile, and busy_timeout makes a writer wait for the lock instead of failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import sqlite3
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import aiosqlite

from broker import exceptions
from broker.store import migrations, queries
from broker.store.sql import SqlStore, Tx

T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000


class _SqliteTx:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def one(self, sql: str, args: Sequence[Any] = ()) -> queries.Row | None:
        async with self._conn.execute(sql, args) as cur:
            row = await cur.fetchone()
        return None if row is None else tuple(row)

    async def all(self, sql: str, args: Sequence[Any] = ()) -> list[queries.Row]:
        async with self._conn.execute(sql, args) as cur:
            return [tuple(r) for r in await cur.fetchall()]

    async def run(self, sql: str, args: Sequence[Any] = ()) -> int:
        async with self._conn.execute(sql, args) as cur:
            return cur.rowcount


class SqliteStore(SqlStore):
    sql = queries.SQLITE

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.path = pathlib.Path(dsn.removeprefix("sqlite:///"))
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()  # one transaction at a time on the one connection

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = await aiosqlite.connect(self.path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise self._unavailable(exc) from exc
        self._conn = conn
        try:
            with self._errors():
                await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                await _enable_wal(conn)
                await conn.execute("PRAGMA foreign_keys = ON")
            await self._write(lambda tx: migrations.apply(tx, mysql=False))
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        async with self._lock:  # after the transaction in flight, if any
            if self._conn is not None:
                conn, self._conn = self._conn, None
                await conn.close()

    async def _write(self, change: Callable[[Tx], Awaitable[T]]) -> T:
        # Shielded: a caller cancelled half-way must not leave the connection inside a
        # transaction; the transaction (short by design) runs to its end.
        return await asyncio.shield(self._transaction(change))

    async def _transaction(self, change: Callable[[Tx], Awaitable[T]]) -> T:
        async with self._lock:
            conn = self._connection()
            with self._errors():
                await conn.execute("BEGIN IMMEDIATE")
                try:
                    result = await change(_SqliteTx(conn))
                except BaseException:
                    if conn.in_transaction:  # some errors already rolled back
                        await conn.execute("ROLLBACK")
                    raise
                await conn.execute("COMMIT")
                return result

    async def _read(self, query: Callable[[Tx], Awaitable[T]]) -> T:
        async with self._lock:
            with self._errors():
                return await query(_SqliteTx(self._connection()))

    def _connection(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise exceptions.StoreUnavailable(dsn=self.dsn, detail="the store is not open")
        return self._conn

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Errors of the file (locked, unreadable, full, not a database) make the store
        unavailable; any other database error is a bug and passes unchanged."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError:
                raise self._unavailable(exc) from exc
            raise

    def _unavailable(self, exc: BaseException) -> exceptions.StoreUnavailable:
        detail = str(exc) or type(exc).__name__
        if "not a database" in detail:
            detail += (" (the file is damaged or another program's: restore it from a backup, "
                       "or move it aside and a new one is made)")
        return exceptions.SqliteUnusable(path=self.path.absolute(), detail=detail)


async def _enable_wal(conn: aiosqlite.Connection) -> None:
    """Switch to WAL. Another connection opening a new file at the same moment makes this
    fail with SQLITE_BUSY at once (busy_timeout does not apply), so wait here instead."""
    deadline = asyncio.get_running_loop().time() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            await conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
            if not busy or asyncio.get_running_loop().time() > deadline:
                raise
        await asyncio.sleep(0.01)
