"""`--dump-dir`: every request and response line as it crossed the pipe, one file each.

When venus-worker says "failed to unmarshal response", these files show exactly what was sent.
Files are named by request id, with the plugin's pid in front since venus-worker numbers its
requests afresh each time it starts: `c2-<pid>-<id>.request`, `c2-<pid>-<id>.response`. A
request line whose id cannot be read goes to `c2-<pid>-unknown-<n>.request`. A dump that cannot be
written is logged and never fails a request.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pathlib

import structlog

log = structlog.get_logger(__name__)


def file_name(pid: int, request_id: int | None, kind: str, unknown_number: int = 0) -> str:
    """The dump file of one line; `kind` is "request" or "response"."""
    label = str(request_id) if request_id is not None else f"unknown-{unknown_number}"
    return f"c2-{pid}-{label}.{kind}"


class Dumper:
    def __init__(self, folder: pathlib.Path | None, pid: int | None = None) -> None:
        self.folder = folder
        self.pid = os.getpid() if pid is None else pid
        self._unknown = itertools.count(1)

    async def request(self, request_id: int | None, line: bytes) -> None:
        number = next(self._unknown) if request_id is None else 0
        await self._write(file_name(self.pid, request_id, "request", number), line)

    async def response(self, request_id: int, line: bytes) -> None:
        await self._write(file_name(self.pid, request_id, "response"), line)

    async def _write(self, name: str, line: bytes) -> None:
        if self.folder is None:
            return
        path = self.folder / name
        try:
            await asyncio.to_thread(path.write_bytes, line)
        except OSError as exc:
            log.warning("could not dump a line", path=str(path), error=str(exc))
