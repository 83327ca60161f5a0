import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from protos.gpuproxy.v1 import tasks_pb2 as _tasks_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Gpu(_message.Message):
    __slots__ = ("index", "name", "uuid", "memory_bytes", "mig")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MIG_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    uuid: str
    memory_bytes: int
    mig: int
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., uuid: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., mig: _Optional[int] = ...) -> None: ...

class HeldTask(_message.Message):
    __slots__ = ("task_id", "fence")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    fence: int
    def __init__(self, task_id: _Optional[str] = ..., fence: _Optional[int] = ...) -> None: ...

class Register(_message.Message):
    __slots__ = ("worker_id", "hostname", "addresses", "version", "task_types", "max_tasks", "gpus", "held", "resident_keys", "instance", "other_brokers")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPES_FIELD_NUMBER: _ClassVar[int]
    MAX_TASKS_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_KEYS_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    OTHER_BROKERS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    hostname: str
    addresses: _containers.RepeatedScalarFieldContainer[str]
    version: str
    task_types: _containers.RepeatedScalarFieldContainer[str]
    max_tasks: int
    gpus: _containers.RepeatedCompositeFieldContainer[Gpu]
    held: _containers.RepeatedCompositeFieldContainer[HeldTask]
    resident_keys: _containers.RepeatedScalarFieldContainer[str]
    instance: str
    other_brokers: int
    def __init__(self, worker_id: _Optional[str] = ..., hostname: _Optional[str] = ..., addresses: _Optional[_Iterable[str]] = ..., version: _Optional[str] = ..., task_types: _Optional[_Iterable[str]] = ..., max_tasks: _Optional[int] = ..., gpus: _Optional[_Iterable[_Union[Gpu, _Mapping]]] = ..., held: _Optional[_Iterable[_Union[HeldTask, _Mapping]]] = ..., resident_keys: _Optional[_Iterable[str]] = ..., instance: _Optional[str] = ..., other_brokers: _Optional[int] = ...) -> None: ...

