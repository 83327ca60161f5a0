"""The parent side of venus-worker's external processor protocol, for any stage (c2 here).

The child is started with the configured bin, args and envs; it prints "<stage> processor ready",
then reads one JSON request per line on stdin, `{"id":N,"task":...}`, and answers each on stdout,
`{"id":N,"err_msg":...,"output":...}`, in any order. Its stderr is relayed to our log.

Framing and parsing are pure functions below; `ExtProcessor` does the I/O. The child is started
once and kept between tasks; when it dies, the requests in flight fail (retryable) and the next
request starts a new one. A request that runs out of time kills the child, since the protocol has
no way to cancel one request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import json
import os
import shutil
import signal
from typing import Any

import structlog

from worker import exceptions, gpus, lifeline
from worker.config import ProcessorConfig

log = structlog.get_logger(__name__)

#: Longest line read from the child; a C2 answer is a few kB, a request may be tens of MB.
LINE_LIMIT_BYTES = 16 * 1024 * 1024
#: How much of an offending line an error quotes.
QUOTE_CHARS = 120
#: How many of the child's last lines (stderr, stray stdout) an error quotes: a processor that
#: dies on a missing parameters file says so there, and the task's error must carry it.
LAST_LINES = 5
#: How often a child's exit is looked for, and how long its output may still be read after it.
EXIT_POLL_S = 0.5
DRAIN_S = 1.0
#: What venus-worker's and damocles' processors log on stderr for a request line that does not
#: deserialize (an unknown proof type, a value out of range); they answer nothing to it.
UNREADABLE_REQUEST = "unmarshal request"


# -- framing (pure) -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Response:
    id: int
    err_msg: str | None
    output: Any


def ready_line(stage: str) -> str:
    return f"{stage} processor ready"


def encode_request(request_id: int, task: bytes) -> bytes:
    """`{"id":N,"task":<task>}` and a newline, with the task's bytes as they were submitted.

    Only line breaks change: in valid JSON they are whitespace (never inside a string, where
    they must be escaped), so turning them into spaces keeps every value, key order and number
    format, and keeps the request on one line.
    """
    # A UTF-8 byte order mark, which Python's json skips and serde refuses, goes too.
    body = task.strip().removeprefix(b"\xef\xbb\xbf").replace(b"\r", b" ").replace(b"\n", b" ")
    return b'{"id":%d,"task":%s}\n' % (request_id, body)


class BadResponse(ValueError):
    """What is wrong with a response line; `request_id` when the line still names one."""

    def __init__(self, detail: str, request_id: int | None = None) -> None:
        super().__init__(detail)
        self.request_id = request_id


def parse_response(line: bytes) -> Response:
    """One response line; raises BadResponse saying what is wrong with it."""
    try:
        data = json.loads(line)
    except (ValueError, RecursionError) as exc:  # not JSON, or a number or nesting too large
        raise BadResponse(f"the response is not JSON we can read ({exc})") from None
    if not isinstance(data, dict):
        raise BadResponse("the response is not a JSON object")
    request_id = data.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, int) or request_id < 0:
        raise BadResponse("the response has no integer id")
    err_msg, output = data.get("err_msg"), data.get("output")
    if err_msg is not None and not isinstance(err_msg, str):
        raise BadResponse("err_msg is neither a string nor null", request_id)
    if err_msg is None and output is None:
        raise BadResponse("the response has neither err_msg nor output", request_id)
    return Response(id=request_id, err_msg=err_msg, output=output)


def quote(line: bytes | str) -> str:
    """The start of a line, for error messages."""
    text = line.decode(errors="replace") if isinstance(line, bytes) else line
    text = text.rstrip("\r\n")
    return text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS] + "..."


# -- the child process ----------------------------------------------------------------------------


def _why_not(binary: str) -> str:
    """Why a processor binary cannot be run, as its operator would look for it."""
    if os.sep not in binary:
        return "not found in the PATH of the worker (give its full path)"
    if os.path.isdir(binary):
        return "it is a folder, not a program"
    return "it is not executable" if os.path.isfile(binary) else "no such file"


async def exit_status(proc: asyncio.subprocess.Process) -> int:
    """The child's exit status as soon as it has exited: `proc.wait()` also waits until its
    pipes close, which a helper process that inherited them may put off indefinitely."""
    while proc.returncode is None:
        await asyncio.sleep(0.05)
    return proc.returncode


class _ExitedEarly(Exception):
    def __init__(self, returncode: int) -> None:
        self.returncode = returncode


@dataclasses.dataclass
class _Child:
    proc: asyncio.subprocess.Process
    pending: dict[int, asyncio.Future[Response]] = dataclasses.field(default_factory=dict)
    write_lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)
    #: Why we killed it, when we did; the requests still in flight fail with this.
    killed_because: exceptions.ProcessorError | None = None
    last_lines: collections.deque[str] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=LAST_LINES))

    @property
    def said(self) -> str:
        return " | ".join(self.last_lines) or "nothing on stderr"

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and self.killed_because is None

    def kill(self, because: exceptions.ProcessorError) -> None:
        self.killed_because = self.killed_because or because
        self.kill_group()

    def stop_reading(self) -> None:
        """Close our ends of its stdout and stderr, as if it had closed them: the readers see
        their end and no more data arrives (a helper that escaped its process group may
        still hold the other ends)."""
        # asyncio's own transport: the process object gives its pipes no public handle
        transport = self.proc._transport  # type: ignore[attr-defined]
        for fd in (1, 2):
            pipe = transport.get_pipe_transport(fd)
            if pipe is not None:
                pipe.close()

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            # The child leads its own process group: its helpers go too.
            os.killpg(self.proc.pid, signal.SIGKILL)


class ExtProcessor:
    """One external processor child for `stage`, started on first use and restarted after death."""

    def __init__(self, stage: str, config: ProcessorConfig) -> None:
        self.stage = stage
        self.config = config
        self.name = f"{stage} processor {config.bin}"
        self._child: _Child | None = None
        self._start_lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._closing = False

    @property
    def pid(self) -> int | None:
        return self._child.proc.pid if self._child and self._child.alive else None

    async def start(self) -> None:
        """Start the child now (it is started on first use otherwise) and wait until ready."""
        await self._running()

    async def call(self, task: bytes, timeout_s: float) -> Any:
        """Send one task; its output, or ProcessorError (TaskFailed, retryable)."""
        child = await self._running()
        request_id = next(self._ids)
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        child.pending[request_id] = future
        try:
            async with asyncio.timeout(timeout_s):
                await self._send(child, encode_request(request_id, task))
                response = await future
        except TimeoutError:
            child.kill(exceptions.ProcessorError(
                processor=self.name, detail=f"killed: request {request_id} ran out of time"
            ))
            raise exceptions.ProcessorTimeout(
                processor=self.name, pid=child.proc.pid, timeout_s=timeout_s, said=child.said
            ) from None
        except asyncio.CancelledError:
            child.pending.pop(request_id, None)
            if not child.pending:
                # Nobody else waits on it: stop the work at once rather than let it finish.
                child.kill(exceptions.ProcessorError(
                    processor=self.name, detail="killed: its task was stopped"
                ))
            raise
        finally:
            child.pending.pop(request_id, None)
        if response.err_msg is not None:
            raise exceptions.ProcessorFailed(processor=self.name, detail=response.err_msg)
        return response.output

    async def close(self, timeout_s: float = 5.0) -> None:
        """Close the child's stdin (it exits when its work is done), then kill it if it lingers."""
        self._closing = True
        child, self._child = self._child, None
        if child is None:
            return
        if child.proc.stdin is not None:
            child.proc.stdin.close()
        try:
            await asyncio.wait_for(exit_status(child.proc), timeout_s)
        except TimeoutError:
            child.kill(exceptions.ProcessorError(processor=self.name, detail="killed at shutdown"))
        await asyncio.gather(*child.tasks, return_exceptions=True)

    # -- internals --------------------------------------------------------------------------------

    async def _running(self) -> _Child:
        async with self._start_lock:
            if self._child is not None and self._child.alive:
                return self._child
            if self._child is not None:
                log.info("restarting the processor", processor=self.name)
            self._child = await self._spawn()
            return self._child

    async def _spawn(self) -> _Child:
        cfg = self.config
        inherited = os.environ if cfg.inherit_envs else {
            k: v for k, v in os.environ.items() if k in gpus.GPU_ENVS}  # --gpu's choice
        env = {**inherited, **cfg.envs}
        # As exec finds it: in the child's PATH, or the system default without one
        if shutil.which(cfg.bin, path=env.get("PATH", os.defpath)) is None:
            raise exceptions.ProcessorUnavailable(processor=self.name, detail=_why_not(cfg.bin))
        try:
            proc = await asyncio.create_subprocess_exec(
                # Killed by the kernel if the worker is: it must not keep the GPU busy while
                # the restarted worker runs the same task there again.
                *lifeline.bound([cfg.bin, *cfg.args]), stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env=env, limit=LINE_LIMIT_BYTES,
                # Its own session: a Ctrl-C meant for the worker must not kill the task it runs
                # while the worker drains.
                start_new_session=True,
            )
        except OSError as exc:
            raise exceptions.ProcessorUnavailable(
                processor=self.name, detail=exc.strerror or str(exc)
            ) from exc
        child = _Child(proc)
        relay = asyncio.create_task(self._relay_stderr(child), name=f"{self.stage} stderr")
        try:
            await asyncio.wait_for(self._await_ready(child), cfg.ready_timeout_s)
        except BaseException as exc:
            child.kill(exceptions.ProcessorError(processor=self.name, detail="not ready"))
            await exit_status(proc)
            await asyncio.gather(relay, return_exceptions=True)
            if isinstance(exc, TimeoutError):
                raise exceptions.ProcessorUnavailable(
                    processor=self.name, detail=f"it did not print {ready_line(self.stage)!r} "
                    f"within {cfg.ready_timeout_s:g} s",
                ) from None
            if isinstance(exc, _ExitedEarly):  # its stderr is relayed by now: say what it said
                raise exceptions.ProcessorExitedEarly(
                    processor=self.name, pid=proc.pid, returncode=exc.returncode,
                    said=child.said) from None
            raise
        reader = asyncio.create_task(self._read_responses(child), name=f"{self.stage} responses")
        watcher = asyncio.create_task(self._watch_exit(child), name=f"{self.stage} exit")
        child.tasks = [reader, relay, watcher]
        log.info("processor ready", processor=self.name, pid=proc.pid)
        return child

    async def _await_ready(self, child: _Child) -> None:
        proc = child.proc
        assert proc.stdout is not None
        want = ready_line(self.stage)
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise _ExitedEarly(await exit_status(proc))
            if line.strip() == want.encode():
                return
            log.warning("processor line before ready ignored", processor=self.name,
                        line=quote(line))

    async def _send(self, child: _Child, request: bytes) -> None:
        assert child.proc.stdin is not None
        try:
            async with child.write_lock:
                child.proc.stdin.write(request)
                await child.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            # The child died; the reader fails this request with the reason once it has exited.
            pass

    async def _read_responses(self, child: _Child) -> None:
        """Match answers to requests until the child's stdout ends; then fail what is left."""
        proc = child.proc
        try:
            await self._read_lines(child)
        except Exception as exc:  # never silently: the requests in flight would wait forever
            log.exception("reading the processor's answers failed; killing it",
                          processor=self.name, pid=proc.pid)
            child.kill(exceptions.ProcessorError(
                processor=self.name, detail=f"its answers could not be read ({exc!r})"))
        code = await exit_status(proc)
        if relays := child.tasks[1:2]:  # its last stderr lines, unless a helper holds stderr
            await asyncio.wait(relays, timeout=DRAIN_S)
        error = child.killed_because or exceptions.ProcessorDied(
            processor=self.name, pid=proc.pid, returncode=code, said=child.said
        )
        for future in child.pending.values():
            if not future.done():
                future.set_exception(error)
        child.pending.clear()
        if not self._closing and child.killed_because is None:
            log.warning("processor exited; it is restarted for the next task",
                        processor=self.name, pid=proc.pid, status=code)

    async def _watch_exit(self, child: _Child) -> None:
        """A child that exits while a helper it started still holds its stdout or stderr gives
        the readers no end of input (a wrapper script's `sleep &`, say): the task would wait
        out its timeout, and closing would hang. So once the child has exited, the readers get
        a moment to read what is left, then the child's process group is killed, and failing
        that our ends of its pipes are closed."""
        proc = child.proc
        readers = set(child.tasks[:2])  # stdout's and stderr's
        while proc.returncode is None and not all(r.done() for r in readers):
            await asyncio.sleep(EXIT_POLL_S)
        for end in (child.kill_group, child.stop_reading):
            if not (await asyncio.wait(readers, timeout=DRAIN_S))[1]:
                return
            log.warning("processor exited but its output is still held open (a helper it "
                        "started?); ending it", processor=self.name, pid=proc.pid)
            end()

    async def _read_lines(self, child: _Child) -> None:
        proc = child.proc
        assert proc.stdout is not None
        while child.killed_because is None:
            try:
                line = await proc.stdout.readline()
            except ValueError:
                line = await proc.stdout.read(QUOTE_CHARS)
                self._broken(child, f"a line longer than {LINE_LIMIT_BYTES} bytes", line)
                break
            if not line:
                break
            try:
                response = parse_response(line)
            except BadResponse as exc:
                self._stray(child, exc, line)
                continue
            future = child.pending.pop(response.id, None)
            if future is None:
                log.warning("processor answered an unknown request", processor=self.name,
                            id=response.id)
            elif not future.done():
                future.set_result(response)

    def _stray(self, child: _Child, problem: BadResponse, line: bytes) -> None:
        """A stdout line that is not a response. venus-worker logs such a line and reads on, so
        processors that print a stray line work there: so here. A response to one of our
        requests that is malformed fails that request only."""
        error = exceptions.ProcessorProtocolError(
            processor=self.name, pid=child.proc.pid, detail=str(problem), line=quote(line)
        )
        future = None if problem.request_id is None else child.pending.pop(problem.request_id,
                                                                           None)
        if future is not None and not future.done():
            future.set_exception(error)
            return
        child.last_lines.append(f"stdout: {quote(line)}")
        log.warning("processor wrote a line that is not a response; ignored (only responses "
                    "belong on its stdout, logs on stderr)", processor=self.name,
                    pid=child.proc.pid, line=quote(line))

    def _broken(self, child: _Child, detail: str, line: bytes) -> None:
        # Its answers can no longer be matched to requests: fail them all and start afresh.
        error = exceptions.ProcessorProtocolError(
            processor=self.name, pid=child.proc.pid, detail=detail, line=quote(line)
        )
        log.error("processor broke the protocol; killing it", processor=self.name,
                  pid=child.proc.pid, error=str(error))
        child.kill(error)

    async def _relay_stderr(self, child: _Child) -> None:
        proc = child.proc
        assert proc.stderr is not None
        while True:
            try:
                line = await proc.stderr.readline()
            except ValueError:
                line = await proc.stderr.read(LINE_LIMIT_BYTES)
            if not line:
                return
            text = line.decode(errors="replace").rstrip()
            if text:
                child.last_lines.append(quote(text))
            log.info("processor", processor=self.stage, pid=proc.pid, line=text)
            if UNREADABLE_REQUEST in text.lower():
                self._unreadable(child, text)

    def _unreadable(self, child: _Child, text: str) -> None:
        """The child could not read a request and goes on without answering it: fail that
        request now rather than after its timeout. The line names no request: only when one
        is in flight is it known which (with several, their timeouts decide)."""
        waiting = [i for i, f in child.pending.items() if not f.done()]
        if len(waiting) != 1:
            log.warning("the processor could not read one of the requests in flight; it is "
                        "not known which", processor=self.name, requests=waiting, line=text)
            return
        [request_id] = waiting
        future = child.pending.pop(request_id)
        future.set_exception(exceptions.ProcessorCannotRead(
            processor=self.name, pid=child.proc.pid, request_id=request_id, line=quote(text)))
