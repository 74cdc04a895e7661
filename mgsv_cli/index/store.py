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

Tokens are stored as little-endian float16 ``[n_windows, feat_dim]`` blobs, the mask
as uint8 ``[n_windows]`` (1 = valid window).
"""
from __future__ import annotations

import contextlib
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
from mgsv_cli.media.files import content_hash, scan_audio_files
from mgsv_cli import paths
from mgsv_cli.errors import IndexDatabaseError, MgsvError, UsageError, first_line

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
"""

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
    failed: list[tuple[str, str]] = field(default_factory=list)
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted


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
    lock two different files of the same name.
    """
    lock_file = lock_path_for(index_path)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_file, "a+b")
    try:
        deadline = time.monotonic() + timeout
        while not _try_lock(handle):
            if time.monotonic() >= deadline:
                raise IndexDatabaseError(
                    f"another `mgsv index` is updating {index_path} right now "
                    f"(lock {lock_file}); wait for it to finish, or use --index for another file"
                )
            time.sleep(0.1)
        yield
    finally:
        handle.close()  # closing releases the lock


def _try_lock(handle) -> bool:
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


def _connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    """Open ``path``; autocommit mode so transactions are explicit ``BEGIN``/``COMMIT``."""
    try:
        if readonly:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
        else:
            conn = sqlite3.connect(str(path), isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 5000")
        return conn
    except sqlite3.Error as exc:
        raise IndexDatabaseError(f"cannot open music index {path}: {exc}") from None


def _read_meta(conn: sqlite3.Connection, path: Path) -> dict[str, str]:
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise IndexDatabaseError(f"{path} is not an mgsv music index ({exc})") from None
    if not tables:
        return {}
    if "meta" not in tables or "tracks" not in tables:
        raise IndexDatabaseError(f"{path} is an SQLite file but not an mgsv music index; not touching it")
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    version = int(meta.get("schema_version", "0"))
    if version > SCHEMA_VERSION:
        raise IndexDatabaseError(
            f"{path} was written by a newer mgsv (index schema {version}, this one reads {SCHEMA_VERSION}); upgrade mgsv"
        )
    if version < 1:
        raise IndexDatabaseError(f"{path} has no valid schema version; rebuild it with `mgsv index --force --index NEW`")
    return meta


def _open_for_writing(path: Path) -> tuple[sqlite3.Connection, dict[str, str]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = _connect(path, readonly=False)
    try:
        meta = _read_meta(conn, path)
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
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise IndexDatabaseError(f"{path} is not a usable mgsv music index ({exc})") from None
    except BaseException:
        conn.close()
        raise
    return conn, meta


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
) -> IndexReport:
    """Bring the index at ``index_path`` up to date with the audio files under ``music_dir``.

    ``encoders`` is a ``features.Encoders`` or a zero-argument callable that loads one;
    a callable is only called when some file actually needs embedding, so a no-op
    re-index never loads a network. New and changed files are embedded (AST tokens
    ``[96, music_dim]`` + mask ``[96]``) and committed one transaction per track.
    ``prune`` drops indexed tracks whose files vanished (anywhere, not only under
    ``music_dir``); ``force`` re-embeds everything. Files that cannot be read or
    decoded are listed in ``report.failed`` and skipped. ``detect_beats`` stores each
    track's beat grid (``beats.BeatGrid`` JSON), also for tracks indexed without one.

    Raises ``IndexDatabaseError`` when another run holds the index, when the index is
    not an mgsv index, or when ``encoders`` differ from those the index was built
    with (and ``force`` is off); ``encoder_kind`` (``pretrained``/``tiny``), when
    given, lets that last check happen before any work or loading. On KeyboardInterrupt the tracks committed so far
    stay; the exception is re-raised with ``.report`` attached.
    """
    root = Path(music_dir).expanduser()
    if not root.exists():
        raise UsageError(f"music folder {root} does not exist")
    index = Path(index_path).expanduser() if index_path else paths.default_index_path()
    progress = progress or IndexProgress()
    report = IndexReport(index_path=index)
    with writer_lock(index, timeout=lock_timeout):
        conn, meta = _open_for_writing(index)
        try:
            if encoder_kind is not None and not force:
                _check_encoder_kind(conn, meta, encoder_kind, index)
            _run_indexing(conn, meta, root, encoders, prune, force, progress, report, detect_beats)
        except sqlite3.Error as exc:  # disk full, a damaged file...: the open transaction was rolled back
            raise IndexDatabaseError(f"music index {index}: {exc}") from None
        except KeyboardInterrupt as exc:
            report.interrupted = True
            report.n_tracks = _count_tracks(conn)
            exc.report = report  # type: ignore[attr-defined]
            raise
        finally:
            conn.close()
    return report


def _count_tracks(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM tracks").fetchone()[0]


def _run_indexing(conn, meta, root, encoders, prune, force, progress, report, detect_beats) -> None:
    files = scan_audio_files(root)
    report.n_scanned = len(files)
    progress.stage("checking", len(files))
    if force:
        stored_rows = {}
    else:
        stored_rows = {r[0]: r[1:] for r in conn.execute("SELECT path, size, mtime_ns, content_hash FROM tracks")}
    jobs = _plan(conn, files, stored_rows, force, progress, report)
    if meta.get("encoder_id") and not force:
        # Before loading any network: a renamed or copied file needs none. Before pruning:
        # the vanished old name of a renamed file is where its tokens come from.
        _reuse_identical(conn, jobs, meta["encoder_id"], report)
    if jobs:
        if callable(encoders) and not hasattr(encoders, "embed_tracks"):
            progress.note("loading encoders")
            encoders = encoders()
        _check_encoder_id(conn, meta, encoders.encoder_id, force, report.index_path)
        _embed_jobs(conn, jobs, encoders, progress, report, detect_beats)
    _prune_or_count_missing(conn, prune, report)
    if detect_beats:
        _fill_missing_beats(conn, progress, report)
    report.n_tracks = _count_tracks(conn)


def _plan(conn, files, stored_rows, force, progress, report) -> list[_Job]:
    """Classify each file: unchanged (skip), touched (new mtime only), or a job to embed."""
    jobs = []
    for path in files:
        key = str(path)
        progress.advance("checking", 1, key)
        try:
            stat = path.stat()
        except OSError as exc:
            _fail(report, progress, key, f"cannot read: {exc.strerror or exc}")
            continue
        if stat.st_size == 0:
            _fail(report, progress, key, "empty file (0 bytes)")
            continue
        stored = stored_rows.get(key)
        if stored is not None and stored[0] == stat.st_size and stored[1] == stat.st_mtime_ns:
            report.unchanged += 1
            continue
        try:
            digest = content_hash(path)
        except OSError as exc:
            _fail(report, progress, key, f"cannot read: {exc.strerror or exc}")
            continue
        if stored is not None and stored[0] == stat.st_size and stored[2] == digest:
            with _transaction(conn, bump_generation=False):
                conn.execute("UPDATE tracks SET mtime_ns = ? WHERE path = ?", (stat.st_mtime_ns, key))
            report.unchanged += 1
            report.touched += 1
            continue
        exists = key in stored_rows or (
            force and conn.execute("SELECT 1 FROM tracks WHERE path = ?", (key,)).fetchone() is not None
        )
        jobs.append(_Job(path, stat.st_size, stat.st_mtime_ns, digest, exists))
    return jobs


def _fail(report: IndexReport, progress: IndexProgress, path: str, reason: str) -> None:
    report.failed.append((path, reason))
    progress.failed(path, reason)


def _prune_or_count_missing(conn, prune: bool, report: IndexReport) -> None:
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


def _reuse_identical(conn, jobs: list[_Job], encoder_id: str, report: IndexReport) -> None:
    """Copy tokens from a stored track with the same content (a renamed or copied file)."""
    remaining = []
    for job in jobs:
        source = conn.execute(
            "SELECT id FROM tracks WHERE content_hash = ? AND size = ? AND encoder_id = ? AND path != ? LIMIT 1",
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
        report.reused += 1
        if job.exists:
            report.updated += 1
        else:
            report.added += 1
    jobs[:] = remaining


def _embed_jobs(conn, jobs: list[_Job], encoders, progress: IndexProgress, report: IndexReport, detect_beats) -> None:
    from mgsv_cli.media import ffmpeg as media

    probed = []
    progress.stage("probing", len(jobs))
    for job in jobs:
        progress.advance("probing", 1, str(job.path))
        try:
            job.info = media.probe(job.path)
        except MgsvError as exc:
            _fail(report, progress, str(job.path), first_line(exc))
            continue
        if not float(getattr(job.info, "duration", 0.0) or 0.0) > 0:
            _fail(report, progress, str(job.path), "no audio (zero duration)")
            continue
        probed.append(job)
    if not probed:
        return
    progress.stage("embedding", sum(j.audio_seconds for j in probed))
    beat_detector = _beat_detector() if detect_beats else None
    by_path = {str(j.path): j for j in probed}
    for position, result in enumerate(encoders.embed_tracks([j.path for j in probed])):
        path, feats, mask, duration, error = _unpack_track_result(result, probed, position)
        job = by_path[path]
        if error is not None:
            _fail(report, progress, path, error)
            progress.advance("embedding", job.audio_seconds, path)
            continue
        beats = _beats_json(beat_detector, job.path) if beat_detector else None
        _store_track(conn, job, feats, mask, duration, encoders.encoder_id, beats)
        if beats is not None:
            report.beats_added += 1
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


def _store_track(conn, job: _Job, feats, mask, duration, encoder_id: str, beats: str | None) -> None:
    import numpy as np

    feats = _to_numpy(feats).astype("<f2")
    mask = (_to_numpy(mask) > 0).astype(np.uint8)
    if feats.ndim != 2 or mask.shape != (feats.shape[0],):
        raise IndexDatabaseError(f"encoder returned tokens of shape {feats.shape} with mask {mask.shape} for {job.path}")
    tags = _tags(job.info)
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


def _int_or_none(value) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _tags(info) -> dict[str, str]:
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
    others the content hash is that of the tokens. Same one-encoder rule as
    :func:`index_music`.
    """
    import numpy as np

    index = Path(index_path).expanduser() if index_path else paths.default_index_path()
    n_written = 0
    with writer_lock(index, timeout=lock_timeout):
        conn, meta = _open_for_writing(index)
        try:
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
        finally:
            conn.close()
    return n_written


