"""Writing files safely, the one way the package does it.

    with atomic(path) as tmp:      # write to tmp; it becomes path only when the block succeeds
        tmp.write_text(...)
    with locked(path.with_suffix(".lock")):   # one process at a time (parallel `results` runs, DDP ranks)
        ...
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic", "locked"]


@contextmanager
def atomic(path: Path):
    """A temporary path beside ``path`` to write to, renamed to ``path`` when the block succeeds: a kill
    during the write never leaves a half-written file (the rename is atomic on one file system)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def locked(path: Path):
    """An exclusive lock on ``path`` while the block runs: a file (created if missing), or an existing
    folder, which locks itself and leaves no lock file behind. Windows has no flock: there the block
    runs unlocked, so run one process at a time."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = Path(path)
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY if path.is_dir() else os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
