"""Where JSON values lie in a line of bytes, without building them.

A C2 request carries the C1 output (tens of MB of nested arrays of small numbers). Decoding it
would cost several times its size in memory and re-encoding it would change key order and number
formats, which must reach the prover byte for byte. So objects are walked member by member and
each value is only *located*: strings and brackets are matched (a regular expression jumps from
one to the next), scalars are checked against the JSON grammar. Only the small values the plugin
needs are decoded, with `json.loads` on their span.

Nested arrays and objects are checked for balance and for the keys and commas of objects only
at the levels walked here; what lies deeper is left to the worker, which decodes the payload.
"""

from __future__ import annotations

import json
import re
from typing import Any

WHITESPACE = re.compile(rb"[ \t\r\n]*")
#: The next character that can open or close a nested value or a string.
STRUCTURE = re.compile(rb'[\[\]{}"]')
#: The rest of a string after its opening quote, up to and including its closing quote.
STRING_REST = re.compile(
    rb'[^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*"'
)
SCALAR = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null")
CLOSING = {ord("["): ord("]"), ord("{"): ord("}")}

Span = tuple[int, int]
#: Keys to the value, from the outermost object in.
Path = tuple[str, ...]
#: Members to walk into, each with what to walk into inside it.
Tree = dict[str, "Tree"]


class JsonSyntaxError(ValueError):
    """The text is not JSON at `pos`."""

    def __init__(self, detail: str, pos: int) -> None:
        super().__init__(f"{detail} at byte {pos}")
        self.pos = pos


def skip_whitespace(data: bytes, pos: int) -> int:
    match = WHITESPACE.match(data, pos)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def value_end(data: bytes, pos: int) -> int:
    """The end of the JSON value that starts at `pos` (no leading whitespace)."""
    if pos >= len(data):
        raise JsonSyntaxError("the text ends where a value should start", pos)
    first = data[pos]
    if first == ord('"'):
        return string_end(data, pos)
    if first in CLOSING:
        return _nested_end(data, pos)
    match = SCALAR.match(data, pos)
    if match is None:
        raise JsonSyntaxError(f"unexpected {data[pos:pos + 1]!r}", pos)
    return match.end()


def string_end(data: bytes, pos: int) -> int:
    """The end of the string whose opening quote is at `pos`."""
    match = STRING_REST.match(data, pos + 1)
    if match is None:
        raise JsonSyntaxError("unterminated or invalid string", pos)
    return match.end()


def _nested_end(data: bytes, pos: int) -> int:
    expected = [CLOSING[data[pos]]]
    cursor = pos + 1
    while expected:
        match = STRUCTURE.search(data, cursor)
        if match is None:
            raise JsonSyntaxError("unclosed array or object", pos)
        char, cursor = data[match.start()], match.end()
        if char == ord('"'):
            cursor = string_end(data, match.start())
        elif char in CLOSING:
            expected.append(CLOSING[char])
        elif char != expected.pop():
            raise JsonSyntaxError(f"mismatched {chr(char)!r}", match.start())
    return cursor


def members(
    data: bytes, pos: int, found: dict[Path, Span], descend: Tree | None = None,
    path: Path = (),
) -> int:
    """Walk the object at `pos` and return where it ends.

    The span of each member value goes into `found` under its path of keys. Members named in
    `descend` that are objects are walked the same way, in the same pass, with `descend[key]`
    naming what to walk inside them. `found` is filled as the walk goes, so a caller still has
    the members read before a syntax error.
    """
    if data[pos:pos + 1] != b"{":
        raise JsonSyntaxError("expected an object", pos)
    cursor = skip_whitespace(data, pos + 1)
    if data[cursor:cursor + 1] == b"}":
        return cursor + 1
    while True:
        cursor = _member(data, cursor, found, descend or {}, path)
        separator = data[cursor:cursor + 1]
        if separator == b"}":
            return cursor + 1
        if separator != b",":
            raise JsonSyntaxError("expected ',' or '}'", cursor)
        cursor = skip_whitespace(data, cursor + 1)


def _member(data: bytes, pos: int, found: dict[Path, Span], descend: Tree, path: Path) -> int:
    """One `"key": value` at `pos`; returns the position after it and its trailing space."""
    if data[pos:pos + 1] != b'"':
        raise JsonSyntaxError("expected a key", pos)
    key_end = string_end(data, pos)
    key = decode(data, (pos, key_end))
    if (*path, key) in found:
        # serde, on the other side, refuses them too ("duplicate field").
        raise JsonSyntaxError(f"duplicate key {key!r}", pos)
    cursor = skip_whitespace(data, key_end)
    if data[cursor:cursor + 1] != b":":
        raise JsonSyntaxError("expected ':'", cursor)
    start = skip_whitespace(data, cursor + 1)
    if key in descend and data[start:start + 1] == b"{":
        end = members(data, start, found, descend[key], (*path, key))
    else:
        end = value_end(data, start)
    found[(*path, key)] = (start, end)
    return skip_whitespace(data, end)


def ends_after(data: bytes, pos: int) -> None:
    """Raise unless only whitespace follows `pos`."""
    rest = skip_whitespace(data, pos)
    if rest != len(data):
        raise JsonSyntaxError("text after the end of the object", rest)


def decode(data: bytes, span: Span) -> Any:
    """The value at `span`, decoded (for the small ones only)."""
    try:
        return json.loads(data[span[0]:span[1]])
    except (ValueError, RecursionError) as exc:
        # ValueError covers UnicodeDecodeError, JSONDecodeError and an integer over Python's
        # digit limit; RecursionError, a value nested too deep for json. The walk accepts both.
        raise JsonSyntaxError(f"undecodable value ({exc})", span[0]) from None
