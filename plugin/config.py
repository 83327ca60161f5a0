"""Plugin settings: one frozen dataclass, validated field by field, built by the CLI."""

from __future__ import annotations

import dataclasses
import pathlib

from plugin import exceptions


@dataclasses.dataclass(frozen=True, kw_only=True)
class PluginConfig:
    url: str = "http://127.0.0.1:18888"
    #: Seconds between task reads when the broker's watch stream cannot be held.
    poll_interval_s: float = 60.0
    #: A request is answered with an error when it has no proof after this long.
    deadline_s: float = 24 * 3600.0
    #: First and longest wait between attempts to reach the broker again.
    retry_min_s: float = 1.0
    retry_max_s: float = 30.0
    #: Each request and response line is written to a file here, when set.
    dump_dir: pathlib.Path | None = None
    #: The broker's access token, sent with every call (broker.access); "" for none.
    token: str = dataclasses.field(default="", repr=False)
    #: PEM roots the broker's TLS certificate is checked against (see BrokerClient).
    tls_ca: bytes | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.url.strip():
            raise exceptions.ConfigError(field="gpuproxy-url", detail="the broker address is empty")
        for field, value in (("poll-task-interval", self.poll_interval_s),
                             ("deadline-s", self.deadline_s),
                             ("retry-min-s", self.retry_min_s),
                             ("retry-max-s", self.retry_max_s)):
            if not value > 0:
                raise exceptions.ConfigError(field=field, detail=f"must be positive, got {value}")
        if self.retry_max_s < self.retry_min_s:
            raise exceptions.ConfigError(
                field="retry-max-s", detail=f"{self.retry_max_s} is below --retry-min-s "
                f"{self.retry_min_s}"
            )