@dataclass
class _PrecomputedInfo:
    tags: dict[str, str]
    sample_rate: int | None = None
    channels: int | None = None


# ---------------------------------------------------------------- beats (optional module)


def _beat_detector() -> Callable | None:
    """``beats.beats_of_file`` when that module is installed, else None (beats stay NULL)."""
    try:
        from mgsv_cli.media.beats import beats_of_file
    except ImportError:
        return None
    return beats_of_file


def _beats_json(detect, path: Path) -> str | None:
    """The track's beat grid (``beats.BeatGrid.to_json``), or None when it cannot be
    computed: beats are an optional refinement, never a reason to fail a track."""
    try:
        return detect(path).to_json()
    except MgsvError:
        return None


def _fill_missing_beats(conn, progress: IndexProgress, report: IndexReport) -> None:
    """Give tracks indexed before beat detection existed their beat grid (no re-embedding)."""
    detect = _beat_detector()
    if detect is None:
        return
    pending = [p for (p,) in conn.execute("SELECT path FROM tracks WHERE beats IS NULL")]
    pending = [p for p in pending if os.path.exists(p)]
    if not pending:
        return
    progress.stage("beats", len(pending))
    for path in pending:
        progress.advance("beats", 1, path)
        beats = _beats_json(detect, Path(path))
        if beats is None:
            continue
        with _transaction(conn, bump_generation=False):
            conn.execute("UPDATE tracks SET beats = ? WHERE path = ?", (beats, path))
        report.beats_added += 1


