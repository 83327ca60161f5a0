"""The GPUs of this host, from `nvidia-smi`, and which of them a worker uses.

Parsing and selection are pure; `inventory` runs the command. nvidia-smi numbers GPUs in PCI bus
order, so a worker for `--gpu N` sets CUDA_DEVICE_ORDER=PCI_BUS_ID with CUDA_VISIBLE_DEVICES=N:
CUDA (and every child the worker starts) then sees exactly the card nvidia-smi calls N.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shlex
from collections.abc import Mapping, Sequence

from worker import exceptions

QUERY_ARGS = ("--query-gpu=index,name,uuid,memory.total", "--format=csv,noheader,nounits")
MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    uuid: str
    memory_bytes: int

    @property
    def label(self) -> str:
        return f"gpu{self.index}"


def parse_inventory(text: str) -> list[Gpu]:
    """Parse `nvidia-smi --query-gpu=index,name,uuid,memory.total --format=csv,noheader,nounits`.

    Memory is in MiB; "[N/A]" (some virtual GPUs) becomes 0. Raises ValueError naming the line.
    """
    gpus = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            gpus.append(_parse_line(line, number))
    return sorted(gpus, key=lambda g: g.index)


def _parse_line(line: str, number: int) -> Gpu:
    fields = [f.strip() for f in line.split(",")]
    # A name may hold a comma; index comes first, uuid and memory last.
    if len(fields) < 4 or not fields[0].isdigit() or not fields[-2]:
        raise ValueError(f"line {number} is not 'index, name, uuid, memory': {line.strip()!r}")
    memory = fields[-1]
    return Gpu(
        index=int(fields[0]),
        name=", ".join(fields[1:-2]),
        uuid=fields[-2],
        memory_bytes=int(memory) * MIB if memory.isdigit() else 0,
    )


def visible(gpus: Sequence[Gpu], cuda_visible_devices: str | None) -> list[Gpu]:
    """The GPUs that CUDA_VISIBLE_DEVICES (indices or UUIDs, comma separated) lets through."""
    if cuda_visible_devices is None:
        return list(gpus)
    wanted = [w.strip() for w in cuda_visible_devices.split(",") if w.strip()]
    return [g for g in gpus if any(_matches(g, w) for w in wanted)]


def _matches(gpu: Gpu, wanted: str) -> bool:
    if wanted.isdigit():
        return int(wanted) == gpu.index
    # CUDA accepts a unique prefix of the UUID ("GPU-5f1c").
    return gpu.uuid.startswith(wanted) or gpu.uuid.startswith(f"GPU-{wanted}")


def select(gpus: Sequence[Gpu], index: int) -> Gpu:
    for gpu in gpus:
        if gpu.index == index:
            return gpu
    available = ", ".join(str(g.index) for g in gpus)
    raise exceptions.GpuNotFound(
        index=index, available=f"nvidia-smi lists {available}" if gpus else "nvidia-smi lists none"
    )


def unlisted(index: int) -> Gpu:
    """GPU `index` when nvidia-smi cannot say more: named and locked by its index."""
    return Gpu(index=index, name="unknown (no nvidia-smi)", uuid=f"index-{index}",
               memory_bytes=0)


def cuda_env(index: int) -> dict[str, str]:
    """What `--gpu index` puts in the environment of the worker and its children."""
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": str(index)}


#: The variables `cuda_env` sets.
GPU_ENVS = tuple(cuda_env(0))


async def inventory(command: str, env: Mapping[str, str] | None = None) -> list[Gpu] | None:
    """The host's GPUs, or None when there is no nvidia-smi (a CPU-only host).

    `command` may carry arguments ("ssh gpu1 nvidia-smi"); "" means do not look. A command that
    exists but fails (driver not loaded) is an error: running as a CPU worker by accident on a GPU
    host would be worse.
    """
    argv = shlex.split(command)
    if not argv:
        return None
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, *QUERY_ARGS, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=None if env is None else dict(env),
        )
    except FileNotFoundError as exc:
        if "/" in argv[0]:  # a path the operator gave: a typo must not make a CPU worker
            raise exceptions.InventoryFailed(command=command, detail="no such file") from exc
        return None
    except OSError as exc:
        raise exceptions.InventoryFailed(command=command, detail=str(exc)) from exc
    out, err = await proc.communicate()
    if proc.returncode != 0:
        detail = (err or out).decode(errors="replace").strip() or f"exit status {proc.returncode}"
        raise exceptions.InventoryFailed(command=command, detail=detail)
    try:
        return parse_inventory(out.decode(errors="replace"))
    except ValueError as exc:
        raise exceptions.InventoryFailed(command=command, detail=str(exc)) from exc
