"""The GPUs of this host, from `nvidia-smi`, and which of them a worker uses.

Parsing and selection are pure; `inventory` runs the command. nvidia-smi numbers GPUs in PCI bus
order, so a worker for `--gpu N` sets CUDA_DEVICE_ORDER=PCI_BUS_ID with CUDA_VISIBLE_DEVICES=N:
CUDA (and every child the worker starts) then sees exactly the card nvidia-smi calls N.

A GPU in MIG mode cannot be used whole: CUDA sees only its MIG devices, each by its MIG- UUID.
`nvidia-smi -L` lists them under their GPU ("MIG 3g.40gb Device 1"), and `--gpu 0:1` names
device 1 of GPU 0: the worker sets CUDA_VISIBLE_DEVICES to that device's UUID, locks that device
only, and works in its own folder (gpu0-mig1), so each MIG device of a card takes a worker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import shlex
from collections.abc import Mapping, Sequence

import structlog

from worker import exceptions

log = structlog.get_logger(__name__)

QUERY_ARGS = ("--query-gpu=index,name,uuid,memory.total", "--format=csv,noheader,nounits")
LIST_ARGS = ("-L",)
#: Drivers older than MIG refuse this field: then only the devices -L lists tell MIG mode.
MIG_MODE_ARGS = ("--query-gpu=index,mig.mode.current", "--format=csv,noheader")
MIB = 1024 * 1024
GIB = 1024 * MIB


@dataclasses.dataclass(frozen=True)
class GpuId:
    """What --gpu names: a whole GPU ("0") or MIG device `mig` of GPU `index` ("0:1"), both
    numbered as nvidia-smi numbers them."""

    index: int
    mig: int | None = None

    @classmethod
    def parse(cls, text: str) -> GpuId:
        index, sep, mig = text.strip().partition(":")
        if not index.isdigit() or (sep and not mig.isdigit()):
            raise ValueError(f"{text!r} is not a GPU index (0, 1, ...) nor a MIG device of one "
                             "(0:0, 0:1, ... as nvidia-smi -L lists them)")
        return cls(int(index), int(mig) if sep else None)

    def __str__(self) -> str:
        return str(self.index) if self.mig is None else f"{self.index}:{self.mig}"

    @property
    def label(self) -> str:
        """The worker's folder and log name: gpu0, or gpu0-mig1 for a MIG device."""
        return f"gpu{self.index}" if self.mig is None else f"gpu{self.index}-mig{self.mig}"


@dataclasses.dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    uuid: str
    memory_bytes: int
    #: For a MIG device, its number under GPU `index`; its uuid is then the MIG- one.
    mig: int | None = None
    #: For a GPU in MIG mode, its MIG devices (maybe none yet): the GPU itself cannot be used
    #: whole.
    migs: tuple[Gpu, ...] = ()
    mig_mode: bool = False

    @property
    def id(self) -> GpuId:
        return GpuId(self.index, self.mig)

    @property
    def label(self) -> str:
        return self.id.label


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


_GPU_LINE = re.compile(r"^GPU (\d+):")
#: "  MIG 3g.40gb     Device  1: (UUID: MIG-...)"; older drivers: "MIG-GPU-<uuid>/<gi>/<ci>".
_MIG_LINE = re.compile(r"^\s+MIG\s+(\S+)\s+Device\s+(\d+):\s+\(UUID:\s*([^)\s]+)\)")
#: "3g.40gb", "1c.3g.20gb", "1g.10gb+me" (with the media engines), "+gfx" on later cards.
_PROFILE_GB = re.compile(r"(\d+)gb(?:\+[\w.]+)*$")
_MIG_MODE_LINE = re.compile(r"^(\d+),\s*Enabled\s*$")


def parse_migs(text: str) -> dict[int, list[tuple[int, str, str]]]:
    """The MIG devices in `nvidia-smi -L`: GPU index -> [(device, profile, uuid)]. Other lines
    are skipped: a GPU without MIG mode lists none."""
    found: dict[int, list[tuple[int, str, str]]] = {}
    parent: int | None = None
    for line in text.splitlines():
        if gpu := _GPU_LINE.match(line):
            parent = int(gpu.group(1))
        elif (mig := _MIG_LINE.match(line)) and parent is not None:
            found.setdefault(parent, []).append((int(mig.group(2)), mig.group(1), mig.group(3)))
    return found


def parse_mig_modes(text: str) -> set[int]:
    """The GPUs in MIG mode, from `nvidia-smi --query-gpu=index,mig.mode.current`: "0, Enabled"
    ("Disabled" or "[N/A]" otherwise; any other line is skipped)."""
    return {int(m.group(1)) for line in text.splitlines() if (m := _MIG_MODE_LINE.match(line))}


