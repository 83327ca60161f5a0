"""A.w, B.w and C.w = (A.w)(B.w) on the GPU, from a key's coefficients and the witness.

The .zkey lists its coefficient records in no promised order. Once per key they are sorted by
matrix and constraint (`Sorted`, on the host), so that one thread per constraint sums its own
records (ntt.cu's fr_constraints) with no atomics; the sorted arrays stay on the GPU with the
key's points. The results stay on the device, in Montgomery form, for the NTTs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import numpy.typing as npt

from worker.cuda.device import Device
from worker.groth16 import field, zkey


@dataclasses.dataclass(frozen=True, eq=False)
class Sorted:
    """The records of A (constraints 0 .. rows - 1), then of B, one run per constraint."""

    rows: int  #: constraints per matrix: the domain size
    witness_size: int  #: the key's signals, the constant one included
    row_starts: npt.NDArray[np.uint32]  #: 2 * rows + 1 offsets into signals and values
    signals: npt.NDArray[np.uint32]
    values: npt.NDArray[np.uint64]  #: (records, 4): coef * R^2 mod r, as the .zkey stores it

    @property
    def arrays(self) -> tuple[npt.NDArray[Any], ...]:
        return self.row_starts, self.signals, self.values

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)

    @property
    def scratch_bytes(self) -> int:
        """Device memory the quotient takes besides the arrays: the witness, A, B and C, and
        the domain's NTT tables (ntt.Tables: 3n + 1 values)."""
        return (self.witness_size + 6 * self.rows + 1) * field.N8R


def sort(key: zkey.ProvingKey) -> Sorted:
    """The key's coefficients grouped by (matrix, constraint); zkey.read checked their range.
    A key listing them in that order already is not sorted again."""
    coefs = key.coefs
    rows = key.domain_size
    dtype = np.uint32 if 2 * rows <= 1 << 32 else np.uint64
    slot = coefs["matrix"].astype(dtype) * rows + coefs["constraint"].astype(dtype)
    row_starts = np.zeros(2 * rows + 1, dtype=np.uint32)
    np.cumsum(np.bincount(slot, minlength=2 * rows), out=row_starts[1:])
    if len(slot) < 2 or bool(np.all(slot[1:] >= slot[:-1])):
        signals, values = coefs["signal"], coefs["value"]
    else:
        order = np.argsort(slot, kind="stable")
        signals, values = coefs["signal"][order], coefs["value"][order]
    return Sorted(rows=rows, witness_size=key.n_vars, row_starts=row_starts,
                  signals=np.ascontiguousarray(signals, dtype=np.uint32),
                  values=np.ascontiguousarray(values, dtype=np.uint64))


def evaluate(dev: Device, arrays: tuple[Any, Any, Any], rows: int,
             witness: field.FrVector) -> tuple[Any, Any, Any]:
    """Device buffers of A.w, B.w and C.w (Montgomery form), rows values each."""
    fr = field.N8R
    w = dev.upload(np.ascontiguousarray(witness, dtype=np.uint64))
    a, b = dev.alloc(rows * fr), dev.alloc(rows * fr)
    dev.launch("fr_constraints", 2 * rows, *arrays, w, rows, a, b)
    c = dev.copy(a, rows * fr)
    dev.launch("fr_mul_table", rows, c, b, rows)
    return a, b, c
