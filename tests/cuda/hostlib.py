"""ctypes access to tests/cuda/host_arith.cpp, and conversions to and from py-arkworks.

The library is the CUDA arithmetic headers compiled by g++; its buffers use the device layouts
(worker/cuda/kernels/field.cuh, curve.cuh): Montgomery little-endian field elements, affine
points with (0, 0) for infinity.
"""

from __future__ import annotations

import ctypes
import os
import pathlib
import shutil
import subprocess

import py_arkworks_bls12381 as ark
import pytest

from tests.cuda.fakedriver import kernel_parameters
from worker.cuda import sources

P = int(
    "1A0111EA397FE69A4B1BA7B6434BACD764774B84F38512BF6730D2A0F6B0F6241EABFFFEB153FFFFB9FEFFFFFFFFAAAB",
    16,
)
R = 0x73EDA753299D7D483339D80809A1D80553BDA402FFFE5BFEFFFFFFFF00000001
FP_BYTES = 48
FR_BYTES = 32
KERNELS = pathlib.Path(__file__).parents[2] / "worker" / "cuda" / "kernels"
SOURCE = pathlib.Path(__file__).with_name("host_arith.cpp")

# Operation codes of host_arith.cpp.
ADD, SUB, MUL, SQR, NEG, INV, TO_MONT, FROM_MONT = range(8)
P_ADD, P_ADD_AFFINE, P_DBL, P_DBL_AFFINE, P_NEG, P_EQUALS = range(6)


_BUILT: dict[tuple[str, ...], ctypes.CDLL] = {}  #: each library once per set of options


def build(out_dir: pathlib.Path, defines: tuple[str, ...] = ()) -> ctypes.CDLL:
    """host_arith.cpp compiled by g++ (with these -D options, a build of
    worker.cuda.sources.VARIANTS) into out_dir, or this process's earlier build of it; skips
    without g++, except under CI=true."""
    return _library("libgp_host_arith.so", [SOURCE], out_dir, defines)


def build_kernels(out_dir: pathlib.Path, defines: tuple[str, ...] = (),
                  kernels_dir: pathlib.Path = KERNELS,
                  modules: tuple[str, ...] = sources.MODULES) -> ctypes.CDLL:
    """The kernel files (msm.cu, ntt.cu) compiled by g++ with the thread model of
    kernel_threads.h, each kernel behind a C function emu_<name>(grid, block, arguments...),
    every argument a 64-bit integer: what libcuda_emu.cpp and fakedriver.py call for a launch.
    A library of its own: its warp-level atomics are not host_arith.cpp's (one definition per
    library). Its path is the library's `_name`. (Tests of the thread model give other kernel
    files, which may include the kernel headers.)"""
    units = [_kernel_unit(module, kernels_dir, out_dir) for module in modules]
    return _library("libgp_kernels.so", units, out_dir, defines, (f"-I{kernels_dir}",))


def _library(name: str, units: list[pathlib.Path], out_dir: pathlib.Path,
             defines: tuple[str, ...], includes: tuple[str, ...] = ()) -> ctypes.CDLL:
    gxx = shutil.which("g++")
    if gxx is None:
        if os.environ.get("CI") == "true":
            pytest.fail("g++ is required under CI=true to test the CUDA arithmetic on the host")
        pytest.skip("g++ not found: the CUDA arithmetic is not tested on the host")
    key = (name, *includes, *(unit.name for unit in units), *defines)
    if key in _BUILT:
        return _BUILT[key]
    options = ["-std=c++17", "-O2", "-U_FORTIFY_SOURCE", "-fPIC", "-Wall", "-Wextra", "-Werror",
               *defines, *includes, f"-I{KERNELS}", f"-I{SOURCE.parent}"]
    objects = [out_dir / f"{unit.stem}.o" for unit in units]
    compiles = [subprocess.Popen([gxx, *options, "-c", str(unit), "-o", str(obj)],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for unit, obj in zip(units, objects, strict=True)]
    outputs = [proc.communicate()[0] for proc in compiles]
    errors = [out for proc, out in zip(compiles, outputs, strict=True) if proc.returncode]
    if errors:
        raise RuntimeError("g++ failed:\n" + "\n".join(errors)[-6000:])
    lib = out_dir / name
    subprocess.run([gxx, "-shared", *map(str, objects), "-o", str(lib)], check=True,
                   capture_output=True, text=True)
    _BUILT[key] = ctypes.CDLL(str(lib))
    return _BUILT[key]


def _kernel_unit(module: str, kernels_dir: pathlib.Path, out_dir: pathlib.Path) -> pathlib.Path:
    lines = ['#include "kernel_threads.h"', f'#include "{module}"', 'extern "C" {']
    for name, pointers in kernel_parameters(module, kernels_dir).items():
        raw = [f"a{i}" for i in range(len(pointers))]
        params = ", ".join(f"uint64_t {a}" for a in ["grid", "block", *raw])
        lines.append(f"void emu_{name}({params}) {{")
        lines.append(f"    gp_host::launch({', '.join([name, 'grid', 'block', *raw])});")
        lines.append("}")
    lines.append("}")
    unit = out_dir / f"host_{module.replace('.', '_')}.cpp"
    unit.write_text("\n".join(lines) + "\n")
    return unit


# --- field elements ----------------------------------------------------------------------------

def le(x: int, size: int) -> bytes:
    return x.to_bytes(size, "little")


def mont(x: int, modulus: int, size: int) -> bytes:
    """x in Montgomery form (x * 2^(8 size) mod m) as device bytes."""
    return le(x * (1 << (8 * size)) % modulus, size)


def unmont(b: bytes, modulus: int) -> int:
    return int.from_bytes(b, "little") * pow(1 << (8 * len(b)), -1, modulus) % modulus


def fp2_mont(c0: int, c1: int) -> bytes:
    return mont(c0, P, FP_BYTES) + mont(c1, P, FP_BYTES)


def fp2_unmont(b: bytes) -> tuple[int, int]:
    return unmont(b[:FP_BYTES], P), unmont(b[FP_BYTES:], P)


# --- points ------------------------------------------------------------------------------------

def _coords_to_device(xy: bytes) -> bytes:
    """py-arkworks little-endian standard-form coordinates -> Montgomery device bytes."""
    words = [int.from_bytes(xy[k:k + FP_BYTES], "little") for k in range(0, len(xy), FP_BYTES)]
    return b"".join(mont(w, P, FP_BYTES) for w in words)


def _coords_from_device(b: bytes) -> bytes:
    return b"".join(le(unmont(b[k:k + FP_BYTES], P), FP_BYTES) for k in range(0, len(b), FP_BYTES))


def g1_to_device(p: ark.G1Point) -> bytes:
    if p == ark.G1Point.identity():
        return bytes(2 * FP_BYTES)
    return _coords_to_device(p.to_xy_bytes_le())


def g2_to_device(p: ark.G2Point) -> bytes:
    if p == ark.G2Point.identity():
        return bytes(4 * FP_BYTES)
    return _coords_to_device(p.to_xy_bytes_le())


def g1_from_device(b: bytes) -> ark.G1Point:
    """Checked on the curve and in the subgroup by py-arkworks."""
    if not any(b):
        return ark.G1Point.identity()
    return ark.G1Point.from_xy_bytes_le(_coords_from_device(b))


def g2_from_device(b: bytes) -> ark.G2Point:
    if not any(b):
        return ark.G2Point.identity()
    return ark.G2Point.from_xy_bytes_le(_coords_from_device(b))


def scalar(k: int) -> ark.Scalar:
    return ark.Scalar.from_le_bytes(le(k % R, FR_BYTES))
