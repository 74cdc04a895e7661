"""SQLite plumbing of the music index: the schema, connections, and what an SQLite error means.

Design choices (the store's own are in ``sqlite_store.py``):

* **WAL, one transaction per track.** The index runs in WAL mode and every embedded track
  is committed on its own, so Ctrl-C or SIGKILL loses at most the track in flight and the
  next run resumes; SQLite's WAL guarantees a killed writer never corrupts the file.
  ``synchronous = NORMAL``: a crash of the process never loses a committed track; only a
  power cut may drop the last few, and the file stays consistent.
* **Additive schema changes keep schema_version 1.** The ``failed`` table is created with
  ``CREATE TABLE IF NOT EXISTS`` on every writer open, so an index written by an older
  mgsv gains it on its next write, and readers treat a missing table as empty. Bumping
  the version would make older mgsv refuse an index it can still read.
* **A damaged index is moved aside, never deleted.** SQLite reports damage as
  ``SQLITE_CORRUPT``/``SQLITE_NOTADB`` (or undecodable text): every reader and writer turns
  it into one message naming the fix, ``mgsv index MUSIC_DIR --force``. Only that command
  acts on it: it runs ``PRAGMA quick_check`` first (damage in the middle of the file can
  hide from ordinary reads) and renames the damaged file, with its ``-wal`` and ``-shm``
  (renamed first, so no stale WAL is ever paired with the new file), to
  ``<name>.corrupt-<UTC timestamp>``, then rebuilds. A file without SQLite's header is not
  taken for a damaged index: it may be anything of the user's, so it is refused.
* **OS failures are one line.** Read-only file system, full disk, quota, I/O errors, long
  names and permissions, met as ``OSError`` (folder, lock file) or as SQLite's
  ``READONLY``/``FULL``/``IOERR``/``CANTOPEN``, become a ``StorageError`` naming the path
  and the cause; SQLite's transactions guarantee the existing index is untouched. A WAL
  index on a read-only file system cannot be opened the usual way (SQLite needs its
  ``-shm``), so readers then open it ``immutable`` (nothing can write there).
* **Structure** (bars, sections: ``media.structure``) is a nullable ``tracks.structure``
  JSON column added the same way (``ALTER TABLE ... ADD COLUMN`` on a writer's open);
  readers of an index without it see no structure, and the next index run fills it in.
* **Cache key.** Every change to the stored tokens bumps ``generation`` in the meta table;
  with the index's random ``index_uuid`` it tells caches derived from the tokens, track by
  track (``token_stamp``), what is stale.

Tokens are stored as little-endian float16 ``[n_windows, feat_dim]`` blobs, the mask as
uint8 ``[n_windows]`` (1 = valid window).
"""
from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from mgsv_cli import paths
from mgsv_cli.errors import IndexDatabaseError, MgsvError, StorageError, first_line, os_error_cause, storage_error
from mgsv_cli.index.locking import make_folder

SCHEMA_VERSION = 1

