"""Witnesses in snarkjs's .wtns format (read and write): the "C1 output" of a groth16 task.

Header (section 1): u32 n8, the prime r (n8 bytes), u32 number of values. Values (section 2):
n8 bytes each, normal form, little-endian; value 0 is the constant one, then the public
signals, then the rest, in the circuit's wire order.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from worker.groth16 import binfile, exceptions, field

HEADER_SECTION, VALUES_SECTION = 1, 2
_HEADER = struct.Struct(f"<I{field.N8R}sI")


def read(data: bytes | memoryview, name: str = ".wtns") -> field.FrVector:
    """The witness values in `data` as a read-only Fr vector over its bytes."""
    file = binfile.parse(data, kind="wtns", max_version=2, name=name)
    header = file.section(HEADER_SECTION)
    if len(header) >= 4 and struct.unpack_from("<I", header)[0] != field.N8R:
        n8 = struct.unpack_from("<I", header)[0]
        raise file.error(f"field elements of {n8} bytes, not {field.N8R} (another curve?)")
    if len(header) != _HEADER.size:
        raise file.error(f"header section has {len(header)} bytes, expected {_HEADER.size}")
    _, prime, count = _HEADER.unpack(header)
    prime_int = int.from_bytes(prime, "little")
    if prime_int != field.R:
        raise exceptions.WrongCurve(name=name, kind="wtns", found=field.curve_name(prime_int))
    if count < 1:
        raise file.error("no values (even the constant one is missing)")
    values = field.vector_from_bytes(file.section(VALUES_SECTION, count * field.N8R), count)
    if not field.all_reduced(values):
        raise file.error("a value is not below the field prime r")
    if int(values[0, 0]) != 1 or values[0, 1:].any():
        raise file.error("value 0 (the constant one) is not 1")
    return values


def write(values: Sequence[int] | field.FrVector) -> bytes:
    """The .wtns bytes (version 2) of `values` (ints below r, or an Fr vector)."""
    vector = values if isinstance(values, np.ndarray) else field.to_vector(list(values))
    header = _HEADER.pack(field.N8R, field.R.to_bytes(field.N8R, "little"), len(vector))
    body = np.ascontiguousarray(vector, dtype="<u8").tobytes()
    return binfile.build("wtns", 2, [(HEADER_SECTION, header), (VALUES_SECTION, body)])
