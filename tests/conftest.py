"""Fixtures shared by every tier: real databases, never mocks.

MariaDB is reached at GPUPROXY_TEST_MYSQL (default mysql://root:@127.0.0.1:3306/test). Each test
gets its own fresh database, dropped afterwards. When the server is unreachable the MariaDB
variants skip locally and fail under CI=true.
"""

from __future__ import annotations

import os
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pymysql
import pytest

from broker.store import Store, open_store
from worker.groth16 import devsetup

MYSQL_URL = os.environ.get("GPUPROXY_TEST_MYSQL", "mysql://root:@127.0.0.1:3306/test")
BACKENDS = ["sqlite", "mariadb"]


def _mysql_server() -> dict[str, object]:
    url = urllib.parse.urlsplit(MYSQL_URL)
    return {
        "host": url.hostname or "127.0.0.1",
        "port": url.port or 3306,
        "user": urllib.parse.unquote(url.username or "root"),
        "password": urllib.parse.unquote(url.password or ""),
    }


def _mysql_admin() -> pymysql.connections.Connection:
    try:
        return pymysql.connect(**_mysql_server(), connect_timeout=3)  # type: ignore[arg-type]
    except pymysql.err.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"MariaDB at {MYSQL_URL} is required under CI=true: {exc}")
        pytest.skip(f"MariaDB at {MYSQL_URL} unreachable: {exc}")


@pytest.fixture
def mariadb_dsn() -> Iterator[str]:
    """A DSN of a brand-new, empty MariaDB database."""
    name = f"gpuproxy_t_{uuid.uuid4().hex[:12]}"
    admin = _mysql_admin()
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
    s = _mysql_server()
    pw = urllib.parse.quote(str(s["password"]), safe="")
    try:
        yield f"mysql://{s['user']}:{pw}@{s['host']}:{s['port']}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


@pytest.fixture
def sqlite_dsn(tmp_path: object) -> str:
    """A DSN of a new SQLite file (a real file, not :memory:)."""
    return f"sqlite:///{tmp_path}/gpuproxy.db"


@pytest.fixture(params=BACKENDS)
def store_dsn(request: pytest.FixtureRequest) -> str:
    """The same test body runs against SQLite and MariaDB."""
    return str(request.getfixturevalue(f"{request.param}_dsn"))


@pytest.fixture
async def store(store_dsn: str) -> AsyncIterator[Store]:
    s = open_store(store_dsn)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture(scope="session")
def groth16_demo(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[int, int], devsetup.DemoFiles]:
    """A factory of demo circuits (chain circuit, INSECURE dev key, witness, vk) by
    (log2 size, public signals), each written once per session."""
    made: dict[tuple[int, int], devsetup.DemoFiles] = {}

    def make(log_size: int, n_public: int = 1) -> devsetup.DemoFiles:
        if (log_size, n_public) not in made:
            folder = tmp_path_factory.mktemp(f"groth16-{log_size}-{n_public}")
            made[log_size, n_public] = devsetup.write_demo(folder, log_size, n_public, seed=7)
        return made[log_size, n_public]

    return make
