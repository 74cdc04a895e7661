"""Indexing: the audio files under a folder into a track store, written once for both backends.

``index_folder`` runs four steps against the :class:`~mgsv_cli.index.backend.TrackStore`
interface:

1. **scan**: the audio files under the folder (``media.files.scan_audio_files``);
2. **plan**: each file against what the store knows of it (:func:`check_file`):
   unchanged (size and mtime as stored: not even read), touched (same content, new mtime),
   failed before and unchanged (skipped), failing now (unreadable, empty), or a job to
   embed (new, or changed: its full content hash differs); a job whose content the store
   holds already reuses those tokens (a renamed or copied file); stored files that are gone
   are the run's ``missing`` (dropped with ``prune``);
3. **embed**: probe each job (tags, duration), run the encoders (AST windows batched across
   tracks), find the beat grid;
4. **write**: ``store.commit_size`` tracks per ``add_tracks`` (one commit each).

The Ray engine (``ray_engine.py``) runs the same plan (:func:`check_file`) and the same
per-file work as Ray tasks. Design choices:

* **Change detection.** size + mtime first (no read at all); when they differ the file's
  full BLAKE2b content hash decides: a touched-but-identical file only gets its new mtime.
  A full hash (not a sample) because an audio editor can rewrite a region in the middle of
  a WAV without changing its size; hashing runs at ~1 GB/s, far below AST's cost, and only
  for files whose size or mtime changed.
* **Failed files are remembered** (size, mtime, reason) and not tried again while
  unchanged: the same bytes fail the same way, and a rerun with nothing new to do must exit
  0. A changed file is retried by itself; ``retry_failed`` and ``force`` retry them all. A
  file that later indexes fine is forgotten, and so is one gone when ``prune`` runs.
* **Encoders load only when something needs embedding**, so a no-op rerun loads no
  network; the store's encoders are checked first (``encoder_kind``, before any loading).
* **Long tracks.** The network sees the first ``recipe.MAX_MUSIC_SECONDS`` (240 s) of a
  track; longer ones are embedded from that window and counted in ``long_tracks``.
* **Interruption.** Ctrl-C keeps what was committed: the report so far goes to
  ``progress.interrupted`` and the ``KeyboardInterrupt`` goes on; the rerun resumes.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from mgsv_cli.errors import MgsvError, UsageError, first_line, storage_error
from mgsv_cli.features import recipe
from mgsv_cli.index.backend import is_lance_uri, open_store
from mgsv_cli.index.plan import (
    FAILED,
    SKIPPED,
    TOUCHED,
    UNCHANGED,
    Checked,
    IndexProgress,
    IndexReport,
    audio_seconds,
    beats_and_structure,
    check_encoder_kind,
    check_local_file,
    fill_missing_analysis,
    new_track,
    probe_audio,
    signature,
)
from mgsv_cli.index.records import FileState, NewTrack
from mgsv_cli.index.trackstore import TrackStore

__all__ = ["IndexProgress", "IndexReport", "IndexRequest", "failed_files", "import_tokens", "index_folder",
           "run_index"]

EncodersArg = Any  # features.Encoders, or a zero-argument callable returning one


# ---------------------------------------------------------------- one run


def index_folder(source: str | os.PathLike, store: str | os.PathLike | None = None, *, encoders: EncodersArg,
                 prune: bool = False, force: bool = False, retry_failed: bool = False,
                 progress: IndexProgress | None = None, detect_beats: bool = True, encoder_kind: str | None = None,
                 key_encoding: str | None = None, lock_timeout: float = 2.0) -> IndexReport:
    """Bring the store at ``store`` (an SQLite file, default mgsv's index, or a Lance folder/URI;
    made when missing) up to date with the audio files under ``source``.

    ``encoders``: a ``features.Encoders`` or a zero-argument callable that loads one, called
    only when some file needs embedding. New and changed files are embedded (AST tokens
    ``[96, music_dim]`` + mask) and committed ``store.commit_size`` at a time. ``prune``
    drops stored tracks whose files vanished (anywhere, not only under ``source``) and
    forgets failed files that are gone; ``force`` re-embeds everything, retries every failed
    file and first moves a damaged SQLite index aside (``report.moved_aside``);
    ``retry_failed`` retries the remembered failures. ``detect_beats`` stores each track's
    beat grid, also for tracks stored without one. ``encoder_kind`` (``pretrained``/``tiny``)
    lets a mismatch with the store's encoders be refused before any work; ``key_encoding``
    is how a new Lance store keeps its keys.

    Raises ``UsageError`` (no such folder; no audio files in it, unless pruning),
    ``IndexDatabaseError`` (another run holds the store; damaged without ``force``; not an
    mgsv store; other encoders without ``force``), ``StorageError`` (cannot be written: the
    store is then as it was).
    """
    root = Path(source).expanduser()
    if not root.exists():
        raise UsageError(f"music folder {root} does not exist")
    from mgsv_cli.media.files import no_audio_message, scan_audio_files

    files = scan_audio_files(root)
    if not files and not prune:  # a mistyped folder must not pass for an up-to-date library, nor make a store
        raise UsageError(no_audio_message(root))
    progress = progress or IndexProgress()
    moved_aside = _move_damaged_aside(store, progress) if force else None
    with open_store(store, create=True, key_encoding=key_encoding) as target:
        report = IndexReport(index_path=target.uri, moved_aside=moved_aside)
        with target.writing(lock_timeout):
            try:
                if encoder_kind is not None and not force:
                    check_encoder_kind(target, encoder_kind)
                _Run(target, encoders, progress, report, force=force, retry=retry_failed or force,
                     detect_beats=detect_beats).run(files, prune)
            except KeyboardInterrupt:
                report.interrupted = True
                with contextlib.suppress(MgsvError, OSError):
                    report.n_tracks = len(target)
                progress.interrupted(report)
                raise
            except OSError as exc:  # anything the handled cases (unreadable music files) did not catch
                where = exc.filename if exc.filename is not None else target.uri
                raise storage_error("write the music index" if str(where) == target.uri else "use", where,
                                    exc) from None
    return report


def _move_damaged_aside(store, progress: IndexProgress) -> Path | None:
    """``force`` on a damaged SQLite index: move it aside (never deleted) before rebuilding."""
    from mgsv_cli import paths
    from mgsv_cli.index import sqlite_db
    from mgsv_cli.index.locking import writer_lock

    if store is not None and is_lance_uri(str(store)):
        return None
    index = Path(store).expanduser() if store is not None else paths.default_index_path()
    with writer_lock(index):
        damage = sqlite_db.damage_of(index)
        if damage is None:
            return None
        moved = sqlite_db.move_aside(index)
    progress.note(f"the damaged index ({damage}) was moved aside to {moved}; rebuilding")
    return moved


class _Run:
    """One indexing run's steps over a store held for writing."""

    def __init__(self, store: TrackStore, encoders: EncodersArg, progress: IndexProgress, report: IndexReport, *,
                 force: bool, retry: bool, detect_beats: bool):
        self.store, self.encoders, self.progress, self.report = store, encoders, progress, report
        self.force, self.retry, self.detect_beats = force, retry, detect_beats
        self.failed_before = store.failed_states()

    def run(self, files: list[Path], prune: bool) -> None:
        self.report.n_scanned = len(files)
        known = self.store.file_states()
        jobs = self.plan(files, {} if self.force else known)
        if self.force:  # every file is embedded again: those the store held are updates, not additions
            for job in jobs:
                job.exists = job.location in known
        if self.store.encoder_id and not self.force:
            # Before loading any network: a renamed or copied file needs none. Before pruning:
            # the vanished old name of a renamed file is where its tokens come from.
            jobs = self.reuse(jobs)
        if jobs:
            self.embed(jobs)
        self.prune_or_count_missing(prune, self.store.file_states())
        if self.detect_beats:
            self.fill_missing_analysis()
        self.report.n_tracks = len(self.store)

    # -- plan ----------------------------------------------------------------------------

    def plan(self, files: list[Path], stored: dict[str, FileState]) -> list[Checked]:
        self.progress.stage("checking", len(files))
        jobs: list[Checked] = []
        touched: list[tuple[str, FileState]] = []
        forget: list[str] = []
        for path in files:
            location = str(path)
            self.progress.advance("checking", 1, location)
            checked = check_local_file(path, stored.get(location), self.failed_before.get(location), self.retry)
            if checked.kind == SKIPPED:
                self.report.skipped_failed += 1
            elif checked.kind == FAILED:
                self.fail(location, signature(path), checked.reason)
            elif checked.kind in (UNCHANGED, TOUCHED):
                self.report.unchanged += 1
                if checked.kind == TOUCHED:
                    self.report.touched += 1
                    assert checked.state is not None  # check_file gives TOUCHED with the new state
                    touched.append((location, checked.state))
                elif checked.forget:  # back to the content that indexed fine (a restored backup)
                    forget.append(location)
            else:
                jobs.append(checked)
        # A broken link whose target is back is scanned under the target's path now (indexed
        # or failed there): the failure remembered under the link's own path is outdated.
        scanned = {str(p) for p in files}
        forget += [k for k in self.failed_before if k not in scanned and os.path.islink(k) and os.path.exists(k)]
        self.store.touch(touched)
        self.store.forget_failures(forget)
        return jobs

    def fail(self, location: str, sig: tuple[int | None, int | None], reason: str) -> None:
        self.report.failed.append((location, reason))
        self.progress.failed(location, reason)
        self.store.remember_failures([(location, sig[0], sig[1], reason)])

    def reuse(self, jobs: list[Checked]) -> list[Checked]:
        reused = set(self.store.reuse([(job.location, job.state) for job in jobs if job.state is not None]))
        for job in jobs:
            if job.location in reused:
                self.report.reused += 1
                record = self.store.find(job.location)
                if record is not None and record.duration > recipe.MAX_MUSIC_SECONDS:
                    self.report.long_tracks += 1
                self.count_stored(job)
        return [job for job in jobs if job.location not in reused]

    def count_stored(self, job: Checked) -> None:
        if job.exists:
            self.report.updated += 1
        else:
            self.report.added += 1

    # -- embed and write -----------------------------------------------------------------

    def embed(self, jobs: list[Checked]) -> None:
        probed = self.probe(jobs)
        if not probed:
            return
        encoders = self.encoders
        if callable(encoders) and not hasattr(encoders, "embed_tracks"):
            self.progress.note("loading encoders")
            encoders = encoders()
        self.store.set_encoders(encoders.encoder_id, replace=self.force)
        self.progress.stage("embedding", sum(audio_seconds(info) for _, info in probed))
        by_location = {job.location: (job, info) for job, info in probed}
        pending: list[tuple[Checked, NewTrack]] = []
        for position, result in enumerate(encoders.embed_tracks([Path(job.location) for job, _ in probed])):
            location, feats, mask, duration, error = unpack_track_result(result, [j.location for j, _ in probed],
                                                                         position)
            job, info = by_location[location]
            if error is not None:
                assert job.state is not None
                self.fail(location, (job.state.size, job.state.mtime_ns), error)
                self.progress.advance("embedding", audio_seconds(info), location)
                continue
            beats, structure = beats_and_structure(Path(location)) if self.detect_beats else (None, None)
            pending.append((job, new_track(job, info, feats, mask, duration, encoders.encoder_id, beats, structure)))
            self.report.beats_added += beats is not None
            self.report.structures_added += structure is not None
            self.report.long_tracks += float(duration) > recipe.MAX_MUSIC_SECONDS
            if len(pending) >= self.store.commit_size:
                self.write(pending)
            self.progress.advance("embedding", audio_seconds(info), location)
        self.write(pending)

    def probe(self, jobs: list[Checked]) -> list[tuple[Checked, Any]]:
        self.progress.stage("probing", len(jobs))
        probed = []
        for job in jobs:
            self.progress.advance("probing", 1, job.location)
            try:
                probed.append((job, probe_audio(Path(job.location))))
            except MgsvError as exc:
                assert job.state is not None
                self.fail(job.location, (job.state.size, job.state.mtime_ns), first_line(exc))
        return probed

    def write(self, pending: list[tuple[Checked, NewTrack]]) -> None:
        if not pending:
            return
        self.store.add_tracks([track for _, track in pending])
        for job, _ in pending:
            self.count_stored(job)
        pending.clear()

    # -- after -----------------------------------------------------------------------------

    def prune_or_count_missing(self, prune: bool, states: dict[str, FileState]) -> None:
        if prune:
            # lexists: a broken link that is still there is still a failed file of the library.
            gone_failed = [p for p in self.store.failed_states() if not os.path.lexists(p)]
            self.store.forget_failures(gone_failed)
            self.report.forgotten_failed = len(gone_failed)
        vanished = [location for location in states if not os.path.exists(location)]
        if not vanished:
            return
        if not prune:
            self.report.missing = len(vanished)
            return
        self.store.remove(vanished)
        self.report.pruned = len(vanished)

    def fill_missing_analysis(self) -> None:
        fill_missing_analysis(self.store, self.progress, self.report)

