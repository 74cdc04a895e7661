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
import errno
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from mgsv_cli.errors import IndexDatabaseError, MgsvError, UsageError, first_line, storage_error
from mgsv_cli.features import recipe
from mgsv_cli.index.backend import TrackStore, is_lance_uri, open_store
from mgsv_cli.index.records import FileState, NewTrack, clean_tags

EncodersArg = Any  # features.Encoders, or a zero-argument callable returning one


@dataclass
class IndexReport:
    """What one indexing run did."""

    index_path: str
    n_scanned: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    touched: int = 0  # counted in ``unchanged`` too: same content, only the mtime changed
    reused: int = 0  # counted in ``added``/``updated`` too: tokens copied from identical content
    pruned: int = 0
    missing: int = 0  # stored files that vanished and were kept (no prune)
    beats_added: int = 0
    n_tracks: int = 0  # tracks in the store after the run
    failed: list[tuple[str, str]] = field(default_factory=list)  # failed in this run (new or retried)
    skipped_failed: int = 0  # files that failed before, unchanged since: not tried again
    forgotten_failed: int = 0  # failed files gone from disk, forgotten by prune
    long_tracks: int = 0  # tracks indexed in this run longer than the network's window (240 s)
    moved_aside: Path | None = None  # where ``force`` moved a damaged index before rebuilding
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        """Nothing failed in this run (files skipped as known failures do not count)."""
        return not self.failed and not self.interrupted


class IndexProgress:
    """Hooks an indexing run calls as it works; the default does nothing (the CLI draws bars).

    Stages, in order: ``checking`` (files: stat, hash when changed), ``probing`` (files to
    embed), ``embedding`` (seconds of audio, the unit AST's cost follows), ``beats`` (tracks
    whose beat grid is missing); the Ray engine reports one stage, ``indexing`` (files).
    """

    def stage(self, name: str, total: float) -> None:
        """Stage ``name`` starts with ``total`` units of work."""

    def advance(self, name: str, amount: float = 1.0, detail: str = "") -> None:
        """``amount`` units of stage ``name`` are done (``detail``: the file just handled)."""

    def failed(self, path: str, reason: str) -> None:
        """A file was skipped: unreadable, empty, undecodable."""

    def note(self, message: str) -> None:
        """A one-line notice (e.g. "loading encoders")."""

    def interrupted(self, report: IndexReport) -> None:
        """The run was interrupted (Ctrl-C): ``report`` says what was kept."""


# ---------------------------------------------------------------- the plan of one file


UNCHANGED, TOUCHED, SKIPPED, FAILED, EMBED = "unchanged", "touched", "skipped", "failed", "embed"


@dataclass
class Checked:
    """What to do with one file (:func:`check_file`). ``state`` is the file's (size, mtime, hash)
    once known; ``reason`` why it failed; ``forget`` whether a remembered failure is outdated;
    ``exists`` whether the store held a track for this location."""

    kind: str
    location: str
    state: FileState | None = None
    reason: str = ""
    forget: bool = False
    exists: bool = False


def signature(path: Path) -> tuple[int | None, int | None]:
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


def check_file(location: str, size: int | None, mtime_ns: int | None, stored: FileState | None,
               failed: tuple[int | None, int | None] | None, digest: Callable[[], str], *, retry: bool = False,
               stat_error: str | None = None) -> Checked:
    """Classify one file against what the store knows (the plan, for both engines).

    ``size``/``mtime_ns``: the file's now (its link's, or None, when ``stat_error`` says why
    it cannot be read); ``stored``: the store's state of ``location`` (None: new, or a
    forced run); ``failed``: the (size, mtime) of a remembered failure; ``digest()``: the
    content hash, called only when size and mtime do not settle it (may raise ``OSError``).
    """
    now = (size, mtime_ns)
    if stat_error is not None:
        if failed == now and not retry:
            return Checked(SKIPPED, location)
        return Checked(FAILED, location, reason=stat_error)
    if stored is not None and (stored.size, stored.mtime_ns) == now:
        return Checked(UNCHANGED, location, stored, forget=failed is not None)
    if failed == now and not retry:
        return Checked(SKIPPED, location)
    if size == 0:
        return Checked(FAILED, location, reason="empty file (0 bytes)")
    try:
        content = digest()
    except OSError as exc:
        return Checked(FAILED, location, reason=unreadable_reason(Path(location), exc))
    state = FileState(size, mtime_ns, content)
    # A stored size of None is unknown, not different: a Lance store of format 1 kept none, and its
    # files must be recognised by content (not embedded again) on their first run after migrating.
    if stored is not None and stored.size in (None, size) and stored.content_hash == content:
        return Checked(TOUCHED, location, state, forget=True)
    return Checked(EMBED, location, state, exists=stored is not None)


