"""Who may call a broker, and over what: an access token and TLS, shared by a broker and its
clients (workers, plugins, the CLI).

A broker started with --token-file answers only calls that carry that token, as the gRPC
metadata `authorization: Bearer <token>`. The health service stays open: probes and load
balancers check it without the secret, and it tells nothing about tasks. With --tls-cert and
--tls-key it serves TLS only; clients then trust its certificate through --tls-ca (a private CA,
or the self-signed certificate itself) or, for an https:// address, the system's roots. The
token is a password, TLS is what keeps it (and payloads) from the network.
"""

from __future__ import annotations

import hmac
import os
import pathlib
import ssl
import stat
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health

from broker import exceptions, metrics
from broker.flags import Flag

log = structlog.get_logger("gpuproxy.access")

METADATA_KEY = "authorization"
SCHEME = "Bearer "
#: Services any caller may use without the token.
OPEN_SERVICES = frozenset({health.SERVICE_NAME})
FIX = "give this program the broker's token file (--token-file, or GPUPROXY_TOKEN_FILE)"
#: The flags of every program that calls a broker.
CLIENT_FLAGS = [
    Flag("token-file", "file holding the broker's access token (empty: none)", ""),
    Flag("tls-ca", "PEM file of the CA (or the broker's self-signed certificate) to trust: "
         "TLS to the broker (an https:// address uses the system's CAs)", ""),
]


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
        raise exceptions.ConfigError(
            field=field, detail=f"cannot read {file}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
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


def read_pem(path: str, field: str, kind: str) -> bytes | None:
    """The PEM file at `path` (`kind`: what it should hold, for the message); None for no
    path. ConfigError when it is missing, unreadable or not PEM."""
    if not path.strip():
        return None
    file = pathlib.Path(path).expanduser()
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise exceptions.ConfigError(
            field=field, detail=f"cannot read {file}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise exceptions.ConfigError(
            field=field, detail=f"{file} is not PEM: {kind} starts with a -----BEGIN line")
    return data


def read_ca(path: str) -> bytes | None:
    """A client's --tls-ca: the roots to check the broker's certificate against."""
    return read_pem(path, "tls-ca", "a CA certificate")


def server_tls(cert_path: str, key_path: str) -> tuple[bytes, bytes] | None:
    """The broker's certificate chain and private key (PEM) for TLS, checked to belong together
    as a TLS library will use them; None when neither is given."""
    if bool(cert_path.strip()) != bool(key_path.strip()):
        raise exceptions.ConfigError(
            field="tls-cert" if not cert_path.strip() else "tls-key",
            detail="TLS needs both --tls-cert (the certificate chain) and --tls-key (its key)")
    cert = read_pem(cert_path, "tls-cert", "a certificate")
    key = read_pem(key_path, "tls-key", "a private key")
    if cert is None or key is None:
        return None
    if b"ENCRYPTED" in key:
        raise exceptions.ConfigError(
            field="tls-key", detail=f"{key_path} is encrypted, and the broker starts unattended: "
            "write it out unencrypted (openssl pkey -in KEY -out PLAIN.key) and chmod 600 it")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            pathlib.Path(cert_path).expanduser(), pathlib.Path(key_path).expanduser(),
            password=lambda: b"")  # never a pass phrase prompt
    except ssl.SSLError as exc:
        raise exceptions.ConfigError(
            field="tls-key", detail=f"{key_path} is not the key of the certificate in "
            f"{cert_path}, or either is damaged ({exc.reason or exc})") from None
    return cert, key


#: gRPC's words for a TLS set-up that cannot work however often it is tried, and what to do.
TLS_FAILURES = (
    (("Hostname Verification Check failed", "call host does not match SSL server name"),
     "the broker's certificate does not name the host in this address (its subjectAltName "
     "must): connect by a name or IP it has, or make it a certificate that has this one"),
    (("CERTIFICATE_VERIFY_FAILED",),
     "the broker's certificate is not signed by the CA this program trusts: give --tls-ca "
     "the CA's certificate (or the broker's own, if self-signed)"),
    (("WRONG_VERSION_NUMBER",),
     "the broker does not serve TLS: drop --tls-ca and https://, or start it with --tls-cert "
     "and --tls-key"),
)


def tls_failure(detail: str) -> str:
    """What to do when gRPC's `detail` says TLS cannot work with this broker; "" otherwise."""
    for words, advice in TLS_FAILURES:
        if any(w in detail for w in words):
            return advice
    return ""


def plain_to_tls_hint(detail: str, tls: bool) -> str:
    """A hint for a plain connection the broker closed at once: it may serve TLS. Only at
    connection time: a broker killed mid-call ends it with "Socket closed" too."""
    if not tls and "Socket closed" in detail and "failed to connect" in detail:
        return ("a broker serving TLS (--tls-cert) closes plain connections; if this one does, "
                "give --tls-ca, or an https:// address")
    return ""


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
        why = (f"the access token sent is not this broker's: {FIX}" if sent else
               f"this broker takes calls with its access token only: {FIX}")
        log.warning("a call without the broker's token was refused", method=details.method,
                    token="wrong" if sent else "none")
        metrics.REFUSED.labels(token="wrong" if sent else "none").inc()
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
