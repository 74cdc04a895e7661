"""The MGSV-EC feature recipe (spec section 3): every number, and the maths that uses them.

The released features were made this way; a model trained on them transfers only if
ours match exactly, so each constant is pinned by tests. This module is the one owner
of these facts: 1 fps frames (at most 50), 16 kHz mono audio (first channel), 96 AST
windows of 10 s centred every 2.5 s over the first 240 s, the Kaldi filterbank and
AST's normalisation, CLIP's preprocessing constants. numpy only at import time.
"""
from __future__ import annotations

import warnings
from typing import Iterable, Sequence

import numpy as np

from mgsv_cli.media.ffmpeg import frames_for_duration

N_VIDEO_FRAMES = 50  # 1 fps from t = 0, at most 50 s
N_MUSIC_WINDOWS = 96
WINDOW_STEP_S = 2.5
WINDOW_HALF_S = 5.0
MAX_MUSIC_SECONDS = 240.0
SAMPLE_RATE = 16_000

N_MEL_BINS = 128
N_FBANK_FRAMES = 1024
FRAME_LENGTH = 400  # 25 ms at 16 kHz
FRAME_SHIFT = 160  # 10 ms
FFT_LENGTH = 512
PREEMPHASIS = 0.97
MEL_FLOOR = 1.192092955078125e-07  # float32 epsilon, Kaldi's log floor
AST_MEAN = -4.2677393
AST_STD = 4.5689974

CLIP_IMAGE_SIZE = 224
CLIP_EMBED_DIM = 512  # ViT-B/32 projected image embedding: the release's video token width
AST_EMBED_DIM = 768  # AST pooled output: the release's music token width
TINY_MUSIC_DIM = 64  # the tiny encoders' music width (their frames are CLIP-wide, 512)
# (video, music) token widths per ``--encoders`` kind: a checkpoint trained on features of one
# kind can only rank music indexed with that kind.
ENCODER_WIDTHS = {"pretrained": (CLIP_EMBED_DIM, AST_EMBED_DIM), "tiny": (CLIP_EMBED_DIM, TINY_MUSIC_DIM)}
# The id each kind's tokens carry in a track store (tokens of different ids never mix).
ENCODER_IDS = {"pretrained": "clip-vit-b-32-openai+ast-audioset-0.4593", "tiny": "tiny-v1"}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def encoders_for_widths(video_dim: int, music_dim: int) -> str | None:
    """The ``--encoders`` kind whose features are ``video_dim``/``music_dim`` wide, or None."""
    for kind, widths in ENCODER_WIDTHS.items():
        if widths == (int(video_dim), int(music_dim)):
            return kind
    return None


def encoder_kind_of(encoder_id: str | None) -> str:
    """``tiny`` or ``pretrained``: the ``--encoders`` choice that produces ``encoder_id``."""
    return "tiny" if encoder_id and encoder_id.startswith("tiny") else "pretrained"


def describe_encoders(video_dim: int, music_dim: int) -> str:
    """What a network of these input widths needs, in the words of ``--encoders``."""
    kind = encoders_for_widths(video_dim, music_dim)
    if kind == "pretrained":
        return f"the pretrained encoders (CLIP ViT-B/32 + AST: {video_dim}/{music_dim}-d features)"
    if kind == "tiny":
        return f"the tiny encoders ({video_dim}/{music_dim}-d features)"
    return f"encoders giving {video_dim}/{music_dim}-d features (neither pretrained nor tiny)"


def frame_times(duration: float, max_frames: int = N_VIDEO_FRAMES) -> np.ndarray:
    """Times (s) of the sampled video frames: 0, 1, ..., floor(duration), at most ``max_frames``."""
    return np.arange(frames_for_duration(duration, max_frames), dtype=np.float64)


def window_centres() -> np.ndarray:
    """The 96 music window centres (s): 0, 2.5, ..., 237.5. Shape [96]."""
    return np.arange(N_MUSIC_WINDOWS, dtype=np.float64) * WINDOW_STEP_S


def window_bounds(centre: float) -> tuple[float, float]:
    """Window [start, end] (s) around ``centre``: [max(0, c - 5), min(240, c + 5)]."""
    return max(0.0, centre - WINDOW_HALF_S), min(MAX_MUSIC_SECONDS, centre + WINDOW_HALF_S)


