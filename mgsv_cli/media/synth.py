"""Synthesised music and video for tests and ``make demo`` (no downloads, no real recordings).

Audio is generated with numpy and encoded by ffmpeg (format picked from the file
extension: wav, mp3, flac, ogg, m4a, opus); clips are ffmpeg's moving ``testsrc2``
pattern encoded as H.264 (VP9 for .webm) with an optional voice-like audio track.
Everything is deterministic for a given seed.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from mgsv_cli.errors import MediaError, UsageError

SAMPLE_RATE = 44100
_CLIP_AUDIO_RATE = 48000
NOTE_NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
_FLAT_NAMES = {"Db": "C#", "Eb": "D#", "Gb": "F#", "Ab": "G#", "Bb": "A#"}

# Chords as scale degrees (semitones of the chord root above the key root, minor flag).
_PROGRESSIONS = {
    "major": [[(0, False), (7, False), (9, True), (5, False)],
              [(0, False), (5, False), (7, False), (5, False)],
              [(9, True), (5, False), (0, False), (7, False)]],
    "minor": [[(0, True), (8, False), (3, False), (10, False)],
              [(0, True), (5, True), (7, True), (0, True)],
              [(0, True), (10, False), (8, False), (7, False)]],
}
# 8-bar sections after an intro, so tracks have a structure a detector can find.
_BODY_SECTIONS = ["verse", "chorus", "verse", "bridge", "chorus"]
# A song with an ending rings out at least this many bars after its final downbeat.
ENDING_RING_BARS = 1.25
_ENERGY = {"intro": 0.4, "verse": 0.7, "chorus": 1.0, "bridge": 0.6, "outro": 0.35}
_AUDIO_CODECS = {
    ".wav": ["-c:a", "pcm_s16le"],
    ".mp3": ["-c:a", "libmp3lame", "-b:a", "192k"],
    ".flac": ["-c:a", "flac"],
    ".ogg": ["-c:a", "libvorbis", "-q:a", "5"],
    ".oga": ["-c:a", "libvorbis", "-q:a", "5"],
    ".m4a": ["-c:a", "aac", "-b:a", "192k"],
    ".aac": ["-c:a", "aac", "-b:a", "192k"],
    ".opus": ["-c:a", "libopus", "-b:a", "128k", "-ar", "48000"],
}
_CLIP_CODECS = {
    ".mp4": ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k"],
    ".m4v": ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k"],
    ".mov": ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k"],
    ".mkv": ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k"],
    ".webm": ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "400k",
              "-pix_fmt", "yuv420p", "-c:a", "libopus", "-b:a", "96k"],
}


# ---------------------------------------------------------------- encoding


def _encode(args: list[str], pcm: bytes, out: Path) -> None:
    """Run ffmpeg with raw PCM on stdin; failures become a MediaError naming ``out``."""
    from mgsv_cli.media.ffmpeg import run_ffmpeg

    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_ffmpeg(["-loglevel", "error", "-y", *args, str(out)], f"writing {out}", input=pcm, die_with_parent=True)
    except MediaError:
        out.unlink(missing_ok=True)
        raise


def _metadata_args(title: str | None, artist: str | None) -> list[str]:
    args: list[str] = []
    if title:
        args += ["-metadata", f"title={title}"]
    if artist:
        args += ["-metadata", f"artist={artist}"]
    return args


def write_audio(path: str | Path, samples, sample_rate: int = SAMPLE_RATE,
                title: str | None = None, artist: str | None = None) -> Path:
    """Encode float samples ``[n]`` (mono) or ``[n, 2]`` (stereo) in [-1, 1] to ``path``.

    The codec follows the extension (wav, mp3, flac, ogg, m4a, opus); ``title`` and
    ``artist`` become the file's tags.
    """
    import numpy as np

    path = Path(path)
    codec = _AUDIO_CODECS.get(path.suffix.lower())
    if codec is None:
        raise UsageError(f"cannot synthesise {path.name}: extension must be one of {', '.join(sorted(_AUDIO_CODECS))}")
    data = np.asarray(samples, dtype=np.float32)
    n_channels = 1 if data.ndim == 1 else data.shape[1]
    pcm = np.ascontiguousarray(np.clip(data, -1.0, 1.0)).tobytes()
    args = ["-f", "f32le", "-ar", str(sample_rate), "-ac", str(n_channels), "-i", "pipe:0",
            *_metadata_args(title, artist), *codec]
    _encode(args, pcm, path)
    return path


# ---------------------------------------------------------------- instruments


def _midi_hz(note: float) -> float:
    return 440.0 * 2.0 ** ((note - 69) / 12.0)


def _parse_key(key: str | None, rng) -> tuple[int, str]:
    """``"C"``, ``"F#m"``, ``"Bbm"`` -> (MIDI pitch class, mode); None picks one from ``rng``."""
    if key is None:
        return int(rng.integers(0, 12)), ("minor" if rng.random() < 0.5 else "major")
    text = key.strip()
    mode = "major"
    if text.endswith("m") and len(text) > 1:
        text, mode = text[:-1], "minor"
    text = text[:1].upper() + text[1:]
    text = _FLAT_NAMES.get(text, text)
    if text not in NOTE_NAMES:
        raise UsageError(f"key {key!r}: expected a note name like C, F#, Bb, optionally followed by m (minor)")
    return NOTE_NAMES.index(text), mode


def _add(buf, start_s: float, sound, pan: float = 0.0) -> None:
    """Mix a mono ``sound`` into stereo ``buf [n, 2]`` at ``start_s`` with constant-power ``pan``."""
    import numpy as np

    i0 = int(round(start_s * SAMPLE_RATE))
    if i0 >= len(buf) or i0 < 0:
        return
    sound = sound[: len(buf) - i0]
    angle = (pan + 1.0) * np.pi / 4.0
    buf[i0:i0 + len(sound), 0] += sound * np.cos(angle)
    buf[i0:i0 + len(sound), 1] += sound * np.sin(angle)


def _time(seconds: float):
    import numpy as np

    return np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE


def _kick(accent: float):
    import numpy as np

    t = _time(0.35)
    freq = 45.0 + 85.0 * np.exp(-t * 30.0)
    phase = 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE
    return accent * np.sin(phase) * np.exp(-t * 9.0)


def _noise_hit(rng, seconds: float, decay: float, brightness: float):
    """Noise burst; ``brightness`` near 1 keeps only the highs (first difference of noise)."""
    import numpy as np

    noise = rng.standard_normal(int(seconds * SAMPLE_RATE) + 1)
    hi = np.diff(noise) * 0.5
    lo = noise[1:] * 0.3
    env = np.exp(-_time(seconds) * decay)[: len(hi)]
    return (brightness * hi + (1 - brightness) * lo) * env


@functools.lru_cache(maxsize=256)
def _tone(freq: float, seconds: float, n_harmonics: int, attack: float, decay: float, tilt: float = 1.0):
    """Harmonic tone with ``1/k**tilt`` partials and an attack/exponential-decay envelope.

    Cached (songs repeat their notes); the returned array is read-only.
    """
    import numpy as np

    t = _time(seconds)
    wave = np.zeros_like(t)
    for k in range(1, n_harmonics + 1):
        if k * freq > SAMPLE_RATE / 2.2:
            break
        wave += np.sin(2 * np.pi * k * freq * t) / k ** tilt
    env = np.minimum(1.0, t / max(attack, 1e-4)) * np.exp(-t * decay)
    # A short release avoids a click when the note is cut.
    tail = min(len(t), int(0.01 * SAMPLE_RATE))
    env[len(t) - tail:] *= np.linspace(1.0, 0.0, tail)
    out = (wave * env).astype(np.float32)
    out.flags.writeable = False
    return out


def _chord_notes(root_pc: int, degree: int, minor: bool, octave: int) -> list[int]:
    root = 12 * (octave + 1) + (root_pc + degree) % 12
    return [root, root + (3 if minor else 4), root + 7]


def _section_of(bar: int, n_bars: int) -> str:
    """Intro for bars 0-7, the last 4 bars an outro (songs over 12 bars), 8-bar body sections between."""
    if n_bars > 12 and bar >= n_bars - 4:
        return "outro"
    if bar < 8:
        return "intro"
    return _BODY_SECTIONS[((bar - 8) // 8) % len(_BODY_SECTIONS)]


def _render_bar(buf, rng, bar_t: float, beat: float, section: str, chord: list[int], timbre: dict) -> None:
    """Drums, bass, pad and arpeggio of one 4/4 bar, shaped by the section's energy."""
    energy = _ENERGY[section]
    bass_note = chord[0] - 12
    for b in range(4):
        t = bar_t + b * beat
        downbeat = b == 0
        if section != "intro" and (b % 2 == 0 or section == "chorus"):
            _add(buf, t, 0.9 * energy * _kick(1.0 if downbeat else 0.7))
        _add(buf, t, 0.25 * (1.0 if downbeat else 0.6) * _noise_hit(rng, 0.05, 90, 0.9), pan=0.3)
        if section == "chorus":
            _add(buf, t + beat / 2, 0.15 * _noise_hit(rng, 0.04, 110, 0.9), pan=0.3)
            if b in (1, 3):
                _add(buf, t, 0.35 * _noise_hit(rng, 0.18, 22, 0.45), pan=-0.1)
        if section not in ("intro", "outro"):
            _add(buf, t, 0.35 * energy * _tone(_midi_hz(bass_note), beat * 0.9, 6, 0.005, 4.0, 1.3), pan=-0.2)
    pad_len = 4 * beat
    for i, note in enumerate(chord):
        pad = _tone(_midi_hz(note), pad_len, timbre["pad_harmonics"], 0.08 if section != "intro" else 0.6,
                    0.4, timbre["pad_tilt"])
        _add(buf, bar_t, 0.09 * (0.6 + 0.4 * energy) * pad, pan=(i - 1) * 0.5)
    if section in ("bridge", "chorus"):
        arp = chord + [chord[0] + 12]
        for s in range(8 if section == "chorus" else 16):
            step = beat / 2 if section == "chorus" else beat / 4
            note = arp[s % len(arp)] + 12
            _add(buf, bar_t + s * step, 0.08 * _tone(_midi_hz(note), step * 1.5, timbre["arp_harmonics"],
                                                       0.002, 10.0, 1.0), pan=0.5 if s % 2 else -0.5)


