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
    """The audio files under ``root`` (a folder, searched recursively, or one file), sorted,
    each by its resolved path, except a broken symbolic link, kept at its library path.

    A dangling link or a link loop has nothing to resolve to: it stays at the path the
    user sees in their library, so its failure is reported by that name (never its
    missing target's), and a loop never raises.
    """
    if root.is_file():
        candidates = [(str(root.absolute().parent), root.name)] if is_audio_file(root) else []
    else:
        candidates = []
        for folder, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            candidates.extend((folder, name) for name in names
                              if not name.startswith(".") and is_audio_file(Path(name)))
    found = set()
    for folder, name in candidates:
        try:
            found.add(Path(os.path.realpath(os.path.join(folder, name), strict=True)))
        except OSError:  # dangling link, link loop: nothing to resolve to
            found.add(Path(os.path.realpath(folder)) / name)
    return sorted(found)


def no_audio_message(root: Path) -> str:
    """Why a folder gave nothing to index: it holds no file of the audio extensions."""
    where = f"{root} is not an audio file" if root.is_file() else f"no audio files under {root}"
    return (f"{where} ({' '.join(sorted(e.lstrip('.') for e in AUDIO_EXTENSIONS))}; hidden files are skipped): "
            "nothing to index; check the folder")


def content_hash(path: Path) -> str:
    """Full-file BLAKE2b (128-bit) as hex; raises OSError when unreadable."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
