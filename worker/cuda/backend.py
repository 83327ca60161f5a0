"""The CUDA Groth16 backend: the `worker.groth16.backends.base.Backend` interface on one GPU.

A key's point sections are uploaded once (`load_bases`) and stay on the GPU for as long as the
key cache keeps the LoadedKey, and so do its constraint coefficients (sorted by constraint once,
in `load`); what does not fit in device memory stays on the host and is uploaded for each use
instead, until a use finds room to keep it. NTT power tables are kept per domain size. Any
CUDA error (out of memory, launch failure, a lost device) raises exceptions.DeviceFailed naming
the GPU: a Groth16Error, which the groth16 executor reports as a retryable failure of the
attempt (and, when the context is lost, stops the worker).
"""

from __future__ import annotations

import dataclasses
import pathlib
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

from worker.cuda import compiler, constraints, exceptions, plan, selftest, sources
from worker.cuda import msm as msm_driver
from worker.cuda import ntt as ntt_driver
from worker.cuda.device import Device
from worker.groth16 import curve, field, native, ntt, zkey
from worker.groth16.backends import base

log = structlog.get_logger(__name__)
T = TypeVar("T")

_STEPS = {"intt": ntt_driver.intt, "coset_ntt": ntt_driver.coset_ntt,
          "to_coset": ntt_driver.to_coset}

#: Device memory kept free when deciding whether a key section may stay resident, besides the
#: temporaries of an MSM over it (msm.scratch_bytes): NTT buffers and tables need room too. What
#: this misses, an operation that runs out of memory gets back by evicting (`_with_room`).
HEADROOM_BYTES = 4 << 30


@dataclasses.dataclass(eq=False)
class CudaBases(base.Bases):
    group: str
    count: int
    host: zkey.Points  #: kept for re-upload when the section could not stay on the device
    device: tuple[Any, ...] | None  #: (the pycuda allocation,), or None when not resident

    @property
    def host_arrays(self) -> tuple[zkey.Points, ...]:
        return (self.host,)

    @property
    def scratch_bytes(self) -> int:
        return msm_driver.scratch_bytes(self.group, max(self.count, 1))


@dataclasses.dataclass(eq=False)
class CudaConstraints:
    """A key's coefficients sorted by constraint, on the host and, while there is room, on the
    GPU (row starts, signals, values)."""

    host: constraints.Sorted
    device: tuple[Any, ...] | None

    @property
    def host_arrays(self) -> tuple[Any, ...]:
        return self.host.arrays

    @property
    def scratch_bytes(self) -> int:
        return self.host.scratch_bytes


Resident = CudaBases | CudaConstraints


