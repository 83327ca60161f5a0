"""Proving keys loaded once and kept by sha256 across tasks.

A real .zkey is hundreds of MB: reading, checking and moving it into the backend per task would
dominate the proof. Keys live in a params folder named `<sha256>.zkey` (like Filecoin's
parameter folder); the cache checks the file's sha256 on first use, keeps the most recently
used `max_keys` keys, and is safe to share between the threads that prove. The oldest key goes
before a new one is loaded, so that on a GPU its memory is free for the new key's points.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import pathlib
import re
import shutil
import tempfile
import threading

from worker.groth16 import exceptions, zkey
from worker.groth16.backends import Backend, LoadedKey

SHA256 = re.compile(r"[0-9a-f]{64}")


def key_path(params_dir: pathlib.Path, sha256: str) -> pathlib.Path:
    """Where the params folder holds the key with this sha256."""
    if not SHA256.fullmatch(sha256):
        raise ValueError(f"{sha256!r} is not a lowercase hex sha256")
    return params_dir / f"{sha256}.zkey"


def install(source: pathlib.Path, params_dir: pathlib.Path) -> str:
    """Copy a .zkey into the params folder under its sha256 (atomically); return the sha256."""
    digest = hashlib.sha256()
    with source.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    sha256 = digest.hexdigest()
    target = key_path(params_dir, sha256)
    if not target.exists():
        params_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=params_dir, suffix=".zkey.tmp")
        os.close(fd)
        try:
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        finally:  # a copy cut short (a full disk) must not leave gigabytes behind
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return sha256


class KeyCache:
    def __init__(self, backend: Backend, max_keys: int = 2) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, not {max_keys}")
        self.backend = backend
        self.max_keys = max_keys
        self._keys: collections.OrderedDict[str, LoadedKey] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, params_dir: pathlib.Path, sha256: str) -> LoadedKey:
        """The key `<params_dir>/<sha256>.zkey`, loaded into the backend; KeyMissing,
        KeyDamaged or FormatError if that file cannot serve."""
        with self._lock:
            if sha256 in self._keys:
                self._keys.move_to_end(sha256)
                return self._keys[sha256]
            key = read_key(key_path(params_dir, sha256), sha256)
            while self._keys and len(self._keys) >= self.max_keys:  # first: frees GPU memory
                self._keys.popitem(last=False)
            loaded = self.backend.load(key)
            self._keys[sha256] = loaded
            return loaded

    def clear(self) -> None:
        """Let every key go (a task still proving keeps its own until it ends)."""
        with self._lock:
            self._keys.clear()

    def keys(self) -> list[str]:
        """sha256 of the loaded keys, least recently used first."""
        with self._lock:
            return list(self._keys)

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self._keys


def read_key(path: pathlib.Path, sha256: str) -> zkey.ProvingKey:
    """Read, check against its sha256 and parse one key file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise exceptions.KeyMissing(path=path, sha256=sha256, detail="no such file") from None
    except OSError as exc:
        raise exceptions.KeyMissing(path=path, sha256=sha256, detail=str(exc)) from exc
    if not data:
        raise exceptions.KeyMissing(path=path, sha256=sha256, detail="the file is empty")
    found = hashlib.sha256(data).hexdigest()
    if found != sha256:
        raise exceptions.KeyDamaged(path=path, sha256=sha256, found=found)
    return zkey.read(data, name=str(path))
