"""The music index: one SQLite file holding every track's frozen AST tokens.

``index_music`` scans a folder and embeds new or changed audio files; ``open_index``
reads the index back for ``mgsv suggest``.

Design choices:

* **One transaction per track.** The database runs in WAL mode and every embedded
  track is committed on its own, so Ctrl-C or SIGKILL loses at most the track in
  flight and the next run resumes where this one stopped. SQLite's WAL guarantees
  that a killed writer never corrupts the file.
* **One writer at a time.** ``index_music`` holds an exclusive ``flock`` on
  ``<index>.lock`` for the whole run; a second run waits briefly, then fails with a
  one-line error. Readers (``suggest``) never take the lock: WAL lets them read a
  consistent snapshot while a writer works.
* **Change detection.** size + mtime first (no read at all); when they differ the
  file's full BLAKE2b content hash decides: a touched-but-identical file only gets
  its new mtime, a renamed or copied file reuses the stored tokens of the same
  content. A full hash (not a sample of the first/last MiB) because an audio editor
  can rewrite a region in the middle of a WAV without changing its size, and a
  sample would miss that; hashing runs at ~1 GB/s, negligible next to AST (about
  1.6 s per 10 s window on CPU), and only for files whose size or mtime changed.
* **One encoder per index.** Tokens made by different encoders live in different
  spaces; the index records its encoder id and refuses to mix (``--force``
  rebuilds with the new encoders).
* **Cache key.** Every change to the stored tokens bumps ``generation`` in the meta
  table; together with the index's random ``index_uuid`` this lets suggest's
  per-checkpoint token cache know when it is stale.

* **Failed files are remembered.** A file that cannot be read, decoded or embedded is
  kept in the ``failed`` table with its size, mtime and reason. A rerun does not try it
  again while its size and mtime are unchanged (the same bytes fail the same way, and a
  rerun with nothing new to do must exit 0); a changed file is retried by itself,
  ``retry_failed`` (``--retry-failed``) and ``force`` retry them all. A file that later
  indexes fine leaves the table, and so does one that is gone when ``prune`` runs.
* **Additive schema changes keep schema_version 1.** The ``failed`` table is created
  with ``CREATE TABLE IF NOT EXISTS`` on every writer open, so an index written by an
  older mgsv gains it on its next write, and readers treat a missing table as empty.
  Bumping the version would make older mgsv refuse an index it can still read.
* **A damaged index is moved aside, never deleted.** SQLite reports damage as
  ``SQLITE_CORRUPT``/``SQLITE_NOTADB`` (or undecodable text): every reader and writer
  turns it into one message naming the fix, ``mgsv index MUSIC_DIR --force``. Only that
  command acts on it: it runs ``PRAGMA quick_check`` first (damage in the middle of the
  file can hide from ordinary reads) and renames the damaged file, with its ``-wal`` and
  ``-shm`` (renamed first, so no stale WAL is ever paired with the new file), to
  ``<name>.corrupt-<UTC timestamp>``, then rebuilds. A file without SQLite's header is
  not taken for a damaged index: it may be anything of the user's, so it is refused.
* **OS failures are one line.** Read-only file system, full disk, quota, I/O errors,
  long names and permissions, met as ``OSError`` (folder, lock file) or as SQLite's
  ``READONLY``/``FULL``/``IOERR``/``CANTOPEN``, become a ``StorageError`` naming the
  path and the cause; SQLite's transactions guarantee the existing index is untouched.
  A WAL index on a read-only file system cannot be opened the usual way (SQLite needs
  its ``-shm``), so readers then open it ``immutable`` (nothing can write there).
* **Files are keyed by their resolved path**, except a broken symbolic link (dangling, or
  a loop), which has no target to resolve to: it is reported, and remembered, by its
  path in the library, the name the user sees.
* **Long tracks.** The network sees the first ``recipe.MAX_MUSIC_SECONDS`` (240 s) of a
  track; longer ones are embedded from that window and counted in ``long_tracks``.

Tokens are stored as little-endian float16 ``[n_windows, feat_dim]`` blobs, the mask
as uint8 ``[n_windows]`` (1 = valid window).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from mgsv_cli.features import recipe
from mgsv_cli.media.files import content_hash, no_audio_message, scan_audio_files
from mgsv_cli import paths
from mgsv_cli.errors import (IndexDatabaseError, MgsvError, StorageError, UsageError, first_line, os_error_cause,
                             storage_error)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tracks (
    id           INTEGER PRIMARY KEY,
    path         TEXT NOT NULL UNIQUE,
    size         INTEGER NOT NULL,
    mtime_ns     INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    duration     REAL NOT NULL,
    sample_rate  INTEGER,
    channels     INTEGER,
    title        TEXT,
    artist       TEXT,
    album        TEXT,
    encoder_id   TEXT NOT NULL,
    n_windows    INTEGER NOT NULL,
    feat_dim     INTEGER NOT NULL,
    feats        BLOB NOT NULL,
    mask         BLOB NOT NULL,
    beats        TEXT,
    indexed_at   TEXT NOT NULL,
    token_stamp  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tracks_by_hash ON tracks(content_hash);
CREATE TABLE IF NOT EXISTS failed (
    path      TEXT PRIMARY KEY,
    size      INTEGER,
    mtime_ns  INTEGER,
    reason    TEXT NOT NULL,
    failed_at TEXT NOT NULL
);
"""
# Run on every writer open: an index written before the table existed gains it (see above).
_FAILED_TABLE = _SCHEMA[_SCHEMA.index("CREATE TABLE IF NOT EXISTS failed"):].strip().rstrip(";")

_TRACK_COLUMNS = (
    "path, size, mtime_ns, content_hash, duration, sample_rate, channels, title, artist, album, "
    "encoder_id, n_windows, feat_dim, feats, mask, beats, indexed_at, token_stamp"
)
# An upsert keyed by path keeps the row's id: a re-embedded file stays the same track.
_UPSERT_UPDATES = ", ".join(f"{c.strip()}=excluded.{c.strip()}" for c in _TRACK_COLUMNS.split(",")[1:])


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class TrackInfo:
    """One indexed track, without its tokens."""

    id: int
    path: str
    duration: float
    title: str | None = None
    artist: str | None = None
    album: str | None = None
    beats: dict | None = None
    token_stamp: int = 0  # changes whenever this track's stored tokens change

    @property
    def name(self) -> str:
        """"Artist - Title" when tagged, else the file name."""
        if self.title and self.artist:
            return f"{self.artist} - {self.title}"
        return self.title or Path(self.path).name


