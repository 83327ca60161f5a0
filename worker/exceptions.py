"""Errors of the worker. Each class docstring is the default message, phrased as the fix."""

from __future__ import annotations

from broker.exceptions import DocumentedError


class WorkerError(DocumentedError):
    """The worker failed: see the log for details."""


# -- start-up: the worker cannot run as configured --------------------------------------------


class ConfigError(WorkerError):
    """Invalid setting {field}: {detail}"""


class GpuNotFound(WorkerError):
    """GPU {index} is not on this host ({available}): pick one of those with --gpu."""


class GpuInMigMode(WorkerError):
    """GPU {index} ({name}) is in MIG mode: CUDA cannot use it whole. {advice}."""


class MigDeviceNotFound(WorkerError):
    """GPU {index} has no MIG device {wanted}: {available} (nvidia-smi -L lists them)."""


class MigNeedsInventory(WorkerError):
    """--gpu {wanted} names a MIG device, which CUDA reaches by its UUID only, and there is no
    nvidia-smi to read it from ({nvidia_smi}): install nvidia-smi, or give its
    path with --nvidia-smi."""


class InventoryFailed(WorkerError):
    """`{command}` failed: {detail}. Fix the NVIDIA driver, or pass --nvidia-smi '' to run as
    a CPU worker."""


class GpuBusy(WorkerError):
    """GPU {index} ({uuid}) is already used by worker {holder} (pid {holder_pid}); worker
    {worker_id} would share it. Give each worker its own --gpu, or stop worker {holder} first
    (lock file {path})."""


class WorkDirBusy(WorkerError):
    """Work folder {path} is used by another worker (pid {holder_pid}): give each worker its
    own --work-dir (it holds the worker's id and its temp payloads)."""


class RegistrationRefused(WorkerError):
    """The broker at {url} refused this worker ({code}): {detail}"""

    code: str  #: the gRPC status name, or PROTOCOL


class BrokerUnavailable(WorkerError):
    """No broker at {url}: is `gpuproxy run` started there, and is the address right? ({detail})"""


class BrokerCannotServe(BrokerUnavailable):
    """The broker at {url} answered but cannot serve now ({detail})"""


class BrokerHungUp(BrokerUnavailable):
    """The broker at {url} ended the Work stream: it is stopping, or cannot serve now"""


class TlsFailed(WorkerError):
    """TLS with the broker at {url} cannot work: {advice} ({detail})"""


class BrokerRefused(WorkerError):
    """The broker refused to {what} ({code}): {detail}"""

    code: str  #: the gRPC status name
    detail: str


class TaskLost(WorkerError):
    """Task {task_id} is no longer held by this worker ({detail}): it was requeued or cancelled
    and may run elsewhere; its work here is dropped."""


# -- task outcomes: reported to the broker as a failure -----------------------------------------


class TaskFailed(WorkerError):
    """Task failed: {detail}"""

    #: Whether another attempt (here or on another worker) may succeed.
    retryable: bool = True


class DeviceLost(TaskFailed):
    """{detail} This worker stops, to be started again with a fresh GPU context (systemd and
    `gpuproxy-worker supervise` restart it); the task runs again."""


class MalformedPayload(TaskFailed):
    """Malformed {task_type} payload: {detail}. Retrying will not help: fix what submitted it."""

    retryable = False


class KeyFileUnusable(TaskFailed):
    """{detail}"""


class PayloadMissing(TaskFailed):
    """The broker has no payload for task {task_id}: {detail} Then `gpuproxy tasks reset
    {task_id}` runs it again (the plugin does both by itself when the sealer asks again)."""

    retryable = False


class PayloadDamaged(TaskFailed):
    """The payload of task {task_id} arrived damaged: {detail}."""


class StoredPayloadDamaged(TaskFailed):
    """The broker refused the payload of task {task_id}: {detail}"""

    retryable = False  # every worker would get the same bytes: not this worker's fault


class ProcessorError(TaskFailed):
    """{processor} failed: {detail}"""


class ProcessorUnavailable(ProcessorError):
    """{processor} cannot be started: {detail}. Check --c2-bin / [[processors.c2]] bin, args
    and envs."""


class ProcessorExitedEarly(ProcessorError):
    """{processor} (pid {pid}) exited with status {returncode} before it was ready. Its last
    output: {said}"""


class ProcessorDied(ProcessorError):
    """{processor} (pid {pid}) exited with status {returncode} while running this task; it is
    restarted for the next one. Its last output: {said}"""


class ProcessorTimeout(ProcessorError):
    """{processor} (pid {pid}) took longer than {timeout_s:g} s and was killed; raise
    --task-timeout-s if such tasks need longer. Its last output: {said}"""


class ProcessorProtocolError(ProcessorError):
    """{processor} (pid {pid}) broke the ext-processor protocol: {detail}; line starts
    {line!r}"""


class ProcessorCannotRead(ProcessorError):
    """{processor} (pid {pid}) could not read request {request_id} and will not answer it: it
    said {line!r}. A processor built with an older proofs library than the sealer that made
    the C2 input does not know its proof type: update it on this host (another worker may
    prove the task meanwhile)."""


class ProcessorFailed(ProcessorError):
    """{processor} answered with an error: {detail}"""