class CudaBackend(base.Backend):
    def __init__(self, gpu: int = 0, cache_dir: pathlib.Path = compiler.DEFAULT_CACHE_DIR,
                 device: Device | None = None, self_test: bool = True,
                 variant: str = sources.DEFAULT_VARIANT) -> None:
        self.device = device or Device(gpu, cache_dir, variant=variant)
        self.name = f"cuda:{self.device.name}"
        self._tables: dict[int, ntt_driver.Tables] = {}
        self._resident: weakref.WeakSet[Resident] = weakref.WeakSet()
        if self_test:
            try:
                selftest.check(self)
            except BaseException:
                self.close()  # the worker may go on on the CPU: give the GPU back
                raise
        log.info("CUDA backend ready", gpu=self.device.name, arch=self.device.arch,
                 variant=self.device.variant)

    def describe(self) -> str:
        return f"cuda: {self.device.name}, {self.device.arch}, {self.device.variant} build"

    def load(self, key: zkey.ProvingKey) -> base.LoadedKey:
        loaded = super().load(key)
        held = CudaConstraints(host=constraints.sort(key), device=None)
        with self.device.active("uploading the key's constraints"):
            self._keep_if_room(held)
        return dataclasses.replace(loaded, constraints=held)

    def load_bases(self, group: str, points: zkey.Points) -> base.Bases:
        if len(points) > plan.MAX_POINTS:
            raise exceptions.TooLarge(points=len(points), limit=plan.MAX_POINTS)
        bases = CudaBases(group=group, count=len(points), host=points, device=None)
        with self.device.active(f"uploading {group} key points"):
            self._keep_if_room(bases)
        if bases.device is None:
            log.warning("key points stay on the host: too little GPU memory", group=group,
                        points=len(points), gpu=self.device.name)
        return bases

    def _keep_if_room(self, held: Resident) -> None:
        """Upload key arrays to stay on the GPU if that leaves room for an operation over them
        and the headroom (call inside `active`); freed once the key cache lets go of the key."""
        need = sum(a.nbytes for a in held.host_arrays) + held.scratch_bytes + HEADROOM_BYTES
        if self.device.free_memory() > need:
            # Kept only once all are up: a failed upload leaves scratch, freed with the operation
            bufs = [self.device.upload(a) for a in held.host_arrays]
            held.device = tuple(self.device.keep(held, buf) for buf in bufs)
            self._resident.add(held)

    def _on_device(self, held: Resident) -> tuple[Any, ...]:
        """The arrays on the GPU: kept ones, or uploaded for this operation (call inside
        `active`; memory may have been freed since the load)."""
        if held.device is None:
            self._keep_if_room(held)
        if held.device is not None:
            return held.device
        return tuple(self.device.upload(a) for a in held.host_arrays)

    def _with_room(self, run: Callable[[], T]) -> T:
        """run(); if the GPU runs out of memory, once more after giving back what is kept for
        later (resident key sections, NTT tables: made again as needed). Without this, a key
        admitted while the GPU was emptier would fail every attempt the same way."""
        try:
            return run()
        except exceptions.DeviceFailed as exc:
            if not exc.out_of_memory or not self._evict():
                raise
            log.warning("GPU memory ran out: resident key arrays and NTT tables given back; "
                        "trying again", gpu=self.device.name, error=str(exc))
            return run()

    def _evict(self) -> bool:
        """Free every resident key array and NTT table; whether there was any. Under the
        device's lock throughout: another prover thread keeping an array meanwhile would
        otherwise leave it kept but untracked, out of reach of the next eviction."""
        with self.device.active("giving back GPU memory"):
            resident = [held for held in self._resident if held.device is not None]
            if not resident and not self._tables:
                return False
            for held in resident:
                for buf in held.device or ():
                    self.device.release(buf)
                held.device = None
            for t in self._tables.values():
                for f in dataclasses.fields(t):
                    self.device.release(getattr(t, f.name))
            self._tables.clear()
            self._resident.clear()
        return True

    def intt(self, domain: ntt.Domain, evaluations: field.FrVector) -> field.FrVector:
        return self._ntt(domain, evaluations, "intt")

    def coset_ntt(self, domain: ntt.Domain, coefficients: field.FrVector) -> field.FrVector:
        return self._ntt(domain, coefficients, "coset_ntt")

    def to_coset(self, domain: ntt.Domain, evaluations: field.FrVector) -> field.FrVector:
        return self._ntt(domain, evaluations, "to_coset")

    def quotient(self, domain: ntt.Domain, a: field.FrVector, b: field.FrVector,
                 c: field.FrVector) -> field.FrVector:
        """h = A*B - C on the coset, the three moved there and combined without leaving the GPU
        (three uploads, one download)."""
        dev = self.device

        def run() -> field.FrVector:
            with dev.active("quotient"):
                t = self._tables_for(domain)
                bufs = [ntt_driver.upload(dev, v) for v in (a, b, c)]
                ntt_driver.quotient(dev, t, domain.log_size, *bufs)
                return ntt_driver.download(dev, bufs[0], domain.size)

        return self._with_room(run)

    def witness_quotient(self, key: base.LoadedKey, witness: field.FrVector,
                         domain: ntt.Domain) -> field.FrVector:
        """The constraints' values, the NTTs and A*B - C in one operation on the GPU: the
        witness goes up, h comes down."""
        held = key.constraints
        if not isinstance(held, CudaConstraints):  # loaded by another backend
            return super().witness_quotient(key, witness, domain)
        if len(witness) != held.host.witness_size or domain.size != held.host.rows:
            raise ValueError(f"{len(witness)} witness values on a domain of {domain.size} for "
                             f"a key of {held.host.witness_size} signals and "
                             f"{held.host.rows} constraints")
        dev = self.device

        def run() -> field.FrVector:
            with dev.active(f"constraints and quotient of 2^{domain.log_size}"):
                arrays = self._on_device(held)
                t = self._tables_for(domain)
                a, b, c = constraints.evaluate(dev, arrays, domain.size, witness)
                ntt_driver.quotient(dev, t, domain.log_size, a, b, c)
                return ntt_driver.download(dev, a, domain.size)

        try:
            return self._with_room(run)
        except exceptions.DeviceFailed as exc:
            if not exc.out_of_memory:
                raise
        # Too little GPU memory for the witness, the three vectors and the tables at once:
        # the constraints on the host, one vector at a time on the GPU (its least memory)
        log.warning("GPU memory too small for the quotient in one go: A, B and C made on the "
                    "host, moved to the coset one at a time", gpu=self.device.name,
                    constraints=domain.size)
        a, b, c = native.qap_evaluations(key.key.coefs, witness, domain.size)
        return base.Backend.quotient(self, domain, a, b, c)  # one vector at a time, not fused

    def msm_g1(self, bases: base.Bases, scalars: field.FrVector) -> curve.G1:
        return curve.g1_from_lem(self._msm("g1", bases, scalars))

    def msm_g2(self, bases: base.Bases, scalars: field.FrVector) -> curve.G2:
        return curve.g2_from_lem(self._msm("g2", bases, scalars))

    def msm_planned(self, bases: base.Bases, scalars: field.FrVector,
                    p: plan.MsmPlan) -> curve.G1 | curve.G2:
        """An MSM run with plan `p` rather than its size's: the self-test reaches the paths
        of large MSMs (wide windows, several runs per window) with a few points."""
        assert isinstance(bases, CudaBases)
        raw = self._msm(bases.group, bases, scalars, p)
        return curve.g1_from_lem(raw) if bases.group == "g1" else curve.g2_from_lem(raw)

    def close(self) -> None:
        self._tables.clear()
        self.device.close()

    def _msm(self, group: str, bases: base.Bases, scalars: field.FrVector,
             p: plan.MsmPlan | None = None) -> bytes:
        assert isinstance(bases, CudaBases) and bases.group == group
        if len(scalars) != bases.count:
            raise ValueError(f"{len(scalars)} scalars for {bases.count} {group} points")
        operation = f"msm_{group} of {bases.count} points"

        def run() -> bytes:
            with self.device.active(operation):
                (points,) = self._on_device(bases)
                try:
                    return msm_driver.msm(self.device, group, points, scalars, p)
                except ValueError as exc:  # py-arkworks refused a window sum: not on the curve
                    raise exceptions.DeviceFailed(gpu=self.device.name, operation=operation,
                                                  detail=f"a wrong partial sum ({exc})") from exc

        return self._with_room(run)

    def _ntt(self, domain: ntt.Domain, values: field.FrVector, step: str) -> field.FrVector:
        if len(values) != domain.size:
            raise ValueError(f"{len(values)} values for a domain of {domain.size}")
        dev = self.device

        def run() -> field.FrVector:
            with dev.active(f"{step} of 2^{domain.log_size}"):
                t = self._tables_for(domain)
                buf = ntt_driver.upload(dev, values)
                _STEPS[step](dev, t, domain.log_size, buf)
                return ntt_driver.download(dev, buf, domain.size)

        return self._with_room(run)

    def _tables_for(self, domain: ntt.Domain) -> ntt_driver.Tables:
        if domain.log_size not in self._tables:
            t = ntt_driver.tables(self.device, domain)
            for f in dataclasses.fields(t):
                self.device.keep(t, getattr(t, f.name))
            self._tables[domain.log_size] = t
        return self._tables[domain.log_size]


