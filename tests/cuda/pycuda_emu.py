"""The real pycuda on tests/cuda/libcuda_emu.cpp, a host emulation of the CUDA driver library.

`./dev test` compiles pycuda once into .tools/pycuda-pyXY (deploy/wheelhouse.sh --pycuda-only).
`build` makes a libcuda.so.1 of the emulation and, for every other driver entry point pycuda
links, a stub answering CUDA_ERROR_NOT_SUPPORTED; `environment` is what a child process needs
besides its usual environment to load it: pycuda on PYTHONPATH, the library on LD_LIBRARY_PATH,
the emulated kernels and their parameter lists.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from tests.cuda import hostlib
from tests.cuda.fakedriver import kernel_parameters
from worker.cuda import sources

ROOT = pathlib.Path(__file__).resolve().parents[2]
SOURCE = pathlib.Path(__file__).with_name("libcuda_emu.cpp")
NOT_SUPPORTED = 801  # CUDA_ERROR_NOT_SUPPORTED


def prepare(out_dir: pathlib.Path) -> dict[str, str]:
    """The variables that make a child process's pycuda drive the emulation (built into
    out_dir); skips when pycuda or the CUDA toolkit is missing, except under CI=true."""
    pycuda_site, include = site(), cuda_include()
    if pycuda_site is None or include is None:
        why = ("pycuda is not compiled into .tools/ (./dev test does it where the CUDA "
               "toolkit is)" if include else "no CUDA toolkit (cuda.h) found")
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    out_dir.mkdir(parents=True, exist_ok=True)
    kernels = pathlib.Path(hostlib.build_kernels(out_dir)._name)
    lib_dir = build(out_dir, pycuda_site, include)
    return environment(lib_dir, pycuda_site, kernels, out_dir)


def site() -> pathlib.Path | None:
    """Where ./dev put pycuda for this Python, or None."""
    found = ROOT / ".tools" / f"pycuda-py{sys.version_info[0]}{sys.version_info[1]}"
    return found if (found / "pycuda").is_dir() else None


def cuda_include() -> pathlib.Path | None:
    nvcc = shutil.which("nvcc")
    for root in ([pathlib.Path(os.path.realpath(nvcc)).parents[1]] if nvcc else []) + [
            pathlib.Path("/usr/local/cuda")]:
        if (root / "include" / "cuda.h").is_file():
            return root / "include"
    return None


def build(out_dir: pathlib.Path, pycuda_site: pathlib.Path, include: pathlib.Path
          ) -> pathlib.Path:
    """Compile the emulated libcuda.so.1 into out_dir; return out_dir."""
    driver = next((pycuda_site / "pycuda").glob("_driver*.so"))
    needed = _symbols(["nm", "-D", "--undefined-only", str(driver)])
    obj = out_dir / "libcuda_emu.o"
    subprocess.run(["g++", "-std=c++17", "-O1", "-fPIC", "-c", "-Wall", "-Werror",
                    "-Wno-deprecated-declarations", f"-I{include}", str(SOURCE), "-o", str(obj)],
                   check=True, capture_output=True, text=True)
    defined = _symbols(["nm", "--defined-only", "--extern-only", str(obj)])
    stubs = out_dir / "stubs.c"
    stubs.write_text("".join(f"int {name}(void) {{ return {NOT_SUPPORTED}; }}\n"
                             for name in sorted(needed - defined)))
    subprocess.run(["g++", "-shared", "-Wl,-soname,libcuda.so.1", "-o",
                    str(out_dir / "libcuda.so.1"), str(obj), "-x", "c", str(stubs), "-ldl"],
                   check=True, capture_output=True, text=True)
    return out_dir


def environment(lib_dir: pathlib.Path, pycuda_site: pathlib.Path, kernels: pathlib.Path,
                out_dir: pathlib.Path) -> dict[str, str]:
    signatures = out_dir / "signatures.txt"
    lines = [f"{name} {''.join('P' if p else 'I' for p in kinds) or '-'}"
             for module in sources.MODULES for name, kinds in kernel_parameters(module).items()]
    signatures.write_text("\n".join(lines) + "\n")
    return {"LD_LIBRARY_PATH": str(lib_dir),
            "PYTHONPATH": os.pathsep.join([str(pycuda_site), str(ROOT)]),
            "CUDA_EMU_KERNELS": str(kernels), "CUDA_EMU_SIGNATURES": str(signatures)}


def _symbols(command: list[str]) -> set[str]:
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return {line.split()[-1] for line in out.splitlines()
            if line.split() and line.split()[-1].startswith("cu")}
