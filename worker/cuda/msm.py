"""Drive the MSM kernels of kernels/msm.cu (the steps are listed at the top of that file).

Points are already on the device (affine, Montgomery, as the .zkey stores them); scalars come
as a normal-form FrVector and go up per call. The GPU ends with one XYZZ sum per window; the
host combines those (sum 2^(c w) W_w, as sppark does too): 255 doublings in a row are one
GPU thread's work, milliseconds there, and a fraction of one on the CPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import py_arkworks_bls12381 as ark

from worker.cuda import plan
from worker.cuda.device import Device
from worker.groth16 import curve, field

#: Bytes of an affine point and of an XYZZ point, per group.
AFFINE_BYTES = {"g1": 2 * field.N8Q, "g2": 4 * field.N8Q}
XYZZ_BYTES = {"g1": 4 * field.N8Q, "g2": 8 * field.N8Q}


def msm(dev: Device, group: str, points: Any, scalars: field.FrVector,
        p: plan.MsmPlan | None = None) -> bytes:
    """sum scalars[i] * points[i] as affine LEM bytes; call inside `dev.active`. The plan is
    msm_plan's unless given (tests give small windows and chunks to reach every path)."""
    n = len(scalars)
    if n == 0:
        return bytes(AFFINE_BYTES[group])
    p = p or plan.msm_plan(n)
    counts, offsets, entries = _sort(dev, p, scalars)
    buckets = _rounds(dev, group, p.windows * p.buckets, counts, offsets, p.chunk,
                      first=("entries", points, entries))
    weighed = dev.alloc(p.windows * p.runs * XYZZ_BYTES[group])
    dev.launch(f"msm_weigh_{group}", p.windows * p.runs, buckets, p.window_bits, p.windows,
               p.runs, weighed)
    runs = np.full(p.windows, p.runs, dtype=np.uint32)
    windows = _rounds(dev, group, p.windows, dev.upload(runs),
                      dev.upload(np.arange(p.windows, dtype=np.uint32) * np.uint32(p.runs)),
                      p.chunk, first=("xyzz", weighed, None))
    raw = dev.download(windows, np.uint8, p.windows * XYZZ_BYTES[group]).tobytes()
    return combine(group, raw, p.windows, p.window_bits)