def unpack_track_result(result, locations: Sequence[str], position: int):
    """(location, feats, mask, duration, error) from one item of ``Encoders.embed_tracks``: an
    object with ``path``/``feats``/``mask``/``duration``/``error``, or a ``(path, features_or_exception)``."""
    if isinstance(result, tuple) and len(result) == 2:
        path, payload = result
    else:
        path, payload = getattr(result, "path", None), result
    location = str(Path(path).resolve()) if path is not None else locations[position]
    error = getattr(payload, "error", None)
    if isinstance(payload, BaseException):
        error = payload
    if error is not None:
        return location, None, None, None, error if isinstance(error, str) else first_line(error)
    return location, payload.feats, payload.mask, float(payload.duration), None


# ---------------------------------------------------------------- tokens made elsewhere


def import_tokens(store: str | os.PathLike | None, tracks: Iterable[NewTrack], *, lock_timeout: float = 2.0) -> int:
    """Add (or replace) tracks whose tokens were computed elsewhere (a feature set made by the
    same encoders on another machine, a benchmark), without embedding; returns how many.

    A track without a ``content_hash`` gets the file's, when the file exists, else its
    tokens'. Same one-encoder rule, and the same errors, as :func:`index_folder`.
    """
    from mgsv_cli.index.records import to_numpy
    from mgsv_cli.media.files import content_hash

    written = 0
    with open_store(store, create=True) as target, target.writing(lock_timeout):
        batch: list[NewTrack] = []
        for track in tracks:
            if not track.content_hash:
                path = Path(track.location)
                if path.is_file():
                    stat = path.stat()
                    track.size, track.mtime_ns, track.content_hash = stat.st_size, stat.st_mtime_ns, content_hash(path)
                else:
                    tokens = to_numpy(track.tokens).astype("<f2").tobytes()
                    track.content_hash = "tokens:" + hashlib.blake2b(tokens, digest_size=16).hexdigest()
            batch.append(track)
            if len(batch) >= max(target.commit_size, 64):
                written += target.add_tracks(batch)
                batch = []
        written += target.add_tracks(batch)
    return written


