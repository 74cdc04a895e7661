"""Generated audio for the workflow tests (beats, export): click tracks with known beats."""
from __future__ import annotations

from pathlib import Path

import numpy as np

SR = 16000


def click_track(bpm: float, seconds: float, meter: int = 4, accented: bool = True, offset: float = 0.3,
                noise: float = 0.0, sr: int = SR, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mono clicks every beat from ``offset``; returns ``(samples [n], beat times [n_beats])``.

    With ``accented`` the first beat of every bar of ``meter`` beats is louder and carries
    a low thump (a kick drum's role), the accent a downbeat detector should read.
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    y = rng.normal(0.0, noise, n) if noise else np.zeros(n)
    period = 60.0 / bpm
    times = np.arange(offset, seconds - 0.1, period)
    t = np.arange(int(0.08 * sr)) / sr
    for k, when in enumerate(times):
        downbeat = accented and k % meter == 0
        click = (1.0 if downbeat else 0.5) * np.sin(2 * np.pi * 1000 * t) * np.exp(-t * 150)
        if downbeat:
            click = click + 0.8 * np.sin(2 * np.pi * 70 * t) * np.exp(-t * 40)
        i0 = int(round(when * sr))
        seg = y[i0:i0 + len(click)]
        seg += click[: len(seg)]
    return (0.5 * y).astype(np.float32), times


def write_wav(path: Path, samples: np.ndarray, sr: int = SR) -> Path:
    import soundfile

    soundfile.write(str(path), samples, sr, subtype="PCM_16")
    return path


def nearest_distance(times, reference) -> np.ndarray:
    """For each time, the distance (s) to the closest reference time."""
    reference = np.asarray(reference)
    return np.array([np.min(np.abs(reference - t)) for t in times])


def clear_settings_env(monkeypatch) -> None:
    """Drop MGSV_<SETTING> variables of the calling shell so tests see only their own."""
    from mgsv_cli import settings

    for key in settings.FIELDS:
        monkeypatch.delenv(settings.env_var(key), raising=False)
