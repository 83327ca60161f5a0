"""The iden3 binary container shared by .r1cs, .wtns and .zkey files.

Layout: 4-byte magic ("r1cs", "wtns", "zkey"), u32 version, u32 section count, then each
section as u32 type, u64 size and its bytes; integers little-endian. Parsing checks that the
sections tile the file exactly (no truncation, nothing after the last one) and that none
repeats, so the format modules only check what their sections hold.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable, Mapping

from worker.groth16 import exceptions

_HEADER = struct.Struct("<4sII")
_SECTION = struct.Struct("<IQ")


@dataclasses.dataclass(frozen=True)
class BinFile:
    name: str  #: the file name (or a description), for messages
    kind: str  #: the magic: r1cs, wtns or zkey
    version: int
    sections: Mapping[int, memoryview]

    def section(self, section_type: int, size: int | None = None) -> memoryview:
        """A section's bytes; FormatError if it is missing or not `size` bytes long."""
        data = self.sections.get(section_type)
        if data is None:
            raise self.error(f"section {section_type} is missing")
        if size is not None and len(data) != size:
            raise self.error(f"section {section_type} has {len(data)} bytes, expected {size}")
        return data

    def error(self, detail: str) -> exceptions.FormatError:
        return exceptions.FormatError(name=self.name, kind=self.kind, detail=detail)


def parse(data: bytes | memoryview, *, kind: str, max_version: int, name: str) -> BinFile:
    """The sections of `data`, which must be a `kind` file of version 1..max_version."""
    view = memoryview(data).cast("B")

    def fail(detail: str) -> exceptions.FormatError:
        return exceptions.FormatError(name=name, kind=kind, detail=detail)

    if len(view) < _HEADER.size:
        raise fail(f"{len(view)} bytes is shorter than the file header (truncated?)")
    magic, version, count = _HEADER.unpack_from(view)
    if magic != kind.encode():
        raise fail(f"the file starts with {bytes(magic)!r}, not {kind!r}")
    if not 1 <= version <= max_version:
        raise fail(f"version {version} is not supported (1..{max_version})")
    sections: dict[int, memoryview] = {}
    pos = _HEADER.size
    for index in range(count):
        if pos + _SECTION.size > len(view):
            raise fail(f"truncated in the header of section {index + 1} of {count}")
        section_type, size = _SECTION.unpack_from(view, pos)
        pos += _SECTION.size
        if pos + size > len(view):
            raise fail(f"truncated: section {section_type} needs {size} bytes, "
                       f"{len(view) - pos} left")
        if section_type in sections:
            raise fail(f"section {section_type} appears twice")
        sections[section_type] = view[pos:pos + size]
        pos += size
    if pos != len(view):
        raise fail(f"{len(view) - pos} unexpected bytes after the last section")
    return BinFile(name=name, kind=kind, version=version, sections=sections)


def build(kind: str, version: int, sections: Iterable[tuple[int, bytes]]) -> bytes:
    """A `kind` file holding `sections` in the order given."""
    parts = list(sections)
    out = [_HEADER.pack(kind.encode(), version, len(parts))]
    for section_type, payload in parts:
        out.append(_SECTION.pack(section_type, len(payload)))
        out.append(payload)
    return b"".join(out)
