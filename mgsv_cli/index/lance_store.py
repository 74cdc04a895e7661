"""The Lance track store: a catalog of 10^5 to 10^7 tracks in a folder or an object store.

Layout under the store's root (a local folder or a ``s3://``/``gs://``/``az://`` URI,
given to Lance unchanged; credentials come from the usual environment variables)::

    ROOT/tracks.lance          one row per file (schema below)
    ROOT/failed.lance          the files that could not be taken: path, size, mtime, reason
    ROOT/derived/<fp>.lance    one dataset per checkpoint fingerprint: track_id, content_key,
                               pooled, n_windows, scoring

Design choices:

* **One row per file, ids from the location.** A track's id is the first 63 bits of
  BLAKE2b of its location (:func:`track_key`): stable, unique in practice (10^7 tracks
  collide with odds about 5e-6) and the same whichever writer (a Ray worker, a rerun) adds
  it, so two writers never need to agree on a counter. A changed file is the same track
  with new tokens (its ``content_key``, the same 63 bits of its content hash, changes);
  a renamed or copied file gets a row of its own with the tokens of the identical content
  copied, as in the SQLite index. Stores written before (format 1) keyed rows by content:
  their ids are their content keys, which is what the migration gives their
  ``content_key`` column, so their derived rows stay current.
* **What tells an unchanged file**: each row keeps the file's size and mtime, so a rerun
  reads only files whose size or mtime changed, as the SQLite index does.
* **Tokens trimmed.** AST tokens are stored as fp16 bytes ``[n, 768]`` up to the last valid
  window (a 140 s track keeps 57 of 96 windows), with the window mask ``[n]``; reads pad
  back to 96. Pooled vectors are a ``fixed_size_list<float32, d>`` column, so that a Lance
  vector index can be built on them.
* **Derived rows are current** while their ``content_key`` is the track's: a re-embedded
  file is encoded again, a track never scored with another content's keys.
* **One blob per reranked track.** The rerank reads 1,000 random tracks' derived rows per
  query, and Lance's ``take()`` costs per column read: a track's pooled vector, keys and
  mask are one uncompressed ``scoring`` blob (decoded with slice copies straight from the
  arrow buffer).
* **Keys in float16 or int8**, chosen when the store is created (``key_encoding``, recorded in
  the tracks dataset's metadata; each derived dataset records its own). int8 keeps each
  window's key as int8 [d] with one float32 scale (:func:`~mgsv_cli.index.records.quantize_keys`):
  about half the bytes, so a million tracks' derived rows stay in a workstation's page cache,
  at a cost of ~0.3% of each key's norm.
* **One commit per call.** Every write (``add_tracks``, ``touch``, ``put_derived``...) is one
  Lance commit (a new version, written atomically): a writer killed mid-call leaves the
  store at the previous version; its orphan data files are invisible to readers.
* **Two writers.** On a local folder every write holds an exclusive ``flock`` on
  ``ROOT.lock`` for the length of one commit, and upserts by location, so concurrent runs
  both land without duplicates. Object stores have no lock: there a writer re-reads the
  locations it has just inserted after its commit and deletes every copy but the first
  (smallest row id), so racing writers converge on one row per file; readers ignore the
  brief duplicates (one row per id).
* **Format version** in the schema metadata of every dataset (``mgsv_store_format``); a
  store written by a newer mgsv is refused, never half-read. An older store is migrated on
  its first write (columns added, format raised).
* **The pooled matrix** is exported once per (tracks version, derived version) to a ``.npy``
  in the cache folder and memory-mapped: the first stage of the search multiplies a query by
  [N, d] without copying millions of rows into Python objects.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from mgsv_cli import paths
from mgsv_cli.errors import DataError, IndexDatabaseError, MgsvError, StorageError, first_line, storage_error
from mgsv_cli.features import recipe
from mgsv_cli.index.locking import make_folder, writer_lock
from mgsv_cli.index.records import (
    DerivedRows,
    FailedFile,
    FileState,
    NewTrack,
    TrackRecord,
    check_derived,
    pad_rows,
    to_numpy,
    valid_length,
)
from mgsv_cli.index.trackstore import TrackStore

# Lance warns at every fork once it is imported; mgsv forks only to exec ffmpeg (subprocess) and
# Ray's processes, which touch no Lance state before exec.
warnings.filterwarnings("ignore", message="lance is not fork-safe")

# The newest format this mgsv reads. Tracks: 1 rows by content; 2 rows by file (ids from the
# location, size, mtime and content_key columns). Derived: 1; 2 int8 keys; 3 score offsets;
# 4 rows carry their track's content_key.
FORMAT_VERSION = 4
TRACKS_FORMAT, DERIVED_FORMAT = 2, 4
_FORMAT_KEY = b"mgsv_store_format"
_KEY_ENCODING_KEY = b"mgsv_key_encoding"  # tracks: the store's choice for new derived datasets; derived: its own
_OFFSETS_KEY = b"mgsv_score_offsets"  # derived: b"1" when each scoring blob holds the model's score offset
_KIND_KEY = b"mgsv_store_kind"
TRACKS_NAME = "tracks.lance"
FAILED_NAME = "failed.lance"
DERIVED_FOLDER = "derived"
_RECORD_COLUMNS = ["id", "location", "content_hash", "duration", "tags", "content_key"]
_TOKEN_COLUMNS = ["id", "n_windows", "feat_dim", "tokens", "mask"]
_EXPORT_CHUNK = 65536  # rows per take() while exporting the pooled matrix
SCORING_COLUMN = "scoring"  # derived, per row: float32 LE pooled [d] | keys | uint8 mask [n]; keys are
# float16 LE [n, d], or with int8 keys float32 LE scales [n] | int8 [n, d]


def track_key(text: str) -> int:
    """63 bits of BLAKE2b of ``text`` (a positive int64): a track's id (of its location) and the
    key of its content (of its content hash)."""
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _is_remote(uri: str) -> bool:
    return "://" in uri


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/")] + list(parts))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _tracks_schema(key_encoding: str = "float16"):
    import pyarrow as pa

    return pa.schema([
        pa.field("id", pa.int64(), nullable=False),
        pa.field("location", pa.string()),
        pa.field("content_hash", pa.string(), nullable=False),
        pa.field("duration", pa.float64()),
        pa.field("tags", pa.string()),  # JSON object
        pa.field("encoder_id", pa.string()),
        pa.field("n_windows", pa.int32()),  # stored slots: up to the last valid window
        pa.field("feat_dim", pa.int32()),
        pa.field("tokens", pa.large_binary()),  # float16 LE [n_windows, feat_dim]
        pa.field("mask", pa.binary()),  # uint8 [n_windows]
        pa.field("beats", pa.string()),  # beat-grid JSON or null
        pa.field("size", pa.int64()),  # the file's, when it was read (null: tokens made elsewhere)
        pa.field("mtime_ns", pa.int64()),
        pa.field("content_key", pa.int64()),  # track_key(content_hash): what derived rows are current for
        pa.field("structure", pa.string()),  # track-structure JSON (bars, sections, ending) or null
    ], metadata={_FORMAT_KEY: str(TRACKS_FORMAT).encode(), _KIND_KEY: b"tracks",
                 _KEY_ENCODING_KEY: key_encoding.encode()})


# What a tracks dataset of an older format gains on its first write: format 1's ids were content
# keys. ``structure`` is additive within format 2 (older mgsv reads such a store as it is): a
# store made before it gains the column, null until the index run fills it in.
_TRACKS_MIGRATION = {"size": "CAST(NULL AS BIGINT)", "mtime_ns": "CAST(NULL AS BIGINT)", "content_key": "id",
                     "structure": "CAST(NULL AS STRING)"}


def _failed_schema():
    import pyarrow as pa

    return pa.schema([
        pa.field("path", pa.string(), nullable=False), pa.field("size", pa.int64()), pa.field("mtime_ns", pa.int64()),
        pa.field("reason", pa.string()), pa.field("failed_at", pa.string()),
    ], metadata={_FORMAT_KEY: b"1", _KIND_KEY: b"failed"})


def _derived_schema(dim: int, fingerprint: str, key_encoding: str = "float16", offsets: bool = False):
    import pyarrow as pa

    return pa.schema([
        pa.field("track_id", pa.int64(), nullable=False),
        pa.field("content_key", pa.int64()),  # the content the row was computed from
        pa.field("pooled", pa.list_(pa.float32(), dim)),
        pa.field("n_windows", pa.int32()),
        # What the rerank reads, as one uncompressed blob per track (see _scoring_blobs): Lance's
        # take() of 1,000 random rows costs per column read, and fp16 activations barely compress.
        # ``pooled`` above stays for the vector index and the first stage's export.
        pa.field(SCORING_COLUMN, pa.large_binary(), metadata={"lance-encoding:compression": "none"}),
    ], metadata={_FORMAT_KEY: str(DERIVED_FORMAT).encode(), _KIND_KEY: b"derived",
                 b"fingerprint": fingerprint.encode(), _KEY_ENCODING_KEY: key_encoding.encode(),
                 _OFFSETS_KEY: b"1" if offsets else b"0"})


def _format(ds) -> int:
    try:
        return int((ds.schema.metadata or {}).get(_FORMAT_KEY, b"0"))
    except ValueError:
        return 0


class LanceTrackStore(TrackStore):
    """:class:`~mgsv_cli.index.backend.TrackStore` over Lance datasets under ``uri``.

    Every read opens the latest version (writes by other writers are seen) unless
    :meth:`pin` fixed one; track ids are stable, so ids read from one version stay valid.
    """

    commit_size = 32
    supports_vector_index = True

    def __init__(self, uri: str, *, lock_timeout: float = 60.0, lock: bool = True, key_encoding: str = "float16"):
        self.uri = uri
        self.key_encoding = key_encoding  # for derived datasets created from now on (see open)
        self._tracks_uri = _join(uri, TRACKS_NAME)
        self._failed_uri = _join(uri, FAILED_NAME)
        self._lock_timeout = lock_timeout
        # Object stores cannot be flock'ed: their writers deduplicate after committing instead.
        self._use_lock = lock and not _is_remote(uri)
        self._maps: dict[tuple, tuple] = {}  # per (dataset, columns): the latest version's id map
        self._pinned: int | None = None  # tracks version every read uses (pin)
        self._read_keys: dict[int, int] = {}  # content_key of the tokens handed out by tokens_for

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, uri: str, *, create: bool = False, key_encoding: str | None = None, **kwargs) -> "LanceTrackStore":
        """Open the store at ``uri`` (``create``: make an empty one when there is none).

        ``key_encoding`` (``float16`` or ``int8``): how the store keeps X-Pool keys, fixed
        when it is created (default float16); asking an existing store for another is an error.
        """
        from mgsv_cli.errors import UsageError
        from mgsv_cli.index.records import KEY_ENCODINGS

        if key_encoding is not None and key_encoding not in KEY_ENCODINGS:
            raise UsageError(f"key encoding {key_encoding!r}: expected one of {', '.join(KEY_ENCODINGS)}")
        if uri.startswith("file://"):
            uri = uri[len("file://"):]
        root = uri if "://" in uri else str(Path(uri).expanduser().absolute())
        store = cls(root, key_encoding=key_encoding or "float16", **kwargs)
        if store._exists(store._tracks_uri):
            tracks = store._dataset(store._tracks_uri)
            store._check_format(tracks, "tracks")
            store.key_encoding = _key_encoding_of(tracks)
            if key_encoding is not None and key_encoding != store.key_encoding:
                raise UsageError(f"the track store {root} keeps {store.key_encoding} keys (fixed when it was "
                                 f"created); build a new store for {key_encoding} keys")
            return store
        if not create:
            if not _is_remote(root) and Path(root).is_dir() and any(Path(root).iterdir()):
                raise IndexDatabaseError(f"{root} is a folder but not an mgsv track store; not touching it")
            raise IndexDatabaseError(f"no track store at {root}: build one with `mgsv index MUSIC_DIR --store {root}`")
        store._create()
        return store

    def _exists(self, dataset_uri: str) -> bool:
        if not _is_remote(dataset_uri):
            return (Path(dataset_uri) / "_versions").is_dir()
        import lance

        try:
            lance.dataset(dataset_uri)
            return True
        except Exception as exc:  # Lance says "not found" for a missing dataset at an object-store URI
            if "not found" in str(exc).lower():
                return False
            raise self._error(exc, "open") from None

    def _create(self) -> None:
        import lance

        if not _is_remote(self.uri):
            make_folder(Path(self.uri))
        schema = _tracks_schema(self.key_encoding)
        with self._write_lock():
            if self._exists(self._tracks_uri):  # another run created it meanwhile
                self.key_encoding = _key_encoding_of(self._dataset(self._tracks_uri))
                return
            try:
                lance.write_dataset(schema.empty_table(), self._tracks_uri, schema=schema, mode="create")
            except Exception as exc:  # without a lock (object stores) another run may have won the race
                if not self._exists(self._tracks_uri):
                    raise self._error(exc, "create") from None

    def _dataset(self, dataset_uri: str, version: int | None = None):
        import lance

        with self._lance_errors("read"):
            return lance.dataset(dataset_uri, version=version)

    def _check_format(self, ds, kind: str) -> None:
        meta = ds.schema.metadata or {}
        if meta.get(_KIND_KEY) != kind.encode() or _FORMAT_KEY not in meta:
            raise IndexDatabaseError(f"{self.uri} is not an mgsv track store (its {kind} dataset has no mgsv format)")
        try:
            version = int(meta[_FORMAT_KEY])
        except ValueError:
            raise IndexDatabaseError(f"{self.uri} has an unreadable store format {meta[_FORMAT_KEY]!r}") from None
        if version > FORMAT_VERSION:
            raise IndexDatabaseError(f"{self.uri} was written by a newer mgsv (store format {version}, "
                                     f"this one reads up to {FORMAT_VERSION}): upgrade mgsv")

    # -- errors and the writer lock --------------------------------------------------------

    def _error(self, exc: BaseException, action: str) -> MgsvError:
        if isinstance(exc, MgsvError):
            return exc
        if isinstance(exc, OSError) and exc.errno is not None:
            return storage_error(f"{action} the track store", self.uri, exc)
        text = first_line(exc, 300)
        lowered = text.lower()
        for fragment, cause in (("permission denied", "permission denied"),
                                ("read-only", "the file system is read-only"),
                                ("no space left", "no space left on device")):
            if fragment in lowered:
                return StorageError(f"cannot {action} the track store {self.uri}: {cause}")
        return IndexDatabaseError(f"cannot {action} the track store {self.uri}: {text}")

    @contextlib.contextmanager
    def _lance_errors(self, action: str):
        try:
            yield
        except MgsvError:
            raise
        except Exception as exc:  # Lance raises OSError, ValueError, RuntimeError...: one line each
            raise self._error(exc, action) from None


    @contextlib.contextmanager
    def _write_lock(self):
        if not self._use_lock:
            yield
            return
        try:
            with writer_lock(Path(self.uri), timeout=self._lock_timeout):
                yield
        except IndexDatabaseError as exc:
            if "right now" not in str(exc):
                raise
            raise IndexDatabaseError(f"another writer has held the track store {self.uri} for over "
                                     f"{self._lock_timeout:g} s (lock {self.uri}.lock); try again when it is done") \
                from None

    @contextlib.contextmanager
    def _commit(self):
        """One write: under the lock (local folders), Lance's errors as one line."""
        with self._write_lock(), self._lance_errors("write"):
            yield

    # -- tracks: reading -------------------------------------------------------------------

    def _tracks(self):
        return self._dataset(self._tracks_uri, self._pinned)

    def _has(self, ds, column: str) -> bool:
        return column in ds.schema.names

    def _id_map(self, ds, column: str, keep: str = "first", stamp: str | None = None):
        """(sorted unique ids, their row positions[, their ``stamp`` column]) of ``ds`` at its
        version; duplicates (a racing writer's, until it deduplicates) resolve to their first or
        last row. A missing ``stamp`` column (a dataset of an older format) reads as the ids."""
        import numpy as np

        key = (ds.uri, column, keep, stamp)
        cached = self._maps.get(key)
        if cached is None or cached[0] != ds.version:
            columns = [column] + ([stamp] if stamp and self._has(ds, stamp) else [])
            with self._lance_errors("read"):
                table = ds.to_table(columns=columns)
            ids = table.column(0).to_numpy()
            stamps = None
            if stamp:
                stamps = ids.copy() if len(columns) == 1 else \
                    np.where(table.column(1).is_null().to_numpy(zero_copy_only=False), ids,
                             table.column(1).fill_null(0).to_numpy())
            if keep == "last":
                ids, stamps = ids[::-1], (None if stamps is None else stamps[::-1])
            unique, first = np.unique(ids, return_index=True)
            positions = first if keep == "first" else len(ids) - 1 - first
            kept = None if stamps is None else stamps[first]
            cached = self._maps[key] = (ds.version, unique, positions.astype(np.int64), kept)
        return (cached[1], cached[2]) if stamp is None else (cached[1], cached[2], cached[3])

    def _positions(self, ds, ids: Sequence[int], column: str = "id", keep: str = "first", what: str = "tracks"):
        import numpy as np

        unique, positions = self._id_map(ds, column, keep)
        wanted = np.asarray(list(ids), dtype=np.int64)
        at = np.clip(np.searchsorted(unique, wanted), 0, max(len(unique) - 1, 0))
        found = (unique[at] == wanted) if len(unique) else np.zeros(len(wanted), bool)
        if not found.all():
            missing = wanted[~found][:5].tolist()
            raise IndexDatabaseError(f"{what} {missing} are not in the track store {self.uri}")
        return positions[at]

    @property
    def encoder_id(self) -> str | None:
        ds = self._tracks()
        with self._lance_errors("read"):
            head = ds.to_table(columns=["encoder_id"], limit=1).column(0).to_pylist()
        return head[0] if head else None

    @property
    def content_version(self) -> str:
        return f"{self.uri}:{self._tracks().version}"

    def __len__(self) -> int:
        return len(self._id_map(self._tracks(), "id")[0])

    def ids_and_durations(self) -> tuple[Any, Any]:
        """(ids int64 [N], durations float64 [N] seconds) of every track, by id, without N records
        (1M records: ~6 s, ~1 GB)."""
        import numpy as np

        ds = self._tracks()
        unique, first = self._id_map(ds, "id")  # cached: the records read later use it too
        with self._lance_errors("read"):
            durations = ds.to_table(columns=["duration"]).column(0).to_numpy(zero_copy_only=False)[first]
        return unique.astype(np.int64), np.nan_to_num(durations.astype(np.float64), nan=0.0)

    def _records(self, table) -> list[TrackRecord]:
        data = table.to_pydict()
        keys = data.get("content_key") or data["id"]
        return [TrackRecord(int(i), loc, h, float(d), json.loads(t) if t else {}, int(k if k is not None else i))
                for i, loc, h, d, t, k in zip(data["id"], data["location"], data["content_hash"], data["duration"],
                                              data["tags"], keys)]

    def _record_columns(self, ds) -> list[str]:
        return [c for c in _RECORD_COLUMNS if self._has(ds, c)]

    def tracks(self, ids: Sequence[int] | None = None) -> list[TrackRecord]:
        """Records of ``ids`` in the order asked; every track, by id, when None (``token_stamp``: the
        track's content key, which changes with its tokens)."""
        ds = self._tracks()
        with self._lance_errors("read"):
            if ids is None:  # one scan, not N random reads; first row of an id (see _id_map), by id
                table = ds.to_table(columns=self._record_columns(ds))
                table = table.take(self._id_map(ds, "id")[1]) if table.num_rows else table
            else:
                table = ds.take(self._positions(ds, ids), columns=self._record_columns(ds))
        return self._records(table)

    def find(self, location: str | os.PathLike) -> TrackRecord | None:
        from mgsv_cli.index.sqlite_store import resolve_location

        text = str(location)
        candidates = [text] if _is_remote(text) else list(dict.fromkeys([text, resolve_location(text)]))
        ds = self._tracks()
        with self._lance_errors("read"):
            table = ds.to_table(columns=self._record_columns(ds), filter=_in_filter("location", candidates), limit=1)
        records = self._records(table)
        return records[0] if records else None

    def iter_tokens(self, batch_size: int = 256) -> Iterator[tuple[Any, Any, Any]]:
        """Every track's tokens, in store order: (ids int64 [B], tokens float32 [B, 96, 768], mask bool [B, 96])."""
        import pyarrow as pa

        ds = self._tracks()
        seen: set[int] = set()  # a racing writer's duplicate (until it deduplicates) is skipped
        with self._lance_errors("read"):
            batches = iter(ds.to_batches(columns=_TOKEN_COLUMNS, batch_size=batch_size))
        while True:
            with self._lance_errors("read"):
                batch = next(batches, None)
            if batch is None:
                return
            keep = []
            for k, i in enumerate(batch.column(0).to_pylist()):
                if i not in seen:
                    seen.add(i)
                    keep.append(k)
            if keep:
                yield _decode_tokens(pa.Table.from_batches([batch]).take(keep))

    def tokens_for(self, ids: Sequence[int]) -> tuple[Any, Any]:
        """AST tokens of ``ids``: float32 [K, 96, 768], mask bool [K, 96], in the order asked.

        Remembers the content key each track's tokens had, so that derived rows computed from
        them are filed under it even if a writer replaces the track meanwhile."""
        ds = self._tracks()
        positions = self._positions(ds, ids)
        columns = _TOKEN_COLUMNS + (["content_key"] if self._has(ds, "content_key") else [])
        with self._lance_errors("read"):
            table = ds.take(positions, columns=columns)
        found, tokens, mask = _decode_tokens(table)
        keys = table.column("content_key").to_pylist() if "content_key" in columns else found.tolist()
        self._read_keys.update({int(i): int(k if k is not None else i) for i, k in zip(found.tolist(), keys)})
        return tokens, mask

    def beats_for(self, ids: Sequence[int]) -> list[dict | None]:
        ds = self._tracks()
        positions = self._positions(ds, ids)
        with self._lance_errors("read"):
            values = ds.take(positions, columns=["beats"]).column(0).to_pylist()
        return [json.loads(v) if v else None for v in values]

    def structures_for(self, ids: Sequence[int]) -> list[dict | None]:
        ds = self._tracks()
        if not self._has(ds, "structure"):  # a store from before structures: none yet
            return [None] * len(ids)
        positions = self._positions(ds, ids)
        with self._lance_errors("read"):
            values = ds.take(positions, columns=["structure"]).column(0).to_pylist()
        return [json.loads(v) if v else None for v in values]

    def structure_count(self) -> int:
        ds = self._tracks()
        if not self._has(ds, "structure"):
            return 0
        with self._lance_errors("read"):
            return int(ds.count_rows(filter="structure IS NOT NULL"))

    def beat_count(self) -> int:
        with self._lance_errors("read"):
            return int(self._tracks().count_rows(filter="beats IS NOT NULL"))

    def pin(self) -> None:
        """Every later read of the tracks sees the version of now (writers go on meanwhile)."""
        if self._pinned is None:
            self._pinned = self._dataset(self._tracks_uri).version

    # -- failed files ----------------------------------------------------------------------

    def dataset_uri(self, kind: str) -> str | None:
        """The URI of the store's ``tracks`` or ``failed`` dataset (None: no failed files yet), for
        readers of the datasets themselves (the Ray engine's ``read_lance``)."""
        if kind == "tracks":
            return self._tracks_uri
        return self._failed_uri if self._failed() is not None else None

    def tracks_columns(self) -> list[str]:
        """The columns of the tracks dataset (an older format has fewer)."""
        return list(self._tracks().schema.names)

    def _failed(self):
        if not self._exists(self._failed_uri):
            return None
        ds = self._dataset(self._failed_uri)
        self._check_format(ds, "failed")
        return ds

    def _failed_rows(self) -> list[dict]:
        ds = self._failed()
        if ds is None:
            return []
        with self._lance_errors("read"):
            return ds.to_table().to_pylist()

    def failed_files(self) -> list[FailedFile]:
        rows = {r["path"]: r for r in self._failed_rows()}  # a racing writer's duplicate: one each
        return [FailedFile(p, r["reason"], r["size"], r["mtime_ns"], r["failed_at"]) for p, r in sorted(rows.items())]

    def failed_states(self) -> dict[str, tuple[int | None, int | None]]:
        return {r["path"]: (r["size"], r["mtime_ns"]) for r in self._failed_rows()}

    def remember_failures(self, items: Sequence[tuple[str, int | None, int | None, str]]) -> None:
        import lance
        import pyarrow as pa

        if not items:
            return
        latest = {path: (size, mtime, reason) for path, size, mtime, reason in items}
        table = pa.Table.from_pylist([{"path": p, "size": s, "mtime_ns": m, "reason": r, "failed_at": _now()}
                                      for p, (s, m, r) in latest.items()], schema=_failed_schema())
        with self._commit():
            ds = self._failed()
            if ds is None:
                lance.write_dataset(table, self._failed_uri, schema=table.schema, mode="create")
            else:
                ds.merge_insert("path").when_matched_update_all().when_not_matched_insert_all().execute(table)

    def forget_failures(self, paths_: Sequence[str]) -> None:
        ds = self._failed()
        if ds is None or not paths_:
            return
        with self._commit():
            ds.delete(_in_filter("path", list(paths_)))

    # -- tracks: writing -------------------------------------------------------------------

    @contextlib.contextmanager
    def writing(self, lock_timeout: float | None = None) -> Iterator[None]:
        """Each write locks for its own commit (concurrent runs both land); what a run needs first
        is a store of the current format: an older one is migrated here."""
        if lock_timeout is not None:
            self._lock_timeout = max(self._lock_timeout, lock_timeout)
        self._migrate()
        yield

    def _migrate(self) -> None:
        """Give a tracks dataset of an older format the columns of this one (one commit)."""
        ds = self._dataset(self._tracks_uri)
        if _format(ds) >= TRACKS_FORMAT and all(self._has(ds, k) for k in _TRACKS_MIGRATION):
            return
        with self._commit():
            ds = self._dataset(self._tracks_uri)
            missing = {k: v for k, v in _TRACKS_MIGRATION.items() if not self._has(ds, k)}
            if missing:
                ds.add_columns(missing)
            ds = self._dataset(self._tracks_uri)
            ds.update_schema_metadata({_FORMAT_KEY.decode(): str(TRACKS_FORMAT)})

    def file_states(self) -> dict[str, FileState]:
        ds = self._tracks()
        columns = ["location", "size", "mtime_ns", "content_hash"]
        with self._lance_errors("read"):
            table = ds.to_table(columns=[c for c in columns if self._has(ds, c)])
        data = table.to_pydict()
        none = [None] * table.num_rows
        return {loc: FileState(size, mtime, content) for loc, size, mtime, content in
                zip(data["location"], data.get("size", none), data.get("mtime_ns", none), data["content_hash"])}

    def set_encoders(self, encoder_id: str, *, replace: bool = False) -> None:
        stored = self.encoder_id
        if stored is None or stored == encoder_id:
            return
        if not replace:
            raise IndexDatabaseError(
                f"the track store {self.uri} holds tokens of encoders '{stored}', not '{encoder_id}'; "
                "re-run with --force to rebuild it with these encoders, or use another --store for them")
        with self._commit():  # the tokens of different encoders live in different spaces: start afresh
            self._dataset(self._tracks_uri).delete("true")

    def add_tracks(self, tracks: Iterable[NewTrack]) -> int:
        """Upsert the tracks by location, in one commit (a changed file keeps its id, with new tokens)."""
        todo = list(tracks)
        table = _tracks_table(todo, self.key_encoding)
        if table.num_rows == 0:
            return 0
        encoders = set(table.column("encoder_id").to_pylist())
        with self._commit():
            stored = self.encoder_id
            if len(encoders) > 1 or (stored is not None and stored not in encoders):
                raise IndexDatabaseError(
                    f"the track store {self.uri} holds tokens of encoders '{stored}', not "
                    f"{', '.join(repr(e) for e in sorted(encoders - {stored}))}; use another --store for them")
            self._dataset(self._tracks_uri).merge_insert("location").when_matched_update_all() \
                .when_not_matched_insert_all().execute(table)
        locations = table.column("location").to_pylist()
        if not self._use_lock:
            self._deduplicate(self._tracks_uri, "location", locations)
        failed = self.failed_states()  # read once: a comprehension's condition runs per location
        self.forget_failures([loc for loc in locations if loc in failed])
        return table.num_rows

    def touch(self, items: Sequence[tuple[str, FileState]]) -> None:
        import pyarrow as pa

        if not items:
            return
        table = pa.table({"location": [loc for loc, _ in items],
                          "size": pa.array([s.size for _, s in items], pa.int64()),
                          "mtime_ns": pa.array([s.mtime_ns for _, s in items], pa.int64())})
        with self._commit():
            self._dataset(self._tracks_uri).merge_insert("location").when_matched_update_all().execute(table)
        failed = self.failed_states()
        self.forget_failures([loc for loc, _ in items if loc in failed])

    def reuse(self, items: Sequence[tuple[str, FileState]]) -> list[str]:
        """Copy the row of a stored track of the same content to each location (one commit)."""
        wanted = {loc: state for loc, state in items if state.content_hash}
        if not wanted:
            return []
        ds = self._tracks()
        with self._lance_errors("read"):
            table = ds.to_table(filter=_in_filter("content_hash", sorted({s.content_hash for s in wanted.values()})))
        by_hash: dict[str, dict[str, Any]] = {}
        for row in table.to_pylist():
            by_hash.setdefault(row["content_hash"], row)
        copies = []
        for location, state in wanted.items():
            source = by_hash.get(state.content_hash)
            if source is None or source["location"] == location:
                continue
            copies.append({**source, "id": track_key(location), "location": location, "size": state.size,
                           "mtime_ns": state.mtime_ns, "content_key": track_key(state.content_hash)})
        if copies:
            import pyarrow as pa

            rows = pa.Table.from_pylist(copies, schema=table.schema)
            with self._commit():
                self._dataset(self._tracks_uri).merge_insert("location").when_matched_update_all() \
                    .when_not_matched_insert_all().execute(rows)
            failed = self.failed_states()  # a delete that matches nothing is still a commit (a version)
            self.forget_failures([c["location"] for c in copies if c["location"] in failed])
        return [c["location"] for c in copies]

    def remove(self, locations: Sequence[str]) -> int:
        if not locations:
            return 0
        with self._commit():
            ds = self._dataset(self._tracks_uri)
            before = ds.count_rows()
            ds.delete(_in_filter("location", list(locations)))
            return before - self._dataset(self._tracks_uri).count_rows()

    def tracks_without_beats(self) -> list[tuple[int, str]]:
        ds = self._tracks()
        with self._lance_errors("read"):
            table = ds.to_table(columns=["id", "location"], filter="beats IS NULL")
        return sorted(zip(table.column(0).to_pylist(), table.column(1).to_pylist()))

    def tracks_without_structure(self) -> list[tuple[int, str]]:
        ds = self._tracks()
        with self._lance_errors("read"):
            if not self._has(ds, "structure"):
                table = ds.to_table(columns=["id", "location"])
            else:
                table = ds.to_table(columns=["id", "location"], filter="structure IS NULL")
        return sorted(zip(table.column(0).to_pylist(), table.column(1).to_pylist()))

    def set_structures(self, items: Sequence[tuple[int, dict | None]]) -> None:
        import pyarrow as pa

        if not items:
            return
        table = pa.table({"id": pa.array([int(i) for i, _ in items], pa.int64()),
                          "structure": pa.array([json.dumps(v) if v is not None else None for _, v in items],
                                                pa.string())})
        with self._commit():
            self._dataset(self._tracks_uri).merge_insert("id").when_matched_update_all().execute(table)

    def set_beats(self, items: Sequence[tuple[int, dict | None]]) -> None:
        import pyarrow as pa

        if not items:
            return
        table = pa.table({"id": pa.array([int(i) for i, _ in items], pa.int64()),
                          "beats": pa.array([json.dumps(b) if b is not None else None for _, b in items], pa.string())})
        with self._commit():
            self._dataset(self._tracks_uri).merge_insert("id").when_matched_update_all().execute(table)

    def _deduplicate(self, dataset_uri: str, column: str, values: list) -> int:
        """Delete every copy but the first (smallest row id) of ``values`` in ``column``: what a
        writer without a lock does after its commit, so that racing writers converge."""
        import numpy as np

        ds = self._dataset(dataset_uri)
        with self._lance_errors("read"):
            table = ds.to_table(columns=[column], with_row_id=True, filter=_in_filter(column, values))
        if table.num_rows == len(set(values)):
            return 0
        keys = table.column(column).to_pylist()
        row_ids = table.column("_rowid").to_numpy()
        first: dict = {}
        for key, row in zip(keys, row_ids.tolist()):
            first[key] = min(first.get(key, row), row)
        extra = np.setdiff1d(row_ids, np.fromiter(first.values(), dtype=row_ids.dtype))
        if extra.size:
            with self._lance_errors("write"):
                ds.delete(f"_rowid IN ({', '.join(str(int(r)) for r in extra)})")
        return int(extra.size)

    # -- derived data ----------------------------------------------------------------------

    def _derived_uri(self, fingerprint: str) -> str:
        if not fingerprint or not all(c.isalnum() or c in "-_." for c in fingerprint):
            raise DataError(f"bad checkpoint fingerprint {fingerprint!r} (letters, digits, - _ . only)")
        return _join(self.uri, DERIVED_FOLDER, f"{fingerprint}.lance")

    def _derived(self, fingerprint: str):
        dataset_uri = self._derived_uri(fingerprint)
        if not self._exists(dataset_uri):
            return None
        ds = self._dataset(dataset_uri)
        self._check_format(ds, "derived")
        return ds

    def _current(self, tracks, derived):
        """(derived track ids, their row positions) of the rows current for ``tracks``: of a track
        there, computed from its content now (``content_key``)."""
        import numpy as np

        track_ids, _, track_keys = self._id_map(tracks, "id", stamp="content_key")
        derived_ids, positions, derived_keys = self._id_map(derived, "track_id", "last", stamp="content_key")
        at = np.clip(np.searchsorted(track_ids, derived_ids), 0, max(len(track_ids) - 1, 0))
        current = (track_ids[at] == derived_ids) & (track_keys[at] == derived_keys) if len(track_ids) else \
            np.zeros(len(derived_ids), bool)
        return derived_ids[current], positions[current]

    def derived_missing(self, fingerprint: str) -> list[int]:
        """Ids of tracks with no current derived rows for ``fingerprint``."""
        import numpy as np

        tracks = self._tracks()
        ids = self._id_map(tracks, "id")[0]
        derived = self._derived(fingerprint)
        if derived is not None:
            ids = np.setdiff1d(ids, self._current(tracks, derived)[0])
        return ids.tolist()

    def put_derived(self, fingerprint: str, rows: DerivedRows) -> None:
        """Store (replace) rows for ``fingerprint`` in one commit, each filed under the content key
        its tokens had when :meth:`tokens_for` read them."""
        import lance

        ids, pooled, keys, mask, offsets = check_derived(rows)
        if not len(ids):
            return
        ds = self._tracks()
        self._positions(ds, ids.tolist())  # rows of unknown tracks are a caller's mistake
        if not all(int(i) in self._read_keys for i in ids):
            self.tokens_for([int(i) for i in ids if int(i) not in self._read_keys])  # reads their content keys
        content_keys = [self._read_keys[int(i)] for i in ids]
        dataset_uri = self._derived_uri(fingerprint)
        with self._write_lock():
            derived = self._derived(fingerprint)
            # A dataset keeps the encoding it was created with.
            encoding = self.key_encoding if derived is None else _key_encoding_of(derived)
            if derived is not None and _has_offsets(derived) != (offsets is not None):
                raise DataError(f"derived rows {'with' if offsets is not None else 'without'} score offsets for "
                                f"checkpoint {fingerprint}, whose stored rows are the other kind")
            table = _derived_table(ids, content_keys, pooled, keys, mask, fingerprint, encoding, offsets)
            if derived is None:
                try:
                    lance.write_dataset(table, dataset_uri, schema=table.schema, mode="create")
                except Exception as exc:  # without a lock another writer may have created it first
                    derived = self._derived(fingerprint)
                    if derived is None:
                        raise self._error(exc, "write") from None
            if derived is not None:
                if derived.schema.field("pooled").type != table.schema.field("pooled").type:
                    raise DataError(f"derived rows of width {pooled.shape[1]} for checkpoint {fingerprint}, "
                                    f"whose stored rows are {derived.schema.field('pooled').type}")
                with self._lance_errors("write"):
                    if _format(derived) < DERIVED_FORMAT:  # rows of an older format: their ids were content keys
                        if not self._has(derived, "content_key"):
                            derived.add_columns({"content_key": "track_id"})
                        derived = self._dataset(dataset_uri)
                        derived.update_schema_metadata({_FORMAT_KEY.decode(): str(DERIVED_FORMAT)})
                        derived = self._dataset(dataset_uri)
                    derived.merge_insert("track_id").when_matched_update_all() \
                        .when_not_matched_insert_all().execute(table.select(derived.schema.names))
        if not self._use_lock:
            self._deduplicate(dataset_uri, "track_id", ids.tolist())

    def pooled_matrix(self, fingerprint: str) -> tuple[Any, Any]:
        """(track_ids int64 [N], pooled float32 [N, d]) of every track with current derived rows, by id;
        both memory-mapped from ``.npy`` files exported once per store version."""
        import numpy as np

        tracks, derived = self._tracks(), self._derived(fingerprint)
        if derived is None:
            raise IndexDatabaseError(f"the track store {self.uri} has no derived rows for checkpoint {fingerprint}")
        stem = hashlib.blake2b(f"{self.uri}\0{fingerprint}".encode(), digest_size=8).hexdigest()
        folder = paths.cache_dir() / "lance_pooled"
        name = f"{stem}-t{tracks.version}-d{derived.version}"
        ids_file, pooled_file = folder / f"{name}.ids.npy", folder / f"{name}.pooled.npy"
        if not (ids_file.is_file() and pooled_file.is_file()):
            self._export_pooled(tracks, derived, folder, stem, ids_file, pooled_file)
        try:
            return np.load(ids_file, mmap_mode="r"), np.load(pooled_file, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise storage_error("read the exported pooled vectors", pooled_file, exc) from None

    def _export_pooled(self, tracks, derived, folder: Path, stem: str, ids_file: Path, pooled_file: Path) -> None:
        """Write the pooled matrix of the current versions in chunks (never all in Python
        objects), atomically, and drop the exports of older versions."""
        import numpy as np

        derived_ids, positions = self._current(tracks, derived)
        dim = derived.schema.field("pooled").type.list_size
        make_folder(folder)
        tmp = folder / f".{stem}.{os.getpid()}.tmp.npy"
        try:
            matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(derived_ids), dim))
            # One sequential scan (random take()s of a million rows cost 3x more): each stored
            # row goes to its id's place; rows of stale or duplicate copies go nowhere (-1).
            destination = np.full(derived.count_rows(), -1, dtype=np.int64)
            destination[positions] = np.arange(len(positions))
            row = 0
            with self._lance_errors("read"):
                for batch in derived.to_batches(columns=["pooled"], batch_size=_EXPORT_CHUNK):
                    target = destination[row:row + batch.num_rows]
                    keep = target >= 0
                    matrix[target[keep]] = _fixed_list_to_numpy(batch.column(0), dim)[keep]
                    row += batch.num_rows
                    _release_mapped_pages(matrix)
            matrix.flush()
            del matrix
            ids_tmp = folder / f".{stem}.{os.getpid()}.ids.tmp.npy"
            np.save(ids_tmp, derived_ids.astype(np.int64))
            os.replace(ids_tmp, ids_file)
            os.replace(tmp, pooled_file)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise storage_error("export the pooled vectors to", folder, exc) from None
        for old in folder.glob(f"{stem}-*.npy"):
            if old not in (ids_file, pooled_file):
                with contextlib.suppress(OSError):
                    old.unlink()

    def derived_for(self, fingerprint: str, ids: Sequence[int]) -> DerivedRows:
        """Pooled float32 [K, d], keys float16 [K, S, d], mask bool [K, S] of ``ids`` (order asked;
        S the longest of the K): one ``take`` of one column of K rows, in position order (Lance
        reads neighbouring rows together), decoded straight from the arrow buffer. A dataset of
        int8 keys gives keys int8 [K, S, d] and ``key_scales`` float32 [K, S] (not dequantized:
        the search converts them once, into the dtype it scores in)."""
        import numpy as np

        derived = self._derived(fingerprint)
        if derived is None:
            raise IndexDatabaseError(f"the track store {self.uri} has no derived rows for checkpoint {fingerprint}")
        positions = self._positions(derived, ids, "track_id", "last", what=f"derived rows ({fingerprint}) of tracks")
        dim = derived.schema.field("pooled").type.list_size
        order = np.argsort(positions, kind="stable")
        with self._lance_errors("read"):
            table = derived.take(positions[order], columns=[SCORING_COLUMN])
        pooled, keys, mask, scales, offsets = _decode_scoring(table.column(0), order, dim, _key_encoding_of(derived),
                                                              _has_offsets(derived))
        return DerivedRows(np.asarray(list(ids), dtype=np.int64), pooled, keys, mask, scales, offsets)


    def derived_dataset(self, fingerprint: str):
        """The Lance dataset of ``fingerprint``'s derived rows (format checked), or None: for a
        vector search on ``pooled`` (``to_table(nearest=...)``)."""
        return self._derived(fingerprint)

    def build_vector_index(self, fingerprint: str, *, num_partitions: int, num_sub_vectors: int,
                           metric: str = "cosine") -> None:
        """Build (replace) an IVF-PQ index on ``fingerprint``'s pooled vectors, as one commit
        under the writer lock; rows added later are searched exactly until the next build."""
        derived = self._derived(fingerprint)
        if derived is None:
            raise IndexDatabaseError(f"the track store {self.uri} has no derived rows for checkpoint {fingerprint}")
        with self._write_lock(), self._lance_errors("index"):
            derived.create_index("pooled", index_type="IVF_PQ", metric=metric, num_partitions=num_partitions,
                                 num_sub_vectors=num_sub_vectors, replace=True)


    # -- upkeep ---------------------------------------------------------------------------

    def compact(self, *, min_fragments: int = 64, keep_versions_for_s: float = 3600.0) -> int:
        """Merge the small fragments that many small commits leave (one per ``add_tracks`` call of
        an engine) when a dataset has ``min_fragments`` or more; returns how many were compacted.

        Scans and ``take`` slow down with thousands of fragments. Safe beside other writers
        (Lance rebases a compaction over concurrent appends). Versions older than
        ``keep_versions_for_s`` are then removed, with the data only they referenced, so the
        disk does not hold the catalog twice; readers of a version that old would fail.
        """
        from datetime import timedelta

        uris = [self._tracks_uri] + ([self._failed_uri] if self._exists(self._failed_uri) else [])
        derived_root = Path(self.uri) / DERIVED_FOLDER
        if not _is_remote(self.uri) and derived_root.is_dir():
            uris += [str(d) for d in sorted(derived_root.glob("*.lance"))]
        done = 0
        for dataset_uri in uris:
            ds = self._dataset(dataset_uri)
            if len(ds.get_fragments()) < min_fragments:
                continue
            with self._lance_errors("compact"):
                ds.optimize.compact_files()
                lance_ds = self._dataset(dataset_uri)
                lance_ds.cleanup_old_versions(older_than=timedelta(seconds=keep_versions_for_s))
            done += 1
        return done


    def close(self) -> None:
        self._maps.clear()


