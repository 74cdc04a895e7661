"""The suggestion record: one typed value that ``suggest`` writes and ``render``/``export`` read.

``SuggestionResult`` is what ``mgsv suggest --json`` prints for a video (``to_json`` /
``from_json``); the last one per video is remembered under ``paths.suggestions_dir()``
(keyed by the video's absolute path, invalidated when the video's size or mtime
changes) so that ``mgsv render`` and ``mgsv export`` need no arguments but the video.
``SuggestionResult.pick`` is the one place ``--pick N`` is resolved.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mgsv_cli import paths
from mgsv_cli.editor.editlist import EditList
from mgsv_cli.errors import MediaError, UsageError, first_line, os_error_cause

# A track this much shorter than the clip still "fits": durations come from different
# containers (the clip's from its video stream, the track's from its audio) and differ
# by a few milliseconds for a track cut to the clip's length.
FIT_TOLERANCE = 0.05
PRUNE_HINT = "`mgsv index MUSIC_DIR --prune` drops it from the index"


def tracks_fit(track_seconds, clip_seconds: float):
    """Which tracks are long enough to play under the whole clip: ``track_seconds`` float [N] ->
    bool [N] (unknown lengths, 0 or NaN, fit; so does everything for a clip of unknown length)."""
    import numpy as np

    seconds = np.asarray(track_seconds, dtype=np.float64)
    return ~((seconds > 0) & (clip_seconds > 0) & (seconds + FIT_TOLERANCE < clip_seconds))


def track_fits(track_seconds: float, clip_seconds: float) -> bool:
    """Whether a track is long enough to play under the whole clip (:func:`tracks_fit` of one)."""
    return bool(tracks_fit(track_seconds, clip_seconds))


def shorter_than_clip(track_seconds: float, clip_seconds: float) -> str:
    """The words render and export both use when the chosen track is shorter than the clip."""
    return f"the track ({track_seconds:.2f} s) is shorter than the clip ({clip_seconds:.2f} s)"


def track_gone(track: str | os.PathLike, video: str | os.PathLike) -> MediaError:
    """The error for a remembered suggestion whose track file was moved or deleted."""
    return MediaError(f"{track}: the suggested track is gone (moved or deleted since `mgsv suggest`): "
                      f"run `mgsv suggest {video}` again; {PRUNE_HINT}")


@dataclass(frozen=True)
class Suggestion:
    """One ranked track: its relevance and the cut to use (seconds)."""

    rank: int
    track: str  # absolute path of the audio file
    score: float  # p_s = cos(h(v), h0(M)) + cos(h(v), h1(M)), in [-2, 2]
    start: float  # the cut render uses: as long as the video, inside the track
    end: float
    predicted_start: float  # the raw span MaDe predicted
    predicted_end: float
    track_duration: float
    title: str | None = None
    artist: str | None = None
    snapped_to: str | None = None  # "downbeat" | "beat" when --snap beat moved the cut's start
    fits: bool = True  # False: the track is shorter than the clip (ranked only with --include-short)
    # The matching attention over the track's 2.5 s windows (max 1): why this track, why here.
    relevance: list[float] | None = None
    # --fit ending/loop: the spans of the track that play and their joins (None: the cut, start-end).
    edit: EditList | None = None

    def __post_init__(self) -> None:
        if isinstance(self.edit, dict):  # dataclasses.asdict's form (the server's exact answers)
            object.__setattr__(self, "edit", EditList(**self.edit))

    @property
    def name(self) -> str:
        if self.title and self.artist:
            return f"{self.artist} - {self.title}"
        return self.title or Path(self.track).name

    @classmethod
    def from_json(cls, data: dict[str, Any], clip_seconds: float = 0.0) -> "Suggestion":
        """The inverse of :meth:`to_json` (unknown keys are ignored).

        Records of mgsv 0.1 have no ``fits``: it is worked out from the track's and the
        clip's (``clip_seconds``) lengths.
        """
        try:
            track_duration = float(data.get("track_duration") or 0.0)
            fits = data.get("fits")
            return cls(
                rank=int(data["rank"]), track=str(data["track"]), score=float(data["score"]),
                start=float(data["start"]), end=float(data["end"]),
                predicted_start=float(data.get("predicted_start", data["start"])),
                predicted_end=float(data.get("predicted_end", data["end"])),
                track_duration=track_duration,
                title=data.get("title"), artist=data.get("artist"), snapped_to=data.get("snapped_to"),
                fits=track_fits(track_duration, clip_seconds) if fits is None else bool(fits),
                relevance=[float(v) for v in data["relevance"]] if data.get("relevance") is not None else None,
                edit=EditList.from_dict(data["edit"]) if data.get("edit") is not None else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"not a suggestion record: {first_line(exc)}") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "track": self.track,
            "score": round(self.score, 6),
            "start": round(self.start, 6),
            "end": round(self.end, 6),
            "predicted_start": round(self.predicted_start, 6),
            "predicted_end": round(self.predicted_end, 6),
            "track_duration": round(self.track_duration, 6),
            "title": self.title,
            "artist": self.artist,
            **({"snapped_to": self.snapped_to} if self.snapped_to else {}),
            "fits": self.fits,
            **({"relevance": self.relevance} if self.relevance is not None else {}),
            **({"edit": self.edit.to_dict()} if self.edit is not None else {}),
        }


@dataclass
class SuggestionResult:
    """The suggestions for one video, best first."""

    video: str  # absolute path
    duration: float  # seconds; every cut is this long (unless the track is shorter)
    suggestions: list[Suggestion]
    checkpoint: str  # checkpoint id ("untrained-..." for --untrained)
    encoders: str  # "pretrained" or "tiny"
    untrained: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    left_out_short: int = 0  # indexed tracks shorter than the clip, not ranked (no --include-short)
    left_out_missing: int = 0  # top-ranked tracks skipped because their file is gone

    @property
    def notes(self) -> list[str]:
        """Warnings every output must carry: demo models, tracks left out, short picks."""
        notes = []
        if self.untrained:
            notes.append("untrained model (random weights): rankings and moments are meaningless")
        if self.encoders == "tiny":
            notes.append("tiny random encoders, not CLIP/AST: for tests and demos only")
        if self.left_out_short:
            notes.append(f"{self.left_out_short} track(s) shorter than the clip left out "
                         "(--include-short ranks them too)")
        if self.left_out_missing:
            notes.append(f"{self.left_out_missing} indexed track(s) skipped: the file is gone "
                         "(`mgsv index MUSIC_DIR --prune` drops them from the index)")
        short = sum(1 for s in self.suggestions if not s.fits)
        if short:
            notes.append(f"{short} suggestion(s) shorter than the clip: render plays such a track whole, "
                         "then silence")
        return notes

    def to_json(self) -> dict[str, Any]:
        return {
            "video": self.video,
            "duration": round(self.duration, 6),
            "suggestions": [s.to_json() for s in self.suggestions],
            "checkpoint": self.checkpoint,
            "encoders": self.encoders,
            "untrained": self.untrained,
            "left_out_short": self.left_out_short,
            "left_out_missing": self.left_out_missing,
            **({"notes": self.notes} if self.notes else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SuggestionResult":
        """The inverse of :meth:`to_json`: a ``mgsv suggest --json`` line, or a remembered record."""
        if not isinstance(data, dict) or not isinstance(data.get("suggestions"), list):
            raise UsageError("not a suggestion record: no list of suggestions")
        try:
            duration = float(data["duration"])
            return cls(
                video=str(data["video"]), duration=duration,
                suggestions=[Suggestion.from_json(s, duration) for s in data["suggestions"]],
                checkpoint=str(data.get("checkpoint", "")), encoders=str(data.get("encoders", "pretrained")),
                untrained=bool(data.get("untrained", False)),
                left_out_short=int(data.get("left_out_short") or 0),
                left_out_missing=int(data.get("left_out_missing") or 0),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"not a suggestion record: {first_line(exc)}") from None

    def pick(self, rank: int = 1) -> Suggestion:
        """Suggestion ``rank`` (1 = best); a UsageError naming ``--pick`` when there is none."""
        if rank < 1:
            raise UsageError(f"--pick {rank}: ranks start at 1")
        for entry in self.suggestions:
            if entry.rank == rank:
                return entry
        raise UsageError(f"--pick {rank}: only {len(self.suggestions)} suggestion(s) for {self.video or 'this video'}")

    def with_entry(self, entry: Suggestion) -> "SuggestionResult":
        """A copy with ``entry`` in place of the suggestion of the same rank."""
        return dataclasses.replace(self, suggestions=[entry if s.rank == entry.rank else s for s in self.suggestions])


# ---------------------------------------------------------------- remembered per video


def _remembered_path(video_path: Path) -> Path:
    key = hashlib.blake2b(str(video_path).encode(), digest_size=12).hexdigest()
    return paths.suggestions_dir() / f"{key}.json"


def remember_suggestion(result: SuggestionResult) -> Path:
    """Store ``result`` as the last suggestion of its video (keyed by absolute path)."""
    video = Path(result.video)
    try:
        stat = video.stat()
    except OSError as exc:
        raise MediaError(f"{video}: {os_error_cause(exc)}") from None
    record = {
        **result.to_json(),
        "video_size": stat.st_size,
        "video_mtime_ns": stat.st_mtime_ns,
        "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    target = _remembered_path(video)
    paths.atomic_write_text(target, json.dumps(record, indent=2) + "\n")
    return target


def load_last_suggestion(video_path: str | os.PathLike, hint: str | None = None) -> SuggestionResult:
    """The last suggestion remembered for this video (what ``mgsv suggest`` printed).

    The path is checked first (``outputs.check_video_input``: "no such file", "a folder"), so
    that a wrong argument is not reported as a missing suggestion. Raises ``UsageError`` when
    there is none, or when the video changed since; its message ends in ``hint`` (what the
    calling command offers; by default: run suggest first), whose word "first" becomes
    "again" when the video changed.
    """
    from mgsv_cli.editor.outputs import check_video_input

    video = check_video_input(video_path).resolve()
    hint = hint or f"run `mgsv suggest {video_path}` first"
    source = _remembered_path(video)
    if not source.is_file():
        raise UsageError(f"no suggestion remembered for {video_path}: {hint}")
    try:
        record = json.loads(source.read_text())
    except (OSError, json.JSONDecodeError):
        raise UsageError(f"the remembered suggestion for {video_path} is unreadable: {hint}") from None
    if record.get("video") != str(video) or not record.get("suggestions"):
        raise UsageError(f"no suggestion remembered for {video_path}: {hint}")
    try:
        stat = video.stat()
    except OSError:
        raise UsageError(f"{video_path} does not exist") from None
    if (stat.st_size, stat.st_mtime_ns) != (record.get("video_size"), record.get("video_mtime_ns")):
        raise UsageError(f"{video_path} changed since its suggestion was made: {hint.replace('first', 'again')}")
    return SuggestionResult.from_json(record)