def failed_files(store: str | os.PathLike | None = None, *, under: str | os.PathLike | None = None):
    """(the store's URI, the files it could not take), those under the folder ``under`` only
    when given: what ``mgsv index --failed`` lists."""
    from mgsv_cli.index.records import FailedFile

    with open_store(store) as opened:
        found: list[FailedFile] = opened.failed_files()
        uri = opened.uri
    if under is not None:
        root = Path(under).expanduser()
        prefixes = {str(Path(os.path.realpath(root))), str(root.absolute())}
        found = [f for f in found if any(f.path == p or f.path.startswith(p.rstrip(os.sep) + os.sep)
                                         for p in prefixes)]
    return uri, found


# ---------------------------------------------------------------- what `mgsv index` is asked


ENGINES = ("local", "ray")


@dataclass(frozen=True)
class IndexRequest:
    """One indexing run as asked: the source, the store, the engine and the encoders, checked.

    ``store`` is the target (an SQLite file or a Lance folder/URI; None: mgsv's index);
    everything else as :func:`index_folder` and ``ray_engine.index_with_ray`` take it.
    """

    source: str
    store: str | None
    engine: str = "local"
    encoders: str = "pretrained"
    device: str = "auto"
    offline: bool = False
    weights_dir: str | None = None
    batch_windows: int | None = None
    detect_beats: bool = True
    prune: bool = False
    force: bool = False
    retry_failed: bool = False
    key_encoding: str | None = None
    ray_address: str | None = None

    @classmethod
    def build(cls, defaults: Any, names: Callable[[str], str], *, source, index=None, store=None,
              engine: str = "local", encoders=None, device=None, offline: bool = False, weights_dir=None,
              batch_windows=None, detect_beats: bool = True, prune: bool = False, force: bool = False,
              retry_failed: bool = False, keys=None, ray_address=None) -> "IndexRequest":
        """The request of ``mgsv index``'s options (``names``: how the caller spells them);
        ``defaults``: the user's settings (``index``, ``encoders``, ``device``, ``weights_dir``, ``offline``)."""
        from mgsv_cli.index.records import KEY_ENCODINGS

        if source is None:
            raise UsageError("missing MUSIC_DIR, the music folder to index: `mgsv index ~/Music` "
                             "(`mgsv index --failed` lists the files that could not be indexed)")
        encoders = encoders or defaults.encoders
        if encoders not in recipe.ENCODER_IDS:
            raise UsageError(f"{names('encoders')} {encoders!r}: expected {' or '.join(recipe.ENCODER_IDS)}")
        if engine not in ENGINES:
            raise UsageError(f"{names('engine')} {engine!r}: expected {' or '.join(ENGINES)}")
        if engine == "local" and "://" in str(source):
            raise UsageError(f"{source}: an object-store source needs {names('engine')} ray (and {names('store')})")
        if ray_address is not None and engine != "ray":
            raise UsageError(f"{names('ray_address')} goes with {names('engine')} ray")
        if store is not None and index is not None:
            raise UsageError(f"give either {names('index')} (an SQLite index) or {names('store')} "
                             "(a Lance track store), not both")
        if engine == "ray" and store is None:
            raise UsageError(f"{names('engine')} ray writes a Lance track store: pass {names('store')} DIR.lance "
                             f"or {names('store')} s3://bucket/store")
        if keys is not None and store is None:
            raise UsageError(f"{names('keys')} goes with {names('store')} (a Lance track store); "
                             "the SQLite index keeps float16 keys")
        if keys is not None and keys not in KEY_ENCODINGS:
            raise UsageError(f"{names('keys')} {keys!r}: expected {' or '.join(KEY_ENCODINGS)}")
        if batch_windows is not None and int(batch_windows) < 1:
            raise UsageError(f"{names('batch_windows')} {batch_windows}: at least 1")
        target = store if store is not None else (index if index is not None else defaults.index)
        weights_dir = weights_dir if weights_dir is not None else defaults.weights_dir
        return cls(source=str(source), store=None if target is None else str(target), engine=engine,
                   encoders=encoders, device=device or defaults.device, offline=bool(offline or defaults.offline),
                   weights_dir=None if weights_dir is None else str(weights_dir),
                   batch_windows=None if batch_windows is None else int(batch_windows), detect_beats=detect_beats,
                   prune=prune, force=force, retry_failed=retry_failed, key_encoding=keys, ray_address=ray_address)