# ---------------------------------------------------------------- packing


def _in_filter(column: str, values: list) -> str:
    """``column IN (...)`` in Lance's SQL: strings quoted (quotes doubled), ints as they are."""
    def literal(value) -> str:
        return str(int(value)) if not isinstance(value, str) else "'" + value.replace("'", "''") + "'"

    return f"{column} IN ({', '.join(literal(v) for v in sorted(set(values)))})"


def _release_mapped_pages(matrix) -> None:
    """Write a memory-mapped array's dirty pages to its file and drop them from this process's
    resident set (they stay in the page cache): an export of 1 GB would otherwise count 1 GB
    of resident memory by its end."""
    import mmap

    matrix.flush()
    handle = getattr(matrix, "_mmap", None)
    if handle is not None and hasattr(handle, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        handle.madvise(mmap.MADV_DONTNEED)


def _fixed_list_to_numpy(column, dim: int):
    """A ``fixed_size_list<float32, dim>`` column as a writable float32 [N, dim] (no Python objects)."""
    import numpy as np
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    # A copy: arrow's zero-copy views are read-only, and callers hand these to torch.
    return np.array(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)


def _key_encoding_of(dataset) -> str:
    """The key encoding a dataset's metadata records (float16 for stores of format 1, which had no other)."""
    return (dataset.schema.metadata or {}).get(_KEY_ENCODING_KEY, b"float16").decode()


def _has_offsets(dataset) -> bool:
    """Whether a derived dataset's scoring blobs hold score offsets (format 3)."""
    return (dataset.schema.metadata or {}).get(_OFFSETS_KEY) == b"1"


def _header_bytes(dim: int, offsets: bool) -> int:
    """Bytes of a ``scoring`` blob before its keys: pooled float32 [d], then the offset float32."""
    return 4 * dim + (4 if offsets else 0)


def _key_bytes(dim: int, key_encoding: str) -> int:
    """Bytes of one window's key (its scale included) in a ``scoring`` blob."""
    return dim + 4 if key_encoding == "int8" else 2 * dim


def _scoring_blobs(pooled, keys, mask, counts, key_encoding: str = "float16", offsets=None):
    """The ``scoring`` column of K tracks: float32 [K, d] ``pooled``, float ``keys`` [K, S, d] (or a
    list of [S_k, d]) and ``mask`` [K, S] kept up to ``counts`` [K] windows -> large_binary [K], row k
    ``pooled[k] (4d bytes) | offsets[k] (4 bytes, when given) | keys[k, :n] | mask[k, :n] (n bytes)``,
    the keys float16 (2dn bytes) or int8 (:func:`~mgsv_cli.index.records.quantize_keys`: float32
    scales, 4n bytes, then int8, dn)."""
    import numpy as np
    import pyarrow as pa

    from mgsv_cli.index.records import quantize_keys

    k, dim = pooled.shape
    counts = np.asarray(counts, dtype=np.int64)
    per_window = _key_bytes(dim, key_encoding) + 1
    header = _header_bytes(dim, offsets is not None)
    sizes = header + counts * per_window
    starts = np.zeros(k + 1, dtype=np.int64)
    np.cumsum(sizes, out=starts[1:])
    data = np.empty(int(starts[-1]), dtype=np.uint8)
    for row, (begin, n) in enumerate(zip(starts[:-1].tolist(), counts.tolist())):
        keys_at = begin + header
        mask_at = keys_at + (per_window - 1) * n
        data[begin:begin + 4 * dim] = np.ascontiguousarray(pooled[row], dtype="<f4").view(np.uint8)
        if offsets is not None:
            data[begin + 4 * dim:keys_at] = np.asarray([offsets[row]], dtype="<f4").view(np.uint8)
        if key_encoding == "int8":
            quantized, scales = quantize_keys(keys[row][:n])
            data[keys_at:keys_at + 4 * n] = scales.astype("<f4").view(np.uint8)
            data[keys_at + 4 * n:mask_at] = quantized.reshape(-1).view(np.uint8)
        else:
            data[keys_at:mask_at] = np.ascontiguousarray(keys[row][:n], dtype="<f2").reshape(-1).view(np.uint8)
        data[mask_at:mask_at + n] = np.asarray(mask[row][:n], dtype=np.uint8)
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), k, [None, pa.py_buffer(starts), pa.py_buffer(data)])


