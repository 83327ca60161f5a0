"""Errors of the broker. Each class docstring is the default message, phrased as the fix."""

from __future__ import annotations

from typing import Any


class DocumentedError(Exception):
    """An error whose message, unless given, is its class docstring with the keyword
    arguments filled in (they also become attributes). The root of every package's errors."""

    def __init__(self, message: str | None = None, **attrs: Any) -> None:
        self.__dict__.update(attrs)
        # Docstrings wrap over lines; the message is one line.
        text = message or " ".join((self.__doc__ or "").split()).format(**attrs)
        super().__init__(text)


#: Trailing metadata of a request the broker refused: the error's class name. A client tells by
#: it the broker's own UNAVAILABLE (its database is away) from a connection that found no broker.
ERROR_METADATA_KEY = "gpuproxy-error"


class BrokerError(DocumentedError):
    """The broker failed: see the log for details."""


# Bad input from a client (INVALID_ARGUMENT).
class InvalidArgument(BrokerError):
    """Invalid request: {detail}"""


class ChecksumMismatch(InvalidArgument):
    """Payload sha256 is {actual} but the header said {expected}: the upload was rejected and
    nothing was kept; check that the file did not change while it was sent, then submit again."""


class TruncatedUpload(InvalidArgument):
    """Payload ended after {received} of the {expected} bytes the header announced: nothing was
    kept; submit again."""


class OversizedUpload(InvalidArgument):
    """Payload sent more than the {expected} bytes the header announced: nothing was kept; send the
    real size in the header."""


# NOT_FOUND
class TaskNotFound(BrokerError):
    """No task {task_id}: check the id with `gpuproxy tasks list` (a task that ended longer
    ago than the broker's --retention-s was deleted, with its result)."""


class ResultNotFound(BrokerError):
    """Task {task_id} has no result: it is {state}; only finished tasks have one."""


class PayloadDropped(BrokerError):
    """Task {task_id} is finished, and its payload was dropped then (nothing needs it any
    more); its result is kept: `gpuproxy tasks result {task_id} -o FILE`."""


class PayloadNotFound(BrokerError):
    """Payload {sha256} is not stored: it was cleaned up or never uploaded; submit the task
    again."""


# DATA_LOSS
class PayloadDamagedInStore(BrokerError):
    """The stored payload of task {task_id} was damaged ({detail}; a disk or NFS fault, or an
    edit) and is removed: submit the same input again to store it anew (the same file, type
    and miner), then `gpuproxy tasks reset {task_id}`."""


class ResourceNotFound(BrokerError):
    """No resource {sha256} on this broker: upload it (`gpuproxy keys upload FILE`) or put the file
    in the worker's --params-dir."""


class WorkerNotFound(BrokerError):
    """No worker {worker_id}: check the id with `gpuproxy workers list`."""


# FAILED_PRECONDITION
class ResourceInUse(BrokerError):
    """Key {sha256} is named by task {task_id}, which is not finished: cancel it, or wait for
    it, before removing the key."""


class WorkerOnline(BrokerError):
    """Worker {worker_id} is online: stop it first; an offline worker can be removed."""


class WrongState(BrokerError):
    """Task {task_id} is {state}: {detail}"""


class StaleFence(BrokerError):
    """Task {task_id} is no longer held with fencing token {fence}: it was requeued or cancelled
    and may run elsewhere; this result was refused."""


# ALREADY_EXISTS
class WorkerIdInUse(BrokerError):
    """Worker id {worker_id} is in use by another live worker process (host {hostname}): two
    workers share one state folder, as on a cloned machine or a copied --work-dir. Delete
    state.json in the --work-dir of one of them so that it makes itself a new id."""


class GpuInUse(BrokerError):
    """GPU {uuid} ({name}) is served already by worker {other} (host {hostname}): two workers on
    one card share its memory and slow each other down. Their --lock-dir folders differ (two
    containers, or a flag given to one only): stop one of them, or give both one --lock-dir."""


# RESOURCE_EXHAUSTED
class PayloadTooLarge(BrokerError):
    """Payload of {size} bytes is over the broker's limit of {limit} bytes: raise
    --max-payload-bytes on the broker if this is expected."""


# UNAVAILABLE
class StoreUnavailable(BrokerError):
    """Database {dsn} is unreachable: {detail}. Is the server running and the DSN right?"""


class DatabaseMissing(StoreUnavailable):
    """Database {dsn}: the server answered, but {detail}. Create it (`CREATE DATABASE` with its
    user and grants: deploy/mariadb-setup.sql), or fix the name in the DSN."""


class DatabaseLoginRefused(StoreUnavailable):
    """Database {dsn}: the server answered, but refused the login: {detail}. Check the user and
    password in the DSN and the user's grants on the database (deploy/mariadb-setup.sql)."""


class SchemaTooNew(BrokerError):
    """The database's schema is version {found}, newer than this broker knows ({known}): a newer
    gpuproxy migrated it. Upgrade this broker; every broker sharing a database must run the
    same version (an older one would ignore what the newer schema holds, worker drains say)."""


class SqliteUnusable(StoreUnavailable):
    """SQLite database {path} cannot be used: {detail}. Check that its folder exists and that
    the broker may write there."""


class CannotServeNow(BrokerError):
    """This broker cannot serve now: {why}. A worker that knows other brokers goes on through
    one of them."""


class PayloadStoreUnavailable(BrokerError):
    """Payload folder {path} cannot be used: {detail}. Check that it exists, is mounted and is
    writable by the broker."""


class ConfigError(BrokerError):
    """Invalid setting {field}: {detail}"""


# INTERNAL: the server answered but would not store a value (a broker bug or a server limit)
class StoreRefused(BrokerError):
    """Database {dsn} refused a write: {detail}. Check the server's limits (max_allowed_packet,
    column sizes) and its log."""


# Raised on the client side (CLI, plugin, worker) from a broker's answer.
class BrokerUnreachable(BrokerError):
    """No broker at {url}: is `gpuproxy run` started there, and is the address right? ({detail})"""


class TlsFailed(BrokerError):
    """TLS with the broker at {url} cannot work: {advice} ({detail})"""


class NotABroker(BrokerError):
    """The server at {url} is not a gpuproxy broker, or one too old for this command ({detail}):
    check the address and port, and that the broker runs the same version."""


class NoBrokerAnswered(BrokerUnreachable):
    """None of the brokers {url} could take the call: {detail}"""


class BrokerCannotServe(BrokerUnreachable):
    """The broker at {url} answered but cannot serve now: {detail}"""


class AccessDenied(BrokerError):
    """The broker at {url} refused the call: {detail}"""


class RemoteError(BrokerError):
    """{detail}"""