def create(gpu: int = 0, cache_dir: pathlib.Path | None = None,
           variant: str | None = None) -> CudaBackend:
    """The backend on visible GPU `gpu` in the build `variant` of the arithmetic;
    CudaUnavailable when pycuda or the GPU is missing. Without a variant, the default build,
    then the portable one when the default does not compile or fails its self-test (a
    compiler that mistreats the carry chains), said in the log."""
    if variant is not None:
        return _create(gpu, cache_dir, variant)
    try:
        return _create(gpu, cache_dir, sources.DEFAULT_VARIANT)
    except (exceptions.CompileFailed, exceptions.SelfTestFailed) as exc:
        log.error("the default build of the CUDA arithmetic failed; trying the portable one",
                  variant=sources.DEFAULT_VARIANT, error=str(exc))
        return _create(gpu, cache_dir, "portable")


def _create(gpu: int, cache_dir: pathlib.Path | None, variant: str) -> CudaBackend:
    try:
        return CudaBackend(gpu, cache_dir or compiler.DEFAULT_CACHE_DIR, variant=variant)
    except exceptions.CudaError:
        raise
    except Exception as exc:  # pycuda raising something unexpected at start-up
        raise exceptions.CudaUnavailable(detail=f"{type(exc).__name__}: {exc}") from exc

