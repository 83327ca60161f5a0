"""Groth16 backends by name: `cpu` (the C helper), `reference` (py-arkworks, for tests)."""

from __future__ import annotations

from worker.groth16.backends.base import Backend, Bases, LoadedKey

NAMES = ("cpu", "reference")


def create(name: str = "cpu", threads: int | None = None) -> Backend:
    """A backend by name; ValueError for an unknown one."""
    if name == "cpu":
        from worker.groth16.backends.cpu import CpuBackend

        return CpuBackend(threads=threads)
    if name == "reference":
        from worker.groth16.backends.reference import ReferenceBackend

        return ReferenceBackend()
    raise ValueError(f"unknown Groth16 backend {name!r}; known: {', '.join(NAMES)}")


__all__ = ["NAMES", "Backend", "Bases", "LoadedKey", "create"]