@dataclass
class IndexReport:
    """What one ``index_music`` run did."""

    index_path: Path
    n_scanned: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    touched: int = 0  # counted in ``unchanged`` too: same content, only the mtime changed
    reused: int = 0  # counted in ``added``/``updated`` too: tokens copied from identical content
    pruned: int = 0
    missing: int = 0  # indexed files that vanished and were kept (no --prune)
    beats_added: int = 0
    n_tracks: int = 0  # tracks in the index after the run
    failed: list[tuple[str, str]] = field(default_factory=list)  # failed in this run (new or retried)
    skipped_failed: int = 0  # files that failed before, unchanged since: not tried again
    forgotten_failed: int = 0  # failed files gone from disk, dropped from the failed table by prune
    long_tracks: int = 0  # tracks indexed in this run that are longer than the network's window (240 s)
    moved_aside: Path | None = None  # where ``force`` moved a damaged index before rebuilding
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        """Nothing failed in this run (files skipped as known failures do not count)."""
        return not self.failed and not self.interrupted


@dataclass(frozen=True)
class FailedFile:
    """A file the index could not take, as the ``failed`` table remembers it."""

    path: str
    reason: str
    size: int | None
    mtime_ns: int | None
    failed_at: str

    @property
    def exists(self) -> bool:
        return os.path.lexists(self.path)

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason, "size": self.size, "mtime_ns": self.mtime_ns,
                "failed_at": self.failed_at, "exists": self.exists}


class IndexProgress:
    """Hooks ``index_music`` calls as it works; the default does nothing (the CLI draws bars).

    Stages, in order: ``checking`` (files: stat, hash when changed), ``probing`` (files
    to embed), ``embedding`` (seconds of audio, the unit AST's cost follows), ``beats``
    (tracks whose beat grid is missing).
    """

    def stage(self, name: str, total: float) -> None:
        """Stage ``name`` starts with ``total`` units of work."""

    def advance(self, name: str, amount: float = 1.0, detail: str = "") -> None:
        """``amount`` units of stage ``name`` are done (``detail``: the file just handled)."""

    def failed(self, path: str, reason: str) -> None:
        """A file was skipped: unreadable, empty, undecodable."""

    def note(self, message: str) -> None:
        """A one-line notice (e.g. "loading encoders")."""


# ---------------------------------------------------------------- database plumbing


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
    _make_folder(lock_file.parent)
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


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error("create the folder", folder, exc) from None


def _try_lock(handle, lock_file: Path) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:  # ENOLCK on some network file systems
        raise storage_error("lock", lock_file, exc) from None


# -- what a SQLite error means for the user

_SQLITE_MAGIC = b"SQLite format 3\x00"


def _sqlite_code(exc: sqlite3.Error) -> str:
    """SQLite's primary result code name (``SQLITE_CORRUPT``...), from the exception or its text.

    ``sqlite_errorname`` exists from Python 3.11 and may be an extended code
    (``SQLITE_IOERR_WRITE``); the messages are SQLite's fixed texts for older Pythons.
    """
    name = getattr(exc, "sqlite_errorname", None) or ""
    for code in ("SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_READONLY", "SQLITE_FULL", "SQLITE_IOERR",
                 "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_BUSY", "SQLITE_LOCKED"):
        if name == code or name.startswith(code + "_"):
            return code
    text = str(exc)
    for fragment, code in (("malformed", "SQLITE_CORRUPT"), ("file is not a database", "SQLITE_NOTADB"),
                           ("readonly database", "SQLITE_READONLY"), ("disk is full", "SQLITE_FULL"),
                           ("disk I/O error", "SQLITE_IOERR"), ("unable to open database", "SQLITE_CANTOPEN"),
                           ("access permission denied", "SQLITE_PERM"), ("database is locked", "SQLITE_BUSY"),
                           ("table is locked", "SQLITE_LOCKED"),
                           # Python's own error for garbage where text should be: only damage does that.
                           ("Could not decode to UTF-8", "SQLITE_CORRUPT")):
        if fragment in text:
            return code
    return ""


def _has_sqlite_header(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
    except OSError:
        return False


def _is_damage(exc: sqlite3.Error, path: Path) -> bool:
    """Is ``exc`` SQLite finding the file damaged? ``NOTADB`` only counts when the file
    starts with SQLite's header: without it, the file was never a database (a user's
    file given as --index), and must not be taken for a broken index."""
    code = _sqlite_code(exc)
    return code == "SQLITE_CORRUPT" or (code == "SQLITE_NOTADB" and _has_sqlite_header(path))


def rebuild_hint(index: Path) -> str:
    """The command that moves a damaged ``index`` aside and rebuilds it."""
    tail = "" if _same_path(index, paths.default_index_path()) else f" --index {_shell_quote(index)}"
    return f"`mgsv index MUSIC_DIR --force{tail}`"


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.expanduser().resolve() == b.expanduser().resolve()
    except (OSError, RuntimeError):
        return a == b


def _shell_quote(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))


def damaged_error(index: Path, cause: str) -> IndexDatabaseError:
    return IndexDatabaseError(
        f"the music index {index} is damaged ({cause}): {rebuild_hint(index)} moves it aside and rebuilds it"
    )


def _db_error(exc: sqlite3.Error, path: Path, action: str) -> MgsvError:
    """One-line typed error for a SQLite failure on ``path`` while trying to ``action`` it:
    damage (exit 8, names the fix), storage (exit 5, names the cause), busy, or other."""
    code = _sqlite_code(exc)
    if _is_damage(exc, path):
        return damaged_error(path, first_line(exc))
    if code == "SQLITE_NOTADB":
        return IndexDatabaseError(f"{path} is not an mgsv music index (not an SQLite file); not touching it")
    if code in ("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_FULL", "SQLITE_IOERR"):
        cause = _storage_cause(code, path)
        return StorageError(f"cannot {action} {path}: {cause or first_line(exc)}")
    if code in ("SQLITE_BUSY", "SQLITE_LOCKED"):
        return IndexDatabaseError(f"the music index {path} is busy ({first_line(exc)}): another program "
                                  "has it open for writing; try again when it is done")
    return IndexDatabaseError(f"cannot {action} {path}: {first_line(exc)}")


