"""Timelines for editing software: the video with the suggested music cut under it.

:func:`export_timeline` builds an OpenTimelineIO timeline (a video track holding the
whole clip, an audio track holding the chosen music from the cut's start, as long as
the video) and writes it with OTIO's adapters: Final Cut Pro X (``fcpxml``), Final Cut
Pro 7 / Premiere / Resolve XML (``fcp7``), CMX 3600 EDL (``edl``) or native ``otio``.

A CMX 3600 EDL holds one track; the one written here is the music's (an audio EDL:
event 001 on channel A, source in/out = the cut), since the editor already has the
video. Files are written whole to a temporary name and moved into place, with the
permissions of any file the user makes (``paths.atomic_write_text``).

What an editing program needs to open the right sequence is part of the plan
(:class:`TimelinePlan`): the timeline's frame rate and frame size (the video's, as
displayed: a phone's portrait clip stored 1920x1080 with a 90-degree display matrix is
1080x1920) and, per media file (:class:`SourceFormat`), whether it has picture and sound,
the picture's size and the sound's channels and rate. The builder and the writers only
carry these over; nothing is decided in a writer. OpenTimelineIO's adapters drop most of
it (the FCPXML adapter marks a video asset ``hasAudio="0"`` and writes no frame size; the
FCP7 adapter writes an empty sequence ``<format>`` and guesses a file's streams from its
extension), so :func:`_fcpxml_with_formats` and :func:`_fcp7_with_formats` restate them in
the XML the adapters wrote. A native ``otio`` file carries the frame size as each
reference's ``available_image_bounds`` (pixels, first quadrant) and all of it under the
``mgsv`` metadata key; an EDL has no field for any of it but its timecode rate.

The timeline's rate is the video's when it is a timecode rate (23.976, 24, 25, 29.97, 30,
48, 50, 59.94, 60). A variable-frame-rate video (its average rate is not its nominal one:
"14.90 fps, 30 tbr" from a phone in low light) gets the timecode rate nearest its nominal
rate, the grid its frames are timed on, which is what editing programs conform it to; with
no usable nominal rate, the lowest timecode rate at or above its average, so no frame has
to share a timeline frame with another. Either way a warning says so; so it does when a
constant but unusual rate (12 or 15 fps) gets the 25 fps fallback, or when FCPXML, which
knows no 48 fps, gets 25 instead.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Mapping

from mgsv_cli import paths
from mgsv_cli.editor import outputs
from mgsv_cli.editor.record import SuggestionResult, load_last_suggestion, shorter_than_clip, track_fits, track_gone
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
# The rates a timeline can run at with SMPTE timecode (what --frame-rate accepts).
TIMECODE_RATES = (24000 / 1001, 24.0, 25.0, 30000 / 1001, 30.0, 48.0, 50.0, 60000 / 1001, 60.0)
_RATE_TOLERANCE = 0.01  # a video within 1% of a timecode rate runs at it (29.97 printed for 30000/1001)


@dataclass(frozen=True)
class SourceFormat:
    """What a timeline tells an editing program about one media file: its streams, the
    picture's displayed size (rotation applied) and the sound's channels and sample rate
    (None where unknown or absent)."""

    has_video: bool
    has_audio: bool
    width: int | None = None
    height: int | None = None
    audio_channels: int | None = None
    audio_rate: int | None = None

    @classmethod
    def of(cls, info) -> "SourceFormat":
        """The format of a probed file (a ``media.ffmpeg.MediaInfo``)."""
        return cls(has_video=info.has_video, has_audio=info.has_audio,
                   width=info.width if info.has_video else None, height=info.height if info.has_video else None,
                   audio_channels=info.channels if info.has_audio else None,
                   audio_rate=info.sample_rate if info.has_audio else None)

    def metadata(self) -> dict:
        """The format as the ``mgsv`` metadata of an OTIO media reference."""
        return {"has_video": self.has_video, "has_audio": self.has_audio, "width": self.width,
                "height": self.height, "audio_channels": self.audio_channels, "audio_rate": self.audio_rate}


@dataclass(frozen=True)
class TimelinePlan:
    """What goes on the timeline, in frames of ``rate`` (all counts exact integers).

    ``width``/``height`` are the sequence's frame (the video's, as displayed; None when
    unknown); ``sources`` says what each media file on the timeline holds.
    """

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
    width: int | None = None
    height: int | None = None
    sources: Mapping[Path, SourceFormat] = field(default_factory=dict)
    # --fit ending/loop: the music as clips (source start frame, frames) laid end to end on A1,
    # each join an equal-power crossfade of ``crossfade_frames[k]`` ending at the cut. Empty: one clip,
    # the cut above.
    music_clips: tuple[tuple[int, int], ...] = ()
    crossfade_frames: tuple[int, ...] = ()
    fit: str | None = None  # the edit list's mode ("ending", "loop") when the music is spliced

    def source(self, path: Path) -> SourceFormat | None:
        return self.sources.get(path)

    def source_for_url(self, url: str | None) -> SourceFormat | None:
        """The format of the media file a written timeline names by ``url`` (``file://...``)."""
        for path, source in self.sources.items():
            if path.as_uri() == url:
                return source
        return None


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


def check_frame_rate(frame_rate: float | None, names=None) -> float | None:
    """A timeline's frame rate: a positive, finite number of frames per second (nan, inf, 0, -5 refused)."""
    if frame_rate is not None and not (math.isfinite(frame_rate) and frame_rate > 0):
        name = names("frame_rate") if names is not None else "--frame-rate"
        raise UsageError(f"{name} {frame_rate}: must be a positive number of frames per second (such as 25 or 29.97)")
    return frame_rate


def timeline_rate(fps: float | None) -> float:
    """The timeline's frame rate for a video of ``fps``: the SMPTE rate it is (29.97 becomes
    exactly 30000/1001), else 25 when the video has none or an unusual one (12, 15 fps)."""
    return _timecode_rate(fps) or FALLBACK_RATE


def _timecode_rate(fps: float | None) -> float | None:
    """The timecode rate ``fps`` is (within 1%), exactly; None when it is none."""
    if not fps or fps <= 0:
        return None
    nearest = min(TIMECODE_RATES, key=lambda rate: abs(rate - fps))
    return nearest if abs(nearest - fps) < _RATE_TOLERANCE * fps else None


def video_timeline_rate(info) -> tuple[float, str | None]:
    """The timeline rate for a probed video (``media.ffmpeg.MediaInfo``) and, when it is not
    simply the video's own rate, the warning that says so (see the module's docstring)."""
    name = Path(info.path).name or "the video"
    if info.variable_frame_rate:
        rate = _timecode_rate(info.nominal_fps)
        if rate is None:
            rate = next((r for r in sorted(TIMECODE_RATES) if r >= info.fps * (1 - _RATE_TOLERANCE)),
                        max(TIMECODE_RATES))
        return rate, (f"{name} has a variable frame rate ({info.fps:.2f} fps on average, {info.nominal_fps:g} "
                      f"nominal): the timeline runs at {_rate_text(rate)} fps")
    rate = _timecode_rate(info.fps)
    if rate is None:
        unusual = (f"{name} runs at {info.fps:g} fps, not a timecode rate" if info.fps
                   else f"{name} states no frame rate")
        return FALLBACK_RATE, f"{unusual}: the timeline runs at {_rate_text(FALLBACK_RATE)} fps"
    return rate, None


def _rate_text(rate: float) -> str:
    return f"{rate:.3f}".rstrip("0").rstrip(".") if rate != round(rate) else f"{rate:g}"


def plan_timeline(suggestion: SuggestionResult, video_path: str | os.PathLike, pick: int = 1,
                  frame_rate: float | None = None, fmt: str | None = None) -> TimelinePlan:
    """Frame-exact contents of the timeline for suggestion ``pick`` of ``suggestion``.

    The rate is ``frame_rate`` or the video's (see :func:`video_timeline_rate`), 25 when
    format ``fmt`` cannot hold it (FCPXML at 48 fps); the music's source range is
    ``[start, end)`` of the suggestion rounded to that rate. The frame size and each
    file's streams come from probing them.
    """
    from mgsv_cli.media import ffmpeg as media

    check_frame_rate(frame_rate)
    entry = suggestion.pick(pick)
    video = outputs.check_video_input(video_path)
    info = media.probe(video)
    if not info.has_video:
        raise MediaError(f"{video}: has no video stream")
    track = Path(entry.track).expanduser()
    if not track.is_file():
        raise track_gone(track, video_path)
    track_info = media.probe(track)
    warnings = []
    if frame_rate:
        rate = timeline_rate(frame_rate)
        if abs(rate - frame_rate) > _RATE_TOLERANCE * frame_rate:
            raise UsageError(f"frame rate {frame_rate}: not a timecode rate (23.976, 24, 25, 29.97, 30, 48, 50, "
                             "59.94, 60)")
        rate_note = None
    else:
        rate, rate_note = video_timeline_rate(info)
    if fmt == "fcpxml" and _fcpx_rate(rate) is None:
        rate, rate_note = FALLBACK_RATE, (f"FCPXML has no {_rate_text(rate)} fps timeline: "
                                          f"it runs at {_rate_text(FALLBACK_RATE)} fps")
    warnings += [rate_note] if rate_note else []
    video_seconds = float(suggestion.duration or info.duration)
    start, end = entry.start, entry.end
    if not (0 <= start < end):
        raise UsageError(f"suggestion {pick}: bad cut [{start}, {end}]")
    track_seconds = float(entry.track_duration or track_info.duration)
    video_frames = max(1, round(video_seconds * rate))
    cut_start = round(start * rate)
    cut_frames = min(video_frames, max(1, round((end - start) * rate)))
    clips, fades = _edit_clips(entry.edit, video_seconds, video_frames, rate)
    fit = None
    if clips and entry.edit is not None:
        cut_start, cut_frames = clips[0]
        warnings += list(entry.edit.notes)
        fit = entry.edit.mode
    elif not track_fits(track_seconds, video_seconds):
        warnings.append(f"{shorter_than_clip(track_seconds, video_seconds)}: the music stops "
                        f"{video_seconds - track_seconds:.2f} s before the video ends")
    video, track = video.resolve(), track.resolve()
    return TimelinePlan(
        name=video.stem, rate=rate, video=video, video_frames=video_frames, track=track,
        track_frames=max([round(track_seconds * rate)] + [a + n for a, n in clips or [(cut_start, cut_frames)]]),
        cut_start_frame=cut_start, cut_frames=cut_frames, rank=entry.rank, score=entry.score, title=entry.title,
        artist=entry.artist, warnings=tuple(warnings), width=info.width, height=info.height,
        sources={video: SourceFormat.of(info), track: SourceFormat.of(track_info)},
        music_clips=tuple(clips), crossfade_frames=tuple(fades), fit=fit,
    )


def _edit_clips(edit, video_seconds: float, video_frames: int, rate: float
                ) -> tuple[list[tuple[int, int]], list[int]]:
    """A spliced edit list as timeline clips: ``[(source start frame, frames)]`` filling
    ``video_frames`` exactly, and each join's crossfade in frames (at least one).

    Each cut lands on the frame nearest its time in the output, each clip's source on the
    frame nearest its in-point; the last clip takes what rounding leaves, so the music
    still ends with the video (to within half a frame of the track's own end).
    """
    if edit is None or not edit.spliced:
        return [], []
    edit = edit.shifted_to_length(video_seconds)
    cuts = [0] + [round(j.at * rate) for j in edit.joins] + [video_frames]
    clips = [(round(span.start * rate), cuts[k + 1] - cuts[k]) for k, span in enumerate(edit.spans)]
    if any(frames <= 0 for _, frames in clips):
        raise UsageError(f"the edit list has a span shorter than a frame at {rate:g} fps: export it with --fit cut")
    fades = [max(1, round(j.crossfade * rate)) for j in edit.joins]
    return clips, fades


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

    def reference(path: Path, frames: int):
        source = plan.source(path)
        found = otio.schema.ExternalReference(target_url=path.as_uri(), available_range=span(0, frames))
        if source is not None:
            found.metadata["mgsv"] = source.metadata()
            if source.has_video and source.width and source.height:
                found.available_image_bounds = otio.schema.Box2d(otio.schema.V2d(0.0, 0.0),
                                                                 otio.schema.V2d(source.width, source.height))
        return found

    video_clip = otio.schema.Clip(name=plan.video.name, media_reference=reference(plan.video, plan.video_frames),
                                  source_range=span(0, plan.video_frames))
    music = []
    for k, (start, frames) in enumerate(plan.music_clips or [(plan.cut_start_frame, plan.cut_frames)]):
        if k:
            music.append(_crossfade(plan.crossfade_frames[k - 1], rate))
        music_clip = otio.schema.Clip(name=plan.track.name, media_reference=reference(plan.track, plan.track_frames),
                                      source_range=span(start, frames))
        music_clip.metadata["mgsv"] = {
            "rank": plan.rank, "score": plan.score, "title": plan.title, "artist": plan.artist,
            "start_seconds": start / plan.rate, **({"fit": plan.fit, "part": k + 1} if plan.fit else {}),
        }
        music.append(music_clip)
    video_track = otio.schema.Track(name="V1", kind=otio.schema.TrackKind.Video, children=[video_clip])
    music_track = otio.schema.Track(name="A1", kind=otio.schema.TrackKind.Audio, children=music)
    timeline = otio.schema.Timeline(name=plan.name, global_start_time=opentime.RationalTime(0, rate))
    timeline.metadata["mgsv"] = {"rate": plan.rate, "width": plan.width, "height": plan.height}
    timeline.tracks.extend([music_track, video_track] if music_first else [video_track, music_track])
    return timeline


# FCP 7's equal-power audio crossfade: what editors call a constant-power crossfade.
FCP7_CROSSFADE = {"name": "Cross Fade (+3dB)", "effectid": "KGAudioTransCrossFade3dB", "effecttype": "transition",
                  "mediatype": "audio", "effectcategory": "audio"}


def _crossfade(frames: int, rate: float):
    """An OTIO transition of ``frames`` ending at the cut (all of it over the outgoing clip's
    end and the incoming clip's handle before its in-point), as an equal-power crossfade."""
    import opentimelineio as otio
    from opentimelineio import opentime

    transition = otio.schema.Transition(name=FCP7_CROSSFADE["name"],
                                        transition_type=otio.schema.TransitionTypes.SMPTE_Dissolve,
                                        in_offset=opentime.RationalTime(frames, rate),
                                        out_offset=opentime.RationalTime(0, rate))
    # The FCP 7 writer reads these: "end" alignment (it would say "end-black", a fade to black,
    # for a transition with no out offset) and an audio effect instead of its video dissolve.
    transition.metadata["fcp_xml"] = {"alignment": "end", "effect": dict(FCP7_CROSSFADE)}
    transition.metadata["mgsv"] = {"kind": "equal-power crossfade", "frames": frames}
    return transition


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

    outputs.check_video_input(video_path)
    adapter, _ = _check_format(fmt)
    check_frame_rate(frame_rate)
    out = resolve_output_path(video_path, fmt, out_path)
    plan = plan_timeline(suggestion, video_path, pick, frame_rate, fmt=fmt)
    _check_output(out, plan, force)
    timeline = build_timeline(plan, music_first=(fmt == "edl"), rate=_fcpx_rate(plan.rate) if fmt == "fcpxml" else None)
    options = {"rate": plan.rate} if fmt == "edl" else {}
    try:
        text = otio.adapters.write_to_string(timeline, adapter_name=adapter, **options)
    except (otio.exceptions.OTIOError, ValueError) as exc:
        raise MediaError(f"cannot write {fmt} for {plan.video.name}: {exc}") from None
    if fmt == "fcpxml":
        text = _fcpxml_times_on_frames(_fcpxml_with_transitions(_fcpxml_with_formats(text, plan), plan), plan.rate)
    elif fmt == "fcp7":
        text = _fcp7_with_formats(text, plan)
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


# ---------------------------------------------------------------- what the adapters leave out


def _parse_xml(text: str):
    import xml.etree.ElementTree as ElementTree

    return ElementTree.fromstring(text)  # the adapter's own output, never a user's file


def _xml_text(root, declaration: str) -> str:
    import xml.etree.ElementTree as ElementTree

    ElementTree.indent(root, space="    ")
    return declaration + ElementTree.tostring(root, encoding="unicode") + "\n"


def _fcpxml_with_formats(text: str, plan: TimelinePlan) -> str:
    """The FCPXML the adapter wrote, with the plan's frame size and each asset's streams.

    The sequence's ``<format>`` gets ``width``/``height`` (its ``name`` goes: the adapter
    makes one up from ffprobe where that is installed, "FFVideoFormat1080p30" for a
    1080x1920 clip too, and Final Cut would trust it over the size). Each asset gets
    ``hasVideo``/``hasAudio`` from what its file holds (the adapter goes by the track it
    sits on), the audio's channels and rate, and a format of its own frame size when
    that is not the sequence's; an asset without picture has no format.
    """
    import xml.etree.ElementTree as ElementTree

    root = _parse_xml(text)
    resources = root.find("resources")
    sequence = root.find(".//sequence")
    if resources is None or sequence is None:
        return text
    formats = {fmt.get("id"): fmt for fmt in resources.findall("format")}
    sequence_format = formats.get(sequence.get("format"))
    if sequence_format is None:
        return text
    sequence_format.attrib.pop("name", None)
    _set_size(sequence_format, plan.width, plan.height)

    def format_for(width: int | None, height: int | None) -> str:
        for fmt_id, fmt in formats.items():
            if (fmt.get("frameDuration"), fmt.get("width"), fmt.get("height")) == (
                    sequence_format.get("frameDuration"), _text_or_none(width), _text_or_none(height)):
                return fmt_id
        fmt_id = f"r{len(resources) + 1}"
        while root.find(f".//*[@id='{fmt_id}']") is not None:
            fmt_id = f"r{int(fmt_id[1:]) + 1}"
        fmt = ElementTree.Element("format", {"id": fmt_id, "frameDuration": sequence_format.get("frameDuration", "")})
        _set_size(fmt, width, height)
        resources.insert(list(resources).index(sequence_format) + 1, fmt)
        formats[fmt_id] = fmt
        return fmt_id

    for asset in resources.findall("asset"):
        source = plan.source_for_url(asset.get("src"))
        if source is None:
            continue
        asset.set("hasVideo", "1" if source.has_video else "0")
        asset.set("hasAudio", "1" if source.has_audio else "0")
        if source.has_video:
            asset.set("format", format_for(source.width, source.height))
        else:
            asset.attrib.pop("format", None)
        if source.has_audio:
            asset.set("audioSources", "1")
            if source.audio_channels:
                asset.set("audioChannels", str(source.audio_channels))
            if source.audio_rate:
                asset.set("audioRate", str(source.audio_rate))
    return _xml_text(root, '<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE fcpxml>\n\n')


def _fcpxml_with_transitions(text: str, plan: TimelinePlan) -> str:
    """The FCPXML with the music's clips in a storyline of their own, joined by crossfades.

    The adapter writes no transitions: it connects each music clip to the video clip
    (``lane="-1"``). A transition in FCPXML lives in a storyline, so the music clips move
    into a secondary storyline (``<spine lane="-1">``, offsets kept) with a
    ``<transition>`` between each two, ending at the cut, carrying Final Cut's audio
    crossfade (``FFAudioTransition``).
    """
    import xml.etree.ElementTree as ElementTree

    if len(plan.music_clips) < 2:
        return text
    root = _parse_xml(text)
    resources = root.find("resources")
    host = root.find(".//sequence/spine/clip")
    if resources is None or host is None:
        return text
    music = [child for child in host if child.tag in ("clip", "asset-clip") and child.get("lane") == "-1"]
    if len(music) != len(plan.music_clips):
        return text
    effect_id = f"r{len(resources) + 1}"
    while root.find(f".//*[@id='{effect_id}']") is not None:
        effect_id = f"r{int(effect_id[1:]) + 1}"
    ElementTree.SubElement(resources, "effect",
                           {"id": effect_id, "name": "Audio Crossfade", "uid": "FFAudioTransition"})
    storyline = ElementTree.Element("spine", {"lane": "-1", "offset": host.get("start", "0s")})
    exact = _exact_rate(plan.rate)
    for k, clip in enumerate(music):
        host.remove(clip)
        clip.attrib.pop("lane", None)
        if k:
            cut = Fraction(clip.get("offset", "0s").rstrip("s") or 0)
            length = Fraction(plan.crossfade_frames[k - 1]) / exact
            transition = ElementTree.SubElement(storyline, "transition", {
                "name": "Cross Dissolve", "offset": _seconds_text(cut - length), "duration": _seconds_text(length)})
            ElementTree.SubElement(transition, "filter-audio", {"ref": effect_id, "name": "Audio Crossfade"})
        storyline.append(clip)
    host.append(storyline)
    return _xml_text(root, '<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE fcpxml>\n\n')


def _seconds_text(value: Fraction) -> str:
    return f"{value.numerator}/{value.denominator}s" if value else "0s"


def _set_size(element, width: int | None, height: int | None) -> None:
    for name, value in (("width", width), ("height", height)):
        if value:
            element.set(name, str(value))
        else:
            element.attrib.pop(name, None)


def _text_or_none(value: int | None) -> str | None:
    return str(value) if value else None


def _fcp7_with_formats(text: str, plan: TimelinePlan) -> str:
    """The FCP7 XML the adapter wrote, with the plan's frame size and each file's streams.

    The sequence's ``<media><video><format>`` (left empty by the adapter) gets the
    ``<samplecharacteristics>`` of the timeline: rate, width, height, square pixels,
    progressive. Each ``<file>`` gets a ``<media>`` of what it holds: ``<video>`` with its
    frame size and the timeline's rate, ``<audio>`` with its sample rate and channels (the
    adapter guesses both from the file's extension and assumes sound in every file).
    """
    root = _parse_xml(text)
    for sequence in root.iter("sequence"):
        video_format = sequence.find("media/video/format")
        if video_format is not None and plan.width and plan.height:
            video_format.clear()
            video_format.append(_fcp7_picture(plan.rate, plan.width, plan.height))
    for file_element in root.iter("file"):
        source = plan.source_for_url(file_element.findtext("pathurl"))
        media = file_element.find("media")
        if source is None or media is None:  # a back-reference (<file id="file-1"/>) or a file mgsv did not plan
            continue
        media.clear()
        if source.has_video:
            video = _sub(media, "video")
            if source.width and source.height:
                video.append(_fcp7_picture(plan.rate, source.width, source.height))
        if source.has_audio:
            audio = _sub(media, "audio")
            if source.audio_rate:
                _sub(_sub(audio, "samplecharacteristics"), "samplerate", str(source.audio_rate))
            if source.audio_channels:
                _sub(audio, "channelcount", str(source.audio_channels))
    return _xml_text(root, '<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE xmeml>\n')


def _fcp7_picture(rate: float, width: int, height: int):
    """``<samplecharacteristics>`` of progressive, square-pixel picture at ``rate``, as FCP7 XML states it."""
    import xml.etree.ElementTree as ElementTree

    characteristics = ElementTree.Element("samplecharacteristics")
    timebase = math.ceil(rate - 1e-9)
    rate_element = _sub(characteristics, "rate")
    _sub(rate_element, "timebase", str(timebase))
    _sub(rate_element, "ntsc", "TRUE" if abs(timebase - rate) > 1e-6 else "FALSE")
    _sub(characteristics, "width", str(width))
    _sub(characteristics, "height", str(height))
    _sub(characteristics, "anamorphic", "FALSE")
    _sub(characteristics, "pixelaspectratio", "square")
    _sub(characteristics, "fielddominance", "none")
    return characteristics


def _sub(parent, tag: str, text: str | None = None):
    import xml.etree.ElementTree as ElementTree

    element = ElementTree.SubElement(parent, tag)
    if text is not None:
        element.text = text
    return element


def export_suggestion(video_path: str | os.PathLike, request, *, start: float | None = None,
                      out: str | os.PathLike | None = None, force: bool | None = None,
                      record: SuggestionResult | None = None):
    """Write a suggestion for ``video_path`` as a timeline, as ``request``
    (``editor.requests.ExportRequest``) asks: its pick, format, frame rate, moved onto the beat
    when it says so. ``record``: the suggestion (default: the one remembered for the video).
    ``start`` moves the picked cut there first (same length); ``out`` and ``force`` replace the
    request's (``mgsv serve`` writes an upload's timelines in its own folder).

    Returns ``(ExportResult, the record as written, the snapping.Snap or None)``
    (:meth:`ExportedTimeline.of` makes them one value).
    """
    import dataclasses

    from mgsv_cli.editor.snapping import snap_suggestion

    if record is None:
        record = load_last_suggestion(video_path)
    else:
        outputs.check_video_input(video_path)
    if start is not None:
        entry = record.pick(request.pick)
        record = record.with_entry(dataclasses.replace(entry, start=float(start),
                                                       end=float(start) + entry.end - entry.start, snapped_to=None))
    snap_info = None
    if request.snap == "beat":
        record, snap_info = snap_suggestion(record, request.pick, index_path=request.index)
    fit, join = getattr(request, "fit", None), getattr(request, "join", None)
    if fit is not None or join is not None or (start is not None or snap_info is not None) and \
            record.pick(request.pick).edit is not None:
        from mgsv_cli.editor.fitting import refit_suggestion

        # The edit list is made again for the moved start, the mode asked for, or the join moved.
        record = refit_suggestion(record, request.pick, fit, index_path=request.index, join_at=join)
    exported = write_timeline(record, video_path, request.fmt, request.out if out is None else out,
                              pick=request.pick, frame_rate=request.frame_rate,
                              force=request.force if force is None else force)
    return exported, record, snap_info


@dataclass(frozen=True)
class ExportedTimeline:
    """A timeline written for a suggestion, as ``mgsv export --json`` prints it (times in seconds)."""

    out: Path  # the file written (absolute)
    format: str  # fcpxml | fcp7 | edl | otio
    video: str
    rank: int  # which suggestion of the record
    track: str
    start: float  # the cut in the track, after any snapping
    end: float
    snapped_to: str | None = None  # "downbeat" | "beat" when --snap beat moved the start
    warnings: tuple[str, ...] = ()
    edit: dict | None = None  # the edit list (spans and joins) when the music was fitted (--fit ending|loop)

    @classmethod
    def of(cls, exported: ExportResult, record: SuggestionResult, snap, fmt: str, pick: int) -> "ExportedTimeline":
        """The value of :func:`export_suggestion`'s ``(ExportResult, record, Snap or None)``."""
        entry = record.pick(pick)
        return cls(out=exported.out.absolute(), format=fmt, video=record.video, rank=pick, track=entry.track,
                   start=entry.start, end=entry.end, snapped_to=snap.snapped_to if snap else None,
                   warnings=tuple(exported.warnings), edit=entry.edit.to_dict() if entry.edit is not None else None)

    def to_json(self) -> dict:
        return {"out": str(self.out), "format": self.format, "video": self.video, "rank": self.rank,
                "track": self.track, "start": round(self.start, 6), "end": round(self.end, 6),
                "snapped_to": self.snapped_to, "warnings": list(self.warnings),
                **({"edit": self.edit} if self.edit is not None else {})}
