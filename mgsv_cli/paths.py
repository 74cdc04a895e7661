"""Where mgsv keeps things on disk.

Every location lives under the platformdirs user directories unless ``MGSV_HOME``
is set, in which case everything (data, cache, config) goes below that one folder.
"""
from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

from mgsv_cli.errors import OutputExistsError, storage_error

APP_NAME = "mgsv"


def _home() -> Path | None:
    value = os.environ.get("MGSV_HOME")
    return Path(value).expanduser() if value else None


def data_dir() -> Path:
    """Runs, the music index and remembered suggestions."""
    home = _home()
    if home is not None:
        return home / "data"
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME))


def cache_dir() -> Path:
    """Packed dataset caches and per-checkpoint token caches (safe to delete)."""
    home = _home()
    if home is not None:
        return home / "cache"
    import platformdirs

    return Path(platformdirs.user_cache_dir(APP_NAME))


def config_dir() -> Path:
    """The user's settings file (``config.toml``)."""
    home = _home()
    if home is not None:
        return home / "config"
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME))


def runs_dir() -> Path:
    """Default parent of training run folders."""
    return data_dir() / "runs"


def default_index_path() -> Path:
    """Default SQLite music index."""
    return data_dir() / "index.sqlite"


def suggestions_dir() -> Path:
    """Where the last suggestion per video is remembered for ``mgsv render``."""
    return data_dir() / "suggestions"


def atomic_write_bytes(path: Path, data: bytes, *, overwrite: bool = True, private: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary file beside it and a rename, so a
    reader never sees half a file; the temporary file is removed on any failure, and a
    failing removal never hides the first error.

    The file gets the permissions of any file the user makes (``0o666`` less the umask),
    like renders and every other output: ``mkstemp`` makes its file 0600, which is kept
    only when ``private`` (a file holding a secret). ``overwrite=False`` refuses
    (``OutputExistsError``) a ``path`` that appeared while writing. OS errors (read-only,
    disk full, ...) come out as ``StorageError``.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise storage_error("write", path, exc) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            if not private and hasattr(os, "fchmod"):  # Windows has no modes to give
                try:
                    os.fchmod(handle.fileno(), 0o666 & ~current_umask())
                except OSError:  # a file system without modes (FAT, some shares) refuses: the data is what matters
                    pass
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())  # a crash right after the rename must not leave an empty file
        if not overwrite and path.exists():
            raise OutputExistsError(f"{path} exists: use --force to replace it")
        os.replace(tmp, path)
    except BaseException as exc:
        remove_quietly(Path(tmp))
        if isinstance(exc, OSError):
            raise storage_error("write", path, exc) from None
        raise


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, without changing it where the OS says it (Linux 4.7+:
    ``/proc/self/status``). Elsewhere it can only be read by setting it: it is set to
    0o077 for that instant, so that a file another thread creates meanwhile comes out
    more private than asked, never less."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str, *, overwrite: bool = True, private: bool = False) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite, private=private)


def remove_quietly(path: Path) -> None:
    """Remove a temporary file if it is there; a failure (read-only, I/O error) is ignored
    because the caller is already reporting the error that matters."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