def with_migs(gpus: Sequence[Gpu], migs: Mapping[int, list[tuple[int, str, str]]],
              mig_mode: set[int] | frozenset[int] = frozenset()) -> list[Gpu]:
    """`gpus` with their MIG devices; a GPU in `mig_mode` or with devices is in MIG mode. A
    device's memory is its profile's nominal size ("3g.40gb": 40 GiB): nvidia-smi's query gives
    only the whole card's."""
    def device(gpu: Gpu, number: int, profile: str, uuid: str) -> Gpu:
        size = _PROFILE_GB.search(profile)
        return Gpu(index=gpu.index, name=f"{gpu.name} MIG {profile}", uuid=uuid,
                   memory_bytes=int(size.group(1)) * GIB if size else 0, mig=number)

    return [dataclasses.replace(
        g, migs=tuple(device(g, *m) for m in sorted(migs.get(g.index, []))), mig_mode=True)
        if migs.get(g.index) or g.index in mig_mode else g for g in gpus]


def usable(gpus: Sequence[Gpu]) -> list[Gpu]:
    """What CUDA can run on: each GPU, or each MIG device of a GPU in MIG mode (none while it
    has none)."""
    return [d for g in gpus for d in (g.migs if g.mig_mode else (g,))]


def visible(gpus: Sequence[Gpu], cuda_visible_devices: str | None) -> list[Gpu]:
    """The usable GPUs and MIG devices that CUDA_VISIBLE_DEVICES (indices or UUIDs, comma
    separated) lets through. A GPU it names that is in MIG mode stands for its MIG devices."""
    wanted = _names(cuda_visible_devices)
    if wanted is None:
        return usable(gpus)
    return [d for g in gpus for d in (
        usable([g]) if any(_matches(g, w) for w in wanted)
        else [m for m in g.migs if any(_matches(m, w) for w in wanted)])]


def visible_or_refused(gpus: Sequence[Gpu], cuda_visible_devices: str | None,
                       flag: str = "--gpu") -> list[Gpu]:
    """`visible`; but a GPU it passes over because it is in MIG mode with no MIG device yet is
    said: in the log when other GPUs are there, as the error when it leaves none (the worker
    would otherwise be a CPU worker, or the supervisor find nothing, without saying why)."""
    wanted = _names(cuda_visible_devices)
    empty = [g for g in gpus if g.mig_mode and not g.migs
             and (wanted is None or any(_matches(g, w) for w in wanted))]
    seen = visible(gpus, cuda_visible_devices)
    if empty and not seen:
        g = empty[0]
        raise exceptions.GpuInMigMode(index=g.index, name=g.name,
                                      advice=_mig_advice(g.index, [], flag))
    for g in empty:
        log.warning("GPU in MIG mode with no MIG device yet: left out", gpu=g.index,
                    name=g.name, advice=_mig_advice(g.index, [], flag))
    return seen


def _names(cuda_visible_devices: str | None) -> list[str] | None:
    """The indices and UUIDs CUDA_VISIBLE_DEVICES names; None when it is not set (all)."""
    if cuda_visible_devices is None:
        return None
    return [w.strip() for w in cuda_visible_devices.split(",") if w.strip()]


def _matches(gpu: Gpu, wanted: str) -> bool:
    if wanted.isdigit():
        return gpu.mig is None and int(wanted) == gpu.index
    # CUDA accepts a unique prefix of the UUID ("GPU-5f1c").
    return gpu.uuid.startswith(wanted) or gpu.uuid.startswith(f"GPU-{wanted}")


def select(gpus: Sequence[Gpu], wanted: GpuId, flag: str = "--gpu") -> Gpu:
    """The GPU or MIG device `wanted` names; an error that lists what there is otherwise, and
    says what to write instead in `flag` (--gpu of one worker, --gpus of the supervisor)."""
    gpu = next((g for g in gpus if g.index == wanted.index), None)
    if gpu is None:
        available = ", ".join(str(g.index) for g in gpus)
        raise exceptions.GpuNotFound(
            index=wanted.index,
            available=f"nvidia-smi lists {available}" if gpus else "nvidia-smi lists none")
    devices = [str(m.id) for m in gpu.migs]
    if wanted.mig is None:
        if gpu.mig_mode:
            raise exceptions.GpuInMigMode(index=gpu.index, name=gpu.name,
                                          advice=_mig_advice(gpu.index, devices, flag))
        return gpu
    for mig in gpu.migs:
        if mig.mig == wanted.mig:
            return mig
    raise exceptions.MigDeviceNotFound(
        wanted=str(wanted), index=gpu.index, available=(
            f"its MIG devices are {', '.join(devices)}" if devices
            else "it is in MIG mode but has no MIG device yet" if gpu.mig_mode
            else "it is not in MIG mode"))


