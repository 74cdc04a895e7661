"""The track store: what every index backend offers, whichever engine wrote it.

Two backends implement :class:`TrackStore`:

- the embedded SQLite file (``store.py``; the default, an editor's own library);
- a Lance dataset (``lance_store.py``) at a local folder or an object-store URI
  (``s3://...``), for catalogs of 10^5 to 10^7 tracks written by ``mgsv index --engine ray``.

A store holds, per track: a stable integer id, the location (path or URI), the content
hash, the duration, tags, the frozen AST tokens [S, 768] with their window mask [S], and
the beat grid. Beside them it keeps **derived data per checkpoint** (keyed by the
model fingerprint of :func:`mgsv_cli.index.token_cache.model_fingerprint`): each track's
pooled vector h0(M) [d] and X-Pool keys [S_i, d] (trimmed to the track's valid windows),
updated incrementally when tracks are added or changed. The two-stage search
(``search.py``) reads only the derived data for its first stage and rerank, and the AST
tokens of the final K for their moments.

:func:`open_store` is the one entry point: it picks the backend from the URI.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Iterator, Protocol, Sequence

# The records live in ``records`` so that both backends import them without a cycle.
from mgsv_cli.index.records import DerivedRows, NewTrack, ProgressFn, TrackRecord, derive_rows

__all__ = ["DerivedRows", "NewTrack", "ProgressFn", "TrackRecord", "TrackStore", "derive_rows", "is_lance_uri",
           "index_to_store", "open_store", "update_derived"]


class TrackStore(Protocol):
    """What the CLI, the search and the engines need from any backend."""

    uri: str

    @property
    def encoder_id(self) -> str | None: ...

    def __len__(self) -> int: ...

    def tracks(self, ids: Sequence[int] | None = None) -> list[TrackRecord]:
        """Records of ``ids`` (all tracks when None), in the order asked."""

    def iter_tokens(self, batch_size: int = 256) -> Iterator[tuple[Any, Any, Any]]:
        """Every track's tokens in batches: (ids int64 [B], tokens float32 [B, 96, 768], mask bool [B, 96])."""

    def tokens_for(self, ids: Sequence[int]) -> tuple[Any, Any]:
        """AST tokens of ``ids``: float32 [K, 96, 768], mask bool [K, 96], in the order asked."""

    def beats_for(self, track_id: int) -> dict | None: ...

    def content_hashes(self) -> set[str]:
        """Hashes of every stored track (an engine skips files already in)."""

    def add_tracks(self, tracks: Iterable[NewTrack]) -> int:
        """Append tracks whose content hash is not stored yet; returns how many were added.

        Atomic per call: a killed writer leaves the store as before the call.
        """

    # -- derived data per checkpoint ------------------------------------------------------

    def derived_missing(self, fingerprint: str) -> list[int]:
        """Ids of tracks with no current derived rows for ``fingerprint``."""

    def put_derived(self, fingerprint: str, rows: DerivedRows) -> None:
        """Store (replace) derived rows for ``fingerprint``; atomic per call."""

    def pooled_matrix(self, fingerprint: str) -> tuple[Any, Any]:
        """(track_ids int64 [N], pooled float32 [N, d]) for every track, ideally memory-mapped."""

    def derived_for(self, fingerprint: str, ids: Sequence[int]) -> DerivedRows:
        """Keys and pooled vectors of ``ids`` (the rerank's input), in the order asked."""

    def close(self) -> None: ...


def is_lance_uri(uri: str) -> bool:
    """Does ``uri`` name a Lance store? Any ``scheme://`` URI (``s3://``, ``gs://``, ``az://``,
    ``file://``), a path ending in ``.lance``, or an existing folder (an SQLite index is a file)."""
    import os

    text = str(uri)
    return "://" in text or text.rstrip("/\\").endswith(".lance") or os.path.isdir(os.path.expanduser(text))