@dataclass(frozen=True)
class SongPlan:
    """Where a :func:`music_samples` song's structure lies (seconds): the ground truth for tests
    and ``bench/bench_fit.py``.

    ``bars``: every bar line (downbeat) that carries music, the final hit's included;
    ``sections``: the first bar line of each section; ``last_downbeat``: the final hit of a
    song with an ``ending`` (else the last bar line); ``end``: where the sound stops.
    """

    bpm: float
    bars: list[float]
    sections: list[float]
    section_names: list[str]
    last_downbeat: float
    end: float
    ending: bool

    @property
    def beats(self) -> list[float]:
        beat = 60.0 / self.bpm
        return [bar + k * beat for bar in self.bars[:-1] for k in range(4)] + [self.bars[-1]]


def song_plan(seconds: float, bpm: float = 120.0, ending: bool = False) -> SongPlan:
    """The structure of ``music_samples(seconds, bpm, ending=ending)`` (any key and seed)."""
    if seconds <= 0 or bpm <= 0:
        raise UsageError("seconds and bpm must be positive")
    bar = 240.0 / bpm
    if ending:
        # The final hit falls on the last bar line that leaves ENDING_RING_BARS of ring-out.
        n_music = max(1, int((seconds - ENDING_RING_BARS * bar) / bar + 1e-9))
        n_bars = n_music + 1
        end = seconds
    else:
        n_bars = int(-(-seconds // bar))
        n_music = n_bars
        end = seconds
    bars = [k * bar for k in range(n_bars)]
    names = [_section_of(k, n_music) for k in range(n_music)]
    names += names[-1:] * (n_bars - n_music)  # the final hit ends the last section
    # Consecutive sections always differ in name (intro, verse, chorus, verse, bridge, chorus, ...).
    starts = [k for k in range(n_bars) if k == 0 or names[k] != names[k - 1]]
    sections, section_names = [bars[k] for k in starts], [names[k] for k in starts]
    return SongPlan(bpm=bpm, bars=bars, sections=sections, section_names=section_names,
                    last_downbeat=bars[-1], end=end, ending=ending)


def _final_hit(buf, rng, t: float, beat: float, chord: list[int], timbre: dict, seconds: float) -> None:
    """The song's last downbeat: kick, crash and the tonic chord, ringing out to ``seconds``.

    The decay is set so the chord is about 40 dB down at the end of the file, as a held
    last chord of a recording fades into the room.
    """
    import numpy as np

    ring = max(0.05, seconds - t)
    decay = np.log(100.0) / ring  # -40 dB at the end
    _add(buf, t, 1.0 * _kick(1.0))
    _add(buf, t, 0.5 * _noise_hit(rng, min(ring, 1.5), 4.0, 0.6), pan=0.2)
    for i, note in enumerate(chord + [chord[0] - 12]):
        tone = _tone(_midi_hz(note), ring, timbre["pad_harmonics"], 0.005, decay, timbre["pad_tilt"])
        _add(buf, t, 0.16 * tone, pan=(i - 1.5) * 0.3)
    _add(buf, t, 0.4 * _tone(_midi_hz(chord[0] - 24), ring, 6, 0.005, decay * 1.5, 1.3), pan=-0.2)


def music_samples(seconds: float, bpm: float = 120.0, key: str | None = None, seed: int = 0,
                  ending: bool = False):
    """Stereo float32 samples ``[n, 2]`` at 44.1 kHz of a structured synthetic song.

    4/4 bars at ``bpm``: kick/hat/snare with accented downbeats, a bass line and chord
    pads following a seeded progression (another one in bridges), an arpeggio in bridges
    and choruses; 8-bar sections (intro, verse, chorus, verse, bridge, chorus, ..., outro)
    change instrumentation, energy and brightness. ``ending``: the song stops as a
    recording does, on a final downbeat (kick, crash, the tonic chord) that rings out for
    at least ``ENDING_RING_BARS`` bars to the end of the file; otherwise it is cut off at
    ``seconds``. :func:`song_plan` says where its bars and sections are.
    """
    import numpy as np

    if seconds <= 0 or bpm <= 0:
        raise UsageError("seconds and bpm must be positive")
    rng = np.random.default_rng(seed)
    root_pc, mode = _parse_key(key, rng)
    choices = _PROGRESSIONS[mode]
    main_choice = int(rng.integers(0, len(choices)))
    progression = choices[main_choice]
    bridge_progression = choices[(main_choice + 1 + int(rng.integers(0, len(choices) - 1))) % len(choices)]
    timbres = {
        name: {"pad_harmonics": int(rng.integers(3, 7)) + (6 if name == "chorus" else 0),
               "pad_tilt": 1.0 if name == "chorus" else 1.6,
               "arp_harmonics": int(rng.integers(2, 8))}
        for name in _ENERGY
    }
    beat = 60.0 / bpm
    n_bars = int(np.ceil(seconds / (4 * beat)))
    if ending:
        plan = song_plan(seconds, bpm, ending=True)
        n_bars = len(plan.bars) - 1  # the last bar line is the final hit's
    buf = np.zeros((int(round(seconds * SAMPLE_RATE)), 2), dtype=np.float64)
    for bar in range(n_bars):
        section = _section_of(bar, n_bars)
        chords = bridge_progression if section == "bridge" else progression
        degree, minor = chords[bar % len(chords)]
        octave = 4 if section != "bridge" else 3
        _render_bar(buf, rng, bar * 4 * beat, beat, section, _chord_notes(root_pc, degree, minor, octave),
                    timbres[section])
    if ending:
        degree, minor = progression[0]
        _final_hit(buf, rng, n_bars * 4 * beat, beat, _chord_notes(root_pc, degree, minor, 4), timbres["outro"],
                   seconds)
    _tone.cache_clear()  # the cache only pays off within one song; free its memory
    peak = float(np.max(np.abs(buf))) or 1.0
    out = np.tanh(1.2 * buf / peak) / np.tanh(1.2) * 0.89
    fade = min(len(out), int(0.02 * SAMPLE_RATE))
    out[len(out) - fade:] *= np.linspace(1.0, 0.0, fade)[:, None]
    return out.astype(np.float32)


# ---------------------------------------------------------------- public generators


def synth_track(path: str | Path, seconds: float = 30.0, bpm: float = 120.0, key: str | None = None,
                seed: int = 0, title: str | None = None, artist: str | None = None, ending: bool = False) -> Path:
    """Write a synthetic song of ``seconds`` to ``path`` (codec from the extension); returns the path.

    ``key`` like ``"A"`` or ``"F#m"`` (None: chosen by ``seed``); ``title``/``artist`` are tags;
    ``ending``: it ends on a final chord that rings out (see :func:`music_samples`).
    """
    samples = music_samples(seconds, bpm=bpm, key=key, seed=seed, ending=ending)
    return write_audio(path, samples, SAMPLE_RATE, title=title, artist=artist)


def click_times(seconds: float, bpm: float, offset: float = 0.0) -> list[float]:
    """Beat times (s) of :func:`synth_click_track`: ``offset + k * 60 / bpm`` below ``seconds``."""
    beat = 60.0 / bpm
    n_beats = int((seconds - offset) / beat - 1e-9) + 1 if seconds > offset else 0
    return [offset + k * beat for k in range(n_beats)]


def synth_click_track(path: str | Path, seconds: float = 10.0, bpm: float = 120.0,
                      offset: float = 0.0) -> list[float]:
    """Write a metronome (short decaying clicks, accented every 4th beat) and return its beat times.

    Each click starts on the exact sample of its beat, so onset detectors can be checked
    against the returned times (use wav/flac: lossy codecs add encoder delay).
    """
    import numpy as np

    if bpm <= 0 or seconds <= 0 or offset < 0:
        raise UsageError("seconds and bpm must be positive and offset non-negative")
    times = click_times(seconds, bpm, offset)
    buf = np.zeros(int(round(seconds * SAMPLE_RATE)), dtype=np.float64)
    t = _time(0.03)
    for k, when in enumerate(times):
        accent = k % 4 == 0
        click = np.sin(2 * np.pi * (1600.0 if accent else 1000.0) * t) * np.exp(-t * 160.0)
        i0 = int(round(when * SAMPLE_RATE))
        seg = buf[i0:i0 + len(click)]
        seg += (0.9 if accent else 0.6) * click[: len(seg)]
    write_audio(path, buf, SAMPLE_RATE)
    return times


def synth_tone(path: str | Path, seconds: float = 10.0, freq: float = 440.0, level_db: float = -12.0) -> Path:
    """Write a steady sine of ``freq`` Hz at ``level_db`` dBFS peak (a music stand-in easy to measure)."""
    import numpy as np

    t = _time(seconds)
    write_audio(path, 10 ** (level_db / 20.0) * np.sin(2 * np.pi * freq * t), SAMPLE_RATE)
    return Path(path)


def speech_segments(seconds: float, seed: int = 0) -> list[tuple[float, float]]:
    """Where the voice of a ``speech_like`` :func:`synth_clip` talks: ``[(start_s, end_s), ...]``.

    Phrases of 0.6-1.6 s separated by 0.35-0.8 s pauses, starting at 0.3 s.
    """
    import numpy as np

    rng = np.random.default_rng(seed + 7919)
    segments, t = [], 0.3
    while t < seconds - 0.2:
        end = min(seconds, t + float(rng.uniform(0.6, 1.6)))
        segments.append((t, end))
        t = end + float(rng.uniform(0.35, 0.8))
    return segments


def voice_samples(seconds: float, speech_like: bool = True, seed: int = 0, sample_rate: int = _CLIP_AUDIO_RATE):
    """Mono float32 ``[n]`` voice-like sound: a gliding ~140 Hz harmonic tone with moving formants.

    ``speech_like``: syllables (about 5 per second) in the phrases of :func:`speech_segments`,
    silence between; otherwise one continuous, slowly modulated tone.
    """
    import numpy as np

    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    rng = np.random.default_rng(seed)
    f0 = 140.0 + 25.0 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6.28)) + 6.0 * np.sin(2 * np.pi * 5.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    formant1 = 600.0 + 250.0 * np.sin(2 * np.pi * 2.3 * t)
    formant2 = 1400.0 + 500.0 * np.sin(2 * np.pi * 1.7 * t + 1.0)
    wave = np.zeros(n)
    for k in range(1, 25):
        fk = k * f0
        gain = np.exp(-((fk - formant1) / 250.0) ** 2) + 0.6 * np.exp(-((fk - formant2) / 350.0) ** 2) + 0.15 / k
        wave += gain * np.sin(k * phase)
    if speech_like:
        env = np.zeros(n)
        for start, end in speech_segments(seconds, seed):
            inside = (t >= start) & (t < end)
            syllable = 0.5 - 0.5 * np.cos(2 * np.pi * 5.0 * (t[inside] - start))
            edge = np.minimum(1.0, np.minimum(t[inside] - start, end - t[inside]) / 0.03)
            env[inside] = (0.35 + 0.65 * syllable) * edge
    else:
        env = 0.7 + 0.3 * np.sin(2 * np.pi * 0.5 * t)
    out = wave * env
    peak = float(np.max(np.abs(out))) or 1.0
    return (0.5 * out / peak).astype(np.float32)


def synth_clip(path: str | Path, seconds: float = 4.0, with_audio: bool = True, speech_like: bool = False,
               size: tuple[int, int] = (320, 240), fps: int = 25, seed: int = 0) -> Path:
    """Write a video of moving colour patterns (H.264 + AAC; VP9 + Opus for .webm); returns the path.

    ``with_audio`` adds a voice-like track (:func:`voice_samples`): talking phrases with
    pauses when ``speech_like``, else a continuous modulated tone. ``seed`` shifts the hue.
    """
    path = Path(path)
    codecs = _CLIP_CODECS.get(path.suffix.lower())
    if codecs is None:
        raise UsageError(f"cannot synthesise {path.name}: extension must be one of {', '.join(sorted(_CLIP_CODECS))}")
    if seconds <= 0:
        raise UsageError("seconds must be positive")
    width, height = size
    video_src = f"testsrc2=size={width}x{height}:rate={fps}:duration={seconds},hue=h={(seed * 47) % 360}"
    args = ["-f", "lavfi", "-i", video_src]
    pcm = b""
    if with_audio:
        voice = voice_samples(seconds, speech_like=speech_like, seed=seed)
        pcm = voice.tobytes()
        args += ["-f", "f32le", "-ar", str(_CLIP_AUDIO_RATE), "-ac", "1", "-i", "pipe:0", "-map", "0:v", "-map", "1:a"]
    else:
        args += ["-an"]
    # The audio options follow the video ones in each codec list; drop them when silent.
    codec_args = codecs if with_audio else codecs[: codecs.index("-c:a")]
    args += [*codec_args, "-g", str(fps), "-t", f"{seconds}"]
    _encode(args, pcm, path)
    return path


_MOODS = ["Sunrise", "Night Drive", "Paper Boats", "Glass City", "Low Tide", "Neon Rain",
          "Open Road", "Quiet Hours", "Copper Sky", "Tin Forest", "Blue Hour", "Second Wind"]
_DEMO_FORMATS = [".mp3", ".flac", ".ogg", ".m4a", ".wav", ".opus"]


def make_demo_library(folder: str | Path, n_tracks: int = 8, seed: int = 0,
                      seconds: tuple[float, float] = (40.0, 75.0)) -> list[Path]:
    """Write ``n_tracks`` tagged synthetic songs into ``folder``; returns their paths.

    Lengths are drawn from ``seconds`` (min, max), tempos from 80-140 bpm, keys and
    progressions from ``seed``; the formats cycle through mp3, flac, ogg, m4a, wav, opus.
    """
    import numpy as np

    if n_tracks < 1:
        raise UsageError("n_tracks must be at least 1")
    if not 0 < seconds[0] <= seconds[1]:
        raise UsageError(f"seconds {seconds}: expected (min, max) with 0 < min <= max")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n_tracks):
        title = _MOODS[i % len(_MOODS)] + ("" if i < len(_MOODS) else f" {i // len(_MOODS) + 1}")
        ext = _DEMO_FORMATS[i % len(_DEMO_FORMATS)]
        slug = title.lower().replace(" ", "-")
        path = folder / f"{i + 1:02d}-{slug}{ext}"
        synth_track(path, seconds=round(float(rng.uniform(*seconds)), 1), bpm=float(rng.integers(80, 141)),
                    seed=seed * 1000 + i, title=title, artist="mgsv synth")
        paths.append(path)
    return paths