def run_index(request: IndexRequest, progress: IndexProgress | None = None) -> IndexReport:
    """Run ``request`` on its engine: this process (:func:`index_folder`) or Ray
    (``ray_engine.index_with_ray``); the encoders load only when a file needs embedding."""
    if request.engine == "ray":
        from mgsv_cli.index.ray_engine import index_with_ray

        return index_with_ray(request.source, request.store or "", encoder_kind=request.encoders,
                              device=request.device, offline=request.offline, weights_dir=request.weights_dir,
                              batch_windows=request.batch_windows, detect_beats=request.detect_beats,
                              ray_address=request.ray_address, progress=progress, key_encoding=request.key_encoding,
                              prune=request.prune, force=request.force, retry_failed=request.retry_failed)

    def load_encoders():
        from mgsv_cli.device import resolve_device
        from mgsv_cli.features.encoders import load_encoders as load

        return load(kind=request.encoders, device=resolve_device(request.device), offline=request.offline,
                    weights_dir=Path(request.weights_dir) if request.weights_dir else None, parts=("music",),
                    batch_windows=request.batch_windows)

    return index_folder(request.source, request.store, encoders=load_encoders, prune=request.prune,
                        force=request.force, retry_failed=request.retry_failed, progress=progress,
                        detect_beats=request.detect_beats, encoder_kind=request.encoders,
                        key_encoding=request.key_encoding)
