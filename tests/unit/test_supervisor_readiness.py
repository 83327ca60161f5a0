"""The supervisor hears its workers' readiness on abstract sockets, which any process on the
host can reach: only the worker it started counts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import types

import structlog

from worker import notify
from worker.gpus import GpuId
from worker.supervisor import Supervisor


async def test_readiness_counts_only_from_the_worker_the_supervisor_started() -> None:
    path = f"@gpuproxy-test-{secrets.token_hex(4)}"
    supervisor = Supervisor([GpuId(0)], [])
    child = supervisor.children[0]
    with notify.listener(path) as sock:
        # Given the supervisor listening for its worker on GPU 0, another process than this one
        child.proc = types.SimpleNamespace(pid=os.getppid())  # type: ignore[assignment]
        relay = asyncio.create_task(supervisor._relay_readiness(child, sock))
        try:
            # When another process on the host says READY=1 on its socket
            with structlog.testing.capture_logs() as logs:
                assert notify.notify("READY=1", {notify.ENV: path})
                await asyncio.sleep(0.2)
            # Then it is not taken for the worker's word
            assert supervisor.ready == set()
            [ignored] = [e for e in logs if e["log_level"] == "warning"]
            assert ignored["sender"] == os.getpid() and ignored["message"] == "READY=1"
            # When the worker says it, it counts
            child.proc = types.SimpleNamespace(pid=os.getpid())  # type: ignore[assignment]
            assert notify.notify("READY=1", {notify.ENV: path})
            async with asyncio.timeout(5):
                while supervisor.ready != {"0"}:
                    await asyncio.sleep(0.01)
        finally:
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay
        # A stopped relay leaves no reader behind on the socket
        assert not asyncio.get_running_loop().remove_reader(sock.fileno())
