"""Finding and hashing media files: which extensions count as music or video, and
the content hash that lets the index recognise a renamed or copied track.

Hidden files and folders are skipped everywhere: macOS ``._song.mp3`` resource forks and
similar dot-files carry media extensions but no media.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

AUDIO_EXTENSIONS = frozenset({".mp3", ".wav", ".flac", ".m4a", ".aac", ".ogg", ".opus"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"})
HASH_CHUNK = 1 << 20


def is_audio_file(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS


def scan_audio_files(root: Path) -> list[Path]:
    """Audio files under ``root`` (recursive, extensions case-insensitive), sorted.

    Hidden files and folders are skipped: macOS ``._song.mp3`` resource forks and
    similar dot-files carry audio extensions but no audio.
    """
    if root.is_file():
        return [root.resolve()] if is_audio_file(root) else []
    found = []
    for folder, dirs, files in os.walk(root, onerror=None):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            path = Path(folder) / name
            if not name.startswith(".") and is_audio_file(path):
                found.append(path.resolve())
    return sorted(set(found))


def content_hash(path: Path) -> str:
    """Full-file BLAKE2b (128-bit) as hex; raises OSError when unreadable."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
