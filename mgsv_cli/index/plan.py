"""The plan of one file, shared by both indexing engines: what to do with it, and the work on it.

:func:`check_file` classifies a file against what the store knows of it (unchanged, touched,
failed before and unchanged, failing now, or to embed; its content hashed only when size or
mtime do not settle it); :func:`probe_audio`, :func:`beat_grid` and :func:`new_track` are the
work on a file to embed. ``pipeline`` (this process) and ``ray_engine`` (Ray tasks) run them
the same way and report in an :class:`IndexReport` through an :class:`IndexProgress`.
"""
from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mgsv_cli.errors import IndexDatabaseError, MgsvError, UsageError
from mgsv_cli.features import recipe
from mgsv_cli.index.records import FileState, NewTrack, clean_tags
from mgsv_cli.index.trackstore import TrackStore


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
    structures_added: int = 0
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


def beats_and_structure(path: Path, grid: dict | None = None) -> tuple[dict | None, dict | None]:
    """The track's beat grid and structure (``media.structure.TrackStructure.to_dict()``: bars,
    sections, the ending) from one decode; ``grid``: the beat grid already stored for it (its
    bars are then the stored grid's downbeats, so snapping and fitting agree). Either is None
    when it cannot be found: like beats, structure is a refinement, never a reason to fail a track."""
    from mgsv_cli.media.beats import ANALYSIS_SAMPLE_RATE, BeatGrid
    from mgsv_cli.media.ffmpeg import read_audio_mono
    from mgsv_cli.media.structure import analyse_signal

    try:
        audio = read_audio_mono(path, sample_rate=ANALYSIS_SAMPLE_RATE)
    except MgsvError:
        return grid, None
    try:
        stored = BeatGrid.from_dict(grid) if grid is not None else None
    except (MgsvError, KeyError, TypeError, ValueError):
        stored = None
    try:
        found, structure = analyse_signal(audio, ANALYSIS_SAMPLE_RATE, stored)
    except (MgsvError, ValueError, FloatingPointError):
        return grid, None
    return (grid if grid is not None else found.to_dict()), structure.to_dict()


def new_track(checked: Checked, info, feats, mask, duration: float, encoder_id: str,
              beats: dict | None, structure: dict | None = None) -> NewTrack:
    """The :class:`NewTrack` of an embedded file."""
    assert checked.state is not None
    return NewTrack(checked.location, checked.state.content_hash, float(duration), feats, mask, encoder_id,
                    clean_tags(getattr(info, "tags", None)), beats, checked.state.size, checked.state.mtime_ns,
                    _int_or_none(getattr(info, "sample_rate", None)), _int_or_none(getattr(info, "channels", None)),
                    structure)


def _int_or_none(value) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def check_encoder_kind(store: TrackStore, kind: str) -> None:
    """Refuse, before any loading, to add ``kind`` encoders' tokens to a store of another kind's."""
    stored = store.encoder_id
    if stored and recipe.encoder_kind_of(stored) != kind and len(store):
        built = recipe.encoder_kind_of(stored)
        raise IndexDatabaseError(
            f"{store.uri} holds tracks embedded with {built} encoders ('{stored}'), not {kind} ones; "
            f"re-run with --encoders {built}, or with --force to rebuild it with {kind} encoders, "
            "or use --index for a separate index")


def fill_missing_analysis(store, progress: IndexProgress, report: IndexReport) -> None:
    """Give tracks stored without a beat grid or a structure theirs (no re-embedding; one
    decode each): an index from before structures gains them on its next run. A track
    with a grid keeps it, its structure's bars are that grid's downbeats."""
    no_beats = dict(store.tracks_without_beats())
    no_structure = dict(store.tracks_without_structure())
    pending = sorted((track_id, location) for track_id, location in {**no_beats, **no_structure}.items()
                     if "://" not in location and os.path.exists(location))  # local files
    if not pending:
        return
    progress.stage("beats", len(pending))
    grids = dict(zip([i for i, _ in pending], store.beats_for([i for i, _ in pending])))
    beats_found: list[tuple[int, dict | None]] = []
    structures_found: list[tuple[int, dict | None]] = []
    for position, (track_id, location) in enumerate(pending):
        progress.advance("beats", 1, location)
        beats, structure = beats_and_structure(Path(location), grids.get(track_id))
        if track_id in no_beats and beats is not None:
            beats_found.append((track_id, beats))
        if track_id in no_structure and structure is not None:
            structures_found.append((track_id, structure))
        if len(beats_found) + len(structures_found) >= 64 or position == len(pending) - 1:
            store.set_beats(beats_found)  # in batches: an interrupted run keeps what it found
            store.set_structures(structures_found)
            report.beats_added += len(beats_found)
            report.structures_added += len(structures_found)
            beats_found, structures_found = [], []

