"""Readiness reports with systemd's sd_notify protocol: a datagram such as "READY=1" sent to the
unix socket named by $NOTIFY_SOCKET.

A worker sends READY=1 once it holds its GPU and its executors are up, and STOPPING=1 when it
starts draining. systemd (`Type=notify`) and `gpuproxy-worker supervise` both listen for it.
"""

from __future__ import annotations

import contextlib
import os
import socket

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


def listener(path: str) -> socket.socket:
    """A non-blocking datagram socket bound at `path` ("@name": in the abstract namespace, no
    file that a killed supervisor would leave behind), for a supervisor's children."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.bind(_address(path))
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s
