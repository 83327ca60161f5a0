"""Compile the kernel files for the GPU found, once per source text, with a cache on disk.

A module's cubin is kept as `<cache_dir>/<name>-<sha256 of source, options, arch>.cubin`, so a
changed kernel or header (sources inlines the headers) compiles anew and an unchanged one loads
in milliseconds. nvcc runs through pycuda.compiler, imported lazily.
"""

from __future__ import annotations

import os
import pathlib
import tempfile

from worker.cuda import exceptions, sources
from worker.groth16 import native

DEFAULT_CACHE_DIR = native.cache_dir() / "cuda"  #: $XDG_CACHE_HOME/gpuproxy/cuda


def arch_of(compute_capability: tuple[int, int]) -> str:
    """nvcc's -arch for a device: sm_80 (A100), sm_86/sm_89 (RTX 30/40, L4, L40), sm_90 (H100)."""
    major, minor = compute_capability
    return f"sm_{major}{minor}"


def cubin(name: str, arch: str, cache_dir: pathlib.Path,
          variant: str = sources.DEFAULT_VARIANT) -> bytes:
    """The compiled kernel file `name` for `arch` (in a build of sources.VARIANTS), from the
    cache or from nvcc."""
    source = sources.load(name)
    options = (*sources.NVCC_OPTIONS, *sources.VARIANTS[variant])
    key = sources.digest(source, (*options, f"-arch={arch}"))
    path = cache_dir / f"{name.removesuffix('.cu')}-{key}.cubin"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    binary = _nvcc(name, source, arch, options)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".cubin-")
    with os.fdopen(fd, "wb") as f:
        f.write(binary)
    os.replace(tmp, path)  # concurrent workers on one host write the same bytes
    return binary


def _nvcc(name: str, source: str, arch: str, options: tuple[str, ...]) -> bytes:
    try:
        from pycuda import compiler  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError as exc:
        raise exceptions.CudaUnavailable(detail=f"pycuda is not installed ({exc})") from exc
    try:
        binary: bytes = compiler.compile(source, options=list(options), arch=arch,
                                         no_extern_c=True, cache_dir=False)
    except Exception as exc:  # pycuda.driver.CompileError, or nvcc missing (OSError)
        raise exceptions.CompileFailed(module=name, arch=arch, detail=str(exc)[-2000:]) from exc
    return binary
