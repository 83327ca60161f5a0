"""The MariaDB/MySQL store: an aiomysql pool, READ COMMITTED, short explicit transactions.

Claims and requeues lock their rows with SELECT ... FOR UPDATE SKIP LOCKED, so brokers and
connections never wait for each other's candidates and never take the same task. Deadlocks and
lock-wait timeouts roll the whole transaction back and run it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import re
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import aiomysql

from broker import exceptions
from broker.store import migrations, queries
from broker.store.sql import SqlStore, Tx

T = TypeVar("T")

#: Server errors after which the transaction is run again: deadlock, lock wait timeout.
RETRY_CODES = frozenset({1213, 1205})
TX_ATTEMPTS = 5
#: Longest a transaction or read may take, its connection's wait included. Every statement
#: here is short; one that gets no answer for this long is a link gone silent (a dead host or
#: a dropped route: the kernel would take about 15 minutes to say so), and meanwhile no lease
#: would expire: the call fails, the broker says the database is unreachable, and the
#: connection is dropped.
TX_TIMEOUT_S = 30.0
MIGRATE_LOCK = "gpuproxy.migrate"
MIGRATE_LOCK_TIMEOUT_S = 60
#: Server errors that refuse one statement's values, not the database: packet too large, data
#: too long, out of range, incorrect value.
REFUSED_CODES = frozenset({1153, 1406, 1264, 1366})
#: The server answered but the DSN's database does not exist (ER_BAD_DB_ERROR), or refused the
#: login (ER_ACCESS_DENIED_ERROR, ER_DBACCESS_DENIED_ERROR): said as such, not as "unreachable".
UNKNOWN_DATABASE = 1049
LOGIN_REFUSED_CODES = frozenset({1045, 1044})
#: Errors of the driver, translated by `_translated`: the database cannot be used (network,
#: login, server), or it refused a value (REFUSED_CODES, DataError).
_DRIVER_ERRORS = (
    aiomysql.OperationalError, aiomysql.InterfaceError, aiomysql.InternalError,
    aiomysql.DataError,
)


@functools.lru_cache(maxsize=1024)
def _pyformat(sql: str) -> str:
    return sql.replace("?", "%s")


class _MysqlTx:
    def __init__(self, cur: Any) -> None:
        self._cur = cur

    async def one(self, sql: str, args: Sequence[Any] = ()) -> queries.Row | None:
        await self._cur.execute(_pyformat(sql), tuple(args) or None)
        return cast("queries.Row | None", await self._cur.fetchone())

    async def all(self, sql: str, args: Sequence[Any] = ()) -> list[queries.Row]:
        await self._cur.execute(_pyformat(sql), tuple(args) or None)
        return list(await self._cur.fetchall())

    async def run(self, sql: str, args: Sequence[Any] = ()) -> int:
        return int(await self._cur.execute(_pyformat(sql), tuple(args) or None))


class MysqlStore(SqlStore):
    sql = queries.MYSQL

    def __init__(self, dsn: str, *, max_connections: int = 10,
                 answer_timeout_s: float | None = None) -> None:
        self.dsn = dsn
        self.answer_timeout_s = answer_timeout_s or TX_TIMEOUT_S
        self.masked_dsn, self._connect_args = _parse(dsn)
        self.max_connections = max_connections
        self._pool: Any = None

    async def open(self) -> None:
        try:
            async with self._bounded(MIGRATE_LOCK_TIMEOUT_S + self.answer_timeout_s):
                await self._migrate()
            self._pool = await aiomysql.create_pool(
                minsize=1, maxsize=self.max_connections, pool_recycle=3600,
                **self._connect_args,
            )
        except _DRIVER_ERRORS as exc:
            raise self._translated(exc) from exc

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.close()
            await pool.wait_closed()

    async def _write(self, change: Callable[[Tx], Awaitable[T]]) -> T:
        attempt = 1
        while True:
            try:
                async with self._bounded():
                    return await self._transaction(change)
            except _DRIVER_ERRORS as exc:
                if _code(exc) not in RETRY_CODES or attempt == TX_ATTEMPTS:
                    raise self._translated(exc) from exc
            # Jittered, growing pause so that the two sides of a deadlock do not meet again.
            await asyncio.sleep(random.uniform(0.005, 0.02) * attempt)
            attempt += 1

    async def _transaction(self, change: Callable[[Tx], Awaitable[T]]) -> T:
        async with self._connection() as conn:
            await conn.begin()
            try:
                async with conn.cursor() as cur:
                    result = await change(_MysqlTx(cur))
                await conn.commit()
            except Exception:
                try:
                    await conn.rollback()
                except Exception:
                    conn.close()  # the pool drops a closed connection
                raise
            return result

    async def _read(self, query: Callable[[Tx], Awaitable[T]]) -> T:
        try:
            async with self._bounded(), self._connection() as conn, conn.cursor() as cur:
                return await query(_MysqlTx(cur))
        except _DRIVER_ERRORS as exc:
            raise self._translated(exc) from exc

    @contextlib.asynccontextmanager
    async def _bounded(self, seconds: float | None = None) -> AsyncIterator[None]:
        """At most `seconds` (the store's answer timeout), or StoreUnavailable; the connection
        in use is closed on the way out (`_connection`: the cancellation reaches it), so that a
        late reply is never read as the answer to another statement."""
        seconds = seconds or self.answer_timeout_s
        try:
            async with asyncio.timeout(seconds):
                yield
        except TimeoutError:
            raise exceptions.StoreUnavailable(
                dsn=self.masked_dsn, detail=f"no answer in {seconds:g} s (a network link gone "
                "silent, a server that hangs, or every pooled connection waiting on one)"
            ) from None

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        if self._pool is None:
            raise exceptions.StoreUnavailable(dsn=self.masked_dsn, detail="the store is not open")
        async with self._pool.acquire() as conn:
            try:
                yield conn
            except BaseException as exc:
                if not isinstance(exc, Exception):
                    # Cancelled half-way: the connection may hold an unread reply.
                    conn.close()
                raise

    async def _migrate(self) -> None:
        """Apply missing schema versions on a connection of its own, one broker at a time."""
        conn = await aiomysql.connect(**self._connect_args)
        try:
            async with conn.cursor() as cur:
                tx = _MysqlTx(cur)
                await self._check_server(tx)
                await tx.run("SET SESSION sql_notes = 0")  # no notes for IF NOT EXISTS
                got = await tx.one("SELECT GET_LOCK(?, ?)", [MIGRATE_LOCK, MIGRATE_LOCK_TIMEOUT_S])
                if got is None or got[0] != 1:
                    raise exceptions.StoreUnavailable(
                        dsn=self.masked_dsn,
                        detail=f"another broker held the schema migration lock {MIGRATE_LOCK!r} "
                        f"for {MIGRATE_LOCK_TIMEOUT_S} s",
                    )
                await migrations.apply(tx, mysql=True)
                await tx.one("SELECT RELEASE_LOCK(?)", [MIGRATE_LOCK])
        finally:
            conn.close()  # also releases the lock if the migration failed

    async def _check_server(self, tx: _MysqlTx) -> None:
        row = await tx.one("SELECT VERSION()")
        if problem := _version_problem(str(row[0]) if row else ""):
            raise exceptions.StoreUnavailable(dsn=self.masked_dsn, detail=problem)

    def _translated(self, exc: BaseException) -> exceptions.BrokerError:
        args = exc.args
        detail = f"{args[1]} (error {args[0]})" if len(args) == 2 else str(exc)
        if _code(exc) in REFUSED_CODES or isinstance(exc, aiomysql.DataError):
            return exceptions.StoreRefused(dsn=self.masked_dsn, detail=detail)
        if _code(exc) == UNKNOWN_DATABASE:
            return exceptions.DatabaseMissing(dsn=self.masked_dsn, detail=detail)
        if _code(exc) in LOGIN_REFUSED_CODES:
            return exceptions.DatabaseLoginRefused(dsn=self.masked_dsn, detail=detail)
        return exceptions.StoreUnavailable(dsn=self.masked_dsn, detail=detail)


def _code(exc: BaseException) -> int:
    return exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0


def _version_problem(version: str) -> str:
    """Why a server cannot hold the queue ("" when it can): SKIP LOCKED needs MariaDB 10.6 or
    MySQL 8.0."""
    match = re.match(r"(\d+)\.(\d+)", version)
    needed = (10, 6) if "mariadb" in version.lower() else (8, 0)
    if match is None or (int(match[1]), int(match[2])) >= needed:
        return ""
    return f"server {version} lacks SELECT ... SKIP LOCKED: use MariaDB >= 10.6 or MySQL >= 8.0"


DSN_ESCAPES = ("the DSN does not read as mysql://USER:PASS@HOST:PORT/DB: percent-encode the "
               "characters @ / : # ? [ ] % in the user name and password (%40 %2F %3A %23 %3F "
               "%5B %5D %25)")


def _parse(dsn: str) -> tuple[str, dict[str, Any]]:
    """The DSN with its password masked, and the arguments of aiomysql.connect."""
    try:
        url = urllib.parse.urlsplit(dsn)
    except ValueError:  # "Invalid IPv6 URL": a [ or ] in the password
        raise exceptions.ConfigError(field="db-dsn", detail=DSN_ESCAPES) from None
    if "@" in url.path + url.query + url.fragment or url.fragment:
        # A password with / # ? in it cut short: what follows must not reach a log
        raise exceptions.ConfigError(field="db-dsn", detail=DSN_ESCAPES)
    try:
        port = url.port or 3306
    except ValueError:  # its text could hold a piece of the password: not repeated
        written = url.netloc.rpartition("@")[2].rpartition(":")[2]
        detail = (f"port {written} is not from 1 to 65535" if written.isdigit() else
                  DSN_ESCAPES)
        raise exceptions.ConfigError(field="db-dsn", detail=detail) from None
    options = urllib.parse.parse_qs(url.query, keep_blank_values=True)
    if {k: v for k, v in options.items() if (k, v) != ("charset", ["utf8mb4"])}:
        # Refused rather than ignored: an operator who wrote ssl=... must not get a plain link.
        raise exceptions.ConfigError(
            field="db-dsn", detail=f"options after '?' are not supported ({url.query!r}; the "
            "connection always uses charset utf8mb4): write mysql://USER:PASS@HOST:PORT/DB")
    database = url.path.lstrip("/")
    if url.scheme not in ("mysql", "mariadb") or not database:
        raise exceptions.ConfigError(
            field="db-dsn", detail="expected mysql://USER:PASS@HOST:PORT/DB"
        )
    masked = dsn
    if url.password is not None:
        user = url.netloc.rpartition("@")[0].partition(":")[0]
        masked = url._replace(netloc=f"{user}:***@{url.netloc.rpartition('@')[2]}").geturl()
    args = {
        "host": url.hostname or "127.0.0.1",
        "port": port,
        "user": urllib.parse.unquote(url.username or ""),
        "password": urllib.parse.unquote(url.password or ""),
        "db": database,
        "charset": "utf8mb4",
        "autocommit": True,
        "connect_timeout": 5,
        "init_command": "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
    }
    return masked, args
