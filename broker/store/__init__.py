"""Durable task storage: one interface, MariaDB/MySQL and SQLite implementations."""

from __future__ import annotations

from broker.store.base import Store


def open_store(dsn: str, answer_timeout_s: float | None = None) -> Store:
    """The store for a DSN: sqlite:///relative/path, sqlite:////abs/path, mysql://u:p@h:port/db.

    The caller awaits `store.open()` (connects and migrates) before use. A database server
    that gives no answer for `answer_timeout_s` (default: mysql.TX_TIMEOUT_S) is taken as
    unreachable.
    """
    from broker import exceptions

    if dsn.startswith("sqlite://") and not dsn.startswith("sqlite:///"):
        raise exceptions.ConfigError(
            field="db-dsn", detail=f"{dsn!r}: write sqlite:///relative/path or "
            "sqlite:////absolute/path (three slashes, then the path); earlier versions took "
            f"this DSN as the file ./sqlite:/{dsn.removeprefix('sqlite://')}: move it there")
    if dsn.startswith("sqlite://"):
        from broker.store.sqlite import SqliteStore

        return SqliteStore(dsn)
    if dsn.startswith(("mysql://", "mariadb://")):
        from broker.store.mysql import MysqlStore

        return MysqlStore(dsn, answer_timeout_s=answer_timeout_s)
    raise exceptions.ConfigError(
        field="db-dsn",
        detail=f"{dsn!r} is neither sqlite:///PATH nor mysql://USER:PASS@HOST:PORT/DB",
    )


__all__ = ["Store", "open_store"]
