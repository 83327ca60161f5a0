"""The plugin's two ends of the pipe to venus-worker: request lines in, protocol lines out.

Nothing but protocol lines may reach stdout, so the CLI hands the real stdout to `LineWriter` and
points file descriptor 1 at stderr: a stray print or a library's message lands in the log, not in
venus-worker's parser. Lines are written whole (a response larger than the pipe buffer too), one
at a time, each flushed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import sys
import threading

import structlog

log = structlog.get_logger(__name__)

#: Bytes asked of stdin at a time.
READ_BYTES = 1024 * 1024


def take_stdout() -> int:
    """A descriptor of the real stdout for `LineWriter`; fd 1 and sys.stdout become stderr."""
    sys.stdout.flush()
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return protocol_fd


def write_all(fd: int, data: bytes) -> None:
    """Write every byte, waiting while the pipe is full (also on a non-blocking descriptor)."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        view = view[written:]


class LineWriter:
    """The only writer of the protocol descriptor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.closed = False
        self._lock = asyncio.Lock()

    async def write(self, line: bytes) -> bool:
        """Write one line whole; False when the reader is gone (then nothing more is written)."""
        async with self._lock:
            if self.closed:
                return False
            try:
                # In a thread: the event loop keeps serving while venus-worker reads slowly.
                await asyncio.to_thread(write_all, self.fd, line)
            except OSError as exc:
                self.closed = True
                log.error("cannot write to stdout: is venus-worker gone?", error=str(exc))
                return False
            return True


class LineReader:
    """Lines of a file descriptor, read by a daemon thread.

    A thread, not the event loop: a request line may be tens of MB and stdin may be a pipe, a
    file or a terminal; and a daemon thread blocked in a read does not keep the process alive.
    It reads the descriptor itself (no buffered file object, whose lock a thread still blocked
    in it at exit would hold) and splits the lines.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        threading.Thread(target=self._pump, name="stdin", daemon=True).start()

    def stop(self) -> None:
        """End the lines now, as if stdin had closed (from the event loop's thread)."""
        self._queue.put_nowait(None)

    async def next_line(self) -> bytes | None:
        """The next line with its newline (the last one may have none), or None at the end."""
        return await self._queue.get()

    def _pump(self) -> None:
        parts: list[bytes] = []
        try:
            while chunk := os.read(self.fd, READ_BYTES):
                start = 0
                while (end := chunk.find(b"\n", start) + 1) > 0:
                    parts.append(chunk[start:end])
                    self._deliver(b"".join(parts))
                    parts, start = [], end
                if start < len(chunk):
                    parts.append(chunk[start:])
        except OSError as exc:
            log.error("cannot read stdin", error=str(exc))
        if parts:
            self._deliver(b"".join(parts))
        self._deliver(None)

    def _deliver(self, line: bytes | None) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop closed: the process is ending
            self._loop.call_soon_threadsafe(self._queue.put_nowait, line)