def make_demo_clip(path: str | Path, seconds: float = 12.0, seed: int = 0) -> Path:
    """Write the demo's short video: moving patterns with a talking voice (pauses included)."""
    return synth_clip(path, seconds=seconds, with_audio=True, speech_like=True, size=(480, 270), seed=seed)


# ---------------------------------------------------------------- planted media (train on your own media)
#
# ``mgsv data synth --media`` needs music and clips with a link a model can learn: a track is a
# row of sections, each with its own key, tempo and lead instrument, and a clip's picture shows
# the key (hue) and the instrument (pattern) of the one section its music comes from. Both are
# plain files, made here; what a dataset does with them is research/synthetic.py's business.

# Lead instruments of a section, chosen to differ in register and spectrum: (octave, harmonics,
# tilt of the partials, attack s, decay per s, notes per beat, inharmonic partial ratios or None).
INSTRUMENTS = {
    "pluck": (5, 8, 1.0, 0.003, 7.0, 2, None),
    "organ": (4, 12, 0.7, 0.05, 0.3, 0.25, None),
    "bell": (6, 1, 1.0, 0.002, 3.0, 1, (1.0, 2.76, 5.40, 8.93)),
}
PATTERNS = {"pluck": "horizontal", "organ": "vertical", "bell": "checker"}  # what a clip shows per instrument
_SECTION_FADE_S = 0.02


