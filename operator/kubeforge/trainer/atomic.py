"""Atomic file replacement: readers see the old file or the complete new one, never a partial write."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TEMP_PREFIX = "."
TEMP_SUFFIX = ".tmp"


def temp_path_for(path: Path) -> Path:
    """The hidden sibling a write of ``path`` goes through (same directory, so the rename is atomic)."""
    return path.with_name(f"{TEMP_PREFIX}{path.name}.{os.getpid()}{TEMP_SUFFIX}")


def fsync_directory(directory: Path) -> None:
    """Persist a rename: on POSIX the directory entry is only durable once the directory is synced."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` on a temporary file, fsync it, and rename it over ``path``."""
    temp = temp_path_for(path)
    try:
        with temp.open("wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        temp.replace(path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""
    atomic_write(path, lambda handle: handle.write(data))
