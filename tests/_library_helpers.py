"""Shared by tests/test_index.py and tests/test_suggest.py: generated music, clips, CLI runs, DB reads."""
from __future__ import annotations

import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

from mgsv_cli.media import synth

# (relative path, seconds, bpm, title, artist): short tracks, several formats, one in a subfolder.
TRACKS = [
    ("01-alpha.wav", 11.0, 100.0, "Alpha", "Synth A"),
    ("02-beta.MP3", 16.0, 124.0, "Beta", "Synth B"),
    ("sub/03-gamma.flac", 21.0, 90.0, None, None),
]
BAD_FILES = ("broken.mp3", "notes-not-audio.wav", "empty.ogg")
CLIP_SECONDS = (6.0, 9.0)


@pytest.fixture(scope="session")
def media_src(tmp_path_factory):
    """Generated once per session: a music folder (3 good tracks + 3 bad files + a non-audio
    file that has no audio extension) and two short clips. Tests copy what they change."""
    root = tmp_path_factory.mktemp("library_media")
    music = root / "music"
    for i, (rel, seconds, bpm, title, artist) in enumerate(TRACKS):
        target = music / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        synth.synth_track(target, seconds=seconds, bpm=bpm, seed=i, title=title, artist=artist)
    (music / "broken.mp3").write_bytes(bytes(range(256)) * 40)  # random bytes, not an mp3
    (music / "notes-not-audio.wav").write_text("these are my notes, not a wav file\n" * 20)
    (music / "empty.ogg").write_bytes(b"")
    (music / "cover.jpg").write_bytes(b"\xff\xd8\xff\xe0 not scanned: no audio extension")
    (music / ".hidden.mp3").write_bytes(b"hidden files are skipped")
    clips = root / "clips"
    clips.mkdir()
    for i, seconds in enumerate(CLIP_SECONDS):
        synth.synth_clip(clips / f"clip{i}.mp4", seconds=seconds, with_audio=False, seed=i)
    (clips / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 but nothing else" * 10)
    spare = root / "spare.flac"
    synth.synth_track(spare, seconds=14.0, bpm=132.0, seed=42, title="Spare")
    return root


@pytest.fixture(scope="session")
def tiny_encoders():
    """features' tiny random encoders (CLIP + AST classes, small), loaded once."""
    import torch

    from mgsv_cli.features.encoders import load_encoders

    return load_encoders(kind="tiny", device=torch.device("cpu"), offline=True, weights_dir=None)


@pytest.fixture(scope="session")
def built(tmp_path_factory, media_src, tiny_encoders):
    """The good tracks indexed once per session: (music folder, index). Never modify either:
    tests that change things use :func:`indexed_music`."""
    return index_good_tracks(tmp_path_factory.mktemp("built"), media_src, tiny_encoders, detect_beats=False)


def index_good_tracks(root: Path, media_src: Path, encoders, detect_beats: bool) -> tuple[Path, Path]:
    """Copy the good tracks to ``root/music`` and index them into ``root/index.sqlite``."""
    from mgsv_cli.index.pipeline import index_folder

    music = root / "music"
    for rel, *_ in TRACKS:
        (music / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(media_src / "music" / rel, music / rel)
    index = root / "index.sqlite"
    assert index_folder(music, index, encoders=encoders, detect_beats=detect_beats).ok
    return music.resolve(), index


@pytest.fixture
def indexed_music(tmp_path, built) -> tuple[Path, Path]:
    """A private copy of an up-to-date index and its music folder (copy2 keeps sizes and mtimes;
    the stored paths are moved to the copy), as a previous `mgsv index` run leaves them."""
    src_music, src_index = built
    music = Path(shutil.copytree(src_music, tmp_path / "music")).resolve()
    index = tmp_path / "index.sqlite"
    shutil.copy2(src_index, index)
    conn = sqlite3.connect(index)
    conn.execute("UPDATE tracks SET path = ? || substr(path, ?)", (str(music), len(str(src_music)) + 1))
    conn.commit()
    conn.close()
    return music, index


@pytest.fixture
def music_dir(tmp_path, media_src) -> Path:
    """A fresh copy of the music folder (good and bad files)."""
    return Path(shutil.copytree(media_src / "music", tmp_path / "music"))


@pytest.fixture
def good_music_dir(tmp_path, media_src) -> Path:
    """A fresh copy of the good tracks only."""
    target = tmp_path / "good_music"
    for rel, *_ in TRACKS:
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(media_src / "music" / rel, target / rel)
    return target


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(capsys, *args: str) -> CliResult:
    """Run ``mgsv ARGS`` in-process through the real entry point; returns exit code and output."""
    from mgsv_cli import cli

    capsys.readouterr()
    widths = cli.console.width, cli.err_console.width
    cli.console.width = cli.err_console.width = 1000  # long temporary paths must not wrap mid-word
    try:
        cli.main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        cli.console.width, cli.err_console.width = widths
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


def db_rows(index_path: Path) -> list[dict]:
    """Every track row (without the token blobs' bytes: their lengths instead)."""
    conn = sqlite3.connect(index_path)
    conn.row_factory = sqlite3.Row
    try:
        rows = [dict(r) for r in conn.execute("SELECT * FROM tracks ORDER BY path")]
    finally:
        conn.close()
    for row in rows:
        row["feats_bytes"] = len(row.pop("feats"))
        row["mask_bytes"] = len(row.pop("mask"))
    return rows


def db_meta(index_path: Path) -> dict[str, str]:
    conn = sqlite3.connect(index_path)
    try:
        return dict(conn.execute("SELECT key, value FROM meta"))
    finally:
        conn.close()


def integrity(index_path: Path) -> str:
    conn = sqlite3.connect(index_path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


class CallCounter:
    """Wraps a function, counting calls and recording an argument summary of each."""

    def __init__(self, fn, summarize=None):
        self.fn = fn
        self.calls: list = []
        self.summarize = summarize or (lambda *a, **k: None)

    def __call__(self, *args, **kwargs):
        self.calls.append(self.summarize(*args, **kwargs))
        return self.fn(*args, **kwargs)


def run(capsys, *args) -> tuple[int, str, str]:
    """:func:`run_cli` as ``(exit code, stdout, stderr)``."""
    result = run_cli(capsys, *args)
    return result.code, result.out, result.err


def json_close(a, b, tol: float = 1e-5) -> bool:
    """Two JSON values equal, their numbers within ``tol`` (float32 sums of different code paths or
    memory may differ in their last bits: compare what they print with a stated tolerance)."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None or isinstance(a, str):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= tol
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_close(x, y, tol) for x, y in zip(a, b))
    return a == b
