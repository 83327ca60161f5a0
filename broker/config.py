"""Broker settings: one frozen dataclass, validated field by field, built by the CLI."""

from __future__ import annotations

import dataclasses
import pathlib

from broker import exceptions
from broker.tls import ServerTls

GIB = 1024**3
#: The most attempts a task may have: far above any sane retry policy, and inside the
#: protocol's and the tables' 32-bit fields.
MAX_ATTEMPTS = 1000


def default_home() -> pathlib.Path:
    return pathlib.Path.home() / ".gpuproxy"


def _check_listen(value: str, field: str = "url") -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise exceptions.ConfigError(
            field=field, detail=f"{value!r} is not HOST:PORT (for example 0.0.0.0:18888)"
        )


def _check_positive(name: str, value: float) -> None:
    if value <= 0:
        raise exceptions.ConfigError(field=name, detail=f"must be positive, got {value}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BrokerConfig:
    listen: str = "127.0.0.1:18888"
    db_dsn: str = ""  #: "" means sqlite in the home folder
    resource_type: str = "fs"  #: fs (a folder, NFS in production) or db
    fs_resource_path: str = ""  #: "" means payloads/ in the home folder
    max_payload_bytes: int = GIB
    default_max_attempts: int = 3
    lease_s: float = 60.0  #: a worker that stops heartbeating loses its task after this
    retry_backoff_s: float = 5.0  #: first wait before a failed attempt is retried, then doubled
    retry_backoff_max_s: float = 300.0
    type_max_attempts: tuple[tuple[str, int], ...] = ()  #: per task type, over the default
    type_timeout_s: tuple[tuple[str, float], ...] = ()  #: longest a type may run per attempt
    orphan_age_s: float = 3600.0  #: temp files and unreferenced payloads older than this go
    retention_s: float = 7 * 24 * 3600.0  #: finished and errored tasks are kept this long
    clean_interval_s: float = 300.0
    metrics_listen: str = ""  #: HOST:PORT of the Prometheus endpoint; "" for none
    metrics_refresh_s: float = 5.0  #: how often the task counts are read for the metrics
    watch_poll_s: float = 1.0  #: how soon a watch sees changes made by another broker
    #: Calls must carry this (broker.access); "" lets any caller in.
    token: str = dataclasses.field(default="", repr=False)
    #: Serve TLS only, with this certificate and key; None: plain.
    tls: ServerTls | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        _check_listen(self.listen)
        if self.metrics_listen:
            _check_listen(self.metrics_listen, "metrics-url")
        if self.resource_type not in ("fs", "db"):
            raise exceptions.ConfigError(
                field="resource-type", detail=f"{self.resource_type!r} is neither fs nor db"
            )
        if not 1 <= self.default_max_attempts <= MAX_ATTEMPTS:
            raise exceptions.ConfigError(
                field="max-attempts",
                detail=f"must be 1 to {MAX_ATTEMPTS} (3 is the default), got "
                f"{self.default_max_attempts}")
        for task_type, n in self.type_max_attempts:
            if not 1 <= n <= MAX_ATTEMPTS:
                raise exceptions.ConfigError(
                    field="type-max-attempts",
                    detail=f"{task_type}={n}: must be 1 to {MAX_ATTEMPTS}")
        for task_type, t in self.type_timeout_s:
            _check_positive(f"type-timeout-s {task_type}", t)
        for name in ("max_payload_bytes", "lease_s", "retry_backoff_s", "retry_backoff_max_s",
                     "orphan_age_s", "retention_s", "clean_interval_s", "watch_poll_s",
                     "metrics_refresh_s"):
            _check_positive(name.replace("_", "-"), getattr(self, name))

    def max_attempts_for(self, task_type: str) -> int:
        return dict(self.type_max_attempts).get(task_type, self.default_max_attempts)

    @property
    def db_answer_s(self) -> float:
        """How long a database server may take to answer before it is taken as unreachable:
        half a lease (the housekeeper must be able to act before leases are due), within 5 to
        30 s."""
        return min(30.0, max(5.0, self.lease_s / 2))

    @property
    def heartbeat_s(self) -> float:
        # Three heartbeats per lease: one lost message never costs a task.
        return self.lease_s / 3

    @property
    def dsn(self) -> str:
        return self.db_dsn or f"sqlite:///{default_home() / 'gpuproxy.db'}"

    @property
    def payload_path(self) -> str:
        return self.fs_resource_path or str(default_home() / "payloads")
