"""The SQLite track store: one file holding an editor's library (the default index).

Design choices (SQLite's own plumbing is in ``sqlite_db.py``):

* **One row per file.** A track is the file at its resolved path: an upsert keyed by path
  keeps the row's id, so a re-embedded file stays the same track. A renamed or copied file
  gets its own row, the tokens copied from the identical content (:meth:`reuse`).
* **One writer at a time.** An indexing run holds an exclusive ``flock`` on
  ``<index>.lock`` for its whole length (:meth:`writing`); a second run waits briefly, then
  fails with one line. Readers never take the lock: WAL lets them read a consistent
  snapshot while a writer works, and :meth:`pin` holds one snapshot for a whole suggestion.
* **One encoder per index.** Tokens made by different encoders live in different spaces:
  the index records its encoder id and refuses to mix (:meth:`set_encoders`).
* **Failed files are remembered** in the ``failed`` table with their size, mtime and
  reason, so a rerun does not try an unchanged broken file again; readers of an index
  older than the table see none.
* **Files are keyed by their resolved path**, except a broken symbolic link, which has no
  target: it is remembered by its path in the library, the name the user sees.
* **Derived data per checkpoint lives beside**, in
  ``cache_dir()/track_derived/<index uuid>-<fingerprint>.sqlite``: one row per track with
  the ``token_stamp`` it was computed from, so a re-embedded track shows up in
  :meth:`derived_missing` again. It is a cache: deleting it costs one re-encode, and an
  index on a read-only mount still gets one. A score offset column (NULL for checkpoints
  without a querybank) is added to caches written before it existed. Its keys are float32: an
  editor's library is scored as exactly as the model scores it (a catalog's Lance store keeps
  float16 or int8 for memory); caches of float16 keys (format 1) are left behind, never read.
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from mgsv_cli import paths
from mgsv_cli.errors import DataError, IndexDatabaseError, storage_error
from mgsv_cli.index import sqlite_db as db
from mgsv_cli.index.locking import writer_lock
from mgsv_cli.index.records import (
    TAG_KEYS,
    DerivedRows,
    FailedFile,
    FileState,
    NewTrack,
    StoreHealth,
    TrackRecord,
    check_derived,
    pad_rows,
    to_numpy,
    valid_length,
)
from mgsv_cli.index.trackstore import TrackStore

_DERIVED_SCHEMA = """
CREATE TABLE IF NOT EXISTS derived (
    track_id    INTEGER PRIMARY KEY,
    token_stamp INTEGER NOT NULL,
    n_windows   INTEGER NOT NULL,
    dim         INTEGER NOT NULL,
    pooled      BLOB NOT NULL,
    keys        BLOB NOT NULL,
    mask        BLOB NOT NULL,
    offset      REAL  -- the model's score offset (made-plus querybank), NULL for models without
)
"""
_RECORD_COLUMNS = "id, path, content_hash, duration, title, artist, album, token_stamp"
_PARAMETERS = 900  # ids per IN (...) list: SQLite caps a statement's parameters


def resolve_location(location: str | os.PathLike) -> str:
    """The key a file is stored under: its resolved path (a broken link keeps its own path)."""
    path = Path(location).expanduser()
    try:
        return str(Path(os.path.realpath(path, strict=True)))
    except OSError:  # dangling link, link loop: nothing to resolve to
        return str(Path(os.path.realpath(path.parent)) / path.name)


def _record(row) -> TrackRecord:
    tags = {k: v for k, v in zip(TAG_KEYS, row[4:7]) if v}
    return TrackRecord(int(row[0]), row[1], row[2], float(row[3]), tags, int(row[7]))


class SqliteTrackStore(TrackStore):
    """:class:`~mgsv_cli.index.backend.TrackStore` over one SQLite index file."""

    commit_size = 1

    def __init__(self, path: Path, conn: sqlite3.Connection, meta: dict[str, str], *, lock_timeout: float = 2.0):
        self.path = path
        self.uri = str(path)
        self._conn = conn  # read-only; pinned snapshots live here
        self.meta = meta
        self._lock_timeout = lock_timeout
        self._write: tuple[sqlite3.Connection, dict[str, str]] | None = None  # during writing()
        self._read_stamps: dict[int, int] = {}  # token_stamp of tokens handed out by tokens_for

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike | None = None, *, create: bool = False,
             lock_timeout: float = 2.0) -> "SqliteTrackStore":
        """The index at ``path`` (default: mgsv's), read-only until :meth:`writing`.

        ``create``: make an empty index when there is none. A missing index is otherwise an
        ``IndexDatabaseError`` naming `mgsv index`; a foreign or damaged file one naming the fix.
        """
        index = Path(path).expanduser() if path else paths.default_index_path()
        try:
            exists = index.exists()
        except OSError as exc:  # a name too long, a folder on the way without permission
            raise storage_error("open the music index", index, exc) from None
        if create and not exists:
            with writer_lock(index, timeout=lock_timeout):
                conn, _ = db.open_for_writing(index)
                conn.close()
        elif not exists:
            raise IndexDatabaseError(f"no music index at {index}: run `mgsv index MUSIC_DIR` first")
        if not index.is_file():
            raise IndexDatabaseError(f"{index} is not a music index file: run `mgsv index MUSIC_DIR` first")
        conn = db.connect(index, readonly=True)
        try:
            meta = db.read_meta(conn, index)
            if not meta:
                raise IndexDatabaseError(f"{index} is not an mgsv music index: run `mgsv index MUSIC_DIR` first")
        except BaseException:
            conn.close()
            raise
        return cls(index, conn, meta, lock_timeout=lock_timeout)

    # -- reading ---------------------------------------------------------------------------

    def _rows(self, sql: str, params: Sequence = (), conn: sqlite3.Connection | None = None) -> list:
        try:
            return (conn or self._conn).execute(sql, list(params)).fetchall()
        except sqlite3.Error as exc:
            raise db.db_error(exc, self.path, "read the music index") from None

    def _in(self, sql_prefix: str, ids: Sequence, conn: sqlite3.Connection | None = None) -> list:
        """``sql_prefix (?, ?, ...)`` over ``ids`` in chunks."""
        values = list(ids)
        rows = []
        for start in range(0, len(values), _PARAMETERS):
            chunk = values[start:start + _PARAMETERS]
            rows += self._rows(f"{sql_prefix} ({', '.join('?' * len(chunk))})", chunk, conn)
        return rows

    def _refresh(self) -> None:
        """Re-read meta: another run may have written since the open (a pinned snapshot keeps its own)."""
        if not self._conn.in_transaction:
            self.meta = dict(self._rows("SELECT key, value FROM meta"))

    @property
    def encoder_id(self) -> str | None:
        self._refresh()
        return self.meta.get("encoder_id")

    @property
    def index_uuid(self) -> str:
        return self.meta.get("index_uuid", "")

    @property
    def content_version(self) -> str:
        self._refresh()
        return f"{self.index_uuid}:{self.meta.get('generation', '0')}:{self.meta.get('encoder_id')}"

    def __len__(self) -> int:
        return int(self._rows("SELECT count(*) FROM tracks")[0][0])

    def ids_and_durations(self) -> tuple[Any, Any]:
        import numpy as np

        rows = self._rows("SELECT id, duration FROM tracks ORDER BY id")
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        durations = np.fromiter((r[1] for r in rows), dtype=np.float64, count=len(rows))
        return ids, durations

    def tracks(self, ids: Sequence[int] | None = None) -> list[TrackRecord]:
        if ids is None:
            return [_record(r) for r in self._rows(f"SELECT {_RECORD_COLUMNS} FROM tracks ORDER BY id")]
        by_id = {r[0]: r for r in self._in(f"SELECT {_RECORD_COLUMNS} FROM tracks WHERE id IN", [int(i) for i in ids])}
        _require(by_id, ids, self.uri)
        return [_record(by_id[int(i)]) for i in ids]

    def find(self, location: str | os.PathLike) -> TrackRecord | None:
        keys = dict.fromkeys([str(location), resolve_location(location)])
        rows = self._in(f"SELECT {_RECORD_COLUMNS} FROM tracks WHERE path IN", list(keys))
        return _record(rows[0]) if rows else None

    def iter_tokens(self, batch_size: int = 256) -> Iterator[tuple[Any, Any, Any]]:
        import numpy as np

        cursor = self._conn.execute("SELECT id, n_windows, feat_dim, feats, mask FROM tracks ORDER BY id")
        while rows := self._fetch(cursor, batch_size):
            ids = np.asarray([r[0] for r in rows], dtype=np.int64)
            feats = np.stack([np.frombuffer(r[3], dtype="<f2").reshape(r[1], r[2]) for r in rows]).astype(np.float32)
            mask = np.stack([np.frombuffer(r[4], dtype=np.uint8) for r in rows]) > 0
            yield ids, feats, mask

    def _fetch(self, cursor, n: int) -> list:
        try:
            return cursor.fetchmany(n)
        except sqlite3.Error as exc:
            raise db.db_error(exc, self.path, "read the music index") from None

    def tokens_for(self, ids: Sequence[int]) -> tuple[Any, Any]:
        """Tokens float32 [K, W, D] and bool mask [K, W] of ``ids``, in the order asked.

        Remembers each track's ``token_stamp`` as read with its tokens, so that derived rows
        computed from them are filed under that stamp even if `mgsv index` re-embeds the track
        meanwhile (the next ``derived_missing`` then lists it again)."""
        import numpy as np

        rows = {r[0]: r[1:] for r in self._in(
            "SELECT id, n_windows, feat_dim, feats, mask, token_stamp FROM tracks WHERE id IN", [int(i) for i in ids])}
        _require(rows, ids, self.uri)
        picked = [rows[int(i)] for i in ids]
        self._read_stamps.update({int(i): int(r[4]) for i, r in zip(ids, picked)})
        width = max((r[0] for r in picked), default=0)
        dim = picked[0][1] if picked else 0
        feats = [np.frombuffer(r[2], dtype="<f2").reshape(r[0], r[1]) for r in picked]
        masks = [np.frombuffer(r[3], dtype=np.uint8) > 0 for r in picked]
        return pad_rows(feats, masks, width, dim, np.float32)

    def beats_for(self, ids: Sequence[int]) -> list[dict | None]:
        found = dict(self._in("SELECT id, beats FROM tracks WHERE id IN", [int(i) for i in ids]))
        _require(found, ids, self.uri)
        return [json.loads(found[int(i)]) if found[int(i)] else None for i in ids]

    def _has_structure_column(self) -> bool:
        try:
            return db.has_column(self._conn, "tracks", "structure")
        except sqlite3.Error as exc:
            raise db.db_error(exc, self.path, "read the music index") from None

    def structures_for(self, ids: Sequence[int]) -> list[dict | None]:
        if not self._has_structure_column():  # an index from before structures: none yet
            return [None] * len(ids)
        found = dict(self._in("SELECT id, structure FROM tracks WHERE id IN", [int(i) for i in ids]))
        return [json.loads(found[int(i)]) if found.get(int(i)) else None for i in ids]

    def structure_count(self) -> int:
        if not self._has_structure_column():
            return 0
        return int(self._rows("SELECT count(*) FROM tracks WHERE structure IS NOT NULL")[0][0])

    def beat_count(self) -> int:
        return int(self._rows("SELECT count(*) FROM tracks WHERE beats IS NOT NULL")[0][0])

    def _has_failed_table(self, conn: sqlite3.Connection | None = None) -> bool:
        return bool(self._rows("SELECT 1 FROM sqlite_master WHERE type='table' AND name='failed'", (), conn))

    def failed_files(self) -> list[FailedFile]:
        if not self._has_failed_table():  # an index older than the table
            return []
        return [FailedFile(*r) for r in self._rows("SELECT path, reason, size, mtime_ns, failed_at FROM failed "
                                                   "ORDER BY path")]

    def pin(self) -> None:
        """Every later read sees the index as it is now, even while `mgsv index` commits (WAL)."""
        if not self._conn.in_transaction:
            self._rows("BEGIN")
            self.meta = dict(self._rows("SELECT key, value FROM meta"))

    def health(self) -> StoreHealth:
        """Counts, and SQLite's ``quick_check`` (it reads the whole file)."""
        base = super().health()
        return StoreHealth(base.n_tracks, base.n_beats, base.n_failed, db.damage_of(self.path))

    def integrity_check(self) -> str:
        """SQLite's own verdict on the file ("ok" when healthy)."""
        return self._rows("PRAGMA integrity_check")[0][0]

    # -- writing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def writing(self, lock_timeout: float | None = None) -> Iterator[None]:
        with writer_lock(self.path, timeout=self._lock_timeout if lock_timeout is None else lock_timeout):
            conn, meta = db.open_for_writing(self.path)
            self._write = (conn, meta)
            try:
                yield
            except sqlite3.Error as exc:  # disk full, a damaged file...: the open transaction was rolled back
                raise db.db_error(exc, self.path, "write the music index") from None
            finally:
                self._write = None
                # Fold the WAL into the file now: this store's own read connection is still open, so
                # closing the writer alone would leave the run's tracks in the -wal until a later
                # writer, and a copy of the file alone would lack them.
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                conn.close()

    @contextlib.contextmanager
    def _writer(self) -> Iterator[tuple[sqlite3.Connection, dict[str, str]]]:
        """The run's write connection, or one of its own under the lock for a call made outside a run."""
        if self._write is not None:
            yield self._write
            return
        with self.writing():
            assert self._write is not None
            yield self._write

    def _wrows(self, conn, sql: str, params: Sequence = ()) -> list:
        try:
            return conn.execute(sql, list(params)).fetchall()
        except sqlite3.Error as exc:
            raise db.db_error(exc, self.path, "write the music index") from None

    def file_states(self) -> dict[str, FileState]:
        with self._writer() as (conn, _):
            return {r[0]: FileState(r[1], r[2], r[3])
                    for r in self._wrows(conn, "SELECT path, size, mtime_ns, content_hash FROM tracks")}

    def failed_states(self) -> dict[str, tuple[int | None, int | None]]:
        with self._writer() as (conn, _):
            return {r[0]: (r[1], r[2]) for r in self._wrows(conn, "SELECT path, size, mtime_ns FROM failed")}

    def set_encoders(self, encoder_id: str, *, replace: bool = False) -> None:
        with self._writer() as (conn, meta):
            stored = meta.get("encoder_id")
            if stored == encoder_id:
                return
            n_tracks = int(self._wrows(conn, "SELECT count(*) FROM tracks")[0][0])
            if n_tracks and not replace:
                raise IndexDatabaseError(
                    f"{self.path} holds {n_tracks} tracks embedded with encoders '{stored}', not '{encoder_id}'; "
                    "re-run with --force to rebuild it with these encoders, or use --index for a separate index")
            # The tokens of different encoders live in different spaces: start afresh.
            with db.transaction(conn, bump_generation=True):
                conn.execute("DELETE FROM tracks")
                conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('encoder_id', ?)", (encoder_id,))
            meta["encoder_id"] = encoder_id

    def add_tracks(self, tracks: Iterable[NewTrack]) -> int:
        """Upsert each track by its path (its id kept), in one transaction; the failures remembered
        for those paths are forgotten. Every track must come from the index's encoders."""
        todo = list(tracks)
        if not todo:
            return 0
        encoders = {t.encoder_id for t in todo}
        if len(encoders) > 1:
            raise IndexDatabaseError(f"tracks of several encoders {sorted(encoders)} in one call")
        with self._writer() as (conn, meta):
            self.set_encoders(encoders.pop())
            with db.transaction(conn, bump_generation=True) as stamp:
                for track in todo:
                    conn.execute(
                        f"INSERT INTO tracks({db.TRACK_COLUMNS}) VALUES ({', '.join('?' * 19)}) "
                        f"ON CONFLICT(path) DO UPDATE SET {db.UPSERT_UPDATES}", (*_row(track), stamp))
                    self._forget(conn, [str(track.location)])
        return len(todo)

    def touch(self, items: Sequence[tuple[str, FileState]]) -> None:
        if not items:
            return
        with self._writer() as (conn, _):
            with db.transaction(conn, bump_generation=False):
                conn.executemany("UPDATE tracks SET size = ?, mtime_ns = ? WHERE path = ?",
                                 [(state.size, state.mtime_ns, location) for location, state in items])
                self._forget(conn, [location for location, _ in items])

    def reuse(self, items: Sequence[tuple[str, FileState]]) -> list[str]:
        """Copy the row of a stored track of the same content (and size, and encoders) to each
        location, one transaction each, as ``add_tracks`` stores a track."""
        done = []
        with self._writer() as (conn, meta):
            for location, state in items:
                source = self._wrows(conn, "SELECT id FROM tracks WHERE content_hash = ? AND size IS ? "
                                           "AND encoder_id = ? AND path != ? LIMIT 1",
                                     (state.content_hash, state.size, meta.get("encoder_id"), location))
                if not source:
                    continue
                with db.transaction(conn, bump_generation=True) as stamp:
                    conn.execute(
                        f"""INSERT INTO tracks({db.TRACK_COLUMNS})
                            SELECT ?, ?, ?, content_hash, duration, sample_rate, channels, title, artist, album,
                                   encoder_id, n_windows, feat_dim, feats, mask, beats, structure, ?, ?
                            FROM tracks WHERE id = ?
                            ON CONFLICT(path) DO UPDATE SET {db.UPSERT_UPDATES}""",
                        (location, state.size, state.mtime_ns, db.now(), stamp, source[0][0]))
                    self._forget(conn, [location])
                done.append(location)
        return done

    def remove(self, locations: Sequence[str]) -> int:
        if not locations:
            return 0
        with self._writer() as (conn, _):
            with db.transaction(conn, bump_generation=True):
                conn.executemany("DELETE FROM tracks WHERE path = ?", [(p,) for p in locations])
        return len(locations)

    def remember_failures(self, items: Sequence[tuple[str, int | None, int | None, str]]) -> None:
        if not items:
            return
        with self._writer() as (conn, _):
            with db.transaction(conn, bump_generation=False):
                conn.executemany(
                    "INSERT INTO failed(path, size, mtime_ns, reason, failed_at) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT(path) DO UPDATE SET size=excluded.size, mtime_ns=excluded.mtime_ns, "
                    "reason=excluded.reason, failed_at=excluded.failed_at",
                    [(path, size, mtime_ns, reason, db.now()) for path, size, mtime_ns, reason in items])

    def forget_failures(self, paths_: Sequence[str]) -> None:
        if not paths_:
            return
        with self._writer() as (conn, _):
            with db.transaction(conn, bump_generation=False):
                self._forget(conn, paths_)

    @staticmethod
    def _forget(conn: sqlite3.Connection, paths_: Sequence[str]) -> None:
        """Inside the caller's transaction."""
        conn.executemany("DELETE FROM failed WHERE path = ?", [(p,) for p in paths_])

    def tracks_without_beats(self) -> list[tuple[int, str]]:
        with self._writer() as (conn, _):
            return [(int(r[0]), r[1]) for r in self._wrows(conn, "SELECT id, path FROM tracks WHERE beats IS NULL "
                                                                 "ORDER BY id")]

    def tracks_without_structure(self) -> list[tuple[int, str]]:
        with self._writer() as (conn, _):
            return [(int(r[0]), r[1]) for r in self._wrows(
                conn, "SELECT id, path FROM tracks WHERE structure IS NULL ORDER BY id")]

    def set_structures(self, items: Sequence[tuple[int, dict | None]]) -> None:
        if not items:
            return
        with self._writer() as (conn, _):
            with db.transaction(conn, bump_generation=False):
                conn.executemany("UPDATE tracks SET structure = ? WHERE id = ?",
                                 [(json.dumps(found) if found is not None else None, int(track_id))
                                  for track_id, found in items])

    def set_beats(self, items: Sequence[tuple[int, dict | None]]) -> None:
        if not items:
            return
        with self._writer() as (conn, _):
            with db.transaction(conn, bump_generation=False):
                conn.executemany("UPDATE tracks SET beats = ? WHERE id = ?",
                                 [(json.dumps(beats) if beats is not None else None, int(track_id))
                                  for track_id, beats in items])

    # -- derived data ----------------------------------------------------------------------

    def _derived_path(self, fingerprint: str) -> Path:
        if not fingerprint or not all(c.isalnum() or c in "-_." for c in fingerprint):
            raise DataError(f"bad checkpoint fingerprint {fingerprint!r} (letters, digits, - _ . only)")
        self._refresh()
        return paths.cache_dir() / "track_derived" / f"{self.index_uuid[:16]}-{fingerprint}.v2.sqlite"

    def _derived_conn(self, fingerprint: str, *, write: bool) -> sqlite3.Connection | None:
        path = self._derived_path(fingerprint)
        if not write and not path.is_file():
            return None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error("create the folder", path.parent, exc) from None
        try:
            conn = sqlite3.connect(str(path), isolation_level=None)
            conn.execute("PRAGMA busy_timeout = 5000")
            if write:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(_DERIVED_SCHEMA)
            if "offset" not in {row[1] for row in conn.execute("PRAGMA table_info(derived)")}:
                # A cache written before score offsets existed: its rows have none (NULL).
                conn.execute("ALTER TABLE derived ADD COLUMN offset REAL")
            return conn
        except sqlite3.Error as exc:
            if not write and db.is_damage(exc, path):
                return None  # a damaged cache is rebuilt, never trusted
            raise db.db_error(exc, path, "open the derived-data cache") from None

    def _stamps(self) -> dict[int, int]:
        return {int(i): int(s) for i, s in self._rows("SELECT id, token_stamp FROM tracks")}

    def _derived_stamps(self, fingerprint: str) -> dict[int, int]:
        conn = self._derived_conn(fingerprint, write=False)
        if conn is None:
            return {}
        try:
            return {int(i): int(s) for i, s in conn.execute("SELECT track_id, token_stamp FROM derived")}
        except sqlite3.Error:  # an unreadable cache: everything is missing
            return {}
        finally:
            conn.close()

    def derived_missing(self, fingerprint: str) -> list[int]:
        """Tracks with no derived rows for ``fingerprint``, or rows of older tokens (re-embedded)."""
        have = self._derived_stamps(fingerprint)
        return sorted(i for i, s in self._stamps().items() if have.get(i) != s)

    def put_derived(self, fingerprint: str, rows: DerivedRows) -> None:
        ids, pooled, keys, mask, offsets = check_derived(rows, "float32")
        stamps = self._stamps()
        _require(stamps, ids.tolist(), self.uri)
        stamps.update({i: self._read_stamps[i] for i in ids.tolist() if i in self._read_stamps})
        conn = self._derived_conn(fingerprint, write=True)
        assert conn is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
            for k, track_id in enumerate(ids.tolist()):
                n = valid_length(mask[k])
                conn.execute(
                    "INSERT OR REPLACE INTO derived(track_id, token_stamp, n_windows, dim, pooled, keys, mask, offset) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (track_id, stamps[track_id], n, pooled.shape[1], pooled[k].astype("<f4").tobytes(),
                     keys[k, :n].astype("<f4").tobytes(), mask[k, :n].astype("uint8").tobytes(),
                     None if offsets is None else float(offsets[k])))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise db.db_error(exc, self._derived_path(fingerprint), "write the derived-data cache") from None
        finally:
            conn.close()

    def _current_rows(self, fingerprint: str, ids: Sequence[int] | None, columns: str) -> dict[int, tuple]:
        """Derived rows (``columns``) of tracks whose tokens they were computed from, by id."""
        conn = self._derived_conn(fingerprint, write=False)
        if conn is None:
            return {}
        stamps = self._stamps()
        try:
            if ids is None:
                found = conn.execute(f"SELECT track_id, token_stamp, {columns} FROM derived").fetchall()
            else:
                found = []
                wanted = [int(i) for i in ids]
                for start in range(0, len(wanted), _PARAMETERS):
                    chunk = wanted[start:start + _PARAMETERS]
                    found += conn.execute(f"SELECT track_id, token_stamp, {columns} FROM derived WHERE track_id IN "
                                          f"({', '.join('?' * len(chunk))})", chunk).fetchall()
        except sqlite3.Error as exc:
            raise db.db_error(exc, self._derived_path(fingerprint), "read the derived-data cache") from None
        finally:
            conn.close()
        return {r[0]: r[2:] for r in found if stamps.get(r[0]) == r[1]}

    def pooled_matrix(self, fingerprint: str) -> tuple[Any, Any]:
        import numpy as np

        rows = self._current_rows(fingerprint, None, "dim, pooled")
        if not rows:
            raise IndexDatabaseError(f"the music index {self.uri} has no derived rows for checkpoint {fingerprint}")
        ids = np.array(sorted(rows), dtype=np.int64)
        dim = rows[int(ids[0])][0]
        pooled = np.frombuffer(b"".join(rows[int(i)][1] for i in ids), dtype="<f4").reshape(len(ids), dim)
        return ids, pooled.astype(np.float32)

    def derived_for(self, fingerprint: str, ids: Sequence[int]) -> DerivedRows:
        import numpy as np

        rows = self._current_rows(fingerprint, ids, "n_windows, dim, pooled, keys, mask, offset")
        missing = [int(i) for i in ids if int(i) not in rows]
        if missing:
            raise IndexDatabaseError(f"derived rows ({fingerprint}) of tracks {missing[:5]} are not in the "
                                     f"music index {self.uri}'s cache; compute them first")
        picked = [rows[int(i)] for i in ids]
        dim = picked[0][1] if picked else 0
        pooled = np.stack([np.frombuffer(r[2], dtype="<f4") for r in picked]) if picked else np.zeros((0, dim))
        keys = [np.frombuffer(r[3], dtype="<f4").reshape(r[0], dim) for r in picked]
        masks = [np.frombuffer(r[4], dtype=np.uint8).astype(bool) for r in picked]
        keys, mask = pad_rows(keys, masks, max((r[0] for r in picked), default=0), dim, np.float32)
        have_offsets = {r[5] is not None for r in picked}
        if len(have_offsets) > 1:
            raise IndexDatabaseError(f"the derived-data cache of checkpoint {fingerprint} mixes rows with and "
                                     f"without score offsets; delete {self._derived_path(fingerprint)}")
        offsets = np.asarray([r[5] for r in picked], dtype=np.float32) if have_offsets == {True} else None
        return DerivedRows(np.asarray([int(i) for i in ids], dtype=np.int64), pooled.astype(np.float32), keys, mask,
                           offsets=offsets)

    def close(self) -> None:
        self._conn.close()