def _decode_scoring(column, order, dim: int, key_encoding: str = "float16", has_offsets: bool = False):
    """(pooled float32 [K, d], keys [K, S, d] zero-padded, mask bool [K, S], scales, offsets) of a
    ``scoring`` column whose row r belongs at ``order[r]``; S the longest row. Keys are float16
    (scales None) or int8 with scales float32 [K, S]; offsets float32 [K] when the blobs hold them,
    else None. Straight from the arrow buffers: one slice copy per row and part, no Python bytes
    objects."""
    import numpy as np
    import pyarrow as pa

    chunks = [c for c in (column.chunks if isinstance(column, pa.ChunkedArray) else [column]) if len(c)]
    spans = []  # (data uint8, row starts int64 [n + 1]) per chunk
    for chunk in chunks:
        if chunk.null_count:
            raise IndexDatabaseError("the track store has derived rows with no data (nulls); recompute them")
        starts = np.frombuffer(chunk.buffers()[1], dtype=np.int64)[chunk.offset:chunk.offset + len(chunk) + 1]
        spans.append((np.frombuffer(chunk.buffers()[2], dtype=np.uint8), starts))
    sizes = np.concatenate([np.diff(o) for _, o in spans]) if spans else np.zeros(0, np.int64)
    quantized = key_encoding == "int8"
    per_window = _key_bytes(dim, key_encoding) + 1
    header = _header_bytes(dim, has_offsets)
    counts, rest = np.divmod(sizes - header, per_window)
    if (rest != 0).any() or (counts < 0).any():
        raise IndexDatabaseError("the track store has derived rows of a size no window count explains; recompute them")
    width = int(counts.max(initial=0))
    pooled = np.empty((len(order), dim), dtype=np.float32)
    keys = np.zeros((len(order), width, dim), dtype=np.int8 if quantized else np.float16)
    scales = np.zeros((len(order), width), dtype=np.float32) if quantized else None
    mask = np.zeros((len(order), width), dtype=bool)
    offsets = np.empty(len(order), dtype=np.float32) if has_offsets else None
    row = 0
    for data, starts in spans:
        for begin, n in zip(starts[:-1].tolist(), counts[row:row + len(starts) - 1].tolist()):
            at, keys_at = int(order[row]), begin + header
            mask_at = keys_at + (per_window - 1) * n
            pooled[at] = data[begin:begin + 4 * dim].view("<f4")
            if offsets is not None:  # has_offsets
                offsets[at] = data[begin + 4 * dim:keys_at].view("<f4")[0]
            if scales is not None:  # quantized
                scales[at, :n] = data[keys_at:keys_at + 4 * n].view("<f4")
                keys[at, :n] = data[keys_at + 4 * n:mask_at].view(np.int8).reshape(n, dim)
            else:
                keys[at, :n] = data[keys_at:mask_at].view("<f2").reshape(n, dim)
            mask[at, :n] = data[mask_at:mask_at + n].view(bool)
            row += 1
    return pooled, keys, mask, scales, offsets


