"""Readiness reports with systemd's sd_notify protocol: a datagram such as "READY=1" sent to the
unix socket named by $NOTIFY_SOCKET.

A worker sends READY=1 once it holds its GPU and its executors are up, and STOPPING=1 when it
starts draining. systemd (`Type=notify`) and `gpuproxy-worker supervise` both listen for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct

ENV = "NOTIFY_SOCKET"


def notify(state: str, environ: dict[str, str] | None = None) -> bool:
    """Send `state` ("READY=1", "STOPPING=1"); False when nobody listens."""
    path = (os.environ if environ is None else environ).get(ENV, "")
    if not path:
        return False
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(state.encode(), _address(path))
        return True
    return False


def _address(path: str) -> str:
    return "\0" + path[1:] if path.startswith("@") else path  # "@name": abstract namespace


#: SCM_CREDENTIALS: the sender's pid, uid and gid, as the kernel vouches for them.
_CREDENTIALS = struct.Struct("3i")


def listener(path: str) -> socket.socket:
    """A non-blocking datagram socket bound at `path` ("@name": in the abstract namespace, no
    file that a killed supervisor would leave behind), for a supervisor's children. Anyone on
    the host may send to an abstract socket: `receive` says who sent each message."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        s.bind(_address(path))
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


async def receive(sock: socket.socket) -> tuple[bytes, int | None]:
    """The next datagram on a `listener` socket and the pid of the process that sent it."""
    loop = asyncio.get_running_loop()
    fd = sock.fileno()  # the socket may be closed by the time a cancelled wait cleans up
    while True:
        try:
            data, ancillary, _flags, _address = sock.recvmsg(
                4096, socket.CMSG_SPACE(_CREDENTIALS.size))
        except BlockingIOError:
            readable: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, _settle, readable)
            try:
                await readable
            finally:
                loop.remove_reader(fd)
            continue
        pid = next((_CREDENTIALS.unpack(payload[:_CREDENTIALS.size])[0]
                    for level, kind, payload in ancillary
                    if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), None)
        return data, pid


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():  # the reader may fire again before it is removed
        future.set_result(None)
