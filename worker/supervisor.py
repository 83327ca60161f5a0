"""`gpuproxy-worker supervise`: one worker process per GPU, restarted with backoff when it dies.

Each child is `gpuproxy-worker run --gpu N` (N:M for a MIG device) with the supervisor's other
flags, in its own process
group, so that a Ctrl-C reaches the supervisor only and is passed on in order. Children report
READY=1 on an sd_notify socket the supervisor gives each of them. The first SIGTERM/SIGINT is
passed on (the children drain), so is the second (they stop at once and hand their tasks back);
a third kills them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Sequence

import structlog

from worker import lifeline, notify
from worker.backoff import Backoff
from worker.gpus import GpuId

log = structlog.get_logger(__name__)

RESTART_BACKOFF = Backoff(initial_s=1.0, max_s=60.0)
#: A child that ran this long before dying restarts without delay; shorter runs back off.
STABLE_S = 60.0
#: How long workers get to stop when the supervisor itself fails, before they are killed:
#: beyond the default --grace-s (60 s), so that running tasks are handed back.
STOP_WAIT_S = 75.0


@dataclasses.dataclass
class Child:
    gpu: str  #: what its --gpu says: "0", or "0:1" for a MIG device
    label: str  #: gpu0, gpu0-mig1
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    failures: int = 0  #: quick deaths in a row, for the backoff

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class Supervisor:
    def __init__(self, gpus: Sequence[GpuId], child_args: Sequence[str],
                 backoff: Backoff = RESTART_BACKOFF) -> None:
        self.children = [Child(gpu=str(g), label=g.label) for g in gpus]
        self.child_args = list(child_args)
        self.backoff = backoff
        self.signals = 0
        self.stopping = asyncio.Event()
        self.ready: set[str] = set()  #: GPUs whose worker reported READY=1 at least once
        self.announced = False

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_signal, sig)
        log.info("supervising workers", gpus=[c.gpu for c in self.children])
        try:
            # Abstract sockets: nothing on disk for a supervisor killed outright to leave
            prefix = f"@gpuproxy-supervise-{os.getpid()}-{secrets.token_hex(4)}"
            keepers = [
                asyncio.create_task(self._keep(c, f"{prefix}-{c.label}"), name=c.label)
                for c in self.children
            ]
            try:
                await asyncio.gather(*keepers)
            except BaseException:
                await self._stop_all(keepers)  # no worker outlives its supervisor
                raise
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        log.info("all workers stopped")
        return 0

    async def _stop_all(self, keepers: list[asyncio.Task[None]]) -> None:
        """Stop every worker (SIGTERM, then SIGKILL after STOP_WAIT_S) and the keepers."""
        self.stopping.set()
        running = [c.proc for c in self.children if c.alive and c.proc is not None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_WAIT_S):
                await asyncio.gather(*(proc.wait() for proc in running))
        except TimeoutError:
            for proc in running:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for keeper in keepers:
            keeper.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)
        for child in self.children:  # one a keeper started after the stop began
            if child.alive and child.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()

    def on_signal(self, sig: int) -> None:
        notify.notify("STOPPING=1")  # to systemd, when it started us (Type=notify)
        self.signals += 1
        self.stopping.set()
        forward = signal.SIGKILL if self.signals >= 3 else signal.SIGTERM
        log.info("stopping workers", signal=signal.Signals(sig).name,
                 sending=forward.name, time=self.signals)
        for child in self.children:
            if child.alive and child.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(forward)

    async def _keep(self, child: Child, notify_path: str) -> None:
        """Start the child's worker, and again each time it dies, until stopping."""
        with notify.listener(notify_path) as sock:
            readiness = asyncio.create_task(self._relay_readiness(child, sock))
            try:
                while not self.stopping.is_set():
                    await self._start(child, notify_path)
                    assert child.proc is not None
                    status = await child.proc.wait()
                    if self.stopping.is_set():
                        log.info("worker stopped", gpu=child.gpu, status=status)
                        return
                    await self._pause_after_death(child, status)
            finally:
                readiness.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await readiness  # done with the socket before it closes

    async def _start(self, child: Child, notify_path: str) -> None:
        env = {**os.environ, notify.ENV: notify_path}
        # -P: a worker.py in the folder the supervisor runs in must not stand in for the package
        argv = [sys.executable, "-P", "-m", "worker.cli", "run", "--gpu", child.gpu,
                *self.child_args]
        child.proc = await asyncio.create_subprocess_exec(
            # Killed by the kernel if the supervisor is, so that a new supervisor does not find
            # its GPUs taken by orphans
            *lifeline.bound(argv), env=env, stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        child.started_at = time.monotonic()
        log.info("worker started", gpu=child.gpu, pid=child.proc.pid)
        if self.stopping.is_set():  # a signal came while it was starting
            child.proc.send_signal(signal.SIGTERM)

    async def _pause_after_death(self, child: Child, status: int) -> None:
        ran_s = time.monotonic() - child.started_at
        child.failures = 0 if ran_s >= STABLE_S else child.failures + 1
        delay_s = self.backoff.delay_s(child.failures - 1) if child.failures else 0.0
        log.warning("worker exited; restarting it", gpu=child.gpu, status=status,
                    ran_s=round(ran_s, 1), restart_in_s=round(delay_s, 1))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), delay_s)

    async def _relay_readiness(self, child: Child, sock: socket.socket) -> None:
        while True:
            data, sender = await notify.receive(sock)
            if child.proc is None or sender != child.proc.pid:
                # Any process on the host can reach the socket: only the child is heard
                log.warning("readiness message from another process ignored", gpu=child.gpu,
                            sender=sender, message=data[:64].decode(errors="replace"))
                continue
            for line in data.decode(errors="replace").splitlines():
                if line == "READY=1":
                    log.info("worker ready", gpu=child.gpu,
                             pid=child.proc.pid if child.proc else None)
                    self.ready.add(child.gpu)
                    if not self.announced and len(self.ready) == len(self.children):
                        # Every card has its worker: now we are ready for systemd too.
                        self.announced = notify.notify("READY=1")
                elif line == "STOPPING=1":
                    log.info("worker draining", gpu=child.gpu)