def _tracks_table(tracks: list[NewTrack], key_encoding: str = "float16"):
    """The arrow table of ``tracks`` (each location once: the last given wins), tokens trimmed
    to their last valid window."""
    import numpy as np
    import pyarrow as pa

    latest = {str(track.location): track for track in tracks}
    columns: dict[str, list] = {f.name: [] for f in _tracks_schema()}
    for location, track in latest.items():
        tokens = to_numpy(track.tokens)
        mask = to_numpy(track.mask).astype(bool).reshape(-1)
        if tokens.ndim != 2 or mask.shape != (tokens.shape[0],) or tokens.shape[0] > recipe.N_MUSIC_WINDOWS:
            raise DataError(f"tokens of shape {tokens.shape} with mask {mask.shape} for {location}: "
                            f"expected [S <= {recipe.N_MUSIC_WINDOWS}, D] and [S]")
        n = valid_length(mask)
        columns["id"].append(track_key(location))
        columns["location"].append(location)
        columns["content_hash"].append(track.content_hash)
        columns["duration"].append(float(track.duration))
        columns["tags"].append(json.dumps(dict(track.tags or {}), sort_keys=True))
        columns["encoder_id"].append(str(track.encoder_id))
        columns["n_windows"].append(n)
        columns["feat_dim"].append(int(tokens.shape[1]))
        columns["tokens"].append(np.ascontiguousarray(tokens[:n], dtype="<f2").tobytes())
        columns["mask"].append(mask[:n].astype(np.uint8).tobytes())
        columns["beats"].append(json.dumps(track.beats) if track.beats is not None else None)
        columns["size"].append(track.size)
        columns["mtime_ns"].append(track.mtime_ns)
        columns["content_key"].append(track_key(track.content_hash))
        columns["structure"].append(json.dumps(track.structure) if track.structure is not None else None)
    return pa.Table.from_pydict(columns, schema=_tracks_schema(key_encoding))


