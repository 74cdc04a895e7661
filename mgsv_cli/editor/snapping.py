"""The one path that moves a cut onto the beat (``--snap beat`` in suggest, render, export).

Every caller ends in :func:`snap_cut`: the track's beat grid (stored by ``mgsv index``,
else detected now from the file) and :func:`~mgsv_cli.media.beats.snap_start`, which
moves the start onto the nearest downbeat/beat within half a beat, keeping the cut's
length and keeping it inside the track.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from mgsv_cli.editor.record import Suggestion, SuggestionResult, track_gone
from mgsv_cli.errors import MgsvError, UsageError
from mgsv_cli.media.beats import BeatGrid, beats_of_file, snap_start

SNAP_MODES = ("beat",)


@dataclass(frozen=True)
class Snap:
    """How a cut was moved onto the beat grid (seconds)."""

    requested_start: float
    start: float
    snapped_to: str | None  # "downbeat", "beat", or None when it stayed put
    grid_source: str  # "index" (stored at index time) or "detected" (computed now)
    tempo_bpm: float

    @property
    def moved_by(self) -> float:
        return self.start - self.requested_start


def normalize_snap(snap: str | None, names=None) -> str | None:
    """``snap`` as the library takes it: ``"beat"``, or None for no snapping (``"off"`` too, the
    settings file's word for it); anything else a UsageError naming the option (``names``, see
    ``editor.requests``)."""
    if snap is None or snap == "off":
        return None
    if snap not in SNAP_MODES:
        flag = names("snap") if names is not None else "--snap"
        raise UsageError(f"{flag} {snap!r}: expected {' or '.join(('off', *SNAP_MODES))}")
    return snap


def check_snap(snap: str | None) -> None:
    """A UsageError for anything but no snapping or ``"beat"``."""
    if snap is not None:
        normalize_snap(snap)


def grid_for_track(track, index_path=None) -> tuple[BeatGrid, str]:
    """The track's beat grid and where it came from: ``"index"`` when the track store (an
    SQLite index or a Lance store) keeps one from index time, else ``"detected"`` now
    (decoding the file)."""
    stored = _stored_grid(str(track), index_path)
    if stored is not None:
        return stored, "index"
    return beats_of_file(track), "detected"


def _stored_grid(track: str, index_path) -> BeatGrid | None:
    """The grid the store at ``index_path`` (either backend; None: mgsv's index) keeps for ``track``."""
    beats = stored_for_track(track, index_path, lambda store, ids: store.beats_for(ids))
    return BeatGrid.from_dict(beats) if beats else None


def stored_for_track(track: str, index_path, read):
    """What the store at ``index_path`` keeps for the file ``track``: ``read(store, [track_id])[0]``,
    or None when there is no store, the track is not in it, or the store cannot say (the
    callers then analyse the file: beat grids here, structures in ``fitting``)."""
    from mgsv_cli.index.backend import open_store

    try:
        store = open_store(index_path)
    except MgsvError:
        return None  # no store, or not one of ours: detecting is the fallback
    with store:
        try:
            record = store.find(track)
            return read(store, [record.track_id])[0] if record is not None else None
        except MgsvError:
            return None


def snap_cut(track, start: float, length: float, track_seconds: float, *, grid: BeatGrid | None = None,
             grid_source: str = "index", index_path=None) -> Snap:
    """Move a cut of ``length`` s starting at ``start`` in ``track`` onto its beat grid.

    ``grid``: the track's grid when the caller has it (suggest reads it with the track);
    otherwise the index's, else detected from the file.
    """
    if grid is None:
        grid, grid_source = grid_for_track(track, index_path)
    new_start, kind = snap_start(start, length, grid.beats, grid.downbeats, track_seconds)
    return Snap(float(start), float(new_start), kind, grid_source, grid.tempo_bpm)


def snap_suggestion(result: SuggestionResult, pick: int = 1, index_path=None) -> tuple[SuggestionResult, Snap]:
    """``result`` with suggestion ``pick``'s cut moved onto the beat (same length, inside the track)."""
    entry = result.pick(pick)
    if not os.path.isfile(entry.track):  # say so (and how to prune it), not "cannot decode"
        raise track_gone(entry.track, result.video)
    snapped = snap_entry(entry, index_path=index_path)
    return result.with_entry(snapped[0]), snapped[1]


def snap_entry(entry: Suggestion, *, grid: BeatGrid | None = None, index_path=None) -> tuple[Suggestion, Snap]:
    """One suggestion with its cut moved onto the beat, and how it moved."""
    track_seconds = entry.track_duration or _probe_seconds(entry.track)
    length = entry.end - entry.start
    snap = snap_cut(entry.track, entry.start, length, track_seconds, grid=grid, index_path=index_path)
    moved = dataclasses.replace(entry, start=snap.start, end=snap.start + length, snapped_to=snap.snapped_to)
    return moved, snap


def _probe_seconds(track: str | os.PathLike) -> float:
    from mgsv_cli.media.ffmpeg import probe

    return probe(track).duration
