"""Preview audio of a cut: what ``mgsv render`` would lay under the clip, made fast for listening.

The music from ``start`` for exactly the clip's length (placed as render places it,
:func:`editor.render.fit_cut`), with render's fades (:func:`editor.render.fit_fades`);
for ``original`` the clip's own sound mixed in, for ``duck`` the music ducked under it
with render's sidechain filter. Two quick audio-only ffmpeg passes: the first measures
the music's and the clip's loudness (EBU R128), the second brings both to the target,
mixes and limits the peaks. Render's loudness is exact (it measures the mix again and
rides the gain under the true-peak ceiling); a preview's is close, which is what
listening to a cut needs. Files are cached by every parameter and the inputs' sizes
and mtimes, so playing the same cut again costs nothing.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from mgsv_cli import paths
from mgsv_cli.editor import render as rendering
from mgsv_cli.errors import MediaError, UsageError

PREVIEW_FORMATS = {  # name -> (extension, media type, ffmpeg output options)
    "wav": (".wav", "audio/wav", ["-c:a", "pcm_s16le", "-f", "wav"]),
    "m4a": (".m4a", "audio/mp4", ["-c:a", "aac", "-b:a", "192k", "-movflags", "+faststart", "-f", "mp4"]),
}
PREVIEW_VERSION = "1"  # bump when the graph changes: cached files are keyed by it
KEEP_PREVIEWS = 200


@dataclass(frozen=True)
class Preview:
    path: Path
    media_type: str
    duration: float
    start: float  # where the music starts in the track, after fitting
    mix: str  # the mix made (a clip without sound gets replace)
    cached: bool


def _stamp(path: Path) -> list:
    info = path.stat()
    return [str(path), info.st_size, info.st_mtime_ns]


def make_preview(video: Path, track: Path, start: float, *, mix: str, fade_in: float, fade_out: float,
                 loudness: float, fmt: str, cache: Path, edit=None) -> Preview:
    """The preview file of ``track`` from ``start`` under ``video`` (made now, or from the cache).

    ``edit``: a spliced edit list (``--fit ending``/``loop``) plays instead of the cut, its
    music made by render's own filters (``render.edit_chain``), sample for sample.
    """
    if mix not in rendering.MIX_MODES:
        raise UsageError(f"mix {mix!r}: expected one of {', '.join(rendering.MIX_MODES)}")
    if fmt not in PREVIEW_FORMATS:
        raise UsageError(f"format {fmt!r}: expected one of {', '.join(PREVIEW_FORMATS)}")
    if not (-70.0 <= loudness <= -5.0):
        raise UsageError(f"loudness {loudness} LUFS: expected a value from -70 to -5")
    extension, media_type, codec = PREVIEW_FORMATS[fmt]
    spliced = edit is not None and edit.spliced
    key = json.dumps([PREVIEW_VERSION, _stamp(video), _stamp(track), round(float(start), 3), mix,
                      round(fade_in, 3), round(fade_out, 3), round(loudness, 2), fmt]
                     + ([edit.to_dict()] if spliced else []))
    name = hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
    target = cache / f"{name}{extension}"
    meta_file = cache / f"{name}.json"
    if target.is_file() and meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text())
            os.utime(target)  # most recently used: kept longest
            return Preview(target, media_type, float(meta["duration"]), float(meta["start"]), str(meta["mix"]), True)
        except (OSError, ValueError, KeyError):
            pass

    from mgsv_cli.media import ffmpeg as media

    video_info = media.probe(video)
    if not video_info.has_video:
        raise MediaError(f"{video}: has no video stream")
    duration = rendering.video_stream_seconds(video) or video_info.duration
    track_info = media.probe(track)
    if not track_info.has_audio or not track_info.duration:
        raise MediaError(f"{track}: has no audio stream")
    if spliced:
        edit = edit.shifted_to_length(duration)
        cut = rendering.Cut(edit.start, duration, 0.0)
        fade_in, fade_out, _ = rendering.fit_fades(fade_in, 0.0, edit.spans[0].seconds)
    else:
        cut = rendering.fit_cut(float(start), duration, float(track_info.duration))
        fade_in, fade_out, _ = rendering.fit_fades(fade_in, fade_out, cut.seconds)
    made_mix = mix if video_info.has_audio else "replace"

    rate = rendering.AUDIO_RATE
    fades = []
    if fade_in > 0:
        fades.append(f"afade=t=in:st=0:d={fade_in:.6f}")
    if fade_out > 0:
        fades.append(f"afade=t=out:st={max(0.0, cut.seconds - fade_out):.6f}:d={fade_out:.6f}")
    fit = [f"aresample={rate}", "aformat=sample_fmts=fltp:channel_layouts=stereo", "asetpts=PTS-STARTPTS"]
    pad = [f"apad=whole_dur={duration:.6f}", f"atrim=duration={duration:.6f}"]
    voice_input, music_input = ("0:a:0", "1:a:0") if made_mix != "replace" else (None, "0:a:0")
    music = ",".join([f"[{music_input}]" + fit[0], *fit[1:], f"atrim=duration={cut.seconds:.6f}", *fades, *pad])
    voice = ",".join([f"[{voice_input}]" + fit[0], *fit[1:], *pad]) if voice_input else None
    track_args = ["-ss", f"{cut.start:.6f}", "-t", f"{cut.seconds + 0.05:.6f}", "-i", str(track)]
    if spliced:  # render's own splice: the same samples render lays under the clip
        music = rendering.edit_chain(edit, music_input, duration, fade_in)
        track_args = rendering.edit_input_args(edit, track)
    inputs = track_args if voice is None else ["-i", str(video), *track_args]

    # Pass 1 (audio only, fast): the loudness of the music and of the clip's sound.
    parts = [music] + ([voice] if voice else [])
    measuring = ";".join(f"{chain},ebur128[m{i}]" for i, chain in enumerate(parts))
    outs = [a for i in range(len(parts)) for a in ("-map", f"[m{i}]", "-f", "null", "-")]
    stderr = media.run_ffmpeg(["-nostats", *inputs, "-filter_complex", measuring, *outs],
                              f"measuring the preview of {track.name}").stderr.decode("utf-8", "replace")
    levels = _integrated(stderr)
    music_level = levels[0] if levels else None
    voice_level = levels[1] if len(levels) > 1 else None
    if voice is not None and voice_level is None:
        made_mix, voice = "replace", None  # the clip is silent: as render, the music alone
    music_gain = 0.0 if music_level is None else loudness - music_level
    limiter = (f"alimiter=limit={10 ** (rendering.TRUE_PEAK_DB / 20):.4f}:level=false,aresample={rate},"
               + ",".join(pad))  # exactly the clip's length, so it plays in step with the picture
    if voice is None:
        graph = f"{music},volume={music_gain:.3f}dB,{limiter}[out]"
    else:
        assert voice_level is not None  # a silent clip's voice was dropped above
        voice_gain = min(rendering.MAX_VOICE_BOOST_DB, loudness - voice_level)
        # two parts at the target loudness sum about 3 dB above it
        mixer = "amix=inputs=2:duration=first:normalize=0,volume=-3dB"
        if made_mix == "original":
            graph = (f"{music},volume={music_gain:.3f}dB[music];{voice},volume={voice_gain:.3f}dB[voice];"
                     f"[music][voice]{mixer},{limiter}[out]")
        else:
            graph = (f"{music},volume={music_gain:.3f}dB[music];{voice},volume={voice_gain:.3f}dB,asplit=2[key][voice];"
                     f"[music][key]{rendering.DUCK_FILTER}[ducked];[ducked][voice]{mixer},{limiter}[out]")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{name}.{uuid.uuid4().hex[:8]}.part"
    try:
        media.run_ffmpeg(["-nostats", "-loglevel", "error", *inputs, "-filter_complex", graph, "-map", "[out]",
                          "-ar", str(rate), *codec, "-y", str(tmp)], f"making the preview of {track.name}",
                         die_with_parent=True)
        os.replace(tmp, target)
    finally:
        paths.remove_quietly(tmp)
    paths.atomic_write_text(meta_file, json.dumps({"duration": duration, "start": cut.start, "mix": made_mix}))
    _prune(cache)
    return Preview(target, media_type, duration, cut.start, made_mix, False)


_SUMMARY = re.compile(r"\[Parsed_ebur128_(\d+) @ [^\]]*\] Summary:\s*Integrated loudness:\s*I:\s*(-?[\d.]+|-inf) LUFS")


def _integrated(stderr: str) -> list[float | None]:
    """The integrated loudness (LUFS) of each ``ebur128`` in ``stderr``, in graph order; None for silence."""
    found = []
    for _, value in sorted(_SUMMARY.findall(stderr), key=lambda item: int(item[0])):
        level = float(value)
        found.append(level if math.isfinite(level) and level > rendering.SILENT_LUFS else None)
    return found


def _prune(cache: Path) -> None:
    try:
        files = sorted(
            (p for p in cache.iterdir() if p.is_file() and p.suffix != ".json" and not p.name.startswith(".")),
            key=lambda p: p.stat().st_mtime, reverse=True,
        )
    except OSError:
        return
    for old in files[KEEP_PREVIEWS:]:
        paths.remove_quietly(old)
        paths.remove_quietly(old.with_suffix(".json"))
