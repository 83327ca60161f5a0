"""Who may call a broker: an access token shared by a broker and its clients (workers,
plugins, the CLI).

A broker started with --token-file answers only calls that carry that token, as the gRPC
metadata `authorization: Bearer <token>`. The health service stays open: probes and load
balancers check it without the secret, and it tells nothing about tasks. The token is a
password; TLS (broker.tls) keeps it from the network.
"""

from __future__ import annotations

import hmac
import os
import pathlib
import stat
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health

from broker import exceptions, metrics

log = structlog.get_logger("gpuproxy.access")

METADATA_KEY = "authorization"
SCHEME = "Bearer "
#: Services any caller may use without the token.
OPEN_SERVICES = frozenset({health.SERVICE_NAME})
TOKEN_FIX = "give this program the broker's token file (--token-file, or GPUPROXY_TOKEN_FILE)"


def read_token(path: str, field: str = "token-file") -> str:
    """The token in the file at `path`, surrounding whitespace dropped: one word of printable
    ASCII (what gRPC metadata carries); "" for no path. ConfigError when the file is missing,
    unreadable or empty."""
    if not path.strip():
        return ""
    file = pathlib.Path(path).expanduser()
    try:
        text = file.read_bytes().decode("ascii").strip()
    except OSError as exc:
        # (from None: the message says all the cause would, and a cause line repeats it)
        raise exceptions.ConfigError(
            field=field, detail=f"cannot read {file}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:  # (from None: its text could show a byte of the token)
        raise exceptions.ConfigError(
            field=field, detail=f"{file} is not text: a token is one line of printable ASCII "
            "(make one with `openssl rand -hex 32`)") from None
    if not text:
        raise exceptions.ConfigError(
            field=field, detail=f"{file} is empty: write the token in it (make one with "
            "`openssl rand -hex 32`)")
    if not all(" " < c <= "~" for c in text):
        raise exceptions.ConfigError(
            field=field, detail=f"{file} holds spaces, line breaks or control characters: a "
            "token is one word of printable ASCII (make one with `openssl rand -hex 32`)")
    mode = os.stat(file).st_mode
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("the token file can be read by other users of this host; chmod 600 it",
                    file=str(file), mode=oct(stat.S_IMODE(mode)))
    return text


def metadata(token: str) -> tuple[tuple[str, str], ...] | None:
    """What a client sends with every call: the token, or nothing when it has none."""
    return ((METADATA_KEY, SCHEME + token),) if token else None


class TokenCheck(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses, as UNAUTHENTICATED, every call without the broker's token, but those to
    OPEN_SERVICES."""

    def __init__(self, token: str) -> None:
        self._expected = (SCHEME + token).encode()

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        service = details.method.lstrip("/").rpartition("/")[0]
        if handler is None or service in OPEN_SERVICES:
            return handler
        sent = [v for k, v in details.invocation_metadata or () if k == METADATA_KEY]
        if sent and hmac.compare_digest(str(sent[0]).encode(), self._expected):
            return handler
        why = (f"the access token sent is not this broker's: {TOKEN_FIX}" if sent else
               f"this broker takes calls with its access token only: {TOKEN_FIX}")
        token = "wrong" if sent else "missing"
        log.info("call refused for its access token", method=details.method, token=token)
        metrics.REFUSED.labels(token=token).inc()
        return _refusal(handler, why)


def _refusal(handler: grpc.RpcMethodHandler, why: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that ends the call as UNAUTHENTICATED."""
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, why)

    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return make(refuse, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