def _require(found, ids: Sequence[int], uri: str) -> None:
    missing = [int(i) for i in ids if int(i) not in found]
    if missing:
        raise IndexDatabaseError(f"tracks {missing[:5]} vanished from the music index {uri}; run the command again")


def _row(track: NewTrack) -> tuple:
    """The values of ``db.TRACK_COLUMNS`` but the stamp: tokens fp16 [S, D], mask uint8 [S]."""
    import numpy as np

    feats = to_numpy(track.tokens).astype("<f2")
    mask = (to_numpy(track.mask) > 0).astype(np.uint8).reshape(-1)
    if feats.ndim != 2 or mask.shape != (feats.shape[0],):
        raise IndexDatabaseError(f"tokens of shape {feats.shape} with mask {mask.shape} for {track.location}")
    tags = track.tags or {}
    return (str(track.location), track.size if track.size is not None else 0,
            track.mtime_ns if track.mtime_ns is not None else 0, track.content_hash, float(track.duration),
            track.sample_rate, track.channels, tags.get("title"), tags.get("artist"), tags.get("album"),
            str(track.encoder_id), int(feats.shape[0]), int(feats.shape[1]), feats.tobytes(), mask.tobytes(),
            json.dumps(track.beats) if track.beats is not None else None,
            json.dumps(track.structure) if track.structure is not None else None, db.now())

