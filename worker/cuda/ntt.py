"""Drive the NTT kernels of kernels/ntt.cu over one domain, keeping values on the device.

Values go up in normal form (FrVector), are turned to Montgomery form on the device, transformed
and turned back. Power tables (the twiddles w^i and w^-i for i < n/2, the coset factors g^i and
g^i/n) are made once per domain by fr_powers and kept in `Tables`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from worker.cuda.device import BLOCKS, Device
from worker.groth16 import field, ntt

TILE_LOG = 10  #: stages per ntt_pass (ntt.cuh's NTT_TILE_LOG)
FR_BYTES = field.N8R


def mont_bytes(x: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """x as a Montgomery Fr element (32 bytes, little-endian)."""
    return np.frombuffer((x * field.FR_MONT % field.R).to_bytes(FR_BYTES, "little"), np.uint8)


@dataclasses.dataclass
class Tables:
    """Device power tables of one domain."""

    twiddles: Any  #: w^i, i < n/2
    inverse_twiddles: Any  #: w^-i, i < n/2
    shift: Any  #: g^i, i < n
    shift_scaled: Any  #: g^i / n, i < n (the inverse NTT's 1/n folded in)
    size_inverse: Any  #: 1/n, one element


def tables(dev: Device, domain: ntt.Domain) -> Tables:
    n = domain.size
    scale = dev.upload(mont_bytes(domain.size_inverse))
    shift_scaled = powers(dev, domain.coset_shift, n)
    dev.launch("fr_scale", n, shift_scaled, scale, n)
    return Tables(twiddles=powers(dev, domain.root, max(n // 2, 1)),
                  inverse_twiddles=powers(dev, domain.root_inverse, max(n // 2, 1)),
                  shift=powers(dev, domain.coset_shift, n), shift_scaled=shift_scaled,
                  size_inverse=scale)


def powers(dev: Device, base: int, count: int) -> Any:
    out = dev.alloc(count * FR_BYTES)
    dev.launch("fr_powers", count, out, dev.upload(mont_bytes(base)), count)
    return out


def upload(dev: Device, values: field.FrVector) -> Any:
    """Normal-form values -> Montgomery form on the device."""
    buf = dev.upload(np.ascontiguousarray(values, dtype=np.uint64))
    dev.launch("fr_to_mont", len(values), buf, len(values))
    return buf


def download(dev: Device, buf: Any, n: int) -> field.FrVector:
    dev.launch("fr_from_mont", n, buf, n)
    return dev.download(buf, np.uint64, 4 * n).reshape(n, 4)


def transform(dev: Device, buf: Any, log_n: int, twiddles: Any) -> None:
    """In-place radix-2 NTT of 2^log_n Montgomery values, natural order in and out."""
    n = 1 << log_n
    if log_n == 0:
        return
    dev.launch("fr_bit_reverse", n, buf, log_n, block=BLOCKS["fr_bit_reverse"])
    s = 0
    for t in passes(log_n):
        dev.launch_grid("ntt_pass", n >> t, 1 << (t - 1), buf, twiddles, log_n, s, t)
        s += t


def passes(log_n: int) -> list[int]:
    """Stages per ntt_pass: as few passes as tiles allow, the stages spread evenly over them
    (2^21 as 7 + 7 + 7, not 10 + 10 + 1: a 1-stage pass is n/2 blocks of one thread each)."""
    count = -(-log_n // TILE_LOG)
    return [log_n // count + (i < log_n % count) for i in range(count)] if log_n else []


def intt(dev: Device, t: Tables, log_n: int, buf: Any) -> None:
    transform(dev, buf, log_n, t.inverse_twiddles)
    dev.launch("fr_scale", 1 << log_n, buf, t.size_inverse, 1 << log_n)


def coset_ntt(dev: Device, t: Tables, log_n: int, buf: Any) -> None:
    dev.launch("fr_mul_table", 1 << log_n, buf, t.shift, 1 << log_n)
    transform(dev, buf, log_n, t.twiddles)


def to_coset(dev: Device, t: Tables, log_n: int, buf: Any) -> None:
    """Evaluations on the domain -> on its coset: iNTT, times g^i / n, NTT."""
    transform(dev, buf, log_n, t.inverse_twiddles)
    dev.launch("fr_mul_table", 1 << log_n, buf, t.shift_scaled, 1 << log_n)
    transform(dev, buf, log_n, t.twiddles)


def quotient(dev: Device, t: Tables, log_n: int, a: Any, b: Any, c: Any) -> None:
    """a = A*B - C on the coset, from A, B, C on the domain (all three moved to the coset)."""
    for buf in (a, b, c):
        to_coset(dev, t, log_n, buf)
    dev.launch("fr_ab_minus_c", 1 << log_n, a, b, c, a, 1 << log_n)
