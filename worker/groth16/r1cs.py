"""Rank-1 constraint systems in circom/snarkjs's .r1cs format (read and write).

Header (section 1): u32 n8, the prime r (n8 bytes), u32 wires, u32 public outputs, u32 public
inputs, u32 private inputs, u64 labels, u32 constraints. Constraints (section 2): for each, the
linear combinations A, B, C, each a u32 term count then (u32 wire, n8-byte coefficient) terms,
coefficients in normal form. Wire-to-label map (section 3): a u64 per wire. Wire 0 is the
constant one; then come the public outputs, public inputs, private inputs and the rest.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Sequence

from worker.groth16 import binfile, exceptions, field

LinearCombination = tuple[tuple[int, int], ...]  #: (wire, coefficient) terms

HEADER_SECTION, CONSTRAINTS_SECTION, MAP_SECTION = 1, 2, 3
_HEADER = struct.Struct(f"<I{field.N8R}sIIIIQI")
_TERM = struct.Struct(f"<I{field.N8R}s")
_COUNT = struct.Struct("<I")


@dataclasses.dataclass(frozen=True)
class Constraint:
    """A . B = C over the wires."""

    a: LinearCombination
    b: LinearCombination
    c: LinearCombination


@dataclasses.dataclass(frozen=True)
class R1cs:
    n_wires: int
    n_outputs: int
    n_pub_inputs: int
    n_prv_inputs: int
    constraints: Sequence[Constraint]

    @property
    def n_public(self) -> int:
        """Public signals: outputs then public inputs (snarkjs's nPublic)."""
        return self.n_outputs + self.n_pub_inputs

    def is_satisfied(self, witness: Sequence[int]) -> bool:
        """Whether `witness` (wire values, witness[0] == 1) satisfies every constraint."""
        def ev(lc: LinearCombination) -> int:
            return sum(witness[w] * k for w, k in lc) % field.R
        return all(ev(c.a) * ev(c.b) % field.R == ev(c.c) for c in self.constraints)


def read(data: bytes | memoryview, name: str = ".r1cs") -> R1cs:
    """The constraint system in `data`; FormatError or WrongCurve if it is not a valid one."""
    file = binfile.parse(data, kind="r1cs", max_version=1, name=name)
    header = file.section(HEADER_SECTION)
    if len(header) >= 4 and _COUNT.unpack_from(header)[0] != field.N8R:
        raise file.error(f"field elements of {_COUNT.unpack_from(header)[0]} bytes, not 32")
    if len(header) != _HEADER.size:
        raise file.error(f"header section has {len(header)} bytes, expected {_HEADER.size}")
    _, prime, n_wires, n_out, n_pub, n_prv, _, n_constraints = _HEADER.unpack(header)
    prime_int = int.from_bytes(prime, "little")
    if prime_int != field.R:
        raise exceptions.WrongCurve(name=name, kind="r1cs", found=field.curve_name(prime_int))
    if n_out + n_pub + n_prv >= n_wires:
        raise file.error(f"{n_wires} wires cannot hold the one wire and "
                         f"{n_out + n_pub + n_prv} inputs and outputs")
    constraints = _read_constraints(file, n_constraints, n_wires)
    if MAP_SECTION in file.sections:
        file.section(MAP_SECTION, n_wires * 8)
    return R1cs(n_wires=n_wires, n_outputs=n_out, n_pub_inputs=n_pub, n_prv_inputs=n_prv,
                constraints=constraints)


def _read_constraints(file: binfile.BinFile, count: int, n_wires: int) -> list[Constraint]:
    data = file.section(CONSTRAINTS_SECTION)
    pos = 0

    def lc() -> LinearCombination:
        nonlocal pos
        if pos + 4 > len(data):
            raise file.error("constraints section is truncated")
        (n,) = _COUNT.unpack_from(data, pos)
        pos += 4
        if pos + n * _TERM.size > len(data):
            raise file.error("constraints section is truncated")
        terms = []
        for wire, raw in _TERM.iter_unpack(data[pos:pos + n * _TERM.size]):
            value = int.from_bytes(raw, "little")
            if wire >= n_wires or value >= field.R:
                raise file.error(f"a term of wire {wire} is out of range")
            terms.append((wire, value))
        pos += n * _TERM.size
        return tuple(terms)

    constraints = [Constraint(lc(), lc(), lc()) for _ in range(count)]
    if pos != len(data):
        raise file.error(f"{len(data) - pos} bytes after the {count} constraints")
    return constraints


def write(system: R1cs) -> bytes:
    """The .r1cs bytes of `system` (labels are the wire numbers)."""
    header = _HEADER.pack(field.N8R, field.R.to_bytes(field.N8R, "little"), system.n_wires,
                          system.n_outputs, system.n_pub_inputs, system.n_prv_inputs,
                          system.n_wires, len(system.constraints))
    parts = []
    for constraint in system.constraints:
        for lc in (constraint.a, constraint.b, constraint.c):
            parts.append(_COUNT.pack(len(lc)))
            parts.extend(_TERM.pack(w, k.to_bytes(field.N8R, "little")) for w, k in lc)
    labels = struct.pack(f"<{system.n_wires}Q", *range(system.n_wires))
    return binfile.build("r1cs", 1, [(HEADER_SECTION, header),
                                     (CONSTRAINTS_SECTION, b"".join(parts)),
                                     (MAP_SECTION, labels)])
