"""The C helper (native/g16.c): built with the machine's C compiler on first use, then loaded
with ctypes.

The library is cached under $XDG_CACHE_HOME/gpuproxy (~/.cache/gpuproxy), named by the hash
of its sources and flags, and written atomically, so concurrent workers build it at most a
few times and never load a half-written file. ctypes releases the GIL during each call.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import pathlib
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading

import numpy as np
import numpy.typing as npt

from worker.groth16 import exceptions, field

SOURCE_DIR = pathlib.Path(__file__).parent / "native"
SOURCES = ("g16.c", "curve.h", "field_x86.h")
MAX_THREADS = 64  #: the most threads the helper starts for one call (g16.c MAX_THREADS)
CFLAGS = ("-O3", "-std=gnu11", "-fPIC", "-shared", "-pthread", "-Wall")

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_ptr = ctypes.c_void_p


def default_threads() -> int:
    """The CPUs this process may run on (its affinity), at most MAX_THREADS."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(count or 1, MAX_THREADS)


def cache_dir() -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "gpuproxy"


def library() -> ctypes.CDLL:
    """The loaded helper, built first if needed; NativeUnavailable if it cannot be."""
    global _lib
    with _lock:
        if _lib is None:
            path = _build()
            try:
                lib = _load(path)
            except exceptions.NativeUnavailable:  # a cached build cut short or damaged
                path.unlink(missing_ok=True)
                lib = _load(_build())
            _lib = _declare(lib)
        return _lib


def _load(path: pathlib.Path) -> ctypes.CDLL:
    try:
        return ctypes.CDLL(str(path))
    except OSError as exc:
        raise exceptions.NativeUnavailable(detail=f"the build {path} does not load: {exc}") from exc


def _compiler() -> list[str]:
    """The C compiler's command line: $CC, or gcc (cc) on PATH."""
    try:
        compiler = shlex.split(os.environ.get("CC", "")) or [
            c for c in (shutil.which("gcc") or shutil.which("cc"),) if c]
    except ValueError as exc:
        raise exceptions.NativeUnavailable(
            detail=f"CC={os.environ['CC']!r} is not a command line ({exc})") from None
    if not compiler:
        raise exceptions.NativeUnavailable(detail="no C compiler (gcc or cc) on PATH")
    return compiler


def cached_build(compiler: list[str]) -> pathlib.Path:
    """Where the build by `compiler` of these sources is cached (named by all that goes into
    it: the cache may be shared by machines of other kinds, a home folder on NFS)."""
    digest = hashlib.sha256(" ".join([*CFLAGS, *compiler, platform.machine()]).encode())
    for name in SOURCES:
        digest.update((SOURCE_DIR / name).read_bytes())
    return cache_dir() / f"libg16-{digest.hexdigest()[:16]}.so"