def open_store(uri, *, create: bool = False, key_encoding: str | None = None) -> TrackStore:
    """The backend meant by ``uri``: a ``*.lance`` folder, an existing folder or any
    ``scheme://`` URI opens a Lance store, anything else the SQLite index file.

    ``create`` makes an empty store when there is none (for either backend); without it a
    missing store is an ``IndexDatabaseError`` naming `mgsv index`. Object-store URIs go to
    Lance unchanged: credentials come from the usual environment variables (``AWS_*``...).
    ``key_encoding``: how a new Lance store keeps X-Pool keys (``float16``, ``int8``; see
    ``lance_store``); an SQLite index keeps float16.
    """
    from mgsv_cli.errors import UsageError

    text = str(uri).strip() if uri is not None else ""
    if not text:
        raise UsageError("no store given: pass a path to an .sqlite index or a Lance folder/URI")
    if is_lance_uri(text):
        from mgsv_cli.index.lance_store import LanceTrackStore

        return LanceTrackStore.open(text, create=create, key_encoding=key_encoding)
    _check_sqlite_keys(key_encoding)
    from mgsv_cli.index.sqlite_store import SqliteTrackStore

    return SqliteTrackStore.open(text, create=create)


def _check_sqlite_keys(key_encoding: str | None) -> None:
    """An SQLite index keeps float16 keys: asking it for another encoding is a usage error."""
    from mgsv_cli.errors import UsageError

    if key_encoding not in (None, "float16"):
        raise UsageError(f"{key_encoding} keys are for Lance track stores (--store DIR.lance); "
                         "an SQLite index keeps float16 keys")


def update_derived(store: TrackStore, model, fingerprint: str, *, batch_size: int = 128,
                   progress: ProgressFn | None = None) -> int:
    """Compute and store ``model``'s derived rows for every track that lacks them; returns how many.

    Incremental: only :meth:`TrackStore.derived_missing` is encoded, ``batch_size`` tracks
    per ``model.encode_music`` call and per (atomic) :meth:`TrackStore.put_derived`.
    """
    missing = store.derived_missing(fingerprint)
    for start in range(0, len(missing), batch_size):
        ids = missing[start:start + batch_size]
        tokens, mask = store.tokens_for(ids)
        store.put_derived(fingerprint, derive_rows(model, ids, tokens, mask))
        if progress:
            progress("derived", min(start + batch_size, len(missing)), len(missing))
    return len(missing)


def index_to_store(root, store_uri, encoders, progress=None, *, batch_size: int = 32, detect_beats: bool = False,
                   encoder_kind: str | None = None, key_encoding: str | None = None):
    """Bring the store at ``store_uri`` up to date with the audio files under ``root`` (the local engine).

    An SQLite index goes through :func:`mgsv_cli.index.store.index_music` unchanged. A Lance
    store (created when missing) gets every file whose content hash it does not hold yet,
    embedded here and added ``batch_size`` tracks per commit (a killed run keeps the
    batches committed; the rerun skips them). ``encoders`` and ``progress`` are those of
    ``index_music`` (an ``Encoders`` or a zero-argument loader; an ``IndexProgress``).
    ``key_encoding``: how a new Lance store keeps its X-Pool keys (see :func:`open_store`).
    Returns an :class:`~mgsv_cli.index.store.IndexReport` (``index_path`` is the URI for Lance).
    """
    from mgsv_cli.index import store as sqlite_index

    if not is_lance_uri(str(store_uri)):
        _check_sqlite_keys(key_encoding)  # before any work
        return sqlite_index.index_music(root, store_uri, encoders=encoders, progress=progress,
                                        detect_beats=detect_beats, encoder_kind=encoder_kind)
    from pathlib import Path

    from mgsv_cli.errors import UsageError
    from mgsv_cli.index.lance_store import LanceTrackStore
    from mgsv_cli.media.files import no_audio_message, scan_audio_files

    source = Path(root).expanduser()
    if not source.exists():
        raise UsageError(f"music folder {source} does not exist")
    files = scan_audio_files(source)
    if not files:  # before a store is made: a mistyped folder leaves nothing behind
        raise UsageError(no_audio_message(source))
    target = LanceTrackStore.open(str(store_uri), create=True, key_encoding=key_encoding)
    progress = progress or sqlite_index.IndexProgress()
    report = sqlite_index.IndexReport(index_path=target.uri)  # type: ignore[arg-type]
    jobs = _lance_jobs(files, target, progress, report)
    if jobs:
        if callable(encoders) and not hasattr(encoders, "embed_tracks"):
            progress.note("loading encoders")
            encoders = encoders()
        stored = target.encoder_id
        if stored is not None and stored != encoders.encoder_id:
            from mgsv_cli.errors import IndexDatabaseError

            raise IndexDatabaseError(f"the track store {target.uri} holds tokens of encoders '{stored}', not "
                                     f"'{encoders.encoder_id}'; use another --store for these encoders")
        _embed_into(target, jobs, encoders, progress, report, batch_size, detect_beats)
        target.compact()  # one fragment per batch otherwise; a no-op below 64 fragments
    report.n_tracks = len(target)
    return report


