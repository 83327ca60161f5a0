"""The snarkjs binary formats: round trips, and files the parsers must refuse before any work."""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np
import pytest

from worker.groth16 import binfile, builder, devsetup, exceptions, field, r1cs, wtns, zkey

Demo = Callable[..., devsetup.DemoFiles]


def test_binfile_round_trip() -> None:
    data = binfile.build("wtns", 2, [(1, b"abc"), (2, b"")])
    file = binfile.parse(data, kind="wtns", max_version=2, name="x")
    assert (file.version, bytes(file.section(1)), bytes(file.section(2))) == (2, b"abc", b"")


@pytest.mark.parametrize(("data", "message"), [
    (b"wtn", "shorter than the file header"),
    (binfile.build("zkey", 1, [(1, b"abcd")]), "starts with b'zkey'"),
    (binfile.build("wtns", 3, [(1, b"abcd")]), "version 3"),
    (binfile.build("wtns", 2, [(1, b"abcd")])[:-1], "truncated"),
    (binfile.build("wtns", 2, [(1, b"abcd")])[:14], "truncated in the header"),
    (binfile.build("wtns", 2, [(1, b"abcd")]) + b"\0", "unexpected bytes after"),
    (binfile.build("wtns", 2, [(1, b"a"), (1, b"b")]), "appears twice"),
])
def test_binfile_refuses(data: bytes, message: str) -> None:
    with pytest.raises(exceptions.FormatError, match=message):
        binfile.parse(data, kind="wtns", max_version=2, name="w.wtns")


def test_r1cs_round_trip() -> None:
    circuit = builder.chain(5, n_public=3)
    again = r1cs.read(r1cs.write(circuit.system))
    assert again == circuit.system
    assert again.is_satisfied(circuit.witness)
    assert not again.is_satisfied([1, *[(x + 1) % field.R for x in circuit.witness[1:]]])


def test_r1cs_of_another_curve_is_refused() -> None:
    data = bytearray(r1cs.write(builder.chain(4).system))
    offset = 12 + 12 + 4  # file header, section header, n8
    data[offset:offset + 32] = field.BN128_R.to_bytes(32, "little")
    with pytest.raises(exceptions.WrongCurve, match="bn128"):
        r1cs.read(bytes(data), "c.r1cs")


def test_builder_sizes_fill_the_domain() -> None:
    for log_size, n_public in [(3, 1), (4, 2), (6, 5), (9, 1)]:
        circuit = builder.chain(log_size, n_public)
        assert circuit.system.n_public == n_public
        assert devsetup.domain_log_size(circuit.system) == log_size
        assert len(circuit.system.constraints) + n_public + 1 == 1 << log_size
        assert circuit.system.is_satisfied(circuit.witness)
    with pytest.raises(ValueError, match="cannot hold"):
        builder.chain(2, 1)


def test_wtns_round_trip() -> None:
    values = [1, 2, field.R - 1, 12345678901234567890]
    vector = wtns.read(wtns.write(values))
    assert field.from_vector(vector) == values


@pytest.mark.parametrize(("change", "error", "message"), [
    (lambda d: d[:-1], exceptions.FormatError, "truncated"),
    (lambda d: d.replace(field.R.to_bytes(32, "little"), field.BN128_R.to_bytes(32, "little")),
     exceptions.WrongCurve, "bn128"),
    (lambda d: d[:-32] + field.R.to_bytes(32, "little"), exceptions.FormatError, "not below"),
    (lambda d: d.replace((1).to_bytes(32, "little"), (2).to_bytes(32, "little"), 1),
     exceptions.FormatError, "constant one"),
])
def test_wtns_refuses(change: Callable[[bytes], bytes], error: type[Exception],
                      message: str) -> None:
    data = wtns.write([1, 5, 6])
    with pytest.raises(error, match=message):
        wtns.read(change(data), "w.wtns")


def test_wtns_count_must_match_its_values() -> None:
    header = struct.pack("<I32sI", 32, field.R.to_bytes(32, "little"), 3)
    data = binfile.build("wtns", 2, [(1, header), (2, (1).to_bytes(32, "little") * 2)])
    with pytest.raises(exceptions.FormatError, match="section 2 has 64 bytes, expected 96"):
        wtns.read(data)


def test_zkey_round_trip(groth16_demo: Demo) -> None:
    data = groth16_demo(5, 2).zkey.read_bytes()
    key = zkey.read(data)
    assert (key.n_public, key.domain_size, len(key.ic)) == (2, 32, 3)
    assert zkey.write(key, devsetup.CIRCUIT_HASH) == data


def _zkey_sections(data: bytes) -> dict[int, bytes]:
    file = binfile.parse(data, kind="zkey", max_version=1, name="k")
    return {t: bytes(v) for t, v in file.sections.items()}


def _rebuild(sections: dict[int, bytes]) -> bytes:
    return binfile.build("zkey", 1, sorted(sections.items()))


def test_zkey_refuses_a_bad_section_size(groth16_demo: Demo) -> None:
    sections = _zkey_sections(groth16_demo(4).zkey.read_bytes())
    sections[9] = sections[9][:-96]
    with pytest.raises(exceptions.FormatError, match="section 9 has"):
        zkey.read(_rebuild(sections), "k.zkey")


@pytest.mark.parametrize("keep", [0, 2, 51])
def test_zkey_with_its_header_cut_short_says_so(groth16_demo: Demo, keep: int) -> None:
    sections = _zkey_sections(groth16_demo(4).zkey.read_bytes())
    sections[2] = sections[2][:keep]
    with pytest.raises(exceptions.FormatError, match=f"section 2 .* has {keep} bytes: the file "
                       "is cut short"):
        zkey.read(_rebuild(sections), "k.zkey")


def test_zkey_refuses_a_coefficient_out_of_range(groth16_demo: Demo) -> None:
    sections = _zkey_sections(groth16_demo(4).zkey.read_bytes())
    coefs = bytearray(sections[4])
    coefs[4 + 8:4 + 12] = struct.pack("<I", 10_000)  # the first record's signal
    sections[4] = bytes(coefs)
    with pytest.raises(exceptions.FormatError, match=r"coefficient 0 .* out of range"):
        zkey.read(_rebuild(sections), "k.zkey")


def test_zkey_refuses_other_curves_and_protocols(groth16_demo: Demo) -> None:
    sections = _zkey_sections(groth16_demo(4).zkey.read_bytes())
    bn = dict(sections)
    bn[2] = struct.pack("<I", 32) + field.BN128_Q.to_bytes(32, "little") + sections[2][52:]
    with pytest.raises(exceptions.WrongCurve, match="bn128"):
        zkey.read(_rebuild(bn), "k.zkey")
    plonk = dict(sections)
    plonk[1] = struct.pack("<I", 2)
    with pytest.raises(exceptions.FormatError, match="plonk key, not groth16"):
        zkey.read(_rebuild(plonk), "k.zkey")


def test_zkey_points_are_views_of_the_file(groth16_demo: Demo) -> None:
    data = groth16_demo(4).zkey.read_bytes()
    key = zkey.read(data)
    assert key.h.shape == (16, 12) and not key.h.flags.owndata
    assert np.shares_memory(key.a, np.frombuffer(data, dtype=np.uint8))
