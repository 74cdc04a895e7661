"""Timelines for editing software: the video with the suggested music cut under it.

:func:`export_timeline` builds an OpenTimelineIO timeline (a video track holding the
whole clip, an audio track holding the chosen music from the cut's start, as long as
the video) and writes it with OTIO's adapters: Final Cut Pro X (``fcpxml``), Final Cut
Pro 7 / Premiere / Resolve XML (``fcp7``), CMX 3600 EDL (``edl``) or native ``otio``.

A CMX 3600 EDL holds one track; the one written here is the music's (an audio EDL:
event 001 on channel A, source in/out = the cut), since the editor already has the
video. Files are written whole to a temporary name and moved into place.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path


from mgsv_cli import paths
from mgsv_cli.editor import outputs
from mgsv_cli.editor.record import SuggestionResult, shorter_than_clip, track_fits, track_gone
from mgsv_cli.errors import MediaError, OutputExistsError, UsageError, storage_error

FORMATS = {  # name -> (OTIO adapter, file extension)
    "fcpxml": ("fcpx_xml", ".fcpxml"),
    "fcp7": ("fcp_xml", ".xml"),
    "edl": ("cmx_3600", ".edl"),
    "otio": ("otio_json", ".otio"),
}
FALLBACK_RATE = 25.0
FCPX_RATES = (23.98, 24.0, 25.0, 29.97, 30.0, 50.0, 59.94, 60.0)  # frame rates the FCPXML adapter knows
# FCPXML states times as rational seconds; these are the frame durations it knows.
_NTSC_RATES = {24: Fraction(24000, 1001), 30: Fraction(30000, 1001), 60: Fraction(60000, 1001)}


@dataclass(frozen=True)
class TimelinePlan:
    """What goes on the timeline, in frames of ``rate`` (all counts exact integers)."""

    name: str
    rate: float
    video: Path
    video_frames: int
    track: Path
    track_frames: int  # the whole track's length, for the media reference
    cut_start_frame: int
    cut_frames: int
    rank: int
    score: float | None
    title: str | None
    artist: str | None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExportResult:
    """What :func:`write_timeline` wrote: the file, the plan it holds, and what to warn about."""

    out: Path
    plan: TimelinePlan
    warnings: list[str] = field(default_factory=list)


def format_from_path(path: str | os.PathLike) -> str | None:
    """The export format a file name asks for by its extension (``None`` if it does not)."""
    suffix = Path(path).suffix.lower()
    for name, (_, extension) in FORMATS.items():
        if suffix == extension:
            return name
    return None


def default_output_path(video: str | os.PathLike, fmt: str) -> Path:
    """``clip.mp4`` -> ``clip.mgsv.fcpxml`` (etc.) beside the video."""
    video = Path(video)
    return outputs.beside(video, _check_format(fmt)[1])


def check_frame_rate(frame_rate: float | None) -> None:
    """A UsageError for a ``--frame-rate`` that is not a positive, finite number (nan, inf, 0, -5)."""
    if frame_rate is not None and not (math.isfinite(frame_rate) and frame_rate > 0):
        raise UsageError(f"--frame-rate {frame_rate}: must be a positive number of frames per second "
                         "(such as 25 or 29.97)")


def timeline_rate(fps: float | None) -> float:
    """The timeline's frame rate for a video of ``fps``: the SMPTE rate it is (29.97 becomes
    exactly 30000/1001), else 25 when the video has none or an unusual one (12, 15 fps)."""
    from opentimelineio import opentime

    if not fps or fps <= 0:
        return FALLBACK_RATE
    nearest = opentime.RationalTime.nearest_valid_timecode_rate(float(fps))
    return float(nearest) if abs(nearest - fps) < 0.01 * fps else FALLBACK_RATE


def plan_timeline(suggestion: SuggestionResult, video_path: str | os.PathLike, pick: int = 1,
                  frame_rate: float | None = None) -> TimelinePlan:
    """Frame-exact contents of the timeline for suggestion ``pick`` of ``suggestion``.

    The rate is ``frame_rate`` or the video's (see :func:`timeline_rate`); the music's
    source range is ``[start, end)`` of the suggestion rounded to that rate.
    """
    from mgsv_cli.media import ffmpeg as media

    check_frame_rate(frame_rate)
    entry = suggestion.pick(pick)
    video = Path(video_path).expanduser()
    info = media.probe(video)
    track = Path(entry.track).expanduser()
    if not track.is_file():
        raise track_gone(track, video_path)
    rate = timeline_rate(frame_rate or info.fps)
    if frame_rate and abs(rate - frame_rate) > 0.01 * frame_rate:
        raise UsageError(f"frame rate {frame_rate}: not a timecode rate (23.976, 24, 25, 29.97, 30, 48, 50, 59.94, 60)")
    video_seconds = float(suggestion.duration or info.duration)
    start, end = entry.start, entry.end
    if not (0 <= start < end):
        raise UsageError(f"suggestion {pick}: bad cut [{start}, {end}]")
    track_seconds = float(entry.track_duration or media.probe(track).duration)
    video_frames = max(1, round(video_seconds * rate))
    cut_start = round(start * rate)
    cut_frames = min(video_frames, max(1, round((end - start) * rate)))
    warnings = []
    if not track_fits(track_seconds, video_seconds):
        warnings.append(f"{shorter_than_clip(track_seconds, video_seconds)}: the music stops "
                        f"{video_seconds - track_seconds:.2f} s before the video ends")
    return TimelinePlan(
        name=video.stem, rate=rate, video=video.resolve(), video_frames=video_frames, track=track.resolve(),
        track_frames=max(round(track_seconds * rate), cut_start + cut_frames), cut_start_frame=cut_start,
        cut_frames=cut_frames, rank=entry.rank, score=entry.score, title=entry.title, artist=entry.artist,
        warnings=tuple(warnings),
    )


def build_timeline(plan: TimelinePlan, music_first: bool = False, rate: float | None = None):
    """The OTIO ``Timeline``: tracks V1 (the video) and A1 (the music cut), both from 0.

    ``music_first`` puts the audio track first (the EDL writer writes only track 0);
    ``rate`` labels the frame counts with another value of the same rate (the FCPXML
    adapter knows 29.97 but not 30000/1001).
    """
    import opentimelineio as otio
    from opentimelineio import opentime

    rate = rate or plan.rate

    def span(start: int, frames: int):
        return opentime.TimeRange(opentime.RationalTime(start, rate), opentime.RationalTime(frames, rate))

    video_clip = otio.schema.Clip(
        name=plan.video.name,
        media_reference=otio.schema.ExternalReference(target_url=plan.video.as_uri(),
                                                      available_range=span(0, plan.video_frames)),
        source_range=span(0, plan.video_frames),
    )
    music_clip = otio.schema.Clip(
        name=plan.track.name,
        media_reference=otio.schema.ExternalReference(target_url=plan.track.as_uri(),
                                                      available_range=span(0, plan.track_frames)),
        source_range=span(plan.cut_start_frame, plan.cut_frames),
    )
    music_clip.metadata["mgsv"] = {
        "rank": plan.rank, "score": plan.score, "title": plan.title, "artist": plan.artist,
        "start_seconds": plan.cut_start_frame / plan.rate,
    }
    video_track = otio.schema.Track(name="V1", kind=otio.schema.TrackKind.Video, children=[video_clip])
    music_track = otio.schema.Track(name="A1", kind=otio.schema.TrackKind.Audio, children=[music_clip])
    timeline = otio.schema.Timeline(name=plan.name, global_start_time=opentime.RationalTime(0, rate))
    timeline.tracks.extend([music_track, video_track] if music_first else [video_track, music_track])
    return timeline


def export_timeline(suggestion: SuggestionResult, video_path: str | os.PathLike, fmt: str,
                    out_path: str | os.PathLike | None = None, pick: int = 1, frame_rate: float | None = None,
                    force: bool = False) -> Path:
    """Write suggestion ``pick`` of ``suggestion`` (a ``mgsv suggest --json`` object) as a
    timeline for editing software; returns the path written.

    ``fmt``: ``fcpxml``, ``fcp7``, ``edl`` (the music only) or ``otio``. ``out_path``
    defaults to ``<stem>.mgsv.<ext>`` beside the video (a folder: that name in it, the
    folder made when missing); an existing file needs ``force``. Raises UsageError,
    MediaError (``StorageError`` for OS errors writing) or OutputExistsError; nothing
    is written on failure. :func:`write_timeline` says more (the warnings).
    """
    return write_timeline(suggestion, video_path, fmt, out_path, pick, frame_rate, force).out


def write_timeline(suggestion: SuggestionResult, video_path: str | os.PathLike, fmt: str,
                   out_path: str | os.PathLike | None = None, pick: int = 1, frame_rate: float | None = None,
                   force: bool = False) -> ExportResult:
    """:func:`export_timeline`, returning the plan written and its warnings (a track
    shorter than the clip) along with the path."""
    import opentimelineio as otio

    adapter, _ = _check_format(fmt)
    check_frame_rate(frame_rate)
    out = resolve_output_path(video_path, fmt, out_path)
    plan = plan_timeline(suggestion, video_path, pick, frame_rate)
    if fmt == "fcpxml" and _fcpx_rate(plan.rate) is None:
        plan = plan_timeline(suggestion, video_path, pick, FALLBACK_RATE)
    _check_output(out, plan, force)
    timeline = build_timeline(plan, music_first=(fmt == "edl"), rate=_fcpx_rate(plan.rate) if fmt == "fcpxml" else None)
    options = {"rate": plan.rate} if fmt == "edl" else {}
    try:
        text = otio.adapters.write_to_string(timeline, adapter_name=adapter, **options)
    except (otio.exceptions.OTIOError, ValueError) as exc:
        raise MediaError(f"cannot write {fmt} for {plan.video.name}: {exc}") from None
    if fmt == "fcpxml":
        text = _fcpxml_times_on_frames(text, plan.rate)
    paths.atomic_write_text(out, text, overwrite=force)  # makes a missing folder; OS errors: StorageError
    return ExportResult(out=out, plan=plan, warnings=list(plan.warnings))


def resolve_output_path(video_path: str | os.PathLike, fmt: str, out_path: str | os.PathLike | None) -> Path:
    """Where the timeline goes: ``out_path``; inside it when it is a folder (one that exists, or
    a name without an extension, made when writing), as render does; else beside the video."""
    if out_path is None:
        return default_output_path(video_path, fmt)
    out = Path(out_path).expanduser()
    try:
        folder = out.is_dir() or (not out.exists() and not out.suffix)
    except OSError as exc:  # a part of the path too long, unreadable, ...
        raise storage_error("write", out, exc) from None
    return out / default_output_path(video_path, fmt).name if folder else out


def _check_format(fmt: str) -> tuple[str, str]:
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return FORMATS[fmt]


def _check_output(out: Path, plan: TimelinePlan, force: bool) -> None:
    target = out.resolve()
    if target in (plan.video, plan.track):
        raise UsageError(f"{out}: refusing to write the timeline over its own media")
    outputs.check_output_name(out)
    try:
        is_dir, taken = out.is_dir(), out.exists()
    except OSError as exc:  # a part of the path too long, unreadable, ...
        raise storage_error("write", out, exc) from None
    if is_dir:
        raise UsageError(f"{out} is a folder: give a file name")
    if taken and not force:
        raise OutputExistsError(f"{out} exists: use --force to replace it")


def _fcpxml_times_on_frames(text: str, rate: float) -> str:
    """Restate every FCPXML time on the frame grid, exactly.

    The adapter writes times as ``Fraction(frames / rate).limit_denominator()``, which
    for 29.97 fps gives values like ``1000/81s`` that fall between frames; Final Cut
    wants whole multiples of the frame duration (``370370/30000s``).
    """
    exact_rate = _exact_rate(rate)

    def on_grid(match: re.Match) -> str:
        seconds = Fraction(match.group(2))
        frames = round(seconds * exact_rate)
        value = Fraction(frames) / exact_rate
        return f'{match.group(1)}="{value.numerator}/{value.denominator}s"' if frames else f'{match.group(1)}="0s"'

    return re.sub(r'\b(offset|duration|start)="(\d+(?:/\d+)?)s"', on_grid, text)


def _fcpx_rate(rate: float) -> float | None:
    """The adapter's name for ``rate`` (29.97 for 30000/1001), None if FCPXML lacks it (48 fps)."""
    for known in FCPX_RATES:
        if abs(rate - known) < 0.01:
            return known
    return None


def _exact_rate(rate: float) -> Fraction:
    whole = round(rate)
    if whole in _NTSC_RATES and abs(rate - float(_NTSC_RATES[whole])) < 1e-3:
        return _NTSC_RATES[whole]
    return Fraction(rate).limit_denominator(1001)