def _mig_advice(index: int, devices: list[str], flag: str) -> str:
    if not devices:
        return (f"It has no MIG device yet: create them (nvidia-smi mig -i {index} -cgi "
                f"<profiles> -C), or turn MIG mode off (nvidia-smi -i {index} -mig 0)")
    if flag == "--gpus":
        return (f"List its MIG devices instead, --gpus {','.join(devices)}, or leave --gpus "
                "out for a worker on every device")
    return (f"Name one of its MIG devices instead ({', '.join(devices)}), --gpu "
            f"{devices[0]}; `gpuproxy-worker supervise` runs a worker on each")


def resolve(found: Sequence[Gpu] | None, wanted: GpuId, nvidia_smi: str,
            flag: str = "--gpu") -> Gpu | None:
    """`select` in the inventory; None without one (no nvidia-smi), where a whole GPU is known
    by its index only and a MIG device, known by its UUID only, cannot be named."""
    if found is None:
        if wanted.mig is not None:
            raise exceptions.MigNeedsInventory(wanted=str(wanted),
                                               nvidia_smi=f"--nvidia-smi {nvidia_smi!r}")
        return None
    return select(found, wanted, flag)


def unlisted(index: int) -> Gpu:
    """GPU `index` when nvidia-smi cannot say more: named and locked by its index."""
    return Gpu(index=index, name="unknown (no nvidia-smi)", uuid=f"index-{index}",
               memory_bytes=0)


def cuda_env(gpu: int | Gpu) -> dict[str, str]:
    """What `--gpu` puts in the environment of the worker and its children: the GPU's index
    in nvidia-smi's order, or a MIG device's UUID (CUDA takes no other name for one)."""
    if isinstance(gpu, Gpu):
        name = gpu.uuid if gpu.mig is not None else str(gpu.index)
    else:
        name = str(gpu)
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": name}


#: The variables `cuda_env` sets.
GPU_ENVS = tuple(cuda_env(0))


async def inventory(command: str, env: Mapping[str, str] | None = None) -> list[Gpu] | None:
    """The host's GPUs with their MIG devices, or None when there is no nvidia-smi (a CPU-only
    host).

    `command` may carry arguments ("ssh gpu1 nvidia-smi"); "" means do not look. A command that
    exists but fails (driver not loaded) is an error: running as a CPU worker by accident on a GPU
    host would be worse. The MIG listing (`-L`) is read only where there are GPUs; if it fails,
    so does the inventory when a GPU is in MIG mode (none of its devices could be named), and
    otherwise the GPUs are taken as they are.
    """
    argv = shlex.split(command)
    if not argv:
        return None
    try:
        out = await _output(command, [*argv, *QUERY_ARGS], env)
    except FileNotFoundError as exc:
        if "/" in argv[0]:  # a path the operator gave: a typo must not make a CPU worker
            raise exceptions.InventoryFailed(command=command, detail="no such file") from exc
        return None
    try:
        gpus = parse_inventory(out)
    except ValueError as exc:
        raise exceptions.InventoryFailed(command=command, detail=str(exc)) from exc
    if gpus:
        listing, modes = await asyncio.gather(
            _output(command, [*argv, *LIST_ARGS], env),
            _output(command, [*argv, *MIG_MODE_ARGS], env), return_exceptions=True)
        in_mig_mode = set() if isinstance(modes, BaseException) else parse_mig_modes(modes)
        if isinstance(listing, BaseException):
            if in_mig_mode:  # their devices cannot be known: no device could be named right
                raise exceptions.InventoryFailed(
                    command=f"{command} -L", detail=f"{listing}; it names the MIG devices of "
                    f"GPU {', '.join(map(str, sorted(in_mig_mode)))}, in MIG mode")
            log.warning("nvidia-smi -L failed: MIG devices are not known", error=str(listing))
            return gpus
        gpus = with_migs(gpus, parse_migs(listing), in_mig_mode)
    return gpus


async def _output(command: str, argv: list[str], env: Mapping[str, str] | None) -> str:
    """What `argv` prints; InventoryFailed when it fails, FileNotFoundError when it is not
    there."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=None if env is None else dict(env),
        )
    except FileNotFoundError:
        raise  # no nvidia-smi: the caller decides (a CPU host, or a typo in a path)
    except OSError as exc:
        raise exceptions.InventoryFailed(command=command, detail=str(exc)) from exc
    out, err = await proc.communicate()
    if proc.returncode != 0:
        detail = (err or out).decode(errors="replace").strip() or f"exit status {proc.returncode}"
        raise exceptions.InventoryFailed(command=command, detail=detail)
    return out.decode(errors="replace")
