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
    """An exclusive lock on the file ``path`` (created if missing) while the block runs. Windows has no
    flock: there the block runs unlocked, so run one process at a time."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
