"""The writer lock of a store: one indexing run (or one Lance commit) at a time.

An exclusive ``flock`` on ``<store>.lock`` beside the store; a second writer waits a little,
then fails with a one-line ``IndexDatabaseError``. Readers never take it. The lock file is
left in place on release: deleting it would let two runs lock two different files of the
same name.
"""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Iterator

from mgsv_cli.errors import IndexDatabaseError, storage_error


def lock_path_for(index_path: Path) -> Path:
    return index_path.with_name(index_path.name + ".lock")


@contextlib.contextmanager
def writer_lock(index_path: Path, timeout: float = 2.0) -> Iterator[None]:
    """Hold the exclusive writer lock of ``index_path``; wait up to ``timeout`` s, then fail.

    The lock file is left in place on release: deleting it would let two runs
    lock two different files of the same name. A folder or lock file that cannot be
    created (read-only, full, no permission) is a ``StorageError``.
    """
    lock_file = lock_path_for(index_path)
    make_folder(lock_file.parent)
    try:
        handle = open(lock_file, "a+b")
    except OSError as exc:
        raise storage_error("create the lock file", lock_file, exc) from None
    try:
        deadline = time.monotonic() + timeout
        while not _try_lock(handle, lock_file):
            if time.monotonic() >= deadline:
                raise IndexDatabaseError(
                    f"another `mgsv index` is updating {index_path} right now "
                    f"(lock {lock_file}); wait for it to finish, or use --index for another file"
                )
            time.sleep(0.1)
        yield
    finally:
        handle.close()  # closing releases the lock


def make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error("create the folder", folder, exc) from None


def _try_lock(handle, lock_file: Path) -> bool:
    if sys.platform == "win32":  # no fcntl there (a platform check, so that mypy knows msvcrt's names)
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:  # ENOLCK on some network file systems
        raise storage_error("lock", lock_file, exc) from None