def window_valid(duration: float) -> np.ndarray:
    """Which of the 96 windows exist for a track of ``duration`` s: centre <= duration. Bool [96]."""
    return window_centres() <= duration


def _window_sample_bounds(index: int) -> tuple[int, int]:
    start, end = window_bounds(index * WINDOW_STEP_S)
    return int(round(start * SAMPLE_RATE)), int(round(end * SAMPLE_RATE))


def pad_or_cut_audio(audio_16k: np.ndarray) -> np.ndarray:
    """Zero-pad or cut 16 kHz samples to exactly 240 s. float32 [3_840_000]."""
    n_samples = int(MAX_MUSIC_SECONDS * SAMPLE_RATE)
    audio = np.asarray(audio_16k, dtype=np.float32).reshape(-1)[:n_samples]
    if audio.size < n_samples:
        audio = np.concatenate([audio, np.zeros(n_samples - audio.size, dtype=np.float32)])
    return audio


def slice_windows(audio_16k: np.ndarray) -> list[np.ndarray]:
    """The samples of all 96 windows (after padding/cutting to 240 s); lengths 5-10 s."""
    audio = pad_or_cut_audio(audio_16k)
    return [audio[slice(*_window_sample_bounds(k))] for k in range(N_MUSIC_WINDOWS)]


def _frames_in(n_samples: int) -> int:
    """Kaldi frame count with snip_edges: full 25 ms frames every 10 ms."""
    return 0 if n_samples < FRAME_LENGTH else 1 + (n_samples - FRAME_LENGTH) // FRAME_SHIFT


_FBANK_CONSTANTS: dict[str, np.ndarray] = {}


def _fbank_constants() -> tuple[np.ndarray, np.ndarray]:
    """(mel filters [257, 128] float64, symmetric Hann window [400] float64), built once.

    The same helpers and arguments as transformers' ASTFeatureExtractor's numpy path.
    """
    if not _FBANK_CONSTANTS:
        from transformers.audio_utils import mel_filter_bank, window_function

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "a mel filter has all zero values": expected at 128 bins
            _FBANK_CONSTANTS["mel"] = mel_filter_bank(
                num_frequency_bins=FFT_LENGTH // 2 + 1, num_mel_filters=N_MEL_BINS,
                min_frequency=20, max_frequency=SAMPLE_RATE // 2, sampling_rate=SAMPLE_RATE,
                norm=None, mel_scale="kaldi", triangularize_in_mel_space=True,
            )
        _FBANK_CONSTANTS["window"] = window_function(FRAME_LENGTH, "hann", periodic=False)
    return _FBANK_CONSTANTS["mel"], _FBANK_CONSTANTS["window"]


