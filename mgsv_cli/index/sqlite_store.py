"""The SQLite index (``store.py``) seen as a :class:`~mgsv_cli.index.backend.TrackStore`.

The index file and its schema are untouched: this adapter reads through
:class:`~mgsv_cli.index.store.MusicIndex` and writes through the same helpers as
``import_tokens`` (same writer lock, same one-encoder rule). Derived data per checkpoint
lives beside, in ``cache_dir()/track_derived/<index uuid>-<fingerprint>.sqlite``: one row
per track with the ``token_stamp`` it was computed from, so a re-embedded track (new
stamp) shows up in ``derived_missing`` again. It is a cache: deleting it costs one
re-encode, and an index on a read-only mount still gets one.
"""
from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from mgsv_cli import paths
from mgsv_cli.errors import DataError, IndexDatabaseError, storage_error
from mgsv_cli.index import store
from mgsv_cli.index.records import DerivedRows, NewTrack, TrackRecord, check_derived, pad_rows, valid_length

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


class SqliteTrackStore:
    """:class:`~mgsv_cli.index.backend.TrackStore` over one SQLite index file."""

    def __init__(self, index: store.MusicIndex, *, lock_timeout: float = 2.0):
        self._index = index
        self.uri = str(index.path)
        self._lock_timeout = lock_timeout
        self._read_stamps: dict[int, int] = {}  # token_stamp of tokens handed out by tokens_for

    @classmethod
    def open(cls, uri: str, *, create: bool = False, **kwargs) -> "SqliteTrackStore":
        path = Path(uri).expanduser()
        if create and not path.exists():
            with store.writer_lock(path):
                conn, _ = store._open_for_writing(path)
                conn.close()
        return cls(store.open_index(path, require_tracks=False), **kwargs)

    @property
    def index(self) -> store.MusicIndex:
        """The wrapped index (for code that still wants ``MusicIndex``)."""
        return self._index

    def _refresh(self) -> None:
        """Re-read meta: another run (or ``add_tracks``) may have written since the open."""
        conn = self._index._conn
        if not conn.in_transaction:  # a pinned snapshot keeps its meta
            self._index.meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())

    @property
    def encoder_id(self) -> str | None:
        self._refresh()
        return self._index.encoder_id

    def __len__(self) -> int:
        return len(self._index)

    def _rows(self, sql: str, params: Sequence = ()) -> list:
        try:
            return self._index._conn.execute(sql, list(params)).fetchall()
        except sqlite3.Error as exc:
            raise store._db_error(exc, self._index.path, "read the music index") from None

    def tracks(self, ids: Sequence[int] | None = None) -> list[TrackRecord]:
        cols = "id, path, content_hash, duration, title, artist, album"
        if ids is None:
            rows = self._rows(f"SELECT {cols} FROM tracks ORDER BY id")
        else:
            by_id = {r[0]: r for r in self._chunked(f"SELECT {cols} FROM tracks WHERE id IN", ids)}
            _require(by_id, ids, self.uri)
            rows = [by_id[int(i)] for i in ids]
        return [TrackRecord(int(r[0]), r[1], r[2], float(r[3]),
                            {k: v for k, v in zip(("title", "artist", "album"), r[4:]) if v}) for r in rows]

    def _chunked(self, sql_prefix: str, ids: Sequence[int]) -> list:
        """``sql_prefix (?, ?, ...)`` over ``ids`` in chunks (SQLite caps the parameters)."""
        ids = [int(i) for i in ids]
        rows = []
        for start in range(0, len(ids), 900):
            chunk = ids[start:start + 900]
            rows += self._rows(f"{sql_prefix} ({', '.join('?' * len(chunk))})", chunk)
        return rows

    def iter_tokens(self, batch_size: int = 256) -> Iterator[tuple[Any, Any, Any]]:
        import numpy as np

        for ids, feats, mask in self._index.iter_tokens(batch_size):
            yield np.asarray(ids, dtype=np.int64), feats, mask > 0

    def tokens_for(self, ids: Sequence[int]) -> tuple[Any, Any]:
        """Tokens float32 [K, W, D] and bool mask [K, W] of ``ids``, in the order asked.

        Remembers each track's ``token_stamp`` as read with its tokens, so that derived rows
        computed from them are filed under that stamp even if `mgsv index` re-embeds the track
        meanwhile (the next ``derived_missing`` then lists it again)."""
        import numpy as np

        rows = {r[0]: r[1:] for r in self._chunked(
            "SELECT id, n_windows, feat_dim, feats, mask, token_stamp FROM tracks WHERE id IN", ids)}
        _require(rows, ids, self.uri)
        picked = [rows[int(i)] for i in ids]
        self._read_stamps.update({int(i): int(r[4]) for i, r in zip(ids, picked)})
        width = max((r[0] for r in picked), default=0)
        dim = picked[0][1] if picked else 0
        feats = [np.frombuffer(r[2], dtype="<f2").reshape(r[0], r[1]) for r in picked]
        masks = [np.frombuffer(r[3], dtype=np.uint8) > 0 for r in picked]
        return pad_rows(feats, masks, width, dim, np.float32)

    def beats_for(self, track_id: int) -> dict | None:
        rows = self._rows("SELECT beats FROM tracks WHERE id = ?", [int(track_id)])
        return json.loads(rows[0][0]) if rows and rows[0][0] else None

    def content_hashes(self) -> set[str]:
        return {r[0] for r in self._rows("SELECT content_hash FROM tracks")}

    def add_tracks(self, tracks: Iterable[NewTrack]) -> int:
        """Add tracks whose content hash is not stored, in one transaction (keyed by location:
        a new content at a known location replaces that track's tokens, as ``mgsv index`` does)."""
        import numpy as np

        path = self._index.path
        with store.writer_lock(path, timeout=self._lock_timeout):
            conn, meta = store._open_for_writing(path)
            try:
                known = {r[0] for r in conn.execute("SELECT content_hash FROM tracks")}
                todo = []
                for track in tracks:
                    if track.content_hash not in known:
                        known.add(track.content_hash)
                        todo.append(track)
                if not todo:
                    return 0
                encoders = {t.encoder_id for t in todo}
                if len(encoders) > 1:
                    raise IndexDatabaseError(f"tracks of several encoders {sorted(encoders)} in one call")
                store._check_encoder_id(conn, meta, encoders.pop(), False, path)
                with store._transaction(conn, bump_generation=True) as stamp:
                    for track in todo:
                        _insert(conn, track, stamp, np)
                return len(todo)
            except sqlite3.Error as exc:
                raise store._db_error(exc, path, "write the music index") from None
            finally:
                conn.close()

    # -- derived data ----------------------------------------------------------------------

    def _derived_path(self, fingerprint: str) -> Path:
        if not fingerprint or not all(c.isalnum() or c in "-_." for c in fingerprint):
            raise DataError(f"bad checkpoint fingerprint {fingerprint!r} (letters, digits, - _ . only)")
        self._refresh()
        return paths.cache_dir() / "track_derived" / f"{self._index.index_uuid[:16]}-{fingerprint}.sqlite"

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
            if not write and store._is_damage(exc, path):
                return None  # a damaged cache is rebuilt, never trusted
            raise store._db_error(exc, path, "open the derived-data cache") from None

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
        ids, pooled, keys, mask, offsets = check_derived(rows)
        stamps = self._stamps()
        _require(stamps, ids.tolist(), self.uri)
        stamps.update({i: self._read_stamps[i] for i in ids.tolist() if i in self._read_stamps})
        conn = self._derived_conn(fingerprint, write=True)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for k, track_id in enumerate(ids.tolist()):
                n = valid_length(mask[k])
                conn.execute(
                    "INSERT OR REPLACE INTO derived(track_id, token_stamp, n_windows, dim, pooled, keys, mask, offset) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (track_id, stamps[track_id], n, pooled.shape[1], pooled[k].astype("<f4").tobytes(),
                     keys[k, :n].astype("<f2").tobytes(), mask[k, :n].astype("uint8").tobytes(),
                     None if offsets is None else float(offsets[k])))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise store._db_error(exc, self._derived_path(fingerprint), "write the derived-data cache") from None
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
                ids = [int(i) for i in ids]
                for start in range(0, len(ids), 900):
                    chunk = ids[start:start + 900]
                    found += conn.execute(f"SELECT track_id, token_stamp, {columns} FROM derived WHERE track_id IN "
                                          f"({', '.join('?' * len(chunk))})", chunk).fetchall()
        except sqlite3.Error as exc:
            raise store._db_error(exc, self._derived_path(fingerprint), "read the derived-data cache") from None
        finally:
            conn.close()
        return {r[0]: r[2:] for r in found if stamps.get(r[0]) == r[1]}

    def pooled_matrix(self, fingerprint: str) -> tuple[Any, Any]:
        """(track_ids int64 [N], pooled float32 [N, d]) of every track with current rows, by id."""
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
        keys = [np.frombuffer(r[3], dtype="<f2").reshape(r[0], dim) for r in picked]
        masks = [np.frombuffer(r[4], dtype=np.uint8).astype(bool) for r in picked]
        keys, mask = pad_rows(keys, masks, max((r[0] for r in picked), default=0), dim, np.float16)
        have_offsets = {r[5] is not None for r in picked}
        if len(have_offsets) > 1:
            raise IndexDatabaseError(f"the derived-data cache of checkpoint {fingerprint} mixes rows with and "
                                     f"without score offsets; delete {self._derived_path(fingerprint)}")
        offsets = np.asarray([r[5] for r in picked], dtype=np.float32) if have_offsets == {True} else None
        return DerivedRows(np.asarray([int(i) for i in ids], dtype=np.int64), pooled.astype(np.float32), keys, mask,
                           offsets=offsets)

    def close(self) -> None:
        self._index.close()

    def __enter__(self) -> "SqliteTrackStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _require(found, ids: Sequence[int], uri: str) -> None:
    missing = [int(i) for i in ids if int(i) not in found]
    if missing:
        raise IndexDatabaseError(f"tracks {missing[:5]} are not in the music index {uri}")