def _lance_jobs(files, target, progress, report) -> list:
    """The ``files`` whose content the store does not hold: (path, size, hash, info)."""
    from mgsv_cli.errors import MgsvError, first_line
    from mgsv_cli.index import store as sqlite_index
    from mgsv_cli.media import ffmpeg as media
    from mgsv_cli.media.files import content_hash

    report.n_scanned = len(files)
    stored = target.content_hashes()
    progress.stage("checking", len(files))
    jobs, seen = [], set()
    for path in files:
        progress.advance("checking", 1, str(path))
        try:
            size = path.stat().st_size
            digest = content_hash(path) if size else None
        except OSError as exc:
            report.failed.append((str(path), sqlite_index.unreadable_reason(path, exc)))
            progress.failed(*report.failed[-1])
            continue
        if digest is None:
            report.failed.append((str(path), "empty file (0 bytes)"))
            progress.failed(*report.failed[-1])
        elif digest in stored or digest in seen:
            report.unchanged += 1
        else:
            seen.add(digest)
            jobs.append(sqlite_index._Job(path, size, 0, digest, exists=False))
    progress.stage("probing", len(jobs))
    probed = []
    for job in jobs:
        progress.advance("probing", 1, str(job.path))
        try:
            job.info = media.probe(job.path)
        except MgsvError as exc:
            report.failed.append((str(job.path), first_line(exc)))
            progress.failed(*report.failed[-1])
            continue
        if float(getattr(job.info, "duration", 0.0) or 0.0) > 0:
            probed.append(job)
        else:
            report.failed.append((str(job.path), "no audio (zero duration)"))
            progress.failed(*report.failed[-1])
    return probed


def _embed_into(target, jobs, encoders, progress, report, batch_size: int, detect_beats: bool) -> None:
    from mgsv_cli.features import recipe
    from mgsv_cli.index import store as sqlite_index

    progress.stage("embedding", sum(j.audio_seconds for j in jobs))
    detect = sqlite_index.beat_detector() if detect_beats else None
    by_path = {str(j.path): j for j in jobs}
    pending: list[NewTrack] = []

    def flush() -> None:
        report.added += target.add_tracks(pending)
        pending.clear()

    for position, result in enumerate(encoders.embed_tracks([j.path for j in jobs])):
        path, feats, mask, duration, error = sqlite_index._unpack_track_result(result, jobs, position)
        job = by_path[path]
        progress.advance("embedding", job.audio_seconds, path)
        if error is not None:
            report.failed.append((path, error))
            progress.failed(path, error)
            continue
        beats = sqlite_index.beats_json(detect, job.path) if detect else None
        pending.append(NewTrack(path, job.digest, float(duration), feats, mask, encoders.encoder_id,
                                sqlite_index.track_tags(job.info), json.loads(beats) if beats else None))
        report.long_tracks += float(duration) > recipe.MAX_MUSIC_SECONDS
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