def _storage_cause(code: str, path: Path) -> str | None:
    """The plain cause behind a SQLite storage failure, in ``errors.os_error_cause`` words.

    SQLite says only "attempt to write a readonly database" or "unable to open database
    file", and a full disk met while sizing the ``-shm`` comes out as an I/O error; the
    file system says which: read-only, full, no permission, missing folder.
    """
    if code == "SQLITE_FULL":
        return os_error_cause(OSError(errno.ENOSPC, ""))
    if _read_only_fs(path):
        return os_error_cause(OSError(errno.EROFS, ""))
    if _nearly_full(path):
        return os_error_cause(OSError(errno.ENOSPC, ""))
    if code == "SQLITE_IOERR":
        return os_error_cause(OSError(errno.EIO, ""))
    folder = path.parent
    if not folder.is_dir():
        return os_error_cause(OSError(errno.ENOENT, ""))
    if code == "SQLITE_PERM" or not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return os_error_cause(OSError(errno.EACCES, ""))
    return None


def _read_only_fs(path: Path) -> bool:
    """Is the file system holding ``path`` (or its nearest existing folder) mounted read-only?"""
    stat = _statvfs(path)
    return stat is not None and bool(stat.f_flag & os.ST_RDONLY)


def _nearly_full(path: Path) -> bool:
    """Less than 1 MiB free for this user where ``path`` lives: too little for a track's
    tokens plus SQLite's WAL pages, so a failing write there is a full disk."""
    stat = _statvfs(path)
    return stat is not None and stat.f_bavail * stat.f_frsize < (1 << 20)


def _statvfs(path: Path):
    here = path
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        return os.statvfs(here)
    except (OSError, AttributeError):  # no statvfs on Windows
        return None


def _connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    """Open ``path``; autocommit mode so transactions are explicit ``BEGIN``/``COMMIT``.

    Read-only opens touch the file once, so that a WAL index on a read-only file system
    (which SQLite cannot open without creating its ``-shm``) is reopened ``immutable``.
    """
    try:
        conn = _open_readonly(path) if readonly else sqlite3.connect(str(path), isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 5000")
        return conn
    except sqlite3.Error as exc:
        raise _db_error(exc, path, "open the music index") from None
    except OSError as exc:  # resolving the path (a name too long, a folder without permission)
        raise storage_error("open the music index", path, exc) from None


def _open_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection (SQLite errors raised as they are)."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        conn.close()
        if _sqlite_code(exc) != "SQLITE_CANTOPEN" or not _read_only_fs(path):
            raise
        # Safe: nobody can write on a read-only file system. Commits left in a
        # -wal by a writer killed before the remount are not seen.
        conn = sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None)
    return conn


def _read_meta(conn: sqlite3.Connection, path: Path, action: str = "read the music index") -> dict[str, str]:
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            return {}
        if "meta" not in tables or "tracks" not in tables:
            raise IndexDatabaseError(f"{path} is an SQLite file but not an mgsv music index; not touching it")
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.Error as exc:
        raise _db_error(exc, path, action) from None
    version = int(meta.get("schema_version", "0"))
    if version > SCHEMA_VERSION:
        raise IndexDatabaseError(
            f"{path} was written by a newer mgsv (index schema {version}, this one reads {SCHEMA_VERSION}); upgrade mgsv"
        )
    if version < 1:
        raise IndexDatabaseError(f"{path} has no valid schema version; rebuild it with `mgsv index --force --index NEW`")
    return meta


def _open_for_writing(path: Path) -> tuple[sqlite3.Connection, dict[str, str]]:
    _make_folder(path.parent)
    conn = _connect(path, readonly=False)
    try:
        meta = _read_meta(conn, path, "open the music index")
        conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode: a crash of the process (SIGKILL) never loses a committed
        # track; only a power cut may drop the last few, and the file stays consistent.
        conn.execute("PRAGMA synchronous = NORMAL")
        if not meta:
            conn.execute("BEGIN IMMEDIATE")
            # Statement by statement: executescript() would commit the open transaction.
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            now = _now()
            for key, value in {
                "schema_version": str(SCHEMA_VERSION),
                "index_uuid": uuid.uuid4().hex,
                "generation": "0",
                "created_at": now,
            }.items():
                conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))
            conn.execute("COMMIT")
            meta = _read_meta(conn, path)
        else:
            conn.execute(_FAILED_TABLE)
    except sqlite3.Error as exc:
        conn.close()
        raise _db_error(exc, path, "write the music index") from None
    except BaseException:
        conn.close()
        raise
    return conn, meta


def damage_of(index: Path) -> str | None:
    """Why ``index`` is damaged (SQLite's words), or None when it is healthy, absent, or
    unusable for another reason (foreign, unreadable: the normal open reports those).

    Runs ``PRAGMA quick_check``: it reads the whole file (seconds for a large library),
    and finds damage in the middle of the file that ordinary reads may pass over.
    """
    if not index.is_file():
        return None
    try:
        conn = _open_readonly(index)
    except (sqlite3.Error, OSError) as exc:
        return first_line(exc) if isinstance(exc, sqlite3.Error) and _is_damage(exc, index) else None
    try:
        verdict = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
    except sqlite3.Error as exc:
        return first_line(exc) if _is_damage(exc, index) else None
    finally:
        conn.close()
    if verdict == ["ok"]:
        return None
    # Each row is one finding; the first may be a "*** in database main ***" heading.
    findings = [line.strip() for row in verdict for line in str(row).splitlines()
                if line.strip() and not line.startswith("***")]
    return "integrity check: " + (findings[0] if findings else "failed")