def _bell(freq: float, seconds: float, ratios, decay: float):
    """An inharmonic bell: partials at ``ratios`` of ``freq``, the higher ones dying faster."""
    import numpy as np

    t = _time(seconds)
    wave = np.zeros_like(t)
    for k, ratio in enumerate(ratios):
        if ratio * freq < SAMPLE_RATE / 2.2:
            wave += np.sin(2 * np.pi * ratio * freq * t) * np.exp(-t * decay * (1 + k)) / (1 + k)
    attack = np.minimum(1.0, t / 0.002)
    return (wave * attack).astype(np.float32)


def _render_section(seconds: float, bpm: float, key: str, instrument: str, rng):
    """Stereo float64 ``[n, 2]``: a section in one key at one tempo, led by ``instrument``.

    Quiet drums and a bass line on every beat (the same for every instrument), the key's chord
    progression, and the lead playing the chords' notes in its own register and rhythm.
    """
    import numpy as np

    if instrument not in INSTRUMENTS:
        raise UsageError(f"instrument {instrument!r}: expected one of {', '.join(INSTRUMENTS)}")
    octave, harmonics, tilt, attack, decay, per_beat, ratios = INSTRUMENTS[instrument]
    root_pc, mode = _parse_key(key, rng)
    progression = _PROGRESSIONS[mode][int(rng.integers(0, len(_PROGRESSIONS[mode])))]
    beat = 60.0 / bpm
    buf = np.zeros((int(round(seconds * SAMPLE_RATE)), 2), dtype=np.float64)
    n_bars = int(np.ceil(seconds / (4 * beat)))
    for bar in range(n_bars):
        bar_t = bar * 4 * beat
        degree, minor = progression[bar % len(progression)]
        # Chords climb from the key's root without wrapping at the octave, so a higher key sounds
        # higher: the key moves the whole spectrum, not only the pitch classes.
        base = 12 * (octave + 1) + root_pc + degree
        chord = [base, base + (3 if minor else 4), base + 7]
        for b in range(4):
            t = bar_t + b * beat
            _add(buf, t, 0.35 * _kick(1.0 if b == 0 else 0.6))
            _add(buf, t + beat / 2, 0.08 * _noise_hit(rng, 0.04, 100, 0.9), pan=0.3)
            _add(buf, t, 0.25 * _tone(_midi_hz(chord[0] - 24), beat * 0.9, 5, 0.005, 4.0, 1.3), pan=-0.2)
        if per_beat < 1:  # sustained chords, one per bar
            for i, note in enumerate(chord):
                _add(buf, bar_t, 0.22 * _tone(_midi_hz(note), 4 * beat, harmonics, attack, decay, tilt),
                     pan=(i - 1) * 0.4)
            continue
        step = beat / per_beat
        arpeggio = chord + [chord[0] + 12]
        for s in range(int(4 * per_beat)):
            freq = _midi_hz(arpeggio[s % len(arpeggio)])
            note = (_bell(freq, 1.2, ratios, decay) if ratios else
                    _tone(freq, step * 1.5, harmonics, attack, decay, tilt))
            _add(buf, bar_t + s * step, 0.35 * note, pan=0.4 if s % 2 else -0.4)
    _tone.cache_clear()
    fade = min(len(buf) // 2, int(_SECTION_FADE_S * SAMPLE_RATE))
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)[:, None]
        buf[:fade] *= ramp
        buf[len(buf) - fade:] *= ramp[::-1]
    return buf


