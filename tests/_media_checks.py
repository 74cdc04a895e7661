"""Measuring rendered media with ffmpeg, for tests: packet hashes, durations, levels, loudness.

Independent of mgsv's own media code on purpose, so a test measures what a player would get.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
from imageio_ffmpeg import get_ffmpeg_exe

RATE = 48000


def ffmpeg(*args: str) -> str:
    """Run ffmpeg with ``args``; returns stderr, raises AssertionError with its tail on failure."""
    proc = subprocess.run([get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", *args], capture_output=True)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, f"ffmpeg {' '.join(args)} failed:\n{err[-2000:]}"
    return err


def stream_lines(path: Path, kind: str) -> list[str]:
    """ffmpeg's ``Stream #...: Video:``/``Audio:`` description lines of ``path``."""
    proc = subprocess.run([get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True)
    return [ln.strip() for ln in proc.stderr.decode().splitlines() if re.search(rf"Stream #\S+.*: {kind}:", ln)]


def packets(path: Path, stream: str = "v:0") -> list[tuple[int, int, int, str]]:
    """``(pts, duration, size, md5)`` of each packet of ``stream``, copied without decoding."""
    out = subprocess.run([get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", f"0:{stream}", "-c", "copy",
                          "-f", "framemd5", "-"], capture_output=True, check=True).stdout.decode()
    rows = []
    for line in out.splitlines():
        if line and not line.startswith("#"):
            _, _dts, pts, duration, size, md5 = [f.strip() for f in line.split(",")]
            rows.append((int(pts), int(duration), int(size), md5))
    return rows


def packet_hashes(path: Path, stream: str = "v:0") -> list[tuple[int, str]]:
    """``(size, md5)`` per packet: equal lists mean the stream was copied bit for bit."""
    return [(size, md5) for _pts, _dur, size, md5 in packets(path, stream)]


def video_seconds(path: Path) -> float:
    """Length of the first video stream from its packets (time base read from framemd5)."""
    out = subprocess.run([get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", "0:v:0", "-c", "copy",
                          "-f", "framemd5", "-"], capture_output=True, check=True).stdout.decode()
    num, den = re.search(r"#tb 0: (\d+)/(\d+)", out).groups()
    rows = packets(path)
    start = min(pts for pts, *_ in rows)
    end = max(pts + dur for pts, dur, *_ in rows)
    return (end - start) * int(num) / int(den)


def video_fps(path: Path) -> float:
    line = stream_lines(path, "Video")[0]
    return float(re.search(r"([\d.]+) fps", line).group(1))


def audio(path: Path, stream: str = "a:0", rate: int = RATE) -> np.ndarray:
    """Decoded audio of ``stream`` as mono float32 ``[n]`` at ``rate``."""
    out = subprocess.run([get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", f"0:{stream}", "-ac", "1",
                          "-ar", str(rate), "-f", "f32le", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(out, dtype=np.float32)


def audio_seconds(path: Path) -> float:
    """Length of the decoded first audio stream (samples / rate)."""
    return len(audio(path)) / RATE


def rms_db(samples: np.ndarray, t0: float, t1: float, rate: int = RATE) -> float:
    """RMS level in dBFS of ``samples[t0:t1]`` (seconds); -120 for digital silence."""
    seg = samples[int(t0 * rate):int(t1 * rate)].astype(np.float64)
    rms = float(np.sqrt(np.mean(seg ** 2))) if len(seg) else 0.0
    return 20 * np.log10(rms) if rms > 1e-6 else -120.0


def band_db(samples: np.ndarray, t0: float, t1: float, f_lo: float, f_hi: float, rate: int = RATE) -> float:
    """Mean square (dBFS) of the part of ``samples[t0:t1]`` between ``f_lo`` and ``f_hi`` Hz.

    Parseval over a Hann-windowed FFT, so a sine of amplitude A reads 20*log10(A/sqrt(2)).
    """
    seg = samples[int(t0 * rate):int(t1 * rate)].astype(np.float64)
    window = np.hanning(len(seg))
    spectrum = np.abs(np.fft.rfft(seg * window)) ** 2
    freqs = np.fft.rfftfreq(len(seg), 1 / rate)
    power = 2 * float(spectrum[(freqs >= f_lo) & (freqs <= f_hi)].sum()) / (len(seg) * float(np.sum(window ** 2)))
    return 10 * np.log10(power) if power > 1e-12 else -120.0


def max_volume_db(path: Path) -> float:
    """``volumedetect``'s max_volume (dBFS) of the first audio stream."""
    err = ffmpeg("-i", str(path), "-map", "0:a:0", "-af", "volumedetect", "-f", "null", "-")
    return float(re.search(r"max_volume: (-?[\d.]+|-inf) dB", err).group(1))


def integrated_loudness(path: Path) -> float:
    """EBU R128 integrated loudness (LUFS) of the first audio stream, by ffmpeg's ``ebur128``."""
    err = ffmpeg("-i", str(path), "-map", "0:a:0", "-af", "ebur128", "-f", "null", "-")
    summary = err[err.rfind("Summary:"):]
    return float(re.search(r"I:\s+(-?[\d.]+|-inf) LUFS", summary).group(1))


def bandpass(samples: np.ndarray, f_lo: float, f_hi: float, rate: int = RATE) -> np.ndarray:
    """``samples`` with everything outside ``f_lo``..``f_hi`` Hz removed (FFT mask)."""
    spectrum = np.fft.rfft(samples.astype(np.float64))
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    spectrum[(freqs < f_lo) | (freqs > f_hi)] = 0
    return np.fft.irfft(spectrum, len(samples))


def best_lag(reference: np.ndarray, signal: np.ndarray, max_lag: int) -> tuple[int, float]:
    """``(lag, correlation)``: ``signal[t]`` best matches ``reference[t - lag]``; correlation in [-1, 1]."""
    n = min(len(reference), len(signal))
    ref, sig = reference[:n].astype(np.float64), signal[:n].astype(np.float64)
    size = 1 << (2 * n - 1).bit_length()
    cross = np.fft.irfft(np.fft.rfft(sig, size) * np.conj(np.fft.rfft(ref, size)), size)
    lags = np.r_[np.arange(0, max_lag + 1), np.arange(-max_lag, 0)]
    values = cross[lags % size]
    best = int(np.argmax(values))
    norm = float(np.sqrt(np.dot(ref, ref) * np.dot(sig, sig))) or 1.0
    return int(lags[best]), float(values[best]) / norm