SCHEMA = """
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
    token_stamp  INTEGER NOT NULL,
    structure    TEXT
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
FAILED_TABLE = SCHEMA[SCHEMA.index("CREATE TABLE IF NOT EXISTS failed"):].strip().rstrip(";")

TRACK_COLUMNS = (
    "path, size, mtime_ns, content_hash, duration, sample_rate, channels, title, artist, album, "
    "encoder_id, n_windows, feat_dim, feats, mask, beats, structure, indexed_at, token_stamp"
)
# An upsert keyed by path keeps the row's id: a re-embedded file stays the same track.
UPSERT_UPDATES = ", ".join(f"{c.strip()}=excluded.{c.strip()}" for c in TRACK_COLUMNS.split(",")[1:])


_SQLITE_MAGIC = b"SQLite format 3\x00"


def sqlite_code(exc: sqlite3.Error) -> str:
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


def is_damage(exc: sqlite3.Error, path: Path) -> bool:
    """Is ``exc`` SQLite finding the file damaged? ``NOTADB`` only counts when the file
    starts with SQLite's header: without it, the file was never a database (a user's
    file given as --index), and must not be taken for a broken index."""
    code = sqlite_code(exc)
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


def db_error(exc: sqlite3.Error, path: Path, action: str) -> MgsvError:
    """One-line typed error for a SQLite failure on ``path`` while trying to ``action`` it:
    damage (exit 8, names the fix), storage (exit 5, names the cause), busy, or other."""
    code = sqlite_code(exc)
    if is_damage(exc, path):
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


def connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    """Open ``path``; autocommit mode so transactions are explicit ``BEGIN``/``COMMIT``.

    Read-only opens touch the file once, so that a WAL index on a read-only file system
    (which SQLite cannot open without creating its ``-shm``) is reopened ``immutable``.
    """
    try:
        conn = open_readonly(path) if readonly else sqlite3.connect(str(path), isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 5000")
        return conn
    except sqlite3.Error as exc:
        raise db_error(exc, path, "open the music index") from None
    except OSError as exc:  # resolving the path (a name too long, a folder without permission)
        raise storage_error("open the music index", path, exc) from None


def open_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection (SQLite errors raised as they are)."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        conn.close()
        if sqlite_code(exc) != "SQLITE_CANTOPEN" or not _read_only_fs(path):
            raise
        # Safe: nobody can write on a read-only file system. Commits left in a
        # -wal by a writer killed before the remount are not seen.
        conn = sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None)
    return conn


def read_meta(conn: sqlite3.Connection, path: Path, action: str = "read the music index") -> dict[str, str]:
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            return {}
        if "meta" not in tables or "tracks" not in tables:
            raise IndexDatabaseError(f"{path} is an SQLite file but not an mgsv music index; not touching it")
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.Error as exc:
        raise db_error(exc, path, action) from None
    version = int(meta.get("schema_version", "0"))
    if version > SCHEMA_VERSION:
        raise IndexDatabaseError(
            f"{path} was written by a newer mgsv (index schema {version}, this one reads {SCHEMA_VERSION}); "
            "upgrade mgsv"
        )
    if version < 1:
        raise IndexDatabaseError(
            f"{path} has no valid schema version; rebuild it with `mgsv index --force --index NEW`"
        )
    return meta


def open_for_writing(path: Path) -> tuple[sqlite3.Connection, dict[str, str]]:
    make_folder(path.parent)
    conn = connect(path, readonly=False)
    try:
        meta = read_meta(conn, path, "open the music index")
        conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode: a crash of the process (SIGKILL) never loses a committed
        # track; only a power cut may drop the last few, and the file stays consistent.
        conn.execute("PRAGMA synchronous = NORMAL")
        if not meta:
            conn.execute("BEGIN IMMEDIATE")
            # Statement by statement: executescript() would commit the open transaction.
            for statement in filter(str.strip, SCHEMA.split(";")):
                conn.execute(statement)
            for key, value in {
                "schema_version": str(SCHEMA_VERSION),
                "index_uuid": uuid.uuid4().hex,
                "generation": "0",
                "created_at": now(),
            }.items():
                conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))
            conn.execute("COMMIT")
            meta = read_meta(conn, path)
        else:
            conn.execute(FAILED_TABLE)
            add_structure_column(conn)
    except sqlite3.Error as exc:
        conn.close()
        raise db_error(exc, path, "write the music index") from None
    except BaseException:
        conn.close()
        raise
    return conn, meta


def has_column(conn: sqlite3.Connection, table: str, column: str) -> bool:
    return any(row[1] == column for row in conn.execute(f"PRAGMA table_info({table})").fetchall())


def add_structure_column(conn: sqlite3.Connection) -> None:
    """An index written before tracks had a structure (bars, sections) gains the column on its
    next write, like the ``failed`` table: additive, schema_version stays 1."""
    if not has_column(conn, "tracks", "structure"):
        conn.execute("ALTER TABLE tracks ADD COLUMN structure TEXT")


def damage_of(index: Path) -> str | None:
    """Why ``index`` is damaged (SQLite's words), or None when it is healthy, absent, or
    unusable for another reason (foreign, unreadable: the normal open reports those).

    Runs ``PRAGMA quick_check``: it reads the whole file (seconds for a large library),
    and finds damage in the middle of the file that ordinary reads may pass over.
    """
    if not index.is_file():
        return None
    try:
        conn = open_readonly(index)
    except (sqlite3.Error, OSError) as exc:
        return first_line(exc) if isinstance(exc, sqlite3.Error) and is_damage(exc, index) else None
    try:
        verdict = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
    except sqlite3.Error as exc:
        return first_line(exc) if is_damage(exc, index) else None
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
def transaction(conn: sqlite3.Connection, *, bump_generation: bool) -> Iterator[int | None]:
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


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
