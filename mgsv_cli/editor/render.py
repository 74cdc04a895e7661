"""Mixdown: lay the chosen music moment under a video with ffmpeg, the video stream copied.

The music is cut from ``start`` to exactly the video's length, faded in and out, and
normalised to an EBU R128 integrated loudness: ``ebur128`` measures, then a plain gain
applies the difference when the true peak stays under -1.5 dBTP (as ``loudnorm``'s linear
mode would). When it would not, the gain goes before a true-peak limiter (4x oversampled),
and the gain that lands on the target is found by measuring the limited mix at a few gains
in one pass and interpolating (see :func:`_limited_gain`). ``loudnorm``'s dynamic mode,
used before, missed the target by up to a loudness unit on short clips without saying so
(-16.7 LUFS for -16 on a 6 s clip with percussive music), whatever the mix mode. The music
then replaces the video's own audio, is mixed with it, or is ducked under it (a sidechain
compressor keyed by the video's audio); a video without sound, or with digital silence,
makes every mode a ``replace``. The video packets are copied, never re-encoded.

The output is written to a hidden temporary file next to its destination and moved into
place only when complete, so an interrupted render leaves nothing half-written behind. A
render killed outright (``kill -9``, power loss) leaves its temporary file, named with the
machine and the process id; its ffmpeg dies with it (``media.ffmpeg``, Linux). The next
render into that folder removes the file as soon as it can tell the render is gone: on the
same machine, when that process is dead and no process has the file open, however recently
it was written; a file of another machine (a shared folder: its pid means nothing here, and
its writer's open files cannot be seen) only once it has not changed for a minute.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from mgsv_cli.editor import outputs
from mgsv_cli.editor.editlist import EditList
from mgsv_cli.editor.record import FIT_TOLERANCE, shorter_than_clip, track_fits
from mgsv_cli.errors import MediaError, MgsvError, OutputExistsError, StorageError, UsageError, storage_error
from mgsv_cli.media import ffmpeg as media
from mgsv_cli.paths import remove_quietly

MIX_MODES = ("replace", "original", "duck")
MIN_VIDEO_SECONDS = 1.0
AUDIO_RATE = 48000
TRUE_PEAK_DB = -1.5
# The limiter, when the target gain would push peaks over TRUE_PEAK_DB: it works on 4x
# oversampled audio, so it holds the peaks between samples (the true peak) too; its ceiling
# sits LIMITER_MARGIN_DB under TRUE_PEAK_DB for what resampling back to 48 kHz adds.
LIMITER_RATE = 4 * AUDIO_RATE
LIMITER_MARGIN_DB = 0.5
# The most the limiter may take off the loudest peak: more audibly squashes the music, so
# such a track stays under the target (and the render says so).
MAX_LIMITING_DB = 12.0
# Gains tried above the plain one when the limiter works (dB): the limited loudness grows
# steadily with the gain, so interpolating between these lands within a tenth of a LU.
_LIMITED_STEPS = (0.0, 2.0, 4.0, 7.0, 12.0)
# A render further than this from its loudness target says so (the EBU R128 tolerance
# for a programme's integrated loudness is +-1 LU; this is half of it).
LOUDNESS_TOLERANCE = 0.5
SILENT_LUFS = -60.0  # quieter than this counts as no signal: nothing to normalise or duck under
MAX_VOICE_BOOST_DB = 20.0  # a quiet recording is lifted at most this much before mixing
OUTPUT_FORMATS = {  # extension -> (ffmpeg muxer, audio codec options)
    ".mp4": ("mp4", ["-c:a", "aac", "-b:a", "192k"]),
    ".m4v": ("mp4", ["-c:a", "aac", "-b:a", "192k"]),
    ".mov": ("mov", ["-c:a", "aac", "-b:a", "192k"]),
    ".mkv": ("matroska", ["-c:a", "aac", "-b:a", "192k"]),
    ".webm": ("webm", ["-c:a", "libopus", "-b:a", "160k"]),
}
_NO_PTS = -(2 ** 63)  # how framemd5 prints a missing timestamp
# The hidden file a render writes before moving it into place:
# ".<output name>.mgsv-<pid>-<random>-<machine>.part". "-<machine>" was added later: a name
# without it is treated as another machine's.
_TEMPORARY = re.compile(r"^\..+\.mgsv-(\d+)-[0-9a-f]{8}(?:-([0-9a-f]{8}))?\.part$")
# A temporary of another machine (or of a process whose open files cannot be seen) is stale
# once nothing wrote to it for this long: a render on another machine sharing the folder has
# a pid meaningless here, but keeps writing.
STALE_AFTER_SECONDS = 60.0
# ... and any of them after a day, whatever its pid says (the pid may have been reused).
ABANDONED_AFTER_SECONDS = 24 * 3600.0
# Ducking: the music drops by roughly 12-15 dB while the video's voice (normalised to the
# target loudness for detection) is above about -30 dBFS, and comes back within ~0.3 s.
DUCK_FILTER = "sidechaincompress=threshold=0.03:ratio=8:attack=15:release=300:knee=2:makeup=1"


LOUDNESS_RANGE = (-70.0, -5.0)  # LUFS a render may aim at


def _named(names, field: str) -> str:
    """An option as the caller spells it (``editor.requests``: a --flag or a JSON field)."""
    return names(field) if names is not None else "--" + field.replace("_", "-")


def check_mix(mix: str, names=None) -> str:
    if mix not in MIX_MODES:
        raise UsageError(f"{_named(names, 'mix')} {mix!r}: expected one of {', '.join(MIX_MODES)}")
    return mix


def check_fade(field: str, seconds: float, names=None) -> float:
    if not math.isfinite(seconds) or seconds < 0:
        raise UsageError(f"{_named(names, field)} {seconds}: seconds, 0 or more")
    return float(seconds)


def check_loudness(lufs: float, names=None) -> float:
    low, high = LOUDNESS_RANGE
    if not (math.isfinite(lufs) and low <= lufs <= high):
        raise UsageError(f"{_named(names, 'loudness')} {lufs} LUFS: expected a value from {low:g} to {high:g}")
    return float(lufs)



@dataclass
class RenderResult:
    """What :func:`render` wrote and how the music was fitted (all times in seconds)."""

    out_path: Path
    video: Path
    track: Path
    duration: float  # the output's length: the video stream's duration
    start: float  # where the music starts in the track, after any shift
    end: float  # where the music ends in the track
    requested_start: float
    mix: str  # the mix actually made
    requested_mix: str
    fade_in: float
    fade_out: float
    loudness_target: float
    loudness: float | None  # integrated loudness of the mixed audio (LUFS), None if silent
    padded_seconds: float = 0.0  # silence after the music when the track is shorter than the video
    warnings: list[str] = field(default_factory=list)
    edit: dict | None = None  # --fit ending/loop: the edit list mixed (``EditList.to_dict()``)

    def to_dict(self) -> dict:
        data = asdict(self)
        for key in ("out_path", "video", "track"):
            data[key] = str(Path(data[key]).absolute())
        for key, value in data.items():
            if isinstance(value, float):
                data[key] = round(value, 3)
        return data


@dataclass(frozen=True)
class Cut:
    """The part of a track that plays: ``seconds`` of music from ``start``, then ``padded`` of silence."""

    start: float
    seconds: float
    padded: float
    warnings: tuple[str, ...] = ()


def fit_cut(start: float, video_seconds: float, track_seconds: float) -> Cut:
    """Place a cut of ``video_seconds`` at ``start`` inside a track of ``track_seconds``.

    A cut that runs past the track end is moved back to end with the track; a track
    shorter than the video plays whole from 0 and silence fills the rest.

    Moves and shortfalls under ``record.FIT_TOLERANCE`` (50 ms) are made without a word:
    the lengths come from different measurements (the index's container duration, printed
    by ffmpeg to 10 ms; the render's video packets, a frame apart from the container's),
    so a suggestion cut to end with its track is found a few ms past it ("start moved back
    from 30.84 s to 30.84 s"). The same tolerance decides whether suggest calls a track
    shorter than the clip.
    """
    if not math.isfinite(start) or start < 0:
        raise UsageError(f"start {start} s: must be 0 or more")
    if start >= track_seconds:
        raise UsageError(f"start {start:.2f} s is past the end of the track ({track_seconds:.2f} s)")
    if track_seconds < video_seconds:
        padded = video_seconds - track_seconds
        notes = []
        if start > FIT_TOLERANCE:
            notes.append(f"start moved from {start:.2f} s to 0 s to use the whole track")
        if not track_fits(track_seconds, video_seconds):
            notes.append(f"{shorter_than_clip(track_seconds, video_seconds)}: it plays whole, "
                         f"then {padded:.2f} s of silence")
        return Cut(0.0, track_seconds, padded, tuple(notes))
    if start + video_seconds > track_seconds:
        moved = track_seconds - video_seconds
        notes = []
        if start - moved > FIT_TOLERANCE:
            notes.append(f"start moved back from {start:.2f} s to {moved:.2f} s so the music lasts the whole video")
        return Cut(moved, video_seconds, 0.0, tuple(notes))
    return Cut(start, video_seconds, 0.0)


def fit_fades(fade_in: float, fade_out: float, music_seconds: float) -> tuple[float, float, list[str]]:
    """Fade lengths that fit in ``music_seconds`` (both shrunk in proportion when they overlap)."""
    check_fade("fade_in", fade_in)
    check_fade("fade_out", fade_out)
    total = fade_in + fade_out
    if total <= music_seconds:
        return fade_in, fade_out, []
    scale = music_seconds / total
    fade_in, fade_out = fade_in * scale, fade_out * scale
    return fade_in, fade_out, [f"fades shortened to {fade_in:.2f} s in / {fade_out:.2f} s out to fit the music"]


def default_output_path(video: str | os.PathLike) -> Path:
    """``clip.mov`` -> ``clip.mgsv.mov`` beside it (containers mgsv cannot write become ``.mkv``)."""
    video = Path(video)
    suffix = video.suffix.lower() if video.suffix.lower() in OUTPUT_FORMATS else ".mkv"
    return outputs.beside(video, suffix)


# ---------------------------------------------------------------- ffmpeg


class _FfmpegFailed(MediaError):
    """ffmpeg failed: "WHAT: REASON", with the reason kept apart to restate it for an output."""

    def __init__(self, what: str, reason: str):
        super().__init__(f"{what}: {reason}")
        self.what, self.reason = what, reason


def _ffmpeg(args: list[str], what: str) -> str:
    """Run ffmpeg with ``args``; return its stderr (where filters print); MediaError on failure."""
    proc = media.run_ffmpeg(["-nostats", *args], what, check=False, die_with_parent=True)
    stderr = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise _FfmpegFailed(what, media.ffmpeg_failure(proc.returncode, stderr))
    return stderr


def video_stream_seconds(path: Path) -> float | None:
    """Exact length of the first video stream: first packet's pts to last packet's pts + duration.

    Read from the packets themselves (no decoding), since a container's duration covers
    its longest stream and audio often runs a little past the picture. None when the
    packets carry no timestamps.
    """
    from mgsv_cli.media.ffmpeg import run_ffmpeg

    proc = run_ffmpeg(["-i", str(path), "-map", "0:V:0", "-c", "copy", "-f", "framemd5", "-"],
                      f"reading the video stream of {path}")
    time_base, stamps = None, []
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        if line.startswith("#tb 0:"):
            num, den = line.split(":", 1)[1].strip().split("/")
            time_base = int(num) / int(den)
        elif line and line[0].isdigit():
            fields = [f.strip() for f in line.split(",")]
            pts, duration = int(fields[2]), int(fields[3])
            if pts != _NO_PTS:
                stamps.append((pts, duration))
    if time_base is None or not stamps:
        return None
    stamps.sort()
    # Some containers leave packet durations out; the typical frame spacing stands in.
    gaps = sorted(b[0] - a[0] for a, b in zip(stamps, stamps[1:])) or [0]
    last_pts, last_duration = stamps[-1]
    end = last_pts + (last_duration if last_duration > 0 else gaps[len(gaps) // 2])
    return (end - stamps[0][0]) * time_base


@dataclass(frozen=True)
class Loudness:
    """EBU R128 statistics of a signal, as ffmpeg's ``ebur128=peak=true`` reports them."""

    integrated: float  # LUFS; -inf when everything is gated out (silence)
    threshold: float  # LUFS, the relative gate of the integrated measurement
    lra: float  # loudness range, LU
    true_peak: float  # dBTP; -inf for digital silence

    @property
    def silent(self) -> bool:
        return self.integrated < SILENT_LUFS


_EBUR128_SUMMARY = re.compile(r"\[Parsed_ebur128_(\d+) @ [^\]]*\] Summary:(.*?)(?=\n\[|\Z)", re.DOTALL)


def _number(pattern: str, text: str, default: float) -> float:
    match = re.search(pattern, text)
    if not match:
        return default
    value = float(match.group(1))  # "-inf" parses too
    return value if math.isfinite(value) else -math.inf


def _ebur128_summaries(stderr: str) -> list[Loudness]:
    """Every ``ebur128`` summary in ``stderr``, in filter-graph order."""
    found = sorted(((int(index), body) for index, body in _EBUR128_SUMMARY.findall(stderr)), key=lambda x: x[0])
    if not found:
        raise MediaError("ffmpeg's ebur128 filter printed no loudness summary")
    summaries = []
    for _, body in found:
        integrated = _number(r"I:\s+(\S+) LUFS", body, -math.inf)
        summaries.append(Loudness(
            integrated=integrated if integrated > -70.0 else -math.inf,  # -70 is ebur128's "all gated"
            threshold=_number(r"I:.*?Threshold:\s+(\S+) LUFS", body.replace("\n", " "), -70.0),
            lra=_number(r"LRA:\s+(\S+) LU", body, 0.0),
            true_peak=_number(r"Peak:\s+(\S+) dBFS", body, -math.inf),
        ))
    return summaries


# ---------------------------------------------------------------- the filter graph


@dataclass(frozen=True)
class _Plan:
    video: Path
    track: Path
    duration: float
    cut: Cut
    fade_in: float
    fade_out: float
    mix: str
    loudness: float
    edit: EditList | None = None  # spliced music (--fit ending/loop) instead of the cut


def edit_input_args(edit: EditList, track: Path) -> list[str]:
    """The track input an edit list reads: from its earliest sample (a crossfade's handle
    included) to its last, so that ``edit_chain``'s sample counts start at :func:`edit_origin`."""
    origin, last = edit_origin(edit), max(s.end for s in edit.spans)
    return ["-ss", f"{origin:.6f}", "-t", f"{last - origin + 0.05:.6f}", "-i", str(track)]


def edit_origin(edit: EditList) -> float:
    handles = [edit.spans[k + 1].start - j.crossfade for k, j in enumerate(edit.joins)]
    return max(0.0, min([edit.spans[0].start, *handles]))


def edit_chain(edit: EditList, source: str, duration: float, fade_in: float, label: str = "fit") -> str:
    """Filters splicing ``edit``'s spans from input ``source`` (read by :func:`edit_input_args`)
    into exactly ``duration`` s of music, faded in (and out where the edit says), at 48 kHz.

    Each span is cut by sample counts (``atrim``'s ``start_sample``/``end_sample``, so nothing
    drifts with rounding); each join is ``acrossfade`` with quarter-sine curves (equal power:
    sin^2 + cos^2 = 1) over the incoming span's handle, so the spans' lengths add up and the
    last span ends on the clip's last sample. The graph's last chain has no output label.
    """
    rate, origin = AUDIO_RATE, edit_origin(edit)
    total = round(duration * rate)
    fades = [round(j.crossfade * rate) for j in edit.joins]
    ends = [round((s.end - origin) * rate) for s in edit.spans]
    starts = [round((s.start - origin) * rate) for s in edit.spans]
    # The first span gives or takes the rounding's samples: the joins and the ending stay put.
    starts[0] = ends[0] - (total - sum(e - b for b, e in zip(starts[1:], ends[1:])))
    if starts[0] < 0 or starts[0] >= ends[0]:
        raise UsageError(f"the edit list lasts {edit.seconds:.3f} s, not the clip's {duration:.3f} s")
    n = len(edit.spans)
    head = (f"[{source}]aresample={rate},aformat=sample_fmts=fltp:channel_layouts=stereo,asetpts=PTS-STARTPTS"
            + (f",asplit={n}" + "".join(f"[{label}s{k}]" for k in range(n)) if n > 1 else f"[{label}s0]"))
    parts = [head]
    for k in range(n):
        begin = starts[k] - (fades[k - 1] if k else 0)
        parts.append(f"[{label}s{k}]atrim=start_sample={begin}:end_sample={ends[k]},asetpts=PTS-STARTPTS[{label}p{k}]")
    current = f"{label}p0"
    for k, samples in enumerate(fades, start=1):
        joined = f"{label}j{k}"
        if samples > 0:
            parts.append(f"[{current}][{label}p{k}]acrossfade=ns={samples}:o=1:c1=qsin:c2=qsin[{joined}]")
        else:
            parts.append(f"[{current}][{label}p{k}]concat=n=2:v=0:a=1[{joined}]")
        current = joined
    tail = [f"[{current}]anull"]
    if fade_in > 0:
        tail.append(f"afade=t=in:st=0:d={fade_in:.6f}")
    if edit.fade_out > 0:
        tail.append(f"afade=t=out:st={max(0.0, duration - edit.fade_out):.6f}:d={edit.fade_out:.6f}")
    tail += [f"apad=whole_dur={duration:.6f}", f"atrim=end_sample={total}"]
    return ";".join(parts) + ";" + ",".join(tail)


def _music_chain(plan: _Plan, source: str, gain_db: float | None) -> str:
    """Filters turning the trimmed track input into exactly ``duration`` s of faded music."""
    if plan.edit is not None:
        label = "fit" + source.replace(":", "")
        chain = edit_chain(plan.edit, source, plan.duration, plan.fade_in, label=label)
        return chain + (f",volume={gain_db:.3f}dB" if gain_db is not None else "")
    fade_out_start = max(0.0, plan.cut.seconds - plan.fade_out)
    parts = [f"[{source}]aresample={AUDIO_RATE}", "aformat=sample_fmts=fltp:channel_layouts=stereo",
             "asetpts=PTS-STARTPTS", f"atrim=duration={plan.cut.seconds:.6f}"]
    if plan.fade_in > 0:
        parts.append(f"afade=t=in:st=0:d={plan.fade_in:.6f}")
    if plan.fade_out > 0:
        parts.append(f"afade=t=out:st={fade_out_start:.6f}:d={plan.fade_out:.6f}")
    parts += [f"apad=whole_dur={plan.duration:.6f}", f"atrim=duration={plan.duration:.6f}"]
    if gain_db is not None:
        parts.append(f"volume={gain_db:.3f}dB")
    return ",".join(parts)


def _voice_chain(plan: _Plan, source: str, gain_db: float | None) -> str:
    """Filters making the video's own audio the same length and format as the music."""
    parts = [f"[{source}]aresample={AUDIO_RATE}", "aformat=sample_fmts=fltp:channel_layouts=stereo",
             "asetpts=PTS-STARTPTS", f"apad=whole_dur={plan.duration:.6f}", f"atrim=duration={plan.duration:.6f}"]
    if gain_db is not None:
        parts.append(f"volume={gain_db:.3f}dB")
    return ",".join(parts)


def _mix_graph(plan: _Plan, music_gain: float | None, voice_gain: float | None, label: str = "mix") -> str:
    """Graph from inputs 0 (video) and 1 (track) to the unnormalised mix, output ``[label]``."""
    music = _music_chain(plan, "1:a:0", music_gain)
    voice = _voice_chain(plan, "0:a:0", voice_gain)
    mixer = f"amix=inputs=2:duration=first:normalize=0[{label}]"
    if plan.mix == "replace":
        return f"{music}[{label}]"
    if plan.mix == "original":
        return f"{music}[music];{voice}[voice];[music][voice]{mixer}"
    return f"{music}[music];{voice},asplit=2[key][voice];[music][key]{DUCK_FILTER}[ducked];[ducked][voice]{mixer}"


def _normaliser(plan: _Plan, graph: str, measured: Loudness) -> str:
    """Filters bringing ``graph``'s ``[mix]``, ``measured`` in a first pass, to the target loudness.

    A plain gain when the true peak stays under the ceiling afterwards (what loudnorm's
    linear mode would do, without its 192 kHz processing); otherwise a gain found by
    measuring (:func:`_limited_gain`) before a true-peak limiter.
    """
    gain = plan.loudness - measured.integrated
    if measured.true_peak + gain <= TRUE_PEAK_DB:
        return f"volume={gain:.3f}dB"
    return _limited(_limited_gain(plan, graph, measured))


def _limited(gain_db: float) -> str:
    """``gain_db`` then a limiter holding the true peak under the ceiling; 48 kHz out, no delay added."""
    ceiling = 10 ** ((TRUE_PEAK_DB - LIMITER_MARGIN_DB) / 20)
    return (f"volume={gain_db:.3f}dB,aresample={LIMITER_RATE},"
            f"alimiter=limit={ceiling:.6f}:attack=5:release=50:level=false:latency=true,aresample={AUDIO_RATE}")


def _limited_gain(plan: _Plan, graph: str, measured: Loudness) -> float:
    """The gain that, before :func:`_limited`, brings ``graph``'s ``[mix]`` to the target.

    The limiter takes loudness off with the peaks, so the plain gain falls short. The
    limited mix is measured at the plain gain and a few more (``_LIMITED_STEPS``; all in
    one ffmpeg run), at most the gain at which the limiter takes ``MAX_LIMITING_DB`` off
    the loudest peak; the loudness grows steadily with the gain, so interpolating between
    the two measurements around the target lands on it. A target out of reach gets the
    largest gain tried (the render then warns).
    """
    plain = plan.loudness - measured.integrated
    most = TRUE_PEAK_DB + MAX_LIMITING_DB - measured.true_peak
    gains = sorted({round(min(plain + step, most), 3) for step in _LIMITED_STEPS})
    labels = "".join(f"[b{i}]" for i in range(len(gains)))
    branches = [f"[b{i}]{_limited(gain)}[m{i}]" for i, gain in enumerate(gains)]
    # _measure joins graphs with ";": the first carries the mix and its split into branches.
    graphs = [f"{graph};[mix]asplit={len(gains)}{labels};{branches[0]}", *branches[1:]]
    reached = [m.integrated for m in _measure(plan, graphs, f"measuring the loudness of the mix for {plan.video}")]
    points = list(zip(gains, reached))
    for (g0, l0), (g1, l1) in zip(points, points[1:]):
        if l0 <= plan.loudness <= l1 and l1 > l0:
            return g0 + (plan.loudness - l0) * (g1 - g0) / (l1 - l0)
    if math.isfinite(reached[0]) and reached[0] >= plan.loudness:
        return gains[0]
    return gains[-1]


def _inputs(plan: _Plan) -> list[str]:
    if plan.edit is not None:
        return ["-i", str(plan.video), *edit_input_args(plan.edit, plan.track)]
    return ["-i", str(plan.video), "-ss", f"{plan.cut.start:.6f}", "-t", f"{plan.cut.seconds + 0.05:.6f}",
            "-i", str(plan.track)]


def _measure(plan: _Plan, graphs: list[str], what: str) -> list[Loudness]:
    """Loudness of the ``[m0]``, ``[m1]``, ... outputs of ``graphs``, all in one ffmpeg run.

    Audio only; nothing is written. Graph ``i`` must end in the label ``[mI]``.
    """
    measuring = ";".join(f"{graph};[m{i}]ebur128=peak=true[s{i}]" for i, graph in enumerate(graphs))
    outputs = [arg for i in range(len(graphs)) for arg in ("-map", f"[s{i}]", "-f", "null", "-")]
    summaries = _ebur128_summaries(_ffmpeg([*_inputs(plan), "-filter_complex", measuring, *outputs], what))
    if len(summaries) != len(graphs):
        raise MediaError(f"{what}: expected {len(graphs)} loudness measurements, ffmpeg printed {len(summaries)}")
    return summaries


# ---------------------------------------------------------------- render


def render(video: str | os.PathLike, track: str | os.PathLike, start: float, out: str | os.PathLike | None = None,
           mix: str = "replace", fade_in: float = 0.5, fade_out: float = 1.0, loudness: float = -16.0,
           force: bool = False, edit: EditList | None = None) -> RenderResult:
    """Write ``video`` with ``track`` from ``start`` (s) as its music; returns what was written.

    ``mix``: ``replace`` drops the video's audio, ``original`` mixes both at equal loudness,
    ``duck`` lowers the music while the video's audio is loud. A video without audio
    falls back to ``replace`` (noted in ``warnings``). ``out`` defaults to
    ``<stem>.mgsv.<ext>`` beside the video; an existing output needs ``force``; the
    input is never overwritten. Raises UsageError, MediaError or OutputExistsError.

    ``edit``: a spliced edit list (``--fit ending``/``loop``) plays instead of the cut from
    ``start``: its spans with their crossfades, the fade-in, and no fade-out but the edit's
    own (the track's ending finishes it); loudness, ducking and the video are as for a cut.
    """
    video, track = outputs.check_video_input(video), Path(track).expanduser()
    check_mix(mix)
    check_loudness(loudness)
    out_path = _check_output(video, track, Path(out).expanduser() if out is not None else None, force)
    plan, warnings = _plan(video, track, start, mix, fade_in, fade_out, loudness, edit)
    tmp = _reserve_temporary(out_path)  # an unwritable folder fails now, not after the passes
    try:
        plan, music_gain, voice_gain, measured = _first_passes(plan, warnings)
        mix_graph = _mix_graph(plan, music_gain, voice_gain)
        normalise = "anull" if measured.silent else _normaliser(plan, mix_graph, measured)
        # The meter branch measures what is encoded, for the result's ``loudness``.
        final_graph = f"{mix_graph};[mix]{normalise},asplit=2[out][meter];[meter]ebur128=peak=true,anullsink"
        (achieved,) = _ebur128_summaries(_write(plan, final_graph, out_path, tmp, force))
    finally:
        remove_quietly(tmp)  # gone already after a success; a failing removal never hides the error
    if not measured.silent and abs(achieved.integrated - loudness) > LOUDNESS_TOLERANCE:
        warnings.append(f"loudness reached {achieved.integrated:.1f} LUFS, not {loudness:g}: the music's peaks "
                        f"would pass the {TRUE_PEAK_DB} dBTP ceiling even with {MAX_LIMITING_DB:g} dB of limiting")
    return RenderResult(
        out_path=out_path, video=video, track=track, duration=plan.duration, start=plan.cut.start,
        end=plan.cut.start + plan.cut.seconds, requested_start=float(start), mix=plan.mix, requested_mix=mix,
        fade_in=plan.fade_in, fade_out=plan.fade_out, loudness_target=loudness,
        loudness=None if achieved.silent else achieved.integrated,
        padded_seconds=plan.cut.padded, warnings=warnings,
        edit=plan.edit.to_dict() if plan.edit is not None else None,
    )


def _spliced(plan: _Plan, edit: EditList) -> _Plan:
    """``plan`` playing ``edit`` (made for the suggestion's clip length) over the video's
    measured length: the first span absorbs the difference (a frame at most)."""
    edit = edit.shifted_to_length(plan.duration)
    fade_in, _, _ = fit_fades(plan.fade_in, 0.0, edit.spans[0].seconds)
    cut = Cut(edit.start, plan.duration, 0.0)
    return dataclasses.replace(plan, edit=edit, cut=cut, fade_in=fade_in, fade_out=edit.fade_out)


def _check_output(video: Path, track: Path, out: Path | None, force: bool) -> Path:
    """The output path, refusing to touch the inputs or (without ``force``) an existing file."""
    if out is None:
        out = default_output_path(video)
    elif _is_folder(out):
        out = out / default_output_path(video).name
    if out.suffix.lower() not in OUTPUT_FORMATS:
        raise UsageError(f"output {out}: the name must end in {', '.join(OUTPUT_FORMATS)}")
    for name, source in (("video", video), ("music track", track)):
        if _same_file(out, source):
            raise UsageError(f"output {out} is the input {name}: mgsv never overwrites its inputs")
    outputs.check_output_name(out)
    try:
        taken = out.exists()
    except OSError as exc:  # a part of the path too long, unreadable, ...
        raise storage_error("write", out, exc) from None
    if taken and not force:
        raise OutputExistsError(f"{out} exists: use --force to overwrite it or -o to write elsewhere")
    return out


def _is_folder(out: Path) -> bool:
    """``-o`` names a folder: one that exists, or a name without an extension (made when needed)."""
    try:
        return out.is_dir() or (not out.exists() and not out.suffix)
    except OSError as exc:
        raise storage_error("write", out, exc) from None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _plan(video: Path, track: Path, start: float, mix: str, fade_in: float, fade_out: float,
          loudness: float, edit: EditList | None = None) -> tuple[_Plan, list[str]]:
    """Probe both inputs and settle the cut, fades and mix; returns the plan and its warnings.

    A spliced ``edit`` replaces the cut (see :func:`_spliced`)."""
    from mgsv_cli.media import ffmpeg as media

    video_info = media.probe(video)
    if not video_info.has_video:
        raise MediaError(f"{video}: has no video stream")
    duration = video_stream_seconds(video) or video_info.duration
    if duration < MIN_VIDEO_SECONDS:
        raise MediaError(f"{video}: the video lasts {duration:.2f} s; mgsv needs at least {MIN_VIDEO_SECONDS:.0f} s")
    track_info = media.probe(track)
    if not track_info.has_audio:
        raise MediaError(f"{track}: has no audio stream")
    if not track_info.duration or track_info.duration <= 0:
        raise MediaError(f"{track}: its length cannot be read")
    if edit is not None and edit.spliced:
        plan, warnings = _spliced(_Plan(video, track, duration, Cut(edit.start, duration, 0.0), fade_in, 0.0, mix,
                                        loudness), edit), list(edit.notes)
    else:
        cut = fit_cut(float(start), duration, float(track_info.duration))
        fade_in, fade_out, fade_notes = fit_fades(fade_in, fade_out, cut.seconds)
        warnings = [*cut.warnings, *fade_notes]
        plan = _Plan(video, track, duration, cut, fade_in, fade_out, mix, loudness)
    if mix != "replace" and not video_info.has_audio:
        warnings.append(f"the video has no audio track: --mix {mix} made as replace")
        plan = dataclasses.replace(plan, mix="replace")
    return plan, warnings


def _first_passes(plan: _Plan, warnings: list[str]) -> tuple[_Plan, float | None, float | None, Loudness]:
    """Balance music and voice, then measure the mix for the final normalisation.

    Returns ``(plan, music_gain_db, voice_gain_db, mix_loudness)``. In ``original`` and
    ``duck`` both parts are first brought to the target loudness (the voice lifted at
    most ``MAX_VOICE_BOOST_DB``) so the balance does not depend on how loud each was
    recorded; a silent video soundtrack makes the mix a ``replace``.
    """
    music_gain = voice_gain = None
    if plan.mix != "replace":
        voice, music = _measure(plan, [_voice_chain(plan, "0:a:0", None) + "[m0]",
                                       _music_chain(plan, "1:a:0", None) + "[m1]"],
                                f"measuring the loudness of {plan.video} and {plan.track}")
        if voice.silent:
            warnings.append(f"the video's audio is silent: --mix {plan.mix} made as replace")
            plan = dataclasses.replace(plan, mix="replace")
        else:
            music_gain = 0.0 if music.silent else plan.loudness - music.integrated
            voice_gain = min(MAX_VOICE_BOOST_DB, plan.loudness - voice.integrated)
    (mixed,) = _measure(plan, [_mix_graph(plan, music_gain, voice_gain, label="m0")],
                        f"measuring the loudness of the mix for {plan.video}")
    if mixed.silent:
        warnings.append("the music at this moment is silent: nothing to normalise")
    return plan, music_gain, voice_gain, mixed


def _reserve_temporary(out: Path) -> Path:
    """Make ``out``'s folder and create the hidden temporary file ffmpeg will write beside it.

    Named with this process's id so that a later render can tell a file left by a killed
    render (removed here, see :func:`remove_stale_temporaries`) from one still being
    written. OS errors (read-only, no space, ...) come out as ``StorageError``.
    """
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error("create the folder", out.parent, exc) from None
    remove_stale_temporaries(out.parent)
    # The output's name is cut so that the suffix never makes a legal name too long.
    tmp = out.with_name(f".{out.name[:100]}.mgsv-{os.getpid()}-{uuid.uuid4().hex[:8]}-{_machine_tag()}.part")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # 0o666: the umask decides
    except OSError as exc:
        raise storage_error("write", out, exc) from None
    return tmp


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files of renders that were killed outright in ``folder``; returns them.

    Only files named as :func:`_reserve_temporary` names them, and only those
    :func:`_abandoned` says nobody will finish. Best effort: what cannot be read or
    removed is left alone.
    """
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    now, removed = time.time(), []
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if not match:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            idle = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if _abandoned(Path(entry.path), match.group(2), int(match.group(1)), idle):
            remove_quietly(Path(entry.path))
            if not os.path.lexists(entry.path):
                removed.append(Path(entry.path))
    return removed


def _abandoned(path: Path, machine: str | None, pid: int, idle: float) -> bool:
    """Whether the render that wrote temporary ``path`` (on ``machine``, as process ``pid``,
    last written ``idle`` s ago) is gone for good.

    Made on this machine (same host, same pid namespace): when ``pid`` is dead and no
    process has the file open, at once, however recently it was written (a killed render's
    ffmpeg wrote to it until it died with mgsv; an ffmpeg that somehow lives on still has
    it open, which keeps it). Where open files cannot be listed (not Linux), only once it
    has not changed for ``STALE_AFTER_SECONDS`` either: there ffmpeg outlives mgsv. From
    another machine (or named before names carried the machine): its pid means nothing
    here and its writer's open files cannot be seen, so only once it has not changed for
    ``STALE_AFTER_SECONDS`` (and that pid is not alive here, the rule of old). Whatever the
    name says, after ``ABANDONED_AFTER_SECONDS`` (the pid may have been reused).
    """
    if idle >= ABANDONED_AFTER_SECONDS:
        return True
    if machine == _machine_tag():
        if _process_alive(pid):
            return False
        held = _held_open(path)
        return held is False or (held is None and idle >= STALE_AFTER_SECONDS)
    return idle >= STALE_AFTER_SECONDS and not _process_alive(pid)


@functools.lru_cache(maxsize=1)
def _machine_tag() -> str:
    """Eight hex digits naming where pids mean the same processes as here, in temporary names:
    a hash of the host name and, on Linux, of the pid namespace (two containers of one host,
    even under one host name, see each other's pids and open files not at all)."""
    import hashlib
    import socket

    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:  # not Linux
        namespace = ""
    place = f"{socket.gethostname()}\0{namespace}"
    return hashlib.blake2s(place.encode("utf-8", "replace"), digest_size=4).hexdigest()


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (True when it cannot be told).

    A zombie (dead, not yet reaped by its parent) counts as dead: it writes nothing.
    """
    if os.name == "nt":  # os.kill would terminate it there: only the age rule applies
        return True
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent, only the existence is checked
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # PermissionError: alive, another user's
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")


def _held_open(path: Path) -> bool | None:
    """Whether a process of this machine has ``path`` open; None when that cannot be told.

    Linux only (``/proc/<pid>/fd``); processes whose descriptors cannot be read (other
    users') are passed over: they cannot be writing into this user's render anyway.
    """
    if not sys.platform.startswith("linux") or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        target = os.stat(path)
        pids = [entry.name for entry in os.scandir("/proc") if entry.name.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            descriptors = list(os.scandir(f"/proc/{pid}/fd"))
        except OSError:
            continue
        for descriptor in descriptors:
            try:
                info = os.stat(descriptor.path)
            except OSError:
                continue
            if (info.st_dev, info.st_ino) == (target.st_dev, target.st_ino):
                return True
    return False


def _write(plan: _Plan, graph: str, out: Path, tmp: Path, force: bool) -> str:
    """Encode into ``tmp`` (beside ``out``), then move it into place; returns ffmpeg's stderr.

    An ffmpeg failure names ``out`` (not the hidden temporary file) and, when it is the
    place written to that failed (disk full, read-only, ...), is a ``StorageError``.
    """
    muxer, audio_codec = OUTPUT_FORMATS[out.suffix.lower()]
    args = [*_inputs(plan), "-filter_complex", graph, "-map", "0:V:0", "-map", "[out]", "-c:v", "copy",
            *audio_codec, "-ar", str(AUDIO_RATE), "-map_metadata", "0"]
    if muxer in ("mp4", "mov"):
        args += ["-movflags", "+faststart"]
    try:
        stderr = _ffmpeg([*args, "-f", muxer, "-y", str(tmp)], f"cannot render {plan.video}")
    except _FfmpegFailed as exc:
        reason = exc.reason.replace(str(tmp), str(out))
        if media.names_storage_error(reason):
            raise StorageError(f"cannot write {out}: {reason}") from None
        raise MediaError(f"{exc.what}: {reason}") from None
    if out.exists() and not force:  # appeared while we were encoding
        raise OutputExistsError(f"{out} exists: use --force to overwrite it or -o to write elsewhere")
    try:
        os.replace(tmp, out)
    except OSError as exc:
        raise storage_error("write", out, exc) from None
    return stderr


# ---------------------------------------------------------------- batches


def remembered_moment(video: str | os.PathLike, pick: int = 1, snap: str | None = None,
                      index_path: str | os.PathLike | None = None, record=None) -> tuple[Path, float]:
    """Track and start of suggestion ``pick`` (1 = best) of ``record`` (a ``SuggestionResult``),
    by default the one ``mgsv suggest`` remembered for ``video``.

    ``snap="beat"`` moves the start onto the nearest downbeat/beat (same length, inside the track).
    """
    from mgsv_cli.editor.record import load_last_suggestion, track_gone
    from mgsv_cli.editor.snapping import snap_entry

    if record is None:
        record = load_last_suggestion(video, hint=f"run `mgsv suggest {video}` first, or give --track and --start")
    entry = record.pick(pick)
    if not os.path.isfile(entry.track):
        raise track_gone(entry.track, video)
    if snap is not None:
        entry, _ = snap_entry(entry, index_path=index_path)
    return Path(entry.track), entry.start


def resolve_moment(video: str | os.PathLike, pick: int = 1, track: str | os.PathLike | None = None,
                   start: float | None = None, snap: str | None = None,
                   index_path: str | os.PathLike | None = None, record=None) -> tuple[Path, float]:
    """The music to put under ``video``: the given ``track``/``start``, else suggestion ``pick`` of
    ``record`` (default: the one remembered for ``video``).

    ``snap="beat"`` moves the start onto the nearest downbeat/beat, keeping the cut's length.
    """
    from mgsv_cli.editor.snapping import check_snap, snap_cut

    outputs.check_video_input(video)
    check_snap(snap)
    if track is None:
        return remembered_moment(video, pick, snap, index_path, record=record)
    start = float(start if start is not None else 0.0)
    if snap is None:
        return Path(track), start
    video_seconds = video_stream_seconds(Path(video)) or media.probe(video).duration
    moved = snap_cut(str(track), start, video_seconds, media.probe(track).duration, index_path=index_path)
    return Path(track), moved.start


def resolve_music(video: str | os.PathLike, pick: int = 1, track: str | os.PathLike | None = None,
                  start: float | None = None, snap: str | None = None, index_path: str | os.PathLike | None = None,
                  fit: str | None = None, join_at: float | None = None,
                  record=None) -> tuple[Path, float, EditList | None]:
    """:func:`resolve_moment` with the music's edit list: ``(track, start, edit or None)``.

    ``fit``: ``cut``, ``ending`` or ``loop``; None plays what the remembered suggestion holds
    (its edit list, made by ``mgsv suggest --fit``), and with ``track``/``start`` a cut. The
    edit is made again when the mode differs, the start was snapped now, or ``join_at`` moves
    its join to another bar line. ``record``: the suggestion to pick from (default: the one
    remembered for ``video``).
    """
    from mgsv_cli.editor import fitting
    from mgsv_cli.editor.snapping import check_snap, snap_cut

    fitting.check_fit(fit)
    if track is None:
        from mgsv_cli.editor.record import load_last_suggestion, track_gone
        from mgsv_cli.editor.snapping import snap_entry

        outputs.check_video_input(video)
        check_snap(snap)
        if record is None:
            record = load_last_suggestion(video,
                                          hint=f"run `mgsv suggest {video}` first, or give --track and --start")
        entry = record.pick(pick)
        if not os.path.isfile(entry.track):
            raise track_gone(entry.track, video)
        if snap is not None:
            entry, _ = snap_entry(entry, index_path=index_path)
        mode = fit or (entry.edit.requested if entry.edit is not None else "cut")
        if mode == "cut":
            return Path(entry.track), entry.start, None
        if snap is not None or join_at is not None or entry.edit is None or entry.edit.requested != mode:
            entry = fitting.fit_entry(entry, mode, record.duration, index_path=index_path, join_at=join_at)
        return Path(entry.track), entry.start, entry.edit
    mode = fit or "cut"
    moment = resolve_moment(video, pick, track, start, snap, index_path)
    if mode == "cut":
        return *moment, None
    video_seconds = video_stream_seconds(Path(video)) or media.probe(video).duration
    structure, _ = fitting.structure_for_track(moment[0], index_path)
    moved = snap is not None and snap_cut(str(track), float(start or 0.0), video_seconds, media.probe(track).duration,
                                          index_path=index_path).snapped_to is not None
    edit = fitting.plan_edit(mode, structure, moment[1], video_seconds, pinned=moved, join_at=join_at)
    return moment[0], edit.start, edit


def render_clip(video: str | os.PathLike, request, record=None) -> RenderResult:
    """One clip as ``request`` (``editor.requests.RenderRequest``) asks: its track and start, else
    suggestion ``request.pick`` of ``record`` (default: the one remembered for the clip), mixed
    down by :func:`render`. What ``mgsv render CLIP``, ``mgsv serve``, the Python API and
    ``mgsv mcp`` all run; raises the render's errors."""
    music, begin, edit = resolve_music(video, request.pick, request.track, request.start, request.snap,
                                       request.index, request.fit, join_at=request.join, record=record)
    return render(video, music, begin, edit=edit, **request.mixdown())


def render_many(videos: Iterable[Path], out: str | os.PathLike | None = None, pick: int = 1,
                track: str | os.PathLike | None = None, start: float | None = None,
                snap: str | None = None, index_path: str | os.PathLike | None = None, fit: str | None = None,
                **options) -> Iterator[tuple[Path, RenderResult | None, MgsvError | None]]:
    """Render each video, yielding ``(video, result, None)`` or ``(video, None, error)``; errors never stop the batch.

    ``track``/``start`` given: that moment for every video; otherwise each video's
    remembered suggestion ``pick``. ``out`` is a folder here (created if needed).
    ``options`` go to :func:`render` (mix, fade_in, fade_out, loudness, force).
    """
    folder = Path(out).expanduser() if out is not None else None
    if folder is not None:
        looks_like_file = folder.suffix.lower() in OUTPUT_FORMATS
        try:
            if folder.is_file() or (not folder.exists() and looks_like_file):
                raise UsageError(f"-o {folder}: with several videos the output must be a folder")
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error("create the folder", folder, exc) from None
    written: set[Path] = set()
    for video in videos:
        try:
            track_path, begin, edit = resolve_music(video, pick, track, start, snap, index_path, fit)
            target = (folder or video.parent) / default_output_path(video).name
            if target.resolve() in written:
                raise OutputExistsError(f"{target} was already written by this batch (two videos share a name)")
            result = render(video, track_path, begin, out=target, edit=edit, **options)
            written.add(result.out_path.resolve())
            yield video, result, None
        except MgsvError as exc:
            yield video, None, exc


@dataclass(frozen=True)
class RenderOutcome:
    """What became of one video of :func:`render_videos`: its ``result``, or why it failed
    (``error``, one line, with its ``exit_code``)."""

    video: str
    result: RenderResult | None = None
    error: str | None = None
    exit_code: int = 0


def render_videos(videos, request) -> Iterator[RenderOutcome]:
    """Render a request (``editor.requests.RenderRequest``) under clips (files or folders of them).

    One clip named (not a folder): rendered to ``request.out`` (a file, or a folder to put it in),
    its error raised. Several: each into ``request.out`` (a folder) or beside itself, one
    :class:`RenderOutcome` each, a failure never stopping the batch (inputs that are not
    videos come first).
    """
    if outputs.single_clip(videos):
        yield RenderOutcome(str(videos[0]), render_clip(videos[0], request))
        return
    found, problems = outputs.expand_video_inputs(videos)
    for name, reason in problems:
        yield RenderOutcome(name, error=reason, exit_code=UsageError.exit_code)
    options = {k: v for k, v in request.mixdown().items() if k != "out"}
    for video, result, error in render_many(found, out=request.out, pick=request.pick, track=request.track,
                                            start=request.start, snap=request.snap, index_path=request.index,
                                            fit=request.fit, **options):
        if error is None:
            yield RenderOutcome(str(video), result)
        else:
            yield RenderOutcome(str(video), error=str(error), exit_code=error.exit_code)
