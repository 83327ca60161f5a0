"""Command-line flags that also read GPUPROXY_<FLAG> environment variables and a TOML file.

Precedence: the command line, then the environment, then the config file, then the default.
`--help` shows each flag's variable and default.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import pathlib
import tomllib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from broker import exceptions
from broker.channels import split, target_of


def without_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` without GPUPROXY_* settings: for the broker and workers that the demo and the
    benches start with flags of their own, which a user's GPUPROXY_TOKEN_FILE (say) would
    otherwise reach, and not their own clients."""
    return {k: v for k, v in environ.items() if not k.startswith("GPUPROXY_")}


def seconds(text: str) -> float:
    """A finite number (nan and inf are refused: a timeout of nan would fail every sweep)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def address(text: str, *, listen: bool = False) -> str:
    """HOST:PORT (also gpuproxy's http://HOST:PORT, and [IPv6]:PORT), checked and kept as
    written: a port out of range would otherwise wrap around to another port without a word.
    To `listen` on, port 0 takes any free port."""
    lowest_port = 0 if listen else 1
    rest = text.strip()
    for prefix in ("http://", "https://", "grpc://"):
        rest = rest.removeprefix(prefix)
    if "://" in rest:
        raise ValueError(f"{text!r}: write HOST:PORT (or http://HOST:PORT, https://HOST:PORT "
                         "for TLS): other schemes are not served")
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit() or not lowest_port <= int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT with a port from {lowest_port} to 65535")
    return text.strip()


def addresses(text: str) -> str:
    """One broker address, or several brokers sharing a database, comma-separated: the client
    calls the next one when the one it calls is down (broker.channels)."""
    parts = split(text)
    if len(parts) > 1 and not all(parts):
        raise ValueError(f"{text!r}: an empty address in the list; write HOST:PORT,HOST:PORT")
    if any(char in part for part in parts for char in " \t;"):
        raise ValueError(f"{text!r}: separate the brokers with commas: HOST:PORT,HOST:PORT")
    if len(set(map(target_of, parts))) < len(parts):
        raise ValueError(f"{text!r}: an address is listed twice")
    return ",".join(address(part) for part in parts)


def listen_address(text: str) -> str:
    """An address to listen on: HOST:PORT, port 0 taking any free port. No scheme: TLS is the
    certificate's business (--tls-cert), not the address's."""
    if "://" in text:
        raise ValueError(f"{text!r}: listen on HOST:PORT (for example 0.0.0.0:18888), without a "
                         "scheme; to serve TLS, give --tls-cert and --tls-key")
    return address(text, listen=True)


@dataclasses.dataclass(frozen=True)
class Flag:
    name: str  #: without dashes: "db-dsn"
    help: str
    default: Any = None
    type: Callable[[str], Any] = str
    choices: Sequence[str] | None = None
    prefix: str = "GPUPROXY"

    @property
    def env(self) -> str:
        return f"{self.prefix}_{self.name.upper().replace('-', '_')}"

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")


def add_flags(parser: argparse.ArgumentParser, flags: Sequence[Flag]) -> None:
    for flag in flags:
        shown = "" if flag.default in (None, "") else f", default {flag.default}"
        parser.add_argument(
            f"--{flag.name}", dest=flag.dest, default=None, type=argparse_type(flag.type),
            choices=flag.choices, help=f"{flag.help} [env {flag.env}{shown}]",
        )


def argparse_type(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """`convert` whose ValueError argparse prints as it is (it prints only its own otherwise)."""
    if convert in (str, int, float):
        return convert  # argparse's message names the type already

    def checked(text: str) -> Any:
        try:
            return convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    checked.__name__ = getattr(convert, "__name__", "value")
    return checked


def parse_args(parser: argparse.ArgumentParser,
               argv: Sequence[str] | None = None) -> argparse.Namespace:
    """parser.parse_args, but a flag the chosen subcommand does not take is refused with that
    subcommand's usage (argparse shows the program's, which lists no flag at all)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        _chosen(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _chosen(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            name = getattr(args, action.dest, None)
            if name in action.choices:
                return _chosen(action.choices[name], args)
    return parser


def load_toml(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        with pathlib.Path(path).open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise exceptions.ConfigError(field="config", detail=f"cannot read {path}: {exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise exceptions.ConfigError(field="config", detail=f"{path} is not TOML: {exc}") from exc


def resolve(
    args: argparse.Namespace, flags: Sequence[Flag], file: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None, file_only: Sequence[str] = (),
) -> dict[str, Any]:
    """Each flag's value by precedence, converted by its type; errors name the source.
    `file_only`: the other keys the caller took out of `file` before, named among the keys
    when an unknown one is refused."""
    environ = os.environ if environ is None else environ
    file = file or {}
    known = {f.name for f in flags} | {f.dest for f in flags}
    unknown = sorted(set(file) - known)
    if unknown:
        names = sorted([f.name for f in flags] + list(file_only))
        hints = [f"{key} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(
            key.replace("_", "-"), names, n=1)) else key for key in unknown]
        raise exceptions.ConfigError(
            field="config", detail=f"unknown keys in --config: {', '.join(hints)}; the keys "
            f"are the flag names: {', '.join(names)}")
    values: dict[str, Any] = {}
    for flag in flags:
        value = getattr(args, flag.dest, None)
        if value is None and flag.env in environ:
            value = _convert(flag, environ[flag.env], f"environment variable {flag.env}")
        if value is None:
            raw = file.get(flag.name, file.get(flag.dest))
            if isinstance(raw, list):  # a TOML array for a comma-separated list
                raw = ",".join(map(str, raw))
            if raw is not None:
                value = _convert(flag, str(raw), "config file")
        values[flag.dest] = flag.default if value is None else value
    return values


def _convert(flag: Flag, raw: str, source: str) -> Any:
    try:
        value = flag.type(raw)
    except (TypeError, ValueError) as exc:
        raise exceptions.ConfigError(
            field=flag.name, detail=f"{raw!r} from {source}: {exc}"
        ) from exc
    if flag.choices and value not in flag.choices:
        raise exceptions.ConfigError(
            field=flag.name, detail=f"{raw!r} from {source} is not one of {list(flag.choices)}"
        )
    return value
