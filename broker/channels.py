"""How clients reach brokers: addresses, channels (plain or TLS), and moving to the next broker.

A client (worker, plugin, CLI) may be given several brokers that share one database, as a
comma-separated list. It calls one of them; when that one cannot be reached or cannot serve, it
moves to the next, and cycles through them while all are down. Any broker of the database
serves any task: a worker resumes its held tasks on the next one, a plugin watches its task
there. One channel per address, opened on first use and kept, so cycling opens nothing new.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import structlog

log = structlog.get_logger("gpuproxy.channels")

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    ("grpc.max_send_message_length", 4 * 1024 * 1024),
    # A broker whose host is gone (no reset: power lost, cable cut) is left within 30 s, half
    # a default lease: a ping every 20 s that must be answered within 10 s. gRPC answers pings
    # below the application, so a busy broker still does. The ping timeout is gRPC's own
    # (60 s by default, over the keepalive timeout): it also bounds the pings gRPC sends with
    # data, and 60 s is a whole lease.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.ping_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Reconnect within seconds of a broker restart, not after gRPC's default of up to 2 min.
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def target_of(url: str) -> str:
    """Accept gpuproxy's http://HOST:PORT, and https://HOST:PORT, as well as HOST:PORT."""
    for prefix in ("http://", "https://", "grpc://"):
        if url.startswith(prefix):
            url = url[len(prefix):]
    return url.rstrip("/")


def split(urls: str) -> tuple[str, ...]:
    """The addresses of a comma-separated list (one address is a list of one)."""
    return tuple(part.strip() for part in urls.split(","))


def uses_tls(url: str, tls_ca: bytes | None) -> bool:
    """Whether a client of `url` with these roots speaks TLS (see open_channel)."""
    return tls_ca is not None or url.strip().startswith("https://")


def open_channel(url: str, options: Sequence[tuple[str, Any]], tls_ca: bytes | None = None
                 ) -> grpc.aio.Channel:
    """A channel to the broker at `url`: TLS when `tls_ca` (PEM roots to trust: a private CA or
    the broker's self-signed certificate) is given or the address is https:// (the system's
    roots), plain otherwise."""
    if uses_tls(url, tls_ca):
        return grpc.aio.secure_channel(
            target_of(url), grpc.ssl_channel_credentials(root_certificates=tls_ca),
            options=list(options))
    return grpc.aio.insecure_channel(target_of(url), options=list(options))


class Brokers:
    """The brokers a client may call, and the one it calls now (`url`, `channel`)."""

    def __init__(self, urls: str, options: Sequence[tuple[str, Any]] = CHANNEL_OPTIONS,
                 tls_ca: bytes | None = None) -> None:
        self.urls = split(urls)
        self.options = list(options)
        self.tls_ca = tls_ca
        self.current = 0
        self._channels: dict[int, grpc.aio.Channel] = {}

    @property
    def url(self) -> str:
        return self.urls[self.current]

    @property
    def tls(self) -> bool:
        return uses_tls(self.url, self.tls_ca)

    @property
    def channel(self) -> grpc.aio.Channel:
        if self.current not in self._channels:
            self._channels[self.current] = open_channel(self.url, self.options, self.tls_ca)
        return self._channels[self.current]

    def failover(self, failed_url: str, reason: str) -> bool:
        """Move to the next broker, unless there is none or a call that failed before this one
        moved already (calls failing together move once, not once each); whether it moved."""
        if len(self.urls) == 1 or failed_url != self.url:
            return False
        self.current = (self.current + 1) % len(self.urls)
        # (debug: while all are down, this repeats at every retry; callers log the outage)
        log.debug("broker unreachable; calling the next one", failed=failed_url, next=self.url,
                  reason=reason)
        return True

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