class Capacity(_message.Message):
    __slots__ = ("free", "paused_until", "pause_reason")
    FREE_FIELD_NUMBER: _ClassVar[int]
    PAUSED_UNTIL_FIELD_NUMBER: _ClassVar[int]
    PAUSE_REASON_FIELD_NUMBER: _ClassVar[int]
    free: int
    paused_until: _timestamp_pb2.Timestamp
    pause_reason: str
    def __init__(self, free: _Optional[int] = ..., paused_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., pause_reason: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("held", "resident_keys")
    HELD_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_KEYS_FIELD_NUMBER: _ClassVar[int]
    held: _containers.RepeatedCompositeFieldContainer[HeldTask]
    resident_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, held: _Optional[_Iterable[_Union[HeldTask, _Mapping]]] = ..., resident_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class ReportProgress(_message.Message):
    __slots__ = ("task", "phase", "fraction")
    TASK_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    task: HeldTask
    phase: str
    fraction: float
    def __init__(self, task: _Optional[_Union[HeldTask, _Mapping]] = ..., phase: _Optional[str] = ..., fraction: _Optional[float] = ...) -> None: ...

class ReportFailure(_message.Message):
    __slots__ = ("task", "message", "retryable")
    TASK_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    task: HeldTask
    message: str
    retryable: bool
    def __init__(self, task: _Optional[_Union[HeldTask, _Mapping]] = ..., message: _Optional[str] = ..., retryable: _Optional[bool] = ...) -> None: ...

class ReleaseTask(_message.Message):
    __slots__ = ("task", "reason")
    TASK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    task: HeldTask
    reason: str
    def __init__(self, task: _Optional[_Union[HeldTask, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class WorkerMessage(_message.Message):
    __slots__ = ("register", "capacity", "heartbeat", "progress", "failure", "release")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    register: Register
    capacity: Capacity
    heartbeat: Heartbeat
    progress: ReportProgress
    failure: ReportFailure
    release: ReleaseTask
    def __init__(self, register: _Optional[_Union[Register, _Mapping]] = ..., capacity: _Optional[_Union[Capacity, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., progress: _Optional[_Union[ReportProgress, _Mapping]] = ..., failure: _Optional[_Union[ReportFailure, _Mapping]] = ..., release: _Optional[_Union[ReleaseTask, _Mapping]] = ...) -> None: ...

class Registered(_message.Message):
    __slots__ = ("worker_id", "lease_s", "heartbeat_s")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_S_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    lease_s: float
    heartbeat_s: float
    def __init__(self, worker_id: _Optional[str] = ..., lease_s: _Optional[float] = ..., heartbeat_s: _Optional[float] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("task", "fence", "lease_expires_at")
    TASK_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    task: _tasks_pb2.Task
    fence: int
    lease_expires_at: _timestamp_pb2.Timestamp
    def __init__(self, task: _Optional[_Union[_tasks_pb2.Task, _Mapping]] = ..., fence: _Optional[int] = ..., lease_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Revoke(_message.Message):
    __slots__ = ("task_id", "reason", "fence")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    reason: str
    fence: int
    def __init__(self, task_id: _Optional[str] = ..., reason: _Optional[str] = ..., fence: _Optional[int] = ...) -> None: ...

class BrokerMessage(_message.Message):
    __slots__ = ("registered", "assignment", "revoke")
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    REVOKE_FIELD_NUMBER: _ClassVar[int]
    registered: Registered
    assignment: Assignment
    revoke: Revoke
    def __init__(self, registered: _Optional[_Union[Registered, _Mapping]] = ..., assignment: _Optional[_Union[Assignment, _Mapping]] = ..., revoke: _Optional[_Union[Revoke, _Mapping]] = ...) -> None: ...

class FetchPayloadRequest(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: HeldTask
    def __init__(self, task: _Optional[_Union[HeldTask, _Mapping]] = ...) -> None: ...

class ResultHeader(_message.Message):
    __slots__ = ("task", "size", "sha256")
    TASK_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    task: HeldTask
    size: int
    sha256: str
    def __init__(self, task: _Optional[_Union[HeldTask, _Mapping]] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class UploadResultRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ResultHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[ResultHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("worker_id", "hostname", "addresses", "version", "task_types", "max_tasks", "gpus", "online", "task_ids", "last_seen", "registered_at", "resident_keys", "paused_until", "pause_reason", "drained_at", "drain_reason", "broker")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPES_FIELD_NUMBER: _ClassVar[int]
    MAX_TASKS_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_KEYS_FIELD_NUMBER: _ClassVar[int]
    PAUSED_UNTIL_FIELD_NUMBER: _ClassVar[int]
    PAUSE_REASON_FIELD_NUMBER: _ClassVar[int]
    DRAINED_AT_FIELD_NUMBER: _ClassVar[int]
    DRAIN_REASON_FIELD_NUMBER: _ClassVar[int]
    BROKER_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    hostname: str
    addresses: _containers.RepeatedScalarFieldContainer[str]
    version: str
    task_types: _containers.RepeatedScalarFieldContainer[str]
    max_tasks: int
    gpus: _containers.RepeatedCompositeFieldContainer[Gpu]
    online: bool
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    last_seen: _timestamp_pb2.Timestamp
    registered_at: _timestamp_pb2.Timestamp
    resident_keys: _containers.RepeatedScalarFieldContainer[str]
    paused_until: _timestamp_pb2.Timestamp
    pause_reason: str
    drained_at: _timestamp_pb2.Timestamp
    drain_reason: str
    broker: str
    def __init__(self, worker_id: _Optional[str] = ..., hostname: _Optional[str] = ..., addresses: _Optional[_Iterable[str]] = ..., version: _Optional[str] = ..., task_types: _Optional[_Iterable[str]] = ..., max_tasks: _Optional[int] = ..., gpus: _Optional[_Iterable[_Union[Gpu, _Mapping]]] = ..., online: _Optional[bool] = ..., task_ids: _Optional[_Iterable[str]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., registered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resident_keys: _Optional[_Iterable[str]] = ..., paused_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., pause_reason: _Optional[str] = ..., drained_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., drain_reason: _Optional[str] = ..., broker: _Optional[str] = ...) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ...) -> None: ...

class RemoveWorkerRequest(_message.Message):
    __slots__ = ("worker_id",)
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    def __init__(self, worker_id: _Optional[str] = ...) -> None: ...

class RemoveWorkerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DrainWorkerRequest(_message.Message):
    __slots__ = ("worker_id", "reason")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    reason: str
    def __init__(self, worker_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DrainWorkerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResumeWorkerRequest(_message.Message):
    __slots__ = ("worker_id",)
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    def __init__(self, worker_id: _Optional[str] = ...) -> None: ...

class ResumeWorkerResponse(_message.Message):
    __slots__ = ("was_drained",)
    WAS_DRAINED_FIELD_NUMBER: _ClassVar[int]
    was_drained: bool
    def __init__(self, was_drained: _Optional[bool] = ...) -> None: ...
