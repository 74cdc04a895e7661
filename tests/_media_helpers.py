"""Media files the media/feature tests generate with ffmpeg's lavfi sources (no fixtures on disk)."""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def ffmpeg(*args: str) -> None:
    """Run ffmpeg quietly; a failure shows its stderr in the test report."""
    from mgsv_cli.media.ffmpeg import ffmpeg_exe

    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def counter_video(path: Path, fps: str, seconds: float, size: str = "32x24") -> Path:
    """Lossless RGB video whose red value in every pixel is the frame number (mod 256)."""
    ffmpeg("-f", "lavfi", "-i", f"color=c=black:s={size}:r={fps}:d={seconds},format=rgb24,"
           "geq=r='mod(N,256)':g='0':b='0'", "-c:v", "ffv1", "-pix_fmt", "bgr0", path)
    return path


def pattern_video(path: Path, seconds: float, size: str = "320x240", with_audio: bool = True,
                       title: str | None = None) -> Path:
    """H.264 testsrc2 video (plus an AAC sine track when ``with_audio``)."""
    args = ["-f", "lavfi", "-i", f"testsrc2=s={size}:r=25:d={seconds}"]
    if with_audio:
        args += ["-f", "lavfi", "-i", f"sine=f=440:d={seconds}:r=44100", "-c:a", "aac"]
    if title:
        args += ["-metadata", f"title={title}"]
    ffmpeg(*args, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-shortest", path)
    return path


def two_channel_audio(path: Path, seconds: float, left_hz: float | None, right_hz: float | None,
                      sample_rate: int = 44100, codec: str = "pcm_s16le", extra: tuple = ()) -> Path:
    """Stereo file: each channel a sine of the given frequency, or silence for None."""
    def source(freq):
        if freq is None:
            return f"anullsrc=r={sample_rate}:cl=mono:d={seconds}"
        return f"sine=f={freq}:r={sample_rate}:d={seconds}"

    ffmpeg("-f", "lavfi", "-i", source(left_hz), "-f", "lavfi", "-i", source(right_hz),
           "-filter_complex", f"[0][1]amerge=inputs=2,atrim=0:{seconds}[a]", "-map", "[a]",
           "-c:a", codec, *extra, path)
    return path


def tone(path: Path, seconds: float, freq: float = 440.0, sample_rate: int = 22050, codec: str = "pcm_s16le") -> Path:
    """Mono sine."""
    ffmpeg("-f", "lavfi", "-i", f"sine=f={freq}:r={sample_rate}:d={seconds}", "-c:a", codec, path)
    return path


def music_like(seconds: float, seed: int = 0) -> np.ndarray:
    """16 kHz float32 audio with changing pitch and noise, so windows differ from each other."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    pitch = 220 * 2 ** (np.floor(t / 1.7) % 12 / 12)
    signal = 0.3 * np.sin(2 * np.pi * np.cumsum(pitch) / 16000) + 0.02 * rng.standard_normal(t.size)
    return signal.astype(np.float32)


def corrupt_copy(source: Path, path: Path) -> Path:
    """A file with a media file's name and first bytes but garbage after them."""
    data = bytearray(source.read_bytes())
    rng = np.random.default_rng(1)
    keep = 64
    data[keep:] = rng.integers(0, 256, len(data) - keep, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, options: str):
    """A real tmpfs mounted on ``folder`` (``mount -o options``), unmounted afterwards; the test
    is skipped where mounting is refused (not Linux, not root, no CAP_SYS_ADMIN)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs Linux")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