def _build() -> pathlib.Path:
    compiler = _compiler()
    target = cached_build(compiler)
    if target.exists():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
        os.close(fd)
    except OSError as exc:
        raise exceptions.NativeUnavailable(
            detail=f"cannot write to the cache folder {target.parent}: {exc}; set "
            "XDG_CACHE_HOME to a folder this user may write") from exc
    try:
        # The flags in $CC come last, so that they win over ours (CC="gcc -O1", say)
        done = subprocess.run([compiler[0], *CFLAGS, *compiler[1:], "-o", tmp,
                               str(SOURCE_DIR / "g16.c")],
                              capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            raise exceptions.NativeUnavailable(detail=f"{' '.join(compiler)} exited with "
                                               f"{done.returncode}: {done.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    except (OSError, subprocess.SubprocessError) as exc:
        raise exceptions.NativeUnavailable(detail=f"{' '.join(compiler)}: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # gone once replaced; left by a failed or timed-out build otherwise
    return target


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    u32, size, c_int = ctypes.c_uint32, ctypes.c_size_t, ctypes.c_int
    signatures = {
        "fr_qap_evaluations": (c_int, [_ptr, u32, _ptr, u32, u32, _ptr, _ptr, _ptr, c_int]),
        "fr_mul_sub": (None, [_ptr, _ptr, _ptr, _ptr, u32]),
        "fr_ntt": (c_int, [_ptr, u32, _ptr, _ptr, _ptr, c_int]),
        "g1_msm": (c_int, [_ptr, _ptr, size, c_int, c_int, c_int, _ptr]),
        "g2_msm": (c_int, [_ptr, _ptr, size, c_int, c_int, c_int, _ptr]),
        "g1_batch_mul": (c_int, [_ptr, _ptr, size, c_int, _ptr]),
        "g2_batch_mul": (c_int, [_ptr, _ptr, size, c_int, _ptr]),
        "field_arithmetic": (c_int, []),
        "fp_vector": (None, [c_int, _ptr, _ptr, _ptr, size]),
        "fr_vector": (None, [c_int, _ptr, _ptr, _ptr, size]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes
    return lib


def _addr(array: npt.NDArray[np.generic]) -> int:
    if not array.flags.c_contiguous:
        raise ValueError("native arrays must be C-contiguous")
    return int(array.ctypes.data)


def _check(rc: int, operation: str) -> None:
    if rc != 0:
        raise exceptions.NativeFailed(operation=operation, detail="out of memory or bad input")


def _fr(value: int) -> npt.NDArray[np.uint64]:
    return field.to_vector([value % field.R])


def _fr_vector(vector: field.FrVector) -> field.FrVector:
    return np.ascontiguousarray(vector, dtype=np.uint64)


def field_arithmetic() -> str:
    """Which field arithmetic the helper runs here: "x86-64 mulx/adx" where the processor has
    BMI2 and ADX (and GPUPROXY_NATIVE_PORTABLE is unset or 0), else "portable C"."""
    return "x86-64 mulx/adx" if library().field_arithmetic() else "portable C"


FIELD_OPS = {"mul": 0, "add": 1, "sub": 2}


def field_op(name: str, op: str, a: npt.NDArray[np.uint64], b: npt.NDArray[np.uint64]
             ) -> npt.NDArray[np.uint64]:
    """a op b element-wise in field `name`, "fp" ((n, 6) arrays of 64-bit limbs below q) or
    "fr" ((n, 4), below r): "mul" is the Montgomery product a b / 2^384 mod q (a b / 2^256 mod
    r) the arithmetic runs on, "add" and "sub" a + b and a - b."""
    limbs = {"fp": 6, "fr": 4}[name]
    a = np.ascontiguousarray(a, dtype=np.uint64)
    b = np.ascontiguousarray(b, dtype=np.uint64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != limbs:
        raise ValueError(f"{name} operands are two (n, {limbs}) arrays, got {a.shape} and "
                         f"{b.shape}")
    out = np.empty_like(a)
    function = library().fp_vector if name == "fp" else library().fr_vector
    function(FIELD_OPS[op], _addr(a), _addr(b), _addr(out), len(a))
    return out


def qap_evaluations(coefs: npt.NDArray[np.void], witness: field.FrVector, domain: int,
                    threads: int | None = None) -> tuple[field.FrVector, field.FrVector,
                                                         field.FrVector]:
    """A.w, B.w and (A.w)(B.w) on the domain from a .zkey's coefficient records, on `threads`
    threads (default_threads() unless given)."""
    witness = _fr_vector(witness)
    coefs = np.ascontiguousarray(coefs)
    a, b, c = (np.empty((domain, 4), dtype=np.uint64) for _ in range(3))
    rc = library().fr_qap_evaluations(_addr(coefs), len(coefs), _addr(witness), len(witness),
                                      domain, _addr(a), _addr(b), _addr(c),
                                      threads or default_threads())
    _check(rc, "the constraint evaluations")
    return a, b, c


def mul_sub(a: field.FrVector, b: field.FrVector, c: field.FrVector) -> field.FrVector:
    """a * b - c, element-wise."""
    a, b, c = _fr_vector(a), _fr_vector(b), _fr_vector(c)
    out = np.empty_like(a)
    library().fr_mul_sub(_addr(a), _addr(b), _addr(c), _addr(out), len(a))
    return out


def ntt(values: field.FrVector, root: int, shift: int | None = None,
        scale: int | None = None, threads: int = 1) -> field.FrVector:
    """sum_j values[j] shift^j root^(ij), times scale: a new vector (see g16.c fr_ntt), on up to
    `threads` threads."""
    out = np.array(values, dtype=np.uint64, order="C", copy=True)
    log_n = len(out).bit_length() - 1
    if len(out) != 1 << log_n:
        raise ValueError(f"NTT size {len(out)} is not a power of two")
    args = [_fr(root), None if shift is None else _fr(shift), None if scale is None else _fr(scale)]
    ptrs = [None if a is None else _addr(a) for a in args]
    _check(library().fr_ntt(_addr(out), log_n, *ptrs, threads), "an NTT")
    return out


def msm(group: str, points: npt.NDArray[np.uint64], scalars: field.FrVector,
        window_bits: int, threads: int, parts: int = 1) -> npt.NDArray[np.uint64]:
    """sum scalars[i] * points[i] for LEM points of `group` ("g1" or "g2"): one LEM point. Each
    window's points are cut into `parts` ranges, jobs for up to `threads` threads."""
    scalars = _fr_vector(scalars)
    if len(points) != len(scalars):
        raise ValueError(f"{len(points)} points but {len(scalars)} scalars")
    out = np.zeros(points.shape[1], dtype=np.uint64)
    function = library().g1_msm if group == "g1" else library().g2_msm
    rc = function(_addr(points), _addr(scalars), len(points), window_bits, parts, threads,
                  _addr(out))
    _check(rc, f"a {group.upper()} MSM")
    return out


def batch_mul(group: str, base: npt.NDArray[np.uint64], scalars: field.FrVector,
              threads: int) -> npt.NDArray[np.uint64]:
    """scalars[i] * base for a LEM point of `group`: (n, limbs) LEM points."""
    scalars = _fr_vector(scalars)
    base = np.ascontiguousarray(base, dtype=np.uint64)
    out = np.zeros((len(scalars), len(base)), dtype=np.uint64)
    function = library().g1_batch_mul if group == "g1" else library().g2_batch_mul
    _check(function(_addr(base), _addr(scalars), len(scalars), threads, _addr(out)),
           f"a {group.upper()} fixed-base multiplication")
    return out