def _render_intro(seconds: float, bpm: float, rng):
    """Drums only (no pitch): what a track plays before its first section."""
    import numpy as np

    beat = 60.0 / bpm
    buf = np.zeros((int(round(seconds * SAMPLE_RATE)), 2), dtype=np.float64)
    for k in range(int(np.ceil(seconds / beat))):
        _add(buf, k * beat, 0.35 * _kick(1.0 if k % 4 == 0 else 0.6))
        _add(buf, k * beat + beat / 2, 0.08 * _noise_hit(rng, 0.04, 100, 0.9), pan=0.3)
    return buf


def sectioned_samples(sections, intro_seconds: float = 0.0, intro_bpm: float = 100.0, seed: int = 0):
    """Stereo float32 ``[n, 2]`` at 44.1 kHz: an optional drums-only intro, then ``sections`` in turn.

    ``sections``: ``(seconds, bpm, key, instrument)`` tuples (instrument from :data:`INSTRUMENTS`);
    section ``i`` starts exactly at ``intro_seconds`` plus the lengths before it.
    """
    import numpy as np

    if not sections or any(s[0] <= 0 or s[1] <= 0 for s in sections) or intro_seconds < 0:
        raise UsageError("sections need positive lengths and tempos, and the intro a length of at least 0")
    rng = np.random.default_rng(seed)
    parts = [_render_intro(intro_seconds, intro_bpm, rng)] if intro_seconds > 0 else []
    parts += [_render_section(seconds, bpm, key, instrument, rng) for seconds, bpm, key, instrument in sections]
    buf = np.concatenate(parts)
    peak = float(np.max(np.abs(buf))) or 1.0
    return (np.tanh(1.2 * buf / peak) / np.tanh(1.2) * 0.89).astype(np.float32)


