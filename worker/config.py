"""Worker settings: frozen dataclasses, validated field by field, built by the CLI."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping

from worker import exceptions
from worker.gpus import GpuId

#: Placeholder in --work-dir replaced by "gpu0", "gpu1", ... ("gpu0-mig1" for a MIG device) or
#: "cpu".
GPU_PLACEHOLDER = "{gpu}"
#: The most tasks one worker runs at once (its slots are announced in a 32-bit field).
MAX_TASKS = 1024


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProcessorConfig:
    """An external processor, as in venus-worker's `[[processors.<stage>]]` block."""

    bin: str
    args: tuple[str, ...] = ()
    envs: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: False: the child gets `envs` and the GPU the worker chose, not the worker's environment.
    inherit_envs: bool = True
    #: How long the child may take to print "<stage> processor ready".
    ready_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if not self.bin:
            raise exceptions.ConfigError(field="c2-bin", detail="the processor binary is empty")
        for key in self.envs:
            if not key or "=" in key:
                raise exceptions.ConfigError(
                    field="c2-env", detail=f"{key!r} is not an environment variable name"
                )
        _check_positive("ready_timeout_s", self.ready_timeout_s)


@dataclasses.dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    url: str = "127.0.0.1:18888"
    max_tasks: int = 1
    task_types: tuple[str, ...] = ("c2",)
    gpu: GpuId | None = None  #: None: no --gpu, the worker uses what is visible
    nvidia_smi: str = "nvidia-smi"  #: "" skips the inventory: a CPU worker
    lock_dir: pathlib.Path = pathlib.Path("/tmp/gpuproxy-gpu-locks")
    work_dir: pathlib.Path = pathlib.Path("~/.gpuproxy/worker-" + GPU_PLACEHOLDER)
    resource_type: str = "stream"  #: stream: payloads over gRPC; fs: the broker's shared folder
    fs_resource_path: pathlib.Path | None = None
    task_timeout_s: float = 7200.0
    grace_s: float = 60.0  #: on SIGTERM, how long the current task may still run
    processors: Mapping[str, ProcessorConfig] = dataclasses.field(default_factory=dict)
    #: Groth16 proving keys, each named <sha256>.zkey (like Filecoin's parameter folder).
    params_dir: pathlib.Path = pathlib.Path("~/.gpuproxy/params")
    backend: str = "auto"  #: groth16 backend: auto (CUDA when usable, else CPU), cpu or cuda
    #: Failed tasks in a row after which the worker pauses taking new ones (0: never).
    pause_after_failures: int = 3
    #: How long a worker refused because a live worker has its id tries again before it exits.
    twin_wait_s: float = 120.0
    #: The broker's access token, sent with every call (broker.access); "" for none.
    token: str = dataclasses.field(default="", repr=False)
    #: PEM roots the broker's TLS certificate is checked against; None: plain, unless the url
    #: is https:// (the system's roots).
    tls_ca: bytes | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.url.strip():
            raise exceptions.ConfigError(field="gpuproxy-url", detail="the broker address is empty")
        if not 1 <= self.max_tasks <= MAX_TASKS:
            raise exceptions.ConfigError(field="max-tasks",
                                         detail=f"must be 1 to {MAX_TASKS}, got {self.max_tasks}")
        if not self.task_types:
            raise exceptions.ConfigError(field="allow-type", detail="name at least one type")
        if self.resource_type not in ("stream", "fs"):
            raise exceptions.ConfigError(
                field="resource-type", detail=f"{self.resource_type!r} is neither stream nor fs"
            )
        if self.resource_type == "fs" and self.fs_resource_path is None:
            raise exceptions.ConfigError(
                field="fs-resource-path",
                detail="resource-type fs reads payloads from the broker's shared folder: "
                "give its mount point here, or use resource-type stream",
            )
        _check_positive("task-timeout-s", self.task_timeout_s)
        if self.grace_s < 0:
            raise exceptions.ConfigError(field="grace-s", detail="must not be negative")
        if self.twin_wait_s < 0:
            raise exceptions.ConfigError(field="twin-wait-s", detail="must not be negative")
        if self.pause_after_failures < 0:
            raise exceptions.ConfigError(field="pause-after-failures",
                                         detail="must be 0 (never pause) or more")

    def work_dir_for(self, label: str) -> pathlib.Path:
        """--work-dir with "{gpu}" replaced by the worker's label ("gpu0", "gpu0-mig1" or
        "cpu")."""
        return pathlib.Path(str(self.work_dir).replace(GPU_PLACEHOLDER, label)).expanduser()


def _check_positive(name: str, value: float) -> None:
    if value <= 0:
        raise exceptions.ConfigError(field=name, detail=f"must be positive, got {value}")
