"""A track's musical structure: its bars, its sections, where its sound ends.

What fitting music to a clip's length needs beside the beat grid (``editor/fitting.py``):

- **bars**: the downbeats of the beat grid (:func:`~mgsv_cli.media.beats.detect_beats`), so
  joins land on bar lines; none when the meter is unclear (the grid reports no downbeats);
- **per-bar features**: chroma (harmony), MFCCs (timbre) and loudness of each bar, averaged
  over the bar with ``librosa.util.sync``: what join scoring compares, stored with the
  structure so a track is decoded once, at index time;
- **sections**: boundaries where the music changes for good (verse to chorus), found by
  Foote's checkerboard novelty over the bars' self-similarity (librosa's
  ``recurrence_matrix`` over bar-synchronous features, ``util.peak_pick`` for the peaks):
  joins at section starts are what Premiere's Remix and Final Cut's song parts use;
- **the ending**: where the sound stops (trailing silence left out) and where the final
  section begins, so an edit can finish on the track's own last bars.

:func:`analyse_signal` / :func:`analyse_file` compute the beat grid and the structure from
one decode (16 kHz mono, the beat tracker's rate); :class:`TrackStructure` is JSON-able
(``to_dict``/``from_dict``) like :class:`~mgsv_cli.media.beats.BeatGrid`, for the track stores.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mgsv_cli.errors import DataError
from mgsv_cli.media.beats import ANALYSIS_SAMPLE_RATE, BeatGrid, detect_beats

STRUCTURE_VERSION = 1
# Feature frames: 64 ms windows every 32 ms at 16 kHz are fine enough to average over bars.
FEATURE_HOP = 512
FEATURE_FFT = 2048
N_CHROMA = 12
N_MFCC = 13
# The sound ends at the last frame within this many dB of the loudest frame's RMS (a
# held last chord fades to about -40 dB; room noise and dither sit below -60 dB).
END_BELOW_PEAK_DB = 60.0
# Sections: the checkerboard kernel looks this many bars each way; boundaries are at
# least MIN_SECTION_BARS apart and stand out of the novelty curve by NOVELTY_DELTA of its range.
KERNEL_BARS = 4
MIN_SECTION_BARS = 4
NOVELTY_DELTA = 0.1
FEATURE_DECIMALS = 4


@dataclass(frozen=True)
class TrackStructure:
    """Bars, sections and the ending of one track (seconds from its start).

    ``bars`` are bar lines (downbeats), empty when the meter is unclear or there is no beat;
    bar ``i`` lasts from ``bars[i]`` to ``bars[i + 1]`` (the last one to ``end``).
    ``chroma``/``timbre`` hold one row per bar (12 normalised chroma values; 13 MFCCs),
    ``loudness`` one RMS level per bar in dBFS. ``sections`` are section starts, each a
    bar line, the first bar line first; ``ending`` is the start of the last section.
    """

    duration: float  # the length of the decoded audio
    end: float  # where the sound stops: ``duration`` less any trailing silence
    tempo_bpm: float  # 0 without a beat
    meter: int | None  # beats per bar; None without bars
    bars: list[float] = field(default_factory=list)
    sections: list[float] = field(default_factory=list)
    chroma: list[list[float]] = field(default_factory=list)
    timbre: list[list[float]] = field(default_factory=list)
    loudness: list[float] = field(default_factory=list)
    version: int = STRUCTURE_VERSION

    @property
    def has_bars(self) -> bool:
        return len(self.bars) >= 2

    @property
    def last_downbeat(self) -> float | None:
        """The last bar line before the sound stops (a song's final hit)."""
        inside = [b for b in self.bars if b < self.end]
        return inside[-1] if inside else None

    @property
    def ending(self) -> float | None:
        """Where the last section (the track's ending) starts; None without sections."""
        return self.sections[-1] if self.sections else None

    @property
    def bar_seconds(self) -> float | None:
        """The median bar length, None without bars."""
        if not self.has_bars:
            return None
        gaps = sorted(b - a for a, b in zip(self.bars, self.bars[1:]))
        return gaps[len(gaps) // 2]

    def section_of(self, t: float) -> int:
        """Index of the section holding time ``t`` (0 before the first)."""
        return max(0, sum(1 for s in self.sections if s <= t + 1e-6) - 1)

    def to_dict(self) -> dict[str, Any]:
        def rounded(rows):
            return [[round(float(v), FEATURE_DECIMALS) for v in row] for row in rows]

        return {
            "version": self.version,
            "duration": round(float(self.duration), 4),
            "end": round(float(self.end), 4),
            "tempo_bpm": round(float(self.tempo_bpm), 3),
            "meter": self.meter,
            "bars": [round(float(b), 4) for b in self.bars],
            "sections": [round(float(s), 4) for s in self.sections],
            "chroma": rounded(self.chroma),
            "timbre": rounded(self.timbre),
            "loudness": [round(float(v), 2) for v in self.loudness],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrackStructure":
        try:
            version = int(data.get("version", 1))
            if version > STRUCTURE_VERSION:
                raise DataError(f"track structure version {version} is newer than this mgsv reads "
                                f"({STRUCTURE_VERSION}): upgrade mgsv")
            meter = data.get("meter")
            found = cls(
                duration=float(data["duration"]), end=float(data["end"]), tempo_bpm=float(data["tempo_bpm"]),
                meter=None if meter is None else int(meter),
                bars=[float(b) for b in data.get("bars") or []],
                sections=[float(s) for s in data.get("sections") or []],
                chroma=[[float(v) for v in row] for row in data.get("chroma") or []],
                timbre=[[float(v) for v in row] for row in data.get("timbre") or []],
                loudness=[float(v) for v in data.get("loudness") or []],
                version=version,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"malformed track structure: {exc!r}") from None
        if not (len(found.chroma) == len(found.timbre) == len(found.loudness) == len(found.bars)):
            raise DataError("malformed track structure: one row of features per bar expected")
        return found

    @classmethod
    def from_json(cls, text: str) -> "TrackStructure":
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise DataError(f"malformed track structure JSON: {exc}") from None
        return cls.from_dict(data)


def analyse_signal(audio, sr: int, grid: BeatGrid | None = None) -> tuple[BeatGrid, TrackStructure]:
    """The beat grid (``grid`` when the caller has it) and the structure of a mono signal.

    ``audio``: float array ``[n_samples]`` (``[n_channels, n_samples]`` is averaged);
    ``sr``: its rate (16 kHz is what indexing decodes to; anything from 8 kHz works).
    """
    import numpy as np

    y = np.asarray(audio, dtype=np.float32)
    if y.ndim == 2:
        y = y.mean(axis=0)
    if y.ndim != 1:
        raise DataError(f"analyse_signal: expected audio [n_samples], got shape {tuple(y.shape)}")
    if grid is None:
        grid = detect_beats(y, sr)
    duration = len(y) / sr
    end = sound_end(y, sr)
    downbeats = [b for b in (grid.downbeats or []) if b < end]
    if grid.tempo_bpm <= 0 or len(downbeats) < 2 or len(y) < FEATURE_FFT:
        return grid, TrackStructure(duration=duration, end=end, tempo_bpm=grid.tempo_bpm, meter=None)
    beats = np.asarray(grid.beats)
    first, second = downbeats[0], downbeats[1]
    meter = int(np.count_nonzero((beats >= first - 1e-6) & (beats < second - 1e-6))) or None
    chroma, timbre, loudness = bar_features(y, sr, downbeats, end)
    sections = find_sections(np.hstack([chroma, _standardised_columns(timbre)]), downbeats)
    return grid, TrackStructure(
        duration=duration, end=end, tempo_bpm=grid.tempo_bpm, meter=meter, bars=[float(b) for b in downbeats],
        sections=sections, chroma=chroma.tolist(), timbre=timbre.tolist(), loudness=loudness.tolist(),
    )


def sound_end(y, sr: int) -> float:
    """Where the sound stops: the end of the last frame within ``END_BELOW_PEAK_DB`` of the loudest."""
    import librosa
    import numpy as np

    if len(y) < FEATURE_FFT:
        return len(y) / sr
    rms = librosa.feature.rms(y=y, frame_length=FEATURE_FFT, hop_length=FEATURE_HOP, center=False)[0]
    if not np.any(rms > 0):
        return len(y) / sr
    level = 20 * np.log10(np.maximum(rms, 1e-10))
    loud = np.flatnonzero(level >= level.max() - END_BELOW_PEAK_DB)
    return min(len(y) / sr, (int(loud[-1]) * FEATURE_HOP + FEATURE_FFT) / sr)


def bar_features(y, sr: int, bars, end: float):
    """``(chroma [n_bars, 12], mfcc [n_bars, 13], loudness dB [n_bars])``, each averaged over its bar.

    Chroma rows are scaled to sum 1 (harmony without level); loudness is the RMS level of
    the bar's power, in dBFS.
    """
    import librosa
    import numpy as np

    power = np.abs(librosa.stft(y, n_fft=FEATURE_FFT, hop_length=FEATURE_HOP)) ** 2
    chroma = librosa.feature.chroma_stft(S=power, sr=sr, n_fft=FEATURE_FFT, hop_length=FEATURE_HOP)
    mel = librosa.feature.melspectrogram(S=power, sr=sr, n_fft=FEATURE_FFT, hop_length=FEATURE_HOP)
    mfcc = librosa.feature.mfcc(S=librosa.power_to_db(mel), n_mfcc=N_MFCC)
    mean_square = power.sum(axis=0, keepdims=True) / (FEATURE_FFT ** 2 / 2.0)  # Parseval, Hann window ~ 1/2
    n_frames = power.shape[1]
    # The boundaries: each bar line's frame and the end of the sound, strictly increasing (sync
    # drops repeated boundaries, which would shift every later bar by one).
    edges = librosa.time_to_frames(np.append(np.asarray(bars, dtype=np.float64), end), sr=sr,
                                   hop_length=FEATURE_HOP)
    edges = np.minimum(edges, n_frames - len(edges) + np.arange(len(edges)) + 1)
    edges = np.maximum(edges, np.arange(len(edges)))
    for i in range(1, len(edges)):
        edges[i] = max(edges[i], edges[i - 1] + 1)
    data = np.vstack([chroma, mfcc, mean_square])
    # pad=False: the segments are exactly [edges[i], edges[i + 1]), one per bar.
    per_bar = librosa.util.sync(data, edges, aggregate=np.mean, pad=False)
    if per_bar.shape[1] != len(bars):
        raise DataError(f"bar features: {per_bar.shape[1]} segments for {len(bars)} bars")
    chroma_bars = per_bar[:N_CHROMA].T
    chroma_bars = chroma_bars / np.maximum(chroma_bars.sum(axis=1, keepdims=True), 1e-9)
    timbre_bars = per_bar[N_CHROMA:N_CHROMA + N_MFCC].T
    loudness = 10 * np.log10(np.maximum(per_bar[-1], 1e-12))
    return chroma_bars, timbre_bars, loudness


def _standardised_columns(x):
    import numpy as np

    spread = x.std(axis=0, keepdims=True)
    return (x - x.mean(axis=0, keepdims=True)) / np.where(spread > 1e-9, spread, 1.0)


def find_sections(features, bars) -> list[float]:
    """Section starts (bar lines) from bar-synchronous ``features [n_bars, d]``.

    Foote's novelty: a Gaussian-tapered checkerboard kernel of ``KERNEL_BARS`` each way
    slides along the diagonal of the bars' cosine self-similarity (librosa's
    ``recurrence_matrix`` in affinity mode, every pair kept); its peaks are where the
    bars before stop resembling the bars after. The first bar line always starts a section.
    """
    import librosa
    import numpy as np

    n = len(bars)
    if n < 2 * MIN_SECTION_BARS:
        return [float(bars[0])] if n else []
    data = np.asarray(features, dtype=np.float64).T  # [d, n]
    similarity = librosa.segment.recurrence_matrix(data, mode="affinity", metric="cosine", k=n - 1, sym=True,
                                                   self=True, sparse=False)
    novelty = checkerboard_novelty(similarity, KERNEL_BARS)
    span = float(novelty.max() - novelty.min())
    if span <= 0:
        return [float(bars[0])]
    peaks = librosa.util.peak_pick(novelty, pre_max=MIN_SECTION_BARS - 1, post_max=MIN_SECTION_BARS - 1,
                                   pre_avg=KERNEL_BARS, post_avg=KERNEL_BARS, delta=NOVELTY_DELTA * span,
                                   wait=MIN_SECTION_BARS - 1)
    starts = [0] + [int(p) for p in peaks if MIN_SECTION_BARS // 2 <= p < n]
    return [float(bars[i]) for i in sorted(set(starts))]


def checkerboard_novelty(similarity, half_width: int):
    """Foote's novelty of a self-similarity matrix ``[n, n]`` -> ``[n]`` (value ``i``: a boundary
    just before row ``i``), with a Gaussian-tapered checkerboard kernel of ``half_width`` each way.

    Near the ends the kernel is cut to the matrix and its sum rescaled, so a boundary close
    to the start or the end is not missed for want of bars on one side.
    """
    import numpy as np

    s = np.asarray(similarity, dtype=np.float64)
    n = s.shape[0]
    offsets = np.arange(-half_width, half_width) + 0.5  # kernel cells between rows i-w .. i+w-1
    taper = np.exp(-0.5 * (offsets / (0.5 * half_width)) ** 2)
    sign = np.sign(offsets)
    kernel = np.outer(sign, sign) * np.outer(taper, taper)  # + within each side, - across
    novelty = np.zeros(n)
    for i in range(1, n):
        lo, hi = i - half_width, i + half_width
        rows = np.arange(lo, hi)
        inside = (rows >= 0) & (rows < n)
        if inside.sum() < 2:
            continue
        k = kernel[np.ix_(inside, inside)]
        block = s[np.ix_(rows[inside], rows[inside])]
        weight = np.abs(k).sum()
        novelty[i] = float((k * block).sum() / weight) if weight > 0 else 0.0
    return np.maximum(novelty, 0.0)


def analyse_file(path) -> tuple[BeatGrid, TrackStructure]:
    """Decode a track once (mono, 16 kHz) and find its beat grid and structure."""
    from mgsv_cli.media.ffmpeg import read_audio_mono

    audio = read_audio_mono(path, sample_rate=ANALYSIS_SAMPLE_RATE)
    return analyse_signal(audio, ANALYSIS_SAMPLE_RATE)


def structure_of_file(path) -> TrackStructure:
    """The structure of a track file (what the track stores keep beside the beat grid)."""
    return analyse_file(path)[1]