def key_hue(key: str) -> float:
    """The hue (degrees) a planted clip shows for ``key``: 30 degrees per semitone of its root
    (minor keys 15 degrees on), so neighbouring keys get neighbouring colours."""
    root_pc, mode = _parse_key(key, None)
    return (root_pc * 30.0 + (15.0 if mode == "minor" else 0.0)) % 360.0


def _hsv_to_rgb(hue_deg, saturation, value):
    """Vectorised HSV -> RGB floats in [0, 1] (numpy arrays broadcast)."""
    import numpy as np

    h = (np.asarray(hue_deg, dtype=np.float64) % 360.0) / 60.0
    c = value * saturation
    x = c * (1 - np.abs(h % 2 - 1))
    m = value - c
    zero = np.zeros_like(h)
    sector = np.floor(h).astype(int) % 6
    r = np.choose(sector, [c, x, zero, zero, x, c])
    g = np.choose(sector, [x, c, c, x, zero, zero])
    b = np.choose(sector, [zero, zero, x, c, c, x])
    return np.stack([r + m, g + m, b + m], axis=-1)


def pattern_frames(seconds: float, hue: float, pattern: str, fps: int = 4, size: int = 224, seed: int = 0):
    """uint8 frames ``[n, size, size, 3]`` of a planted clip: ``pattern`` (horizontal or vertical
    stripes, a checkerboard) in a saturated and a pale shade of ``hue`` drifting slowly, with a
    small grey disc wandering over it.

    Per clip (``seed``): the hue strays by up to 8 degrees, the brightness by 15%, the stripes'
    phase and drift and the disc's path are random, so no two clips are the same picture.
    """
    import numpy as np

    if pattern not in ("horizontal", "vertical", "checker"):
        raise UsageError(f"pattern {pattern!r}: expected horizontal, vertical or checker")
    rng = np.random.default_rng(seed)
    hue = hue + float(rng.uniform(-8.0, 8.0))
    value = float(rng.uniform(0.8, 1.0))
    period = size / float(rng.uniform(5.0, 7.0))
    phase, drift = float(rng.uniform(0, period)), float(rng.uniform(-12.0, 12.0))  # pixels, pixels per second
    disc = rng.uniform(0.2, 0.8, 2) * size
    velocity = rng.uniform(-40.0, 40.0, 2)
    radius = float(rng.uniform(0.05, 0.09)) * size  # small: the colours and the pattern are the picture
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    # Both shades carry the hue (a saturated and a pale one): what the picture shows is its colour.
    light, dark = _hsv_to_rgb(hue, 0.95, value), _hsv_to_rgb(hue, 0.4, 0.75 * value)
    n = max(1, int(round(seconds * fps)))
    frames = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        t = i / fps
        shift = phase + drift * t
        if pattern == "horizontal":
            on = ((yy + shift) // (period / 2)) % 2 == 0
        elif pattern == "vertical":
            on = ((xx + shift) // (period / 2)) % 2 == 0
        else:
            on = (((yy + shift) // (period / 2)) + (xx // (period / 2))) % 2 == 0
        picture = np.where(on[..., None], light, dark)
        centre = disc + velocity * t
        centre = np.abs((centre % (2 * size)) - size)  # bounce off the edges
        inside = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2
        picture[inside] = 0.5
        frames[i] = np.round(picture * 255.0).astype(np.uint8)
    return frames


def write_frames(path: str | Path, frames, fps: int = 4) -> Path:
    """Encode uint8 RGB frames ``[n, h, w, 3]`` as a silent H.264 video (``.mp4``/``.mov``/
    ``.mkv``/``.m4v``) at ``fps``, every frame a key frame (exact 1 fps sampling)."""
    import numpy as np

    path = Path(path)
    if path.suffix.lower() not in (".mp4", ".mov", ".mkv", ".m4v"):
        raise UsageError(f"cannot write frames to {path.name}: expected .mp4, .mov, .mkv or .m4v")
    data = np.ascontiguousarray(frames, dtype=np.uint8)
    n, height, width, _ = data.shape
    args = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "pipe:0",
            "-an", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "20", "-pix_fmt", "yuv420p", "-g", "1"]
    _encode(args, data.tobytes(), path)
    return path


def synth_pattern_clip(path: str | Path, seconds: float, key: str, instrument: str, fps: int = 4,
                       size: int = 224, seed: int = 0) -> Path:
    """Write a planted clip showing ``key`` (as a hue) and ``instrument`` (as a pattern); returns the path."""
    if instrument not in PATTERNS:
        raise UsageError(f"instrument {instrument!r}: expected one of {', '.join(PATTERNS)}")
    return write_frames(path, pattern_frames(seconds, key_hue(key), PATTERNS[instrument], fps, size, seed), fps)
