"""TLS between a broker and its clients (workers, plugins, the CLI): the files each side reads,
and what a failed handshake means.

With --tls-cert and --tls-key a broker serves TLS only. Clients trust its certificate through
--tls-ca (a private CA, or the self-signed certificate itself) or, for an https:// address, the
system's roots, and check that it names the host they dial. TLS covers the gRPC calls (the
access token, payloads streamed from and to the broker, proofs); not an NFS payload folder, the
database link, or the metrics endpoint.
"""

from __future__ import annotations

import pathlib
import ssl
from typing import NamedTuple

from broker import exceptions


def read_pem(path: str, field: str, kind: str) -> bytes | None:
    """The PEM file at `path` (`kind`: what it should hold, for the message); None for no
    path. ConfigError when it is missing, unreadable or not PEM."""
    if not path.strip():
        return None
    file = pathlib.Path(path).expanduser()
    try:
        data = file.read_bytes()
    except OSError as exc:  # (from None: the message says all the cause would)
        raise exceptions.ConfigError(
            field=field, detail=f"cannot read {file}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise exceptions.ConfigError(
            field=field, detail=f"{file} is not PEM: {kind} starts with a -----BEGIN line")
    return data


def read_ca(path: str) -> bytes | None:
    """A client's --tls-ca: the roots to check the broker's certificate against."""
    return read_pem(path, "tls-ca", "a CA certificate")


class ServerTls(NamedTuple):
    cert_chain: bytes  #: PEM
    private_key: bytes  #: PEM, unencrypted


def server_tls(cert_path: str, key_path: str) -> ServerTls | None:
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
            f"{cert_path}, or either is damaged ({exc.reason or exc})") from exc
    return ServerTls(cert_chain=cert, private_key=key)


#: gRPC's words for a TLS set-up that cannot work however often it is tried, and what to do.
FAILURES = (
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


def failure(detail: str) -> str:
    """What to do when gRPC's `detail` says TLS cannot work with this broker; "" otherwise."""
    for words, advice in FAILURES:
        if any(w in detail for w in words):
            return advice
    return ""


def plain_hint(detail: str, tls: bool) -> str:
    """A hint for a plain connection the broker closed at once: it may serve TLS. Only at
    connection time: a broker killed mid-call ends it with "Socket closed" too."""
    if not tls and "Socket closed" in detail and "failed to connect" in detail:
        return ("a broker serving TLS (--tls-cert) closes plain connections; if this one does, "
                "give --tls-ca, or an https:// address")
    return ""
