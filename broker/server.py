"""The broker process: the gRPC server with health and reflection, and its background loops."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from broker import access, cleaner, clock, exceptions, housekeeper, metrics
from broker.config import BrokerConfig
from broker.dispatcher import Dispatcher
from broker.models import TaskFilter, TaskState
from broker.payloads import PayloadStore, open_payload_store
from broker.service import TaskBrokerService
from broker.store import Store, open_store
from broker.tasks import TaskManager
from broker.watch import ChangeHub
from broker.workers import WorkerService
from protos.gpuproxy.v1 import tasks_pb2, tasks_pb2_grpc, workers_pb2, workers_pb2_grpc

log = structlog.get_logger(__name__)

MAX_MESSAGE_BYTES = 4 * 1024 * 1024

SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Notice dead peers on long-lived streams; clients may ping every 20 s.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.ping_timeout_ms", 10_000),  # gRPC's default of 60 s would outlast the timeout
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.so_reuseport", 0),
]


class Broker:
    """Everything one broker process runs; `start` then `wait` (or `stop`)."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.health: health.aio.HealthServicer | None = None
        self.store: Store | None = None
        self.dispatcher: Dispatcher | None = None
        self.tasks: TaskManager | None = None
        self.server: grpc.aio.Server | None = None
        self.worker_service: WorkerService | None = None
        self.loops: list[asyncio.Task[None]] = []
        self._served: tuple[str, ...] = ()  #: the service names health reports on
        self._down: set[str] = set()  #: the parts found down when last told (Serving.down)
        self.port = 0

    async def start(self) -> None:
        cfg = self.config
        store = open_store(cfg.dsn, answer_timeout_s=cfg.db_answer_s)
        await store.open()
        self.store = store
        self.payloads = open_payload_store(cfg.resource_type, cfg.payload_path, store)
        await self.payloads.open()
        await _check_payloads_reachable(store, self.payloads, cfg)
        hub = ChangeHub()
        self.tasks = TaskManager(store=store, payloads=self.payloads, config=cfg, hub=hub)
        self.dispatcher = Dispatcher(store, lease_s=cfg.lease_s)
        hub.listen(self.dispatcher.task_changed)
        self.server = grpc.aio.server(
            options=SERVER_OPTIONS,
            interceptors=[access.TokenCheck(cfg.token)] if cfg.token else None)
        tasks_pb2_grpc.add_TaskBrokerServicer_to_server(TaskBrokerService(self.tasks), self.server)
        self.serving = housekeeper.Serving(self._serving)
        worker_service = WorkerService(self.tasks, self.dispatcher, cfg, self.serving)
        self.worker_service = worker_service
        workers_pb2_grpc.add_WorkerServiceServicer_to_server(worker_service, self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (
            tasks_pb2.DESCRIPTOR.services_by_name["TaskBroker"].full_name,
            workers_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, self.server)
        _check_listen(cfg.listen)
        try:
            if cfg.tls is None:
                self.port = self.server.add_insecure_port(cfg.listen)
            else:
                self.port = self.server.add_secure_port(cfg.listen, grpc.ssl_server_credentials(
                    [(cfg.tls.private_key, cfg.tls.cert_chain)]))
        except RuntimeError:  # grpcio's "Failed to bind"
            self.port = 0
        worker_service.name = _name(cfg.listen, self.port)
        if self.port == 0:
            raise exceptions.ConfigError(
                field="url", detail=f"cannot listen on {cfg.listen}: another program (a broker?) "
                "holds the port, or the host is not an address of this machine")
        await self.server.start()
        if cfg.metrics_listen:
            try:
                metrics.serve(cfg.metrics_listen)
            except OSError as exc:
                raise exceptions.ConfigError(
                    field="metrics-url", detail=f"cannot serve metrics on {cfg.metrics_listen}: "
                    f"{exc.strerror or exc}") from exc
        # Workers could not heartbeat while this broker was down: give them a lease to come back.
        # Only now that it serves: a broker failing to start again and again (its port taken)
        # must not keep the leases of dead workers' tasks alive for every other broker.
        await housekeeper.grant_grace(store, cfg.lease_s)
        self._served = ("", names[0], names[1])
        await self._serving(True)
        self._spawn("dispatcher", self.dispatcher.run_forever)
        self._spawn("housekeeper", lambda: housekeeper.run_forever(
            store, dict(cfg.type_timeout_s), hub.notify, interval_s=min(1.0, cfg.lease_s / 4),
            lease_s=cfg.lease_s, on_store=self.serving.part("database"),
        ))
        self._spawn("payload store watch", lambda: housekeeper.watch_payloads(
            self.payloads, self.serving.part("payloads"), interval_s=min(1.0, cfg.lease_s / 4),
            timeout_s=cfg.db_answer_s))
        self._spawn("clock", lambda: clock.watch_forever(store, cfg.lease_s))
        if cfg.metrics_listen:
            self._spawn("task counts", lambda: metrics.refresh_forever(
                store, interval_s=cfg.metrics_refresh_s))
        self._spawn("cleaner", lambda: cleaner.run_forever(
            store, self.payloads, orphan_age_s=cfg.orphan_age_s,
            retention_s=cfg.retention_s, interval_s=cfg.clean_interval_s,
        ))
        log.info("broker started", listen=cfg.listen, port=self.port,
                 db=_masked(cfg.dsn), resource_type=cfg.resource_type,
                 payload_path=cfg.payload_path if cfg.resource_type == "fs" else None,
                 access="token" if cfg.token else "open to any caller (no --token-file)",
                 tls=cfg.tls is not None)

    async def _serving(self, store_works: bool) -> None:
        """Health says NOT_SERVING while the database is unreachable or the payload folder
        gone (the housekeeper, which checks both every second, tells): a load balancer or
        probe then looks at them, not at a broker that answers."""
        assert self.health is not None
        status = (health_pb2.HealthCheckResponse.SERVING if store_works
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in self._served:
            await self.health.set(name, status)
        # Workers that know other brokers go on through them, once as a part goes: their
        # heartbeats are stored there (the database), or their payloads and results go through
        # another host's mount of the folder (which may be whole). Only while the database is
        # down are they refused: a folder gone for every broker must not leave them nowhere.
        went, self._down = self.serving.down - self._down, set(self.serving.down)
        if went and self.dispatcher and (moved := self.dispatcher.close_movable()):
            log.warning("this broker cannot serve: the workers that know other brokers were "
                        "sent to them", workers=moved, why=self.serving.why_not())

    def _spawn(self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.loops.append(asyncio.create_task(loop(), name=name))

    async def wait(self) -> int:
        """Until a signal arrives (0) or a background loop dies (1: the process says so)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        stopper = asyncio.create_task(stop.wait(), name="signal")
        done, _ = await asyncio.wait([stopper, *self.loops], return_when=asyncio.FIRST_COMPLETED)
        status = 0
        for task in done:
            if task is not stopper:
                exc = task.exception() if not task.cancelled() else None
                log.error("background loop stopped; shutting down", loop=task.get_name(),
                          exc_info=exc)
                status = 1
        stopper.cancel()
        await self.stop()
        return status

    async def stop(self, grace_s: float = 5.0) -> None:
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        if self.dispatcher is not None:
            self.dispatcher.close_all()
        if self.server is not None:
            await self.server.stop(grace_s)
        for task in self.loops:
            task.cancel()
        for task in self.loops:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.worker_service is not None:
            await self.worker_service.settle(grace_s)
        if self.tasks is not None:
            await self.tasks.settle(grace_s)
        if self.store is not None:
            await self.store.close()
        log.info("broker stopped")


async def _check_payloads_reachable(store: Store, payloads: PayloadStore,
                                    cfg: BrokerConfig) -> None:
    """Brokers sharing a database must share where payloads live: a task submitted through one
    and given to a worker through another fails otherwise ("no payload"). Said at start when
    none of the newest waiting tasks' payloads is here."""
    waiting = await store.list_tasks(TaskFilter(states=(TaskState.INIT, TaskState.RUNNING)), 20)
    if not waiting:
        return
    for task in waiting:
        if await payloads.exists(task.payload_sha256):
            return
    where = (f"--fs-resource-path {cfg.payload_path}" if cfg.resource_type == "fs"
             else "the database (--resource-type db)")
    log.error("none of the payloads of the newest waiting tasks is in " + where + ": brokers "
              "sharing a database must use the same --resource-type and payload folder (one "
              "NFS mount); otherwise these payloads were lost, and their tasks fail when a "
              "worker fetches them (resubmit them)", tasks=len(waiting),
              resource_type=cfg.resource_type)


def _name(listen: str, port: int) -> str:
    """HOST:PORT that names this broker to operators: its host name when it listens on every
    address."""
    host = listen.rpartition(":")[0].strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"{host}:{port}"


def _check_listen(listen: str) -> None:
    """Bind the address once, as the gRPC server will (SO_REUSEADDR, not SO_REUSEPORT), so that
    a port in use is said plainly, before gRPC's own error line."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit() or int(port) == 0:
        return
    try:
        family, kind, proto, _, where = socket.getaddrinfo(
            host or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise exceptions.ConfigError(
            field="url", detail=f"cannot listen on {listen}: {host!r} is not a known host "
            f"({exc.strerror})") from exc
    try:
        probe = socket.socket(family, kind, proto)
    except OSError:
        return  # no such family here (IPv6 switched off): gRPC decides, and says so
    with probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(where)
        except OSError as exc:
            why = {errno.EADDRINUSE: "another program (a broker?) holds the port",
                   errno.EADDRNOTAVAIL: f"{host} is not an address of this machine",
                   errno.EACCES: "ports below 1024 need privileges"}.get(
                       exc.errno or 0, exc.strerror or str(exc))
            raise exceptions.ConfigError(
                field="url", detail=f"cannot listen on {listen}: {why}") from exc


def _masked(dsn: str) -> str:
    """The DSN without its password, for logs."""
    if "@" not in dsn or "://" not in dsn:
        return dsn
    scheme, rest = dsn.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


async def serve(config: BrokerConfig) -> int:
    """Run a broker until SIGTERM/SIGINT; the exit status (non-zero if it failed)."""
    broker = Broker(config)
    try:
        await broker.start()
    except BaseException:
        # Close what did open (an open SQLite connection's thread would keep the process up).
        with contextlib.suppress(Exception):
            if broker.server is not None:
                await broker.server.stop(0)
        with contextlib.suppress(Exception):
            if broker.store is not None:
                await broker.store.close()
        raise
    return await broker.wait()
