"""The plugin's loop: a line in, a request handled in its own task, a line out.

Requests are served concurrently and answered in the order they finish; venus-worker matches
answers by id. A line that is not a request gets an error answer for its id when the id can be
read, and a log line otherwise; the loop goes on either way, also when reading a line fails in a
way nobody foresaw. At the end of stdin (venus-worker stopped or restarts its processor) the
requests in flight are abandoned: their tasks stay on the broker, and the same requests sent
again find them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Coroutine
from typing import Any, Protocol

import structlog

from plugin import exceptions, protocol
from plugin.dump import Dumper
from plugin.protocol import C2Request
from plugin.stdio import LineReader, LineWriter
from plugin.waiter import StagedRequest

log = structlog.get_logger(__name__)

#: How much of an unreadable line the log quotes.
QUOTE_BYTES = 120
#: Lines longer than this are read in a thread: walking a C2 request of 100 MB takes about a
#: second, which the uploads and watches of the requests in flight must not wait for.
THREAD_PARSE_BYTES = 1 << 20


class Prover(Protocol):
    """What answers requests (`waiter.Waiter`; a stand-in in unit tests)."""

    async def stage(self, request: C2Request) -> StagedRequest: ...

    async def prove(self, staged: StagedRequest) -> bytes: ...


def quote(line: bytes) -> str:
    text = line[:QUOTE_BYTES].decode(errors="replace").rstrip("\r\n")
    return text + ("..." if len(line) > QUOTE_BYTES else "")


def internal_error(exc: Exception) -> str:
    """The answer to a request that a bug of the plugin cost."""
    return f"internal error of the C2 plugin ({type(exc).__name__}: {exc}); see its log"


class Processor:
    def __init__(self, prover: Prover, writer: LineWriter, dumper: Dumper) -> None:
        self.prover = prover
        self.writer = writer
        self.dumper = dumper
        self.in_flight: dict[asyncio.Task[None], C2Request] = {}
        #: Requests, and the quick ones: answers to malformed lines, dumps.
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, reader: LineReader) -> None:
        """Say ready, serve lines until stdin ends, then abandon what is still in flight."""
        if not await self.writer.write(protocol.READY_LINE):
            return
        log.info("c2 processor ready", pid=os.getpid())
        while (line := await reader.next_line()) is not None:
            await self.accept(line)
        await self.abandon()

    async def accept(self, line: bytes) -> None:
        """Read one line and start serving it in a task of its own. Never raises."""
        if not line.strip():
            return
        request_id: int | None = None
        try:
            request = (protocol.parse_request(line) if len(line) <= THREAD_PARSE_BYTES
                       else await asyncio.to_thread(protocol.parse_request, line))
            request_id = request.id
            log.info("request", request_id=request.id, sector_id=request.sector_id,
                     miner=request.miner, proof_type=request.registered_proof,
                     task_bytes=len(request.task))
            self._spawn(self.dumper.request(request.id, line), None)
            self._spawn(self._serve(request), request)
        except exceptions.MalformedRequest as exc:
            self._spawn(self._refuse(exc, line), None)
        except Exception as exc:
            # A bug on one line must cost that line only: an exception out of here would end
            # the plugin, and with it every request in flight.
            log.exception("line failed unexpectedly", request_id=request_id, line=quote(line),
                          line_bytes=len(line))
            if request_id is not None:
                answer = protocol.error_line(request_id, internal_error(exc))
                self._spawn(self._answer(request_id, answer), None)

    async def abandon(self) -> None:
        """Stop serving: requests in flight get no answer (nobody is left to read it); the
        quick work (answers to malformed lines, dumps) is still done."""
        if self.in_flight:
            log.warning(
                "input ended (stdin closed, or SIGTERM): abandoning the requests in flight; "
                "their tasks stay on the broker and are found again when the requests come "
                "again",
                requests=sorted(r.id for r in self.in_flight.values()),
                sectors=sorted(r.sector_id for r in self.in_flight.values()),
            )
        else:
            log.info("input ended (stdin closed, or SIGTERM); nothing in flight")
        for task in self.in_flight:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None], request: C2Request | None) -> None:
        name = f"request {request.id}" if request is not None else "quick work"
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        if request is not None:
            # Without its C2 input, which may be tens of MB.
            self.in_flight[task] = dataclasses.replace(request, task=b"")
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.in_flight.pop(task, None)

    async def _refuse(self, exc: exceptions.MalformedRequest, line: bytes) -> None:
        await self.dumper.request(exc.request_id, line)
        if exc.request_id is None:
            log.error("line ignored: no request id can be read in it", error=str(exc),
                      line=quote(line), line_bytes=len(line))
            return
        log.warning("malformed request", request_id=exc.request_id, error=str(exc))
        await self._answer(exc.request_id, protocol.error_line(exc.request_id, str(exc)))

    async def _serve(self, request: C2Request) -> None:
        request_id, sector_id = request.id, request.sector_id
        try:
            staged = await self.prover.stage(request)
            del request  # from here the C2 input lives in the staged file only
            answer = protocol.proof_line(request_id, await self.prover.prove(staged))
        except exceptions.PluginError as exc:
            log.warning("request failed", request_id=request_id, sector_id=sector_id,
                        error=str(exc))
            answer = protocol.error_line(request_id, str(exc))
        except Exception as exc:
            # A bug here must cost one answer, not the loop.
            log.exception("request failed unexpectedly", request_id=request_id)
            answer = protocol.error_line(request_id, internal_error(exc))
        await self._answer(request_id, answer)

    async def _answer(self, request_id: int, line: bytes) -> None:
        await self.dumper.response(request_id, line)
        if await self.writer.write(line):
            log.info("answered", request_id=request_id, line_bytes=len(line))
