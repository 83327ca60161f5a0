"""The CUDA C sources shipped in worker/cuda/kernels, as the text given to the compiler.

Local `#include "x.cuh"` lines are replaced by the header's text (once per header, as
`#pragma once` would), so a kernel file becomes one self-contained translation unit: its hash
names the compiled module in the cache, and no include path has to reach the compiler.
"""

from __future__ import annotations

import hashlib
import pathlib
import re

KERNELS_DIR = pathlib.Path(__file__).with_name("kernels")
MODULES = ("msm.cu", "ntt.cu")
#: nvcc options besides the target architecture, the same for the backend and the compile test.
NVCC_OPTIONS = ("-std=c++17",)
#: Builds of the field arithmetic, with their extra nvcc options: `chains` passes carries in the
#: GPU's carry flag (the default); `portable` writes them as 64-bit sums, as plain C would;
#: `inline` is `chains` with the Montgomery product inlined into every formula (msm.cu takes
#: about 40 s to compile instead of 4). bench/msm.py and bench/ntt.py time them side by side.
VARIANTS: dict[str, tuple[str, ...]] = {
    "chains": (),
    "portable": ("-DGP_PORTABLE_CARRIES",),
    "inline": ("-DGP_INLINE_MUL",),
}
DEFAULT_VARIANT = "chains"

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')
_PRAGMA_ONCE = re.compile(r"^\s*#\s*pragma\s+once\s*$")


def load(name: str, kernels_dir: pathlib.Path = KERNELS_DIR) -> str:
    """The kernel file `name` with its local headers inlined."""
    return _expand(kernels_dir / name, kernels_dir, set())


def digest(source: str, options: tuple[str, ...]) -> str:
    """A cache key for a compiled module: the source text and the compiler options."""
    h = hashlib.sha256(source.encode())
    for option in options:
        h.update(b"\0" + option.encode())
    return h.hexdigest()[:32]


def _expand(path: pathlib.Path, kernels_dir: pathlib.Path, seen: set[str]) -> str:
    out: list[str] = []
    for line in path.read_text().splitlines():
        include = _INCLUDE.match(line)
        if include:
            name = include.group(1)
            if name not in seen:
                seen.add(name)
                out.append(f"// ---- {name}")
                out.append(_expand(kernels_dir / name, kernels_dir, seen))
            continue
        if not _PRAGMA_ONCE.match(line):
            out.append(line)
    return "\n".join(out)
