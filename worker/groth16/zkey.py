"""Groth16 proving keys in snarkjs's .zkey format (read and write), on BLS12-381.

Sections: 1 protocol (u32, 1 = Groth16); 2 header (u32 n8q, q, u32 n8r, r, u32 nVars, u32
nPublic, u32 domainSize, alpha1, beta1, beta2, gamma2, delta1, delta2); 3 IC (nPublic + 1 G1);
4 coefficients (u32 count, then u32 matrix (0 = A, 1 = B), u32 constraint, u32 signal, 32-byte
value stored as coef * R^2 mod r); 5 A (nVars G1); 6 B1 (nVars G1); 7 B2 (nVars G2); 8 C (one
G1 per private signal); 9 H (domainSize G1: the Lagrange basis of the 2n-th roots at odd
indices, over delta); 10 contributions. Points are affine Montgomery "LEM" (see curve.py).

The point sections are kept as numpy views over the file's bytes: the CPU backend multiplies
them in place, the CUDA backend copies them to the GPU once.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import pathlib
import struct

import numpy as np
import numpy.typing as npt

from worker.groth16 import binfile, curve, exceptions, field, verifier

GROTH16 = 1
_PROTOCOLS = {1: "groth16", 2: "plonk", 10: "fflonk"}
_HEADER = struct.Struct(f"<I{field.N8Q}sI{field.N8R}sIII")
_HEADER_SIZE = _HEADER.size + 3 * curve.G1_BYTES + 3 * curve.G2_BYTES
#: One record of the coefficient section.
COEF_DTYPE = np.dtype([("matrix", "<u4"), ("constraint", "<u4"), ("signal", "<u4"),
                       ("value", "<u8", (4,))])
Points = npt.NDArray[np.uint64]  #: (n, 12) for G1, (n, 24) for G2: LEM limbs


@dataclasses.dataclass(frozen=True, eq=False)
class ProvingKey:
    n_vars: int  #: witness length, the constant one included
    n_public: int  #: public signals, the constant one excluded
    domain_size: int
    alpha1: curve.G1
    beta1: curve.G1
    beta2: curve.G2
    gamma2: curve.G2
    delta1: curve.G1
    delta2: curve.G2
    ic: tuple[curve.G1, ...]
    coefs: npt.NDArray[np.void]  #: COEF_DTYPE records
    a: Points
    b1: Points
    b2: Points
    c: Points  #: for signals n_public + 1 .. n_vars - 1
    h: Points

    @property
    def log_domain(self) -> int:
        return self.domain_size.bit_length() - 1

    @property
    def nbytes(self) -> int:
        return sum(x.nbytes for x in (self.coefs, self.a, self.b1, self.b2, self.c, self.h))

    def verification_key(self) -> verifier.VerificationKey:
        return verifier.VerificationKey(alpha1=self.alpha1, beta2=self.beta2, gamma2=self.gamma2,
                                        delta2=self.delta2, ic=self.ic)


def read(data: bytes | memoryview, name: str = ".zkey") -> ProvingKey:
    """The proving key in `data`; FormatError or WrongCurve, before any heavy work, if it is
    not a consistent Groth16 key for BLS12-381."""
    file = binfile.parse(data, kind="zkey", max_version=1, name=name)
    protocol = struct.unpack("<I", file.section(1, 4))[0]
    if protocol != GROTH16:
        found = _PROTOCOLS.get(protocol, f"protocol {protocol}")
        raise file.error(f"a {found} key, not groth16")
    n_vars, n_public, domain = _read_sizes(file)
    points = _read_header_points(file)
    g1 = curve.G1_BYTES
    ic = file.section(3, (n_public + 1) * g1)
    return ProvingKey(
        n_vars=n_vars, n_public=n_public, domain_size=domain,
        alpha1=curve.g1_from_lem(points[0]), beta1=curve.g1_from_lem(points[1]),
        beta2=curve.g2_from_lem(points[2]), gamma2=curve.g2_from_lem(points[3]),
        delta1=curve.g1_from_lem(points[4]), delta2=curve.g2_from_lem(points[5]),
        ic=tuple(curve.g1_from_lem(ic[i:i + g1]) for i in range(0, len(ic), g1)),
        coefs=_read_coefs(file, n_vars, domain),
        a=_points(file, 5, n_vars, 12), b1=_points(file, 6, n_vars, 12),
        b2=_points(file, 7, n_vars, 24), c=_points(file, 8, n_vars - n_public - 1, 12),
        h=_points(file, 9, domain, 12),
    )


def check_file(path: pathlib.Path) -> None:
    """Raise FormatError or WrongCurve unless `path` holds a Groth16 key for BLS12-381, as
    `read` checks it; the file is mapped, not read whole (a key can be gigabytes)."""
    problem: exceptions.Groth16Error | None = None
    with path.open("rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise exceptions.FormatError(name=str(path), kind="zkey", detail="the file is empty")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            try:
                read(memoryview(mapped), name=str(path))  # dropped at once: the map closes
            except exceptions.Groth16Error as exc:
                problem = exc.with_traceback(None)  # its frames hold views of the map
    if problem is not None:
        raise problem


def _read_sizes(file: binfile.BinFile) -> tuple[int, int, int]:
    raw = file.section(2)
    if len(raw) < 4 + field.N8Q:
        raise file.error(f"section 2 (the header) has {len(raw)} bytes: the file is cut short")
    n8q = struct.unpack_from("<I", raw)[0]
    if n8q != field.N8Q:
        prime = int.from_bytes(raw[4:4 + n8q], "little") if 4 + n8q <= len(raw) else 0
        raise exceptions.WrongCurve(name=file.name, kind="zkey", found=field.curve_name(prime))
    if len(raw) != _HEADER_SIZE:
        raise file.error(f"section 2 has {len(raw)} bytes, expected {_HEADER_SIZE}")
    _, q, n8r, r, n_vars, n_public, domain = _HEADER.unpack_from(raw)
    q_int = int.from_bytes(q, "little")
    if q_int != field.Q or n8r != field.N8R or int.from_bytes(r, "little") != field.R:
        raise exceptions.WrongCurve(name=file.name, kind="zkey", found=field.curve_name(q_int))
    if domain < 2 or domain & (domain - 1) or domain.bit_length() - 1 >= field.TWO_ADICITY:
        raise file.error(f"domain size {domain} is not a power of two in 2..2^31")
    if n_public + 1 > n_vars or n_public + 1 > domain:
        raise file.error(f"{n_public} public signals do not fit {n_vars} signals and a "
                         f"domain of {domain}")
    return n_vars, n_public, domain


def _read_header_points(file: binfile.BinFile) -> list[memoryview]:
    """alpha1, beta1, beta2, gamma2, delta1, delta2 as LEM bytes."""
    raw, pos, out = file.section(2), _HEADER.size, []
    for size in (curve.G1_BYTES, curve.G1_BYTES, curve.G2_BYTES, curve.G2_BYTES,
                 curve.G1_BYTES, curve.G2_BYTES):
        out.append(raw[pos:pos + size])
        pos += size
    return out


def _points(file: binfile.BinFile, section: int, count: int, limbs: int) -> Points:
    data = file.section(section, count * limbs * 8)
    return np.frombuffer(data, dtype="<u8").reshape(count, limbs)


def _read_coefs(file: binfile.BinFile, n_vars: int, domain: int) -> npt.NDArray[np.void]:
    raw = file.section(4)
    count = struct.unpack_from("<I", raw)[0] if len(raw) >= 4 else -1
    if count < 0 or len(raw) != 4 + count * COEF_DTYPE.itemsize:
        raise file.error(f"section 4 has {len(raw)} bytes, which is not 4 + 44 per coefficient "
                         f"for the {max(count, 0)} it announces")
    coefs = np.frombuffer(raw[4:], dtype=COEF_DTYPE)
    bad = (coefs["matrix"] > 1) | (coefs["constraint"] >= domain) | (coefs["signal"] >= n_vars)
    bad |= ~field.below_r(coefs["value"])
    if bad.any():
        i = int(np.argmax(bad))
        raise file.error(f"coefficient {i} (matrix {coefs['matrix'][i]}, constraint "
                         f"{coefs['constraint'][i]}, signal {coefs['signal'][i]}) is out of "
                         f"range for {n_vars} signals and a domain of {domain}")
    return coefs


def write(key: ProvingKey, circuit_hash: bytes = bytes(64)) -> bytes:
    """The .zkey bytes of `key` (no contributions recorded)."""
    header = _HEADER.pack(field.N8Q, field.Q.to_bytes(field.N8Q, "little"), field.N8R,
                          field.R.to_bytes(field.N8R, "little"), key.n_vars, key.n_public,
                          key.domain_size)
    header += b"".join([curve.g1_to_lem(key.alpha1), curve.g1_to_lem(key.beta1),
                        curve.g2_to_lem(key.beta2), curve.g2_to_lem(key.gamma2),
                        curve.g1_to_lem(key.delta1), curve.g2_to_lem(key.delta2)])
    coefs = struct.pack("<I", len(key.coefs)) + key.coefs.tobytes()
    return binfile.build("zkey", 1, [
        (1, struct.pack("<I", GROTH16)), (2, header),
        (3, b"".join(curve.g1_to_lem(p) for p in key.ic)), (4, coefs),
        (5, key.a.tobytes()), (6, key.b1.tobytes()), (7, key.b2.tobytes()),
        (8, key.c.tobytes()), (9, key.h.tobytes()),
        (10, circuit_hash + struct.pack("<I", 0)),
    ])
