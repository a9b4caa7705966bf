"""Atomic output: write next to the target, then rename, so no half-written file is ever left."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from gzsq.errors import GzsqError


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ensure_writable_dir(path: str | Path) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GzsqError(f"cannot create output directory {path}: {e.strerror}; pass a writable -o path") from None
    if not os.access(path, os.W_OK):
        raise GzsqError(f"output directory {path} is not writable; pass a writable -o path")
    return path


@contextlib.contextmanager
def removing_new_empty_dirs(output: str | Path | None) -> Iterator[None]:
    """On failure, remove the directories on the way to `output` that this command created and
    left empty (a failed command leaves nothing behind, not even an empty -o directory)."""
    new = []
    if output:
        path = Path(output).absolute()
        while not path.exists() and path != path.parent:
            new.append(path)
            path = path.parent
    try:
        yield
    except BaseException:
        for path in new:  # deepest first
            with contextlib.suppress(OSError):
                if path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
        raise


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it onto target on success only."""
    target = Path(target)
    ensure_writable_dir(target.parent if str(target.parent) else Path("."))
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_atomic(target: str | Path, writer: Callable[[Path], None]) -> Path:
    with atomic_path(target) as tmp:
        writer(tmp)
    return Path(target)


def write_json_atomic(target: str | Path, payload: dict) -> Path:
    return write_atomic(target, lambda p: p.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n"))