def _decode_tokens(table):
    """(ids int64 [B], tokens float32 [B, W, D], mask bool [B, W]) of a tracks table, W >= 96."""
    import numpy as np

    counts = table.column("n_windows").to_pylist()
    dims = set(table.column("feat_dim").to_pylist()) or {0}
    if len(dims) > 1:
        raise IndexDatabaseError(f"tracks of different token widths {sorted(dims)} in one store")
    dim = dims.pop()
    rows = [np.frombuffer(b, dtype="<f2").reshape(n, dim) for b, n in zip(table.column("tokens").to_pylist(), counts)]
    masks = [np.frombuffer(b, dtype=np.uint8).astype(bool) for b in table.column("mask").to_pylist()]
    width = max([recipe.N_MUSIC_WINDOWS, *counts])
    tokens, mask = pad_rows(rows, masks, width, dim, np.float32)
    return table.column("id").to_numpy().astype(np.int64), tokens, mask


def _derived_table(ids, content_keys, pooled, keys, mask, fingerprint: str, key_encoding: str = "float16",
                   offsets=None):
    import numpy as np
    import pyarrow as pa

    dim = pooled.shape[1]
    counts = [valid_length(m) for m in mask]
    schema = _derived_schema(dim, fingerprint, key_encoding, offsets is not None)
    return pa.Table.from_arrays([
        pa.array(ids, pa.int64()),
        pa.array(content_keys, pa.int64()),
        pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(pooled).reshape(-1), pa.float32()), dim),
        pa.array(counts, pa.int32()),
        _scoring_blobs(pooled, keys, mask, counts, key_encoding, offsets),
    ], schema=schema)