def scratch_bytes(group: str, n: int) -> int:
    """An upper bound of the device memory an MSM of n points takes besides the points: the
    scalars, the digits and the sorted entries (4 bytes per point and window each), the first
    round of chunk sums, and the per-bucket arrays. (2^27 G2 points: about 27 GiB.)"""
    p = plan.msm_plan(n)
    buckets = p.windows * p.buckets
    entries = p.windows * n
    return (32 * n + 8 * entries + XYZZ_BYTES[group] * (entries // p.chunk + 2 * buckets)
            + 32 * buckets)


def combine(group: str, raw: bytes, nwin: int, c: int) -> bytes:
    """sum 2^(c w) W_w over the downloaded XYZZ window sums, as affine LEM bytes."""
    size = XYZZ_BYTES[group]
    acc: Any = ark.G1Point.identity() if group == "g1" else ark.G2Point.identity()
    step = ark.Scalar(1 << c)
    for w in reversed(range(nwin)):
        acc = acc * step + _to_ark(group, raw[w * size:(w + 1) * size])
    if group == "g1":
        return curve.g1_to_lem(curve.from_ark_g1(acc))
    return curve.g2_to_lem(curve.from_ark_g2(acc))


def _to_ark(group: str, xyzz: bytes) -> Any:
    """An XYZZ point (Montgomery) as an unchecked py-arkworks point: x = X/ZZ, y = Y/ZZZ. The
    Montgomery factors cancel in the quotients; the MSM's result is checked by the prover."""
    words = [int.from_bytes(xyzz[i:i + field.N8Q], "little")
             for i in range(0, len(xyzz), field.N8Q)]
    if group == "g1":
        x, y, zz, zzz = words
        if zz == 0:
            return ark.G1Point.identity()
        coords = [x * pow(zz, -1, field.Q) % field.Q, y * pow(zzz, -1, field.Q) % field.Q]
        return ark.G1Point.from_xy_bytes_unchecked_le(_le(coords))
    x2, y2, zz2, zzz2 = (tuple(words[i:i + 2]) for i in range(0, 8, 2))
    if zz2 == (0, 0):
        return ark.G2Point.identity()
    return ark.G2Point.from_xy_bytes_unchecked_le(_le([*_fp2_div(x2, zz2), *_fp2_div(y2, zzz2)]))


def _fp2_div(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, int]:
    """a / b in Fp2 = Fp[u]/(u^2 + 1): a * conj(b) / (b0^2 + b1^2)."""
    q = field.Q
    inv = pow(b[0] * b[0] + b[1] * b[1], -1, q)
    return ((a[0] * b[0] + a[1] * b[1]) * inv % q, (a[1] * b[0] - a[0] * b[1]) * inv % q)


def _le(coords: list[int]) -> bytes:
    return b"".join(v.to_bytes(field.N8Q, "little") for v in coords)


def _sort(dev: Device, p: plan.MsmPlan, scalars: field.FrVector) -> tuple[Any, Any, Any]:
    """Signed digits and the counting sort: (counts, offsets, entries) per bucket."""
    nbuckets = p.windows * p.buckets
    keys = dev.upload(np.ascontiguousarray(scalars, dtype=np.uint64))
    digits = dev.alloc(4 * p.entries)
    counts = dev.zeros(4 * nbuckets)
    dev.launch("msm_digits", p.points, keys, p.points, p.window_bits, p.windows, digits, counts)
    offsets = dev.alloc(4 * nbuckets)
    total = dev.scan(counts, offsets, nbuckets)  # reads back the total: the digits are done
    dev.free(keys)
    cursor = dev.copy(offsets, 4 * nbuckets)
    entries = dev.alloc(4 * total)
    dev.launch("msm_scatter", p.entries, digits, p.points, p.window_bits, p.windows, cursor,
               entries)
    dev.free(digits)  # once the scatter is done: the largest temporary with `entries`
    return counts, offsets, entries


def _rounds(dev: Device, group: str, nbuckets: int, counts: Any, offsets: Any, chunk: int,
            first: tuple[str, Any, Any]) -> Any:
    """Chunked sums of every bucket until each has one; the dense XYZZ bucket array. A round's
    inputs made by the round before are freed once its result is read back, the sorted entries
    after the first round (the largest MSM temporaries: 4 bytes per point and window, and the
    first round's sums, windows / chunk XYZZ points per point, about half the points' size)."""
    kind, source, entries = first
    spent: list[Any] = []
    while True:
        chunks = dev.alloc(4 * nbuckets)
        most = dev.zeros(4)
        dev.launch("msm_chunk_counts", nbuckets, counts, nbuckets, chunk, chunks, most)
        starts = dev.alloc(4 * nbuckets)
        nchunks = dev.scan(chunks, starts, nbuckets)
        sums = dev.alloc(nchunks * XYZZ_BYTES[group])
        if kind == "entries":
            dev.launch(f"msm_sum_entries_{group}", nchunks, source, entries, offsets, counts,
                       starts, nbuckets, chunk, nchunks, sums)
        else:
            dev.launch(f"msm_sum_xyzz_{group}", nchunks, source, offsets, counts, starts,
                       nbuckets, chunk, nchunks, sums)
        done = int(dev.download(most, np.uint32, 1)[0]) <= 1  # synchronous: the round is over
        if kind == "entries":
            spent.append(entries)  # the sorted entries are summed: read no more
        for buf in spent:
            dev.free(buf)
        if done:
            dense = dev.alloc(nbuckets * XYZZ_BYTES[group])
            dev.launch(f"msm_gather_{group}", nbuckets, sums, chunks, starts, nbuckets, dense)
            return dense
        spent = [most, sums, chunks, starts]
        kind, source, counts, offsets = "xyzz", sums, chunks, starts