def log_mel_frames(frames: np.ndarray) -> np.ndarray:
    """Kaldi-compatible log-mel energies of raw frames. [n, 400] samples -> float32 [n, 128].

    Per frame: remove DC, pre-emphasis 0.97 (first sample against itself), Hann window,
    512-point power spectrum, 128 mel bins, natural log with a float32-epsilon floor.
    Same float64/complex64 steps as transformers' ``spectrogram`` (dither 0, no energy).
    """
    mel_filters, window = _fbank_constants()
    x = np.asarray(frames, dtype=np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    x[:, 1:] -= PREEMPHASIS * x[:, :-1]
    x[:, 0] *= 1 - PREEMPHASIS
    x *= window
    spectrum = np.fft.rfft(x, n=FFT_LENGTH, axis=1).astype(np.complex64)
    power = np.abs(spectrum, dtype=np.float64) ** 2
    mel = np.maximum(MEL_FLOOR, power @ mel_filters)
    return np.log(mel).astype(np.float32)


def normalise_fbank(fbank: np.ndarray) -> np.ndarray:
    """AST input normalisation: (x - mean) / (2 * std), i.e. (x + 4.2677393) / 9.1379948."""
    return (fbank - AST_MEAN) / (AST_STD * 2)


def _framed(samples: np.ndarray, first: int, count: int) -> np.ndarray:
    """Frames ``first .. first + count - 1`` of ``samples`` as a view. [count, 400]."""
    from numpy.lib.stride_tricks import sliding_window_view

    return sliding_window_view(samples, FRAME_LENGTH)[::FRAME_SHIFT][first:first + count]


def _pad_to_fbank_frames(fbank: np.ndarray) -> np.ndarray:
    padded = np.zeros((N_FBANK_FRAMES, N_MEL_BINS), dtype=np.float32)
    n_frames = min(len(fbank), N_FBANK_FRAMES)
    padded[:n_frames] = fbank[:n_frames]
    return padded


def fbank_windows(windows: Sequence[np.ndarray], chunk_frames: int = 8192) -> np.ndarray:
    """AST inputs for arbitrary windows of 16 kHz samples. float32 [n, 1024, 128].

    Log-mel per window, zero-padded or cut to 1024 frames, then normalised; all frames of
    all windows go through one vectorised computation (in chunks to bound memory).
    """
    per_window = [np.asarray(w, dtype=np.float32).reshape(-1) for w in windows]
    counts = [min(_frames_in(len(w)), N_FBANK_FRAMES) for w in per_window]
    framed = [_framed(w, 0, n) for w, n in zip(per_window, counts) if n > 0]
    all_frames = np.concatenate(framed) if framed else np.zeros((0, FRAME_LENGTH), np.float32)
    log_mel = np.concatenate(
        [log_mel_frames(all_frames[i:i + chunk_frames]) for i in range(0, len(all_frames), chunk_frames)]
        or [np.zeros((0, N_MEL_BINS), np.float32)]
    )
    out = np.empty((len(per_window), N_FBANK_FRAMES, N_MEL_BINS), dtype=np.float32)
    offset = 0
    for k, n_frames in enumerate(counts):
        out[k] = normalise_fbank(_pad_to_fbank_frames(log_mel[offset:offset + n_frames]))
        offset += n_frames
    return out


class TrackSpectrogram:
    """The normalised log-mel frames of one track (padded/cut to 240 s), computed once.

    Every window starts on a multiple of 2.5 s = 250 frame shifts, so each window's Kaldi
    frames are exactly rows of this one frame sequence: overlapping windows share the
    work (4x less than computing windows one by one) with identical numbers.
    """

    def __init__(self, audio_16k: np.ndarray, duration: float | None = None,
                 chunk_frames: int = 8192):
        n_given = np.asarray(audio_16k).size
        self.duration = float(duration if duration is not None else n_given / SAMPLE_RATE)
        self.valid = window_valid(self.duration)
        audio = pad_or_cut_audio(audio_16k)
        last = int(np.flatnonzero(self.valid)[-1]) if self.valid.any() else -1
        n_frames = _frames_in(_window_sample_bounds(last)[1]) if last >= 0 else 0
        chunks = [
            normalise_fbank(log_mel_frames(_framed(audio, first, min(chunk_frames, n_frames - first))))
            for first in range(0, n_frames, chunk_frames)
        ]
        self.frames = np.concatenate(chunks) if chunks else np.zeros((0, N_MEL_BINS), np.float32)

    @classmethod
    def from_frames(cls, frames: np.ndarray, duration: float) -> "TrackSpectrogram":
        """Around frames already computed (float32 [n, 128], e.g. by another worker), nothing redone."""
        spectrogram = cls.__new__(cls)
        spectrogram.duration = float(duration)
        spectrogram.valid = window_valid(spectrogram.duration)
        spectrogram.frames = np.asarray(frames, dtype=np.float32).reshape(-1, N_MEL_BINS)
        return spectrogram

    def window(self, index: int) -> np.ndarray:
        """AST input of window ``index``. float32 [1024, 128]."""
        start, end = _window_sample_bounds(index)
        first = start // FRAME_SHIFT
        n_frames = min(_frames_in(end - start), N_FBANK_FRAMES)
        out = np.full((N_FBANK_FRAMES, N_MEL_BINS), _NORMALISED_ZERO, dtype=np.float32)
        out[:n_frames] = self.frames[first:first + n_frames]
        return out

    def windows(self, indices: Iterable[int] | None = None) -> np.ndarray:
        """AST inputs of the given (default: all valid) windows. float32 [n, 1024, 128]."""
        chosen = np.flatnonzero(self.valid) if indices is None else list(indices)
        return np.stack([self.window(int(k)) for k in chosen]) if len(chosen) else (
            np.zeros((0, N_FBANK_FRAMES, N_MEL_BINS), np.float32))


# Padding frames are zeros before normalisation, so they read as normalise(0) afterwards.
_NORMALISED_ZERO = normalise_fbank(np.zeros(1, dtype=np.float32))[0]