def move_aside(index: Path) -> Path:
    """Rename a damaged ``index`` (and its ``-wal``/``-shm``) to ``<name>.corrupt-<UTC time>``.

    The companions go first and keep their suffix after the new name, so the moved
    copy still opens with its WAL for recovery, and a failure half-way never leaves a
    stale WAL beside the path where the new index is about to be created. On failure
    the renames already made are undone and a ``StorageError`` is raised.
    """
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = index.with_name(f"{index.name}.corrupt-{stamp}")
    n = 1
    while any(os.path.lexists(str(target) + suffix) for suffix in ("", "-wal", "-shm")):
        n += 1  # two rebuilds within one second: never overwrite an earlier copy
        target = index.with_name(f"{index.name}.corrupt-{stamp}-{n}")
    done: list[tuple[Path, Path]] = []
    try:
        for suffix in ("-wal", "-shm", ""):
            source = Path(str(index) + suffix)
            if suffix and not source.exists():
                continue
            destination = Path(str(target) + suffix)
            os.rename(source, destination)
            done.append((source, destination))
    except OSError as exc:
        for source, destination in reversed(done):
            with contextlib.suppress(OSError):
                os.rename(destination, source)
        raise storage_error("move the damaged music index aside from", index, exc) from None
    return target


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection, *, bump_generation: bool) -> Iterator[int | None]:
    """One atomic write. ``bump_generation`` marks that stored tokens changed: the new
    generation is yielded, and rows whose tokens this write sets take it as ``token_stamp``
    (so caches can tell, track by track, which tokens they already hold)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        generation = None
        if bump_generation:
            generation = int(conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0]) + 1
        yield generation
        if bump_generation:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (str(generation),))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # a failed COMMIT may have ended it already
            with contextlib.suppress(sqlite3.Error):  # the first error is the one to report
                conn.execute("ROLLBACK")
        raise


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- indexing


@dataclass
class _Job:
    """A file that needs embedding."""

    path: Path
    size: int
    mtime_ns: int
    digest: str
    exists: bool  # a row with this path is already in the index
    info: Any = None  # media.MediaInfo from probing

    @property
    def audio_seconds(self) -> float:
        duration = float(getattr(self.info, "duration", 0.0) or 0.0)
        return max(1.0, min(duration, recipe.MAX_MUSIC_SECONDS))


EncodersArg = Any  # features.Encoders, or a zero-argument callable returning one


def index_music(
    music_dir: str | os.PathLike,
    index_path: str | os.PathLike | None = None,
    *,
    encoders: EncodersArg,
    prune: bool = False,
    force: bool = False,
    progress: IndexProgress | None = None,
    lock_timeout: float = 2.0,
    detect_beats: bool = True,
    encoder_kind: str | None = None,
    retry_failed: bool = False,
) -> IndexReport:
    """Bring the index at ``index_path`` up to date with the audio files under ``music_dir``.

    ``encoders`` is a ``features.Encoders`` or a zero-argument callable that loads one;
    a callable is only called when some file actually needs embedding, so a no-op
    re-index never loads a network. New and changed files are embedded (AST tokens
    ``[96, music_dim]`` + mask ``[96]``) and committed one transaction per track.
    ``prune`` drops indexed tracks whose files vanished (anywhere, not only under
    ``music_dir``, and failed files that are gone); ``force`` re-embeds everything,
    retries every failed file, and first moves a damaged index aside
    (``report.moved_aside``). Files that cannot be read or decoded are listed in
    ``report.failed``, remembered in the ``failed`` table and skipped; while unchanged
    they are not tried again (``report.skipped_failed``) unless ``retry_failed``.
    ``detect_beats`` stores each track's beat grid (``beats.BeatGrid`` JSON), also for
    tracks indexed without one.

    Raises ``IndexDatabaseError`` when another run holds the index, when the index is
    damaged (without ``force``) or not an mgsv index, or when ``encoders`` differ from
    those the index was built with (and ``force`` is off); ``encoder_kind``
    (``pretrained``/``tiny``), when given, lets that last check happen before any work
    or loading. Raises ``StorageError`` when the index, its folder or its lock cannot
    be written (read-only, full, ...); the index is then as it was. On
    KeyboardInterrupt the tracks committed so far stay; the exception is re-raised
    with ``.report`` attached.
    """
    root = Path(music_dir).expanduser()
    if not root.exists():
        raise UsageError(f"music folder {root} does not exist")
    index = Path(index_path).expanduser() if index_path else paths.default_index_path()
    files = scan_audio_files(root)
    if not files and not prune:  # a mistyped folder must not pass for an up-to-date library
        raise UsageError(no_audio_message(root))
    progress = progress or IndexProgress()
    report = IndexReport(index_path=index)
    with writer_lock(index, timeout=lock_timeout):
        if force:
            damage = damage_of(index)
            if damage is not None:
                report.moved_aside = move_aside(index)
                progress.note(f"the damaged index ({damage}) was moved aside to {report.moved_aside}; rebuilding")
        conn, meta = _open_for_writing(index)
        try:
            if encoder_kind is not None and not force:
                _check_encoder_kind(conn, meta, encoder_kind, index)
            _run_indexing(conn, meta, files, encoders, prune, force, retry_failed or force, progress, report,
                          detect_beats)
        except sqlite3.Error as exc:  # disk full, a damaged file...: the open transaction was rolled back
            raise _db_error(exc, index, "write the music index") from None
        except OSError as exc:  # anything the handled cases (unreadable music files) did not catch
            where = exc.filename if exc.filename is not None else index
            raise storage_error("write the music index" if str(where) == str(index) else "use", where, exc) from None
        except KeyboardInterrupt as exc:
            report.interrupted = True
            with contextlib.suppress(sqlite3.Error):
                report.n_tracks = _count_tracks(conn)
            exc.report = report  # type: ignore[attr-defined]
            raise
        finally:
            conn.close()
    return report


def _count_tracks(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM tracks").fetchone()[0]


def _run_indexing(conn, meta, files, encoders, prune, force, retry, progress, report, detect_beats) -> None:
    report.n_scanned = len(files)
    progress.stage("checking", len(files))
    if force:
        stored_rows = {}
    else:
        stored_rows = {r[0]: r[1:] for r in conn.execute("SELECT path, size, mtime_ns, content_hash FROM tracks")}
    failures = _Failures(conn, retry, progress, report)
    jobs = _plan(conn, files, stored_rows, force, failures, progress, report)
    if meta.get("encoder_id") and not force:
        # Before loading any network: a renamed or copied file needs none. Before pruning:
        # the vanished old name of a renamed file is where its tokens come from.
        _reuse_identical(conn, jobs, meta["encoder_id"], failures, report)
    if jobs:
        if callable(encoders) and not hasattr(encoders, "embed_tracks"):
            progress.note("loading encoders")
            encoders = encoders()
        _check_encoder_id(conn, meta, encoders.encoder_id, force, report.index_path)
        _embed_jobs(conn, jobs, encoders, failures, progress, report, detect_beats)
    _prune_or_count_missing(conn, prune, report)
    if detect_beats:
        _fill_missing_beats(conn, progress, report)
    report.n_tracks = _count_tracks(conn)


def _signature(path: Path) -> tuple[int | None, int | None]:
    """(size, mtime_ns) of the file, of the link itself when its target is unreachable,
    (None, None) when neither can be read: what tells a failed file "unchanged"."""
    for stat in (os.stat, os.lstat):
        try:
            info = stat(path)
            return info.st_size, info.st_mtime_ns
        except OSError:
            continue
    return None, None


def unreadable_reason(path: Path, exc: OSError) -> str:
    """Why a music file cannot be read, in words an editor can act on (one line)."""
    if os.path.islink(path):
        if exc.errno == errno.ELOOP:
            return "symbolic link loop: it never reaches a file"
        if exc.errno == errno.ENOENT:
            with contextlib.suppress(OSError):
                return f"broken symbolic link: its target {os.readlink(path)} does not exist"
    return f"cannot read: {exc.strerror or exc}"


class _Failures:
    """The ``failed`` table during one run: what failed before, and what fails now."""

    def __init__(self, conn, retry: bool, progress: IndexProgress, report: IndexReport):
        self.conn, self.retry, self.progress, self.report = conn, retry, progress, report
        self.known = {r[0]: (r[1], r[2]) for r in conn.execute("SELECT path, size, mtime_ns FROM failed")}

    def skip(self, key: str, signature: tuple[int | None, int | None]) -> bool:
        """True (and counted) when ``key`` failed before and is unchanged: not tried again."""
        if self.retry or self.known.get(key, ()) != signature:
            return False
        self.report.skipped_failed += 1
        return True

    def add(self, key: str, signature: tuple[int | None, int | None], reason: str) -> None:
        self.report.failed.append((key, reason))
        self.progress.failed(key, reason)
        with _transaction(self.conn, bump_generation=False):
            self.conn.execute(
                "INSERT INTO failed(path, size, mtime_ns, reason, failed_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(path) DO UPDATE SET size=excluded.size, mtime_ns=excluded.mtime_ns, "
                "reason=excluded.reason, failed_at=excluded.failed_at",
                (key, signature[0], signature[1], reason, _now()),
            )
        self.known[key] = signature

    def forget(self, key: str) -> None:
        """``key`` is indexed fine now (inside the caller's transaction when there is one)."""
        if key in self.known:
            del self.known[key]
            self.conn.execute("DELETE FROM failed WHERE path = ?", (key,))


def _plan(conn, files, stored_rows, force, failures: _Failures, progress, report) -> list[_Job]:
    """Classify each file: unchanged (skip), touched (new mtime only), failed before and
    unchanged (skip), failing now, or a job to embed."""
    jobs = []
    for path in files:
        key = str(path)
        progress.advance("checking", 1, key)
        try:
            stat = path.stat()
        except OSError as exc:
            signature = _signature(path)
            if not failures.skip(key, signature):
                failures.add(key, signature, unreadable_reason(path, exc))
            continue
        signature = (stat.st_size, stat.st_mtime_ns)
        stored = stored_rows.get(key)
        if stored is not None and stored[0] == stat.st_size and stored[1] == stat.st_mtime_ns:
            report.unchanged += 1
            if key in failures.known:  # back to the content that indexed fine (a restored backup)
                with _transaction(conn, bump_generation=False):
                    failures.forget(key)
            continue
        if failures.skip(key, signature):
            continue
        if stat.st_size == 0:
            failures.add(key, signature, "empty file (0 bytes)")
            continue
        try:
            digest = content_hash(path)
        except OSError as exc:
            failures.add(key, signature, unreadable_reason(path, exc))
            continue
        if stored is not None and stored[0] == stat.st_size and stored[2] == digest:
            with _transaction(conn, bump_generation=False):
                conn.execute("UPDATE tracks SET mtime_ns = ? WHERE path = ?", (stat.st_mtime_ns, key))
                failures.forget(key)
            report.unchanged += 1
            report.touched += 1
            continue
        exists = key in stored_rows or (
            force and conn.execute("SELECT 1 FROM tracks WHERE path = ?", (key,)).fetchone() is not None
        )
        jobs.append(_Job(path, stat.st_size, stat.st_mtime_ns, digest, exists))
    # A broken link whose target is back is scanned under the target's path now (indexed
    # or failed there): the failure remembered under the link's own path is outdated.
    scanned = {str(p) for p in files}
    mended = [k for k in failures.known if k not in scanned and os.path.islink(k) and os.path.exists(k)]
    if mended:
        with _transaction(conn, bump_generation=False):
            for key in mended:
                failures.forget(key)
    return jobs


def _prune_or_count_missing(conn, prune: bool, report: IndexReport) -> None:
    if prune:
        # lexists: a broken link that is still there is still a failed file of the library.
        gone = [p for (p,) in conn.execute("SELECT path FROM failed") if not os.path.lexists(p)]
        if gone:
            with _transaction(conn, bump_generation=False):
                conn.executemany("DELETE FROM failed WHERE path = ?", [(p,) for p in gone])
            report.forgotten_failed = len(gone)
    vanished = [p for (p,) in conn.execute("SELECT path FROM tracks") if not os.path.exists(p)]
    if not vanished:
        return
    if not prune:
        report.missing = len(vanished)
        return
    with _transaction(conn, bump_generation=True):
        conn.executemany("DELETE FROM tracks WHERE path = ?", [(p,) for p in vanished])
    report.pruned = len(vanished)


def _check_encoder_id(conn, meta, encoder_id: str, force: bool, index: Path) -> None:
    stored = meta.get("encoder_id")
    if stored == encoder_id:
        return
    n_tracks = _count_tracks(conn)
    if n_tracks and not force:
        raise IndexDatabaseError(
            f"{index} holds {n_tracks} tracks embedded with encoders '{stored}', not '{encoder_id}'; "
            "re-run with --force to rebuild it with these encoders, or use --index for a separate index"
        )
    # The tokens of different encoders live in different spaces: start afresh.
    with _transaction(conn, bump_generation=True):
        conn.execute("DELETE FROM tracks")
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('encoder_id', ?)", (encoder_id,))
    meta["encoder_id"] = encoder_id


def encoder_kind_of(encoder_id: str | None) -> str:
    """``tiny`` or ``pretrained``: the ``--encoders`` choice that produces ``encoder_id``."""
    return "tiny" if encoder_id and encoder_id.startswith("tiny") else "pretrained"


def _check_encoder_kind(conn, meta, kind: str, index: Path) -> None:
    stored = meta.get("encoder_id")
    if stored and encoder_kind_of(stored) != kind and _count_tracks(conn):
        raise IndexDatabaseError(
            f"{index} holds tracks embedded with {encoder_kind_of(stored)} encoders ('{stored}'), not {kind} ones; "
            f"re-run with --encoders {encoder_kind_of(stored)}, or with --force to rebuild it with {kind} encoders, "
            "or use --index for a separate index"
        )


def _reuse_identical(conn, jobs: list[_Job], encoder_id: str, failures: _Failures, report: IndexReport) -> None:
    """Copy tokens from a stored track with the same content (a renamed or copied file)."""
    remaining = []
    for job in jobs:
        source = conn.execute(
            "SELECT id, duration FROM tracks WHERE content_hash = ? AND size = ? AND encoder_id = ? AND path != ? "
            "LIMIT 1",
            (job.digest, job.size, encoder_id, str(job.path)),
        ).fetchone()
        if source is None:
            remaining.append(job)
            continue
        with _transaction(conn, bump_generation=True) as stamp:
            conn.execute(
                f"""INSERT INTO tracks({_TRACK_COLUMNS})
                    SELECT ?, ?, ?, content_hash, duration, sample_rate, channels, title, artist, album,
                           encoder_id, n_windows, feat_dim, feats, mask, beats, ?, ?
                    FROM tracks WHERE id = ?
                    ON CONFLICT(path) DO UPDATE SET {_UPSERT_UPDATES}""",
                (str(job.path), job.size, job.mtime_ns, _now(), stamp, source[0]),
            )
            failures.forget(str(job.path))
        report.reused += 1
        if float(source[1]) > recipe.MAX_MUSIC_SECONDS:
            report.long_tracks += 1
        if job.exists:
            report.updated += 1
        else:
            report.added += 1
    jobs[:] = remaining


def _embed_jobs(conn, jobs: list[_Job], encoders, failures: _Failures, progress: IndexProgress,
                report: IndexReport, detect_beats) -> None:
    from mgsv_cli.media import ffmpeg as media

    probed = []
    progress.stage("probing", len(jobs))
    for job in jobs:
        progress.advance("probing", 1, str(job.path))
        try:
            job.info = media.probe(job.path)
        except MgsvError as exc:
            failures.add(str(job.path), (job.size, job.mtime_ns), first_line(exc))
            continue
        if not float(getattr(job.info, "duration", 0.0) or 0.0) > 0:
            failures.add(str(job.path), (job.size, job.mtime_ns), "no audio (zero duration)")
            continue
        probed.append(job)
    if not probed:
        return
    progress.stage("embedding", sum(j.audio_seconds for j in probed))
    detect = beat_detector() if detect_beats else None
    by_path = {str(j.path): j for j in probed}
    for position, result in enumerate(encoders.embed_tracks([j.path for j in probed])):
        path, feats, mask, duration, error = _unpack_track_result(result, probed, position)
        job = by_path[path]
        if error is not None:
            failures.add(path, (job.size, job.mtime_ns), error)
            progress.advance("embedding", job.audio_seconds, path)
            continue
        beats = beats_json(detect, job.path) if detect else None
        _store_track(conn, job, feats, mask, duration, encoders.encoder_id, beats, failures)
        if beats is not None:
            report.beats_added += 1
        if float(duration) > recipe.MAX_MUSIC_SECONDS:
            report.long_tracks += 1
        status = "updated" if job.exists else "added"
        setattr(report, status, getattr(report, status) + 1)
        progress.advance("embedding", job.audio_seconds, path)


def _unpack_track_result(result, jobs: Sequence[_Job], position: int):
    """(path, feats, mask, duration, error) from one item of ``Encoders.embed_tracks``.

    Accepts an object with ``path``/``feats``/``mask``/``duration``/``error`` attributes,
    or a ``(path, features_or_exception)`` pair.
    """
    if isinstance(result, tuple) and len(result) == 2:
        path, payload = result
    else:
        path, payload = getattr(result, "path", None), result
    path = str(Path(path).resolve()) if path is not None else str(jobs[position].path)
    error = getattr(payload, "error", None)
    if isinstance(payload, BaseException):
        error = payload
    if error is not None:
        return path, None, None, None, error if isinstance(error, str) else first_line(error)
    return path, payload.feats, payload.mask, float(payload.duration), None


def _to_numpy(x):
    import numpy as np

    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def _store_track(conn, job: _Job, feats, mask, duration, encoder_id: str, beats: str | None,
                 failures: _Failures | None = None) -> None:
    import numpy as np

    feats = _to_numpy(feats).astype("<f2")
    mask = (_to_numpy(mask) > 0).astype(np.uint8)
    if feats.ndim != 2 or mask.shape != (feats.shape[0],):
        raise IndexDatabaseError(f"encoder returned tokens of shape {feats.shape} with mask {mask.shape} for {job.path}")
    tags = track_tags(job.info)
    row = (
        str(job.path), job.size, job.mtime_ns, job.digest, float(duration),
        _int_or_none(getattr(job.info, "sample_rate", None)), _int_or_none(getattr(job.info, "channels", None)),
        tags.get("title"), tags.get("artist"), tags.get("album"),
        encoder_id, int(feats.shape[0]), int(feats.shape[1]), feats.tobytes(), mask.tobytes(), beats, _now(),
    )
    placeholders = ", ".join("?" * (len(row) + 1))
    with _transaction(conn, bump_generation=True) as stamp:
        conn.execute(
            f"INSERT INTO tracks({_TRACK_COLUMNS}) VALUES ({placeholders}) ON CONFLICT(path) DO UPDATE SET {_UPSERT_UPDATES}",
            (*row, stamp),
        )
        if failures is not None:
            failures.forget(str(job.path))


def _int_or_none(value) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def track_tags(info) -> dict[str, str]:
    """Title, artist and album from a probe result, when present."""
    tags = getattr(info, "tags", None) or {}
    wanted = {}
    for key, value in dict(tags).items():
        k = str(key).lower()
        if k in ("title", "artist", "album") and str(value).strip():
            wanted[k] = str(value).strip()
    return wanted


@dataclass
class PrecomputedTrack:
    """A track whose AST tokens were computed elsewhere: feats [W, D], mask [W] (numpy or torch)."""

    path: str
    feats: Any
    mask: Any
    duration: float
    title: str | None = None
    artist: str | None = None
    album: str | None = None


def import_tokens(index_path: str | os.PathLike | None, tracks: Iterable[PrecomputedTrack], *, encoder_id: str,
                  lock_timeout: float = 2.0) -> int:
    """Add (or replace) tracks with precomputed tokens, without embedding; returns how many.

    For feature sets made by the same encoders elsewhere (another machine, a dataset
    release) and for benchmarks. Files that exist are hashed like indexed files; for
    others the content hash is that of the tokens. Same one-encoder rule, and the same
    errors, as :func:`index_music`.
    """
    index = Path(index_path).expanduser() if index_path else paths.default_index_path()
    with writer_lock(index, timeout=lock_timeout):
        conn, meta = _open_for_writing(index)
        try:
            return _import(conn, meta, index, tracks, encoder_id)
        except sqlite3.Error as exc:
            raise _db_error(exc, index, "write the music index") from None
        finally:
            conn.close()


def _import(conn, meta, index: Path, tracks: Iterable[PrecomputedTrack], encoder_id: str) -> int:
    import numpy as np

    n_written = 0
    _check_encoder_id(conn, meta, encoder_id, False, index)
    for track in tracks:
        feats = _to_numpy(track.feats).astype("<f2")
        path = Path(track.path)
        if path.is_file():
            stat = path.stat()
            size, mtime_ns, digest = stat.st_size, stat.st_mtime_ns, content_hash(path)
        else:
            size, mtime_ns = 0, 0
            digest = "tokens:" + hashlib.blake2b(feats.tobytes(), digest_size=16).hexdigest()
        tags = {"title": track.title, "artist": track.artist, "album": track.album}
        info = _PrecomputedInfo(tags={k: v for k, v in tags.items() if v})
        job = _Job(path, size, mtime_ns, digest, exists=False, info=info)
        _store_track(conn, job, feats, np.asarray(_to_numpy(track.mask)), track.duration, encoder_id, None)
        n_written += 1
    return n_written


@dataclass
class _PrecomputedInfo:
    tags: dict[str, str]
    sample_rate: int | None = None
    channels: int | None = None


# ---------------------------------------------------------------- beats (optional module)


def beat_detector() -> Callable | None:
    """``beats.beats_of_file`` when that module is installed, else None (beats stay NULL)."""
    try:
        from mgsv_cli.media.beats import beats_of_file
    except ImportError:
        return None
    return beats_of_file


def beats_json(detect, path: Path) -> str | None:
    """The track's beat grid (``beats.BeatGrid.to_json``), or None when it cannot be
    computed: beats are an optional refinement, never a reason to fail a track."""
    try:
        return detect(path).to_json()
    except MgsvError:
        return None


def _fill_missing_beats(conn, progress: IndexProgress, report: IndexReport) -> None:
    """Give tracks indexed before beat detection existed their beat grid (no re-embedding)."""
    detect = beat_detector()
    if detect is None:
        return
    pending = [p for (p,) in conn.execute("SELECT path FROM tracks WHERE beats IS NULL")]
    pending = [p for p in pending if os.path.exists(p)]
    if not pending:
        return
    progress.stage("beats", len(pending))
    for path in pending:
        progress.advance("beats", 1, path)
        beats = beats_json(detect, Path(path))
        if beats is None:
            continue
        with _transaction(conn, bump_generation=False):
            conn.execute("UPDATE tracks SET beats = ? WHERE path = ?", (beats, path))
        report.beats_added += 1


# ---------------------------------------------------------------- reading


def _readable(method):
    """Turn SQLite failures of a read into one line: damaged (names ``--force``), I/O, other."""
    import functools

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise _db_error(exc, self.path, "read the music index") from None

    return wrapper


class MusicIndex:
    """A read-only view of an index: track list, meta, and tokens for the token cache."""

    def __init__(self, path: Path, conn: sqlite3.Connection, meta: dict[str, str]):
        self.path = path
        self._conn = conn
        self.meta = meta

    @property
    def encoder_id(self) -> str | None:
        return self.meta.get("encoder_id")

    @property
    def generation(self) -> int:
        return int(self.meta.get("generation", "0"))

    @property
    def index_uuid(self) -> str:
        return self.meta.get("index_uuid", "")

    @property
    def content_version(self) -> str:
        """Changes whenever any stored token changes (for caches derived from the tokens)."""
        return f"{self.index_uuid}:{self.generation}:{self.encoder_id}"

    @_readable
    def __len__(self) -> int:
        return _count_tracks(self._conn)

    @_readable
    def tracks(self) -> list[TrackInfo]:
        """All tracks, ordered by id (the order of :meth:`iter_tokens`)."""
        rows = self._conn.execute(
            "SELECT id, path, duration, title, artist, album, beats, token_stamp FROM tracks ORDER BY id"
        ).fetchall()
        return [
            TrackInfo(r[0], r[1], float(r[2]), r[3], r[4], r[5], json.loads(r[6]) if r[6] else None, int(r[7]))
            for r in rows
        ]

    def iter_tokens(self, chunk: int = 256) -> Iterator[tuple[list[int], Any, Any]]:
        """Yield ``(ids, feats float32 [n, W, D], mask float32 [n, W])`` numpy chunks, ordered by id."""
        import numpy as np

        cursor = self._conn.execute("SELECT id, n_windows, feat_dim, feats, mask FROM tracks ORDER BY id")
        while rows := self._fetch(cursor, chunk):
            ids = [r[0] for r in rows]
            feats = np.stack(
                [np.frombuffer(r[3], dtype="<f2").reshape(r[1], r[2]) for r in rows]
            ).astype(np.float32)
            mask = np.stack([np.frombuffer(r[4], dtype=np.uint8) for r in rows]).astype(np.float32)
            yield ids, feats, mask

    @_readable
    def _fetch(self, cursor, n: int) -> list:
        return cursor.fetchmany(n)

    @_readable
    def failed_files(self) -> list[FailedFile]:
        """Files the index could not take, by path; empty for an index older than the table."""
        if not self._conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='failed'").fetchone():
            return []
        return [FailedFile(r[0], r[1], r[2], r[3], r[4]) for r in
                self._conn.execute("SELECT path, reason, size, mtime_ns, failed_at FROM failed ORDER BY path")]

    @_readable
    def begin_snapshot(self) -> None:
        """Pin a read snapshot: every later read sees the index as it is now, even while
        ``mgsv index`` commits (WAL). Meta is re-read inside the snapshot."""
        self._conn.execute("BEGIN")
        self.meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())

    @_readable
    def tokens_for(self, ids: Sequence[int]) -> tuple[Any, Any]:
        """Stored AST tokens of tracks ``ids``, in that order: feats float32 [K, W, D], mask float32 [K, W]."""
        import numpy as np

        marks = ", ".join("?" * len(ids))
        rows = {
            r[0]: r[1:]
            for r in self._conn.execute(
                f"SELECT id, n_windows, feat_dim, feats, mask FROM tracks WHERE id IN ({marks})", list(ids)
            )
        }
        missing = [i for i in ids if i not in rows]
        if missing:
            raise IndexDatabaseError(f"tracks {missing} vanished from {self.path}; run the command again")
        feats = np.stack([np.frombuffer(rows[i][2], dtype="<f2").reshape(rows[i][0], rows[i][1]) for i in ids])
        mask = np.stack([np.frombuffer(rows[i][3], dtype=np.uint8) for i in ids])
        return feats.astype(np.float32), mask.astype(np.float32)

    @_readable
    def integrity_check(self) -> str:
        """SQLite's own verdict on the file ("ok" when healthy)."""
        return self._conn.execute("PRAGMA integrity_check").fetchone()[0]

    @_readable
    def beat_count(self) -> int:
        """Tracks that have a beat grid."""
        return self._conn.execute("SELECT count(*) FROM tracks WHERE beats IS NOT NULL").fetchone()[0]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "MusicIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_index(index_path: str | os.PathLike | None = None, *, require_tracks: bool = True) -> MusicIndex:
    """Open the index read-only; a missing or (with ``require_tracks``) empty index is an error."""
    index = Path(index_path).expanduser() if index_path else paths.default_index_path()
    if not index.is_file():
        raise IndexDatabaseError(f"no music index at {index}: run `mgsv index MUSIC_DIR` first")
    conn = _connect(index, readonly=True)
    try:
        meta = _read_meta(conn, index)
        if not meta:
            raise IndexDatabaseError(f"{index} is not an mgsv music index: run `mgsv index MUSIC_DIR` first")
        if require_tracks and _count_tracks(conn) == 0:
            raise IndexDatabaseError(f"the music index {index} is empty: run `mgsv index MUSIC_DIR` first")
    except sqlite3.Error as exc:
        conn.close()
        raise _db_error(exc, index, "read the music index") from None
    except BaseException:
        conn.close()
        raise
    return MusicIndex(index, conn, meta)