def file_digest(path: Path) -> Callable[[], str]:
    from mgsv_cli.media.files import content_hash

    return lambda: content_hash(path)


def check_local_file(path: Path, stored: FileState | None, failed, retry: bool) -> Checked:
    """:func:`check_file` of a file on this machine."""
    try:
        info = path.stat()
    except OSError as exc:
        size, mtime_ns = signature(path)
        return check_file(str(path), size, mtime_ns, stored, failed, file_digest(path), retry=retry,
                          stat_error=unreadable_reason(path, exc))
    return check_file(str(path), info.st_size, info.st_mtime_ns, stored, failed, file_digest(path), retry=retry)


# ---------------------------------------------------------------- per-file work


def probe_audio(path: Path):
    """The file's ``MediaInfo`` when it holds audio of some length; ``MediaError``/``UsageError`` otherwise."""
    from mgsv_cli.media import ffmpeg as media

    info = media.probe(path)
    if not float(getattr(info, "duration", 0.0) or 0.0) > 0:
        raise UsageError("no audio (zero duration)")
    return info


def audio_seconds(info) -> float:
    """The seconds of a track the encoders see (the unit of the embedding stage's progress)."""
    duration = float(getattr(info, "duration", 0.0) or 0.0)
    return max(1.0, min(duration, recipe.MAX_MUSIC_SECONDS))


def beat_grid(path: Path) -> dict | None:
    """The track's beat grid (``media.beats.BeatGrid.to_dict()``), or None when it cannot be
    found: beats are a refinement, never a reason to fail a track."""
    from mgsv_cli.media.beats import beats_of_file

    try:
        return beats_of_file(path).to_dict()
    except MgsvError:
        return None


def new_track(checked: Checked, info, feats, mask, duration: float, encoder_id: str,
              beats: dict | None) -> NewTrack:
    """The :class:`NewTrack` of an embedded file."""
    assert checked.state is not None
    return NewTrack(checked.location, checked.state.content_hash, float(duration), feats, mask, encoder_id,
                    clean_tags(getattr(info, "tags", None)), beats, checked.state.size, checked.state.mtime_ns,
                    _int_or_none(getattr(info, "sample_rate", None)), _int_or_none(getattr(info, "channels", None)))


def _int_or_none(value) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


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


def check_encoder_kind(store: TrackStore, kind: str) -> None:
    """Refuse, before any loading, to add ``kind`` encoders' tokens to a store of another kind's."""
    stored = store.encoder_id
    if stored and recipe.encoder_kind_of(stored) != kind and len(store):
        built = recipe.encoder_kind_of(stored)
        raise IndexDatabaseError(
            f"{store.uri} holds tracks embedded with {built} encoders ('{stored}'), not {kind} ones; "
            f"re-run with --encoders {built}, or with --force to rebuild it with {kind} encoders, "
            "or use --index for a separate index")


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
            self.fill_missing_beats()
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
            beats = beat_grid(Path(location)) if self.detect_beats else None
            pending.append((job, new_track(job, info, feats, mask, duration, encoders.encoder_id, beats)))
            self.report.beats_added += beats is not None
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

    def fill_missing_beats(self) -> None:
        """Give tracks stored without a beat grid theirs (no re-embedding)."""
        pending = [(track_id, location) for track_id, location in self.store.tracks_without_beats()
                   if os.path.exists(location)]
        if not pending:
            return
        self.progress.stage("beats", len(pending))
        found = []
        for track_id, location in pending:
            self.progress.advance("beats", 1, location)
            beats = beat_grid(Path(location))
            if beats is not None:
                found.append((track_id, beats))
        self.store.set_beats(found)
        self.report.beats_added += len(found)


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