# ---------------------------------------------------------------- reading


def _readable(method):
    """Turn SQLite failures of a read (a damaged or foreign file) into a one-line IndexDatabaseError."""
    import functools

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise IndexDatabaseError(f"cannot read the music index {self.path}: {exc}") from None

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
        while rows := cursor.fetchmany(chunk):
            ids = [r[0] for r in rows]
            feats = np.stack(
                [np.frombuffer(r[3], dtype="<f2").reshape(r[1], r[2]) for r in rows]
            ).astype(np.float32)
            mask = np.stack([np.frombuffer(r[4], dtype=np.uint8) for r in rows]).astype(np.float32)
            yield ids, feats, mask

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
        raise IndexDatabaseError(f"cannot read the music index {index}: {exc}") from None
    except BaseException:
        conn.close()
        raise
    return MusicIndex(index, conn, meta)


def stored_beats(track_path: str | os.PathLike, index_path: str | os.PathLike | None = None) -> dict | None:
    """The beat grid the index holds for ``track_path`` (``beats.BeatGrid.to_dict()`` form),
    or None when there is no index, the track is not in it, or its beats were not found.

    For `mgsv render` to snap a cut's start onto a beat without decoding the track again.
    """
    try:
        index = open_index(index_path, require_tracks=False)
    except IndexDatabaseError:
        return None
    with index:
        try:
            row = index._conn.execute(
                "SELECT beats FROM tracks WHERE path = ?", (str(Path(track_path).expanduser().resolve()),)
            ).fetchone()
        except sqlite3.Error:
            return None
    return json.loads(row[0]) if row and row[0] else None