def _insert(conn, track: NewTrack, stamp: int, np) -> None:
    """One track row, as ``store._store_track`` writes it (tokens fp16 [S, D], mask uint8 [S])."""
    from mgsv_cli.index.records import to_numpy

    feats = to_numpy(track.tokens).astype("<f2")
    mask = to_numpy(track.mask).astype(bool).astype(np.uint8).reshape(-1)
    if feats.ndim != 2 or mask.shape != (feats.shape[0],):
        raise DataError(f"tokens of shape {feats.shape} with mask {mask.shape} for {track.location}")
    location = str(track.location)
    try:
        stat = os.stat(location)
        size, mtime_ns = stat.st_size, stat.st_mtime_ns
    except OSError:
        size, mtime_ns = 0, 0
    tags = track.tags or {}
    conn.execute(
        f"INSERT INTO tracks({store._TRACK_COLUMNS}) VALUES ({', '.join('?' * 18)}) "
        f"ON CONFLICT(path) DO UPDATE SET {store._UPSERT_UPDATES}",
        (location, size, mtime_ns, track.content_hash, float(track.duration), None, None,
         tags.get("title"), tags.get("artist"), tags.get("album"), str(track.encoder_id),
         int(feats.shape[0]), int(feats.shape[1]), feats.tobytes(), mask.tobytes(),
         json.dumps(track.beats) if track.beats is not None else None, store._now(), stamp))