def failed_files(index_path: str | os.PathLike | None = None, *, under: str | os.PathLike | None = None
                 ) -> tuple[Path, list[FailedFile]]:
    """(the index, the files it could not take), those under the folder ``under`` only
    when given: what ``mgsv index --failed`` lists."""
    with open_index(index_path, require_tracks=False) as index:
        found = index.failed_files()
    if under is not None:
        root = Path(under).expanduser()
        prefixes = {str(Path(os.path.realpath(root))), str(root.absolute())}
        found = [f for f in found if any(f.path == p or f.path.startswith(p.rstrip(os.sep) + os.sep)
                                         for p in prefixes)]
    return index.path, found


@dataclass(frozen=True)
class IndexHealth:
    """What ``mgsv doctor`` says about an index: counts, and damage (None when healthy)."""

    n_tracks: int
    n_beats: int
    n_failed: int
    damage: str | None


def check_index(index_path: str | os.PathLike) -> IndexHealth:
    """Open the index read-only, count its tracks and failed files, and run SQLite's
    ``quick_check`` (it reads the whole file). Raises the errors of :func:`open_index`
    (damaged, foreign, unreadable) when it cannot even be read."""
    index = Path(index_path).expanduser()
    with open_index(index, require_tracks=False) as opened:
        counts = len(opened), opened.beat_count(), len(opened.failed_files())
    return IndexHealth(*counts, damage=damage_of(index))


def stored_beats(track_path: str | os.PathLike, index_path: str | os.PathLike | None = None) -> dict | None:
    """The beat grid the index holds for ``track_path`` (``beats.BeatGrid.to_dict()`` form),
    or None when there is no index, the track is not in it, or its beats were not found.

    For `mgsv render` to snap a cut's start onto a beat without decoding the track again.
    """
    try:
        index = open_index(index_path, require_tracks=False)
    except MgsvError:  # no index, damaged, unreadable: snapping then decodes the track itself
        return None
    with index:
        try:
            row = index._conn.execute(
                "SELECT beats FROM tracks WHERE path = ?", (str(Path(track_path).expanduser().resolve()),)
            ).fetchone()
        except sqlite3.Error:
            return None
    return json.loads(row[0]) if row and row[0] else None
