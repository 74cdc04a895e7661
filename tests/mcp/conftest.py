"""Fixtures of the `mgsv mcp` tests: generated music and clips under one readable folder, a
library of them indexed once (tiny encoders), and a layout (home, library, folders) per test.

The tests drive real servers (`python -m mgsv_cli mcp`) through the SDK's own clients; they
are skipped where the MCP SDK (the `mcp` extra) is not installed.
"""
from __future__ import annotations

import shutil

import pytest

pytest.importorskip("mcp", reason="the MCP SDK (pip install 'mgsv[mcp]') is not installed")
pytest.register_assert_rewrite("_library_helpers", "_mcp_helpers")

from _library_helpers import TRACKS, index_good_tracks, media_src, tiny_encoders  # noqa: E402,F401  (fixtures)
from _mcp_helpers import KILL_SECONDS, KILL_TRACKS, Layout  # noqa: E402


@pytest.fixture(scope="session")
def allowed_media(tmp_path_factory, media_src):  # noqa: F811
    """A readable folder: music/ (the good tracks), clips/ (two silent clips and one that talks),
    big/ (longer songs, for the killed clients) and secret.mp4 outside it. Never modified."""
    from mgsv_cli.media import synth

    root = tmp_path_factory.mktemp("mcp_media")
    allowed = root / "allowed"
    for rel, *_ in TRACKS:
        (allowed / "music" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(media_src / "music" / rel, allowed / "music" / rel)
    (allowed / "clips").mkdir()
    for name in ("clip0.mp4", "clip1.mp4"):
        shutil.copy2(media_src / "clips" / name, allowed / "clips" / name)
    synth.synth_clip(allowed / "clips" / "talk.mp4", seconds=6.0, with_audio=True, speech_like=True, seed=3)
    for i in range(KILL_TRACKS):
        synth.synth_track(allowed / "big" / f"song{i}.wav", seconds=KILL_SECONDS, bpm=90.0 + 5 * i, seed=10 + i)
    shutil.copy2(media_src / "clips" / "clip0.mp4", root / "secret.mp4")
    (allowed / "clips" / "link-out.mp4").symlink_to(root / "secret.mp4")  # inside, but leads out
    return allowed.resolve()


@pytest.fixture(scope="session")
def indexed_library(tmp_path_factory, media_src, tiny_encoders):  # noqa: F811
    """The good tracks indexed once (tiny encoders, beat grids): (music folder, index). Read only."""
    return index_good_tracks(tmp_path_factory.mktemp("mcp_indexed"), media_src, tiny_encoders, detect_beats=True)


@pytest.fixture
def layout(tmp_path, allowed_media) -> Layout:
    """A fresh home, an empty library location and an output folder for one server."""
    home = tmp_path / "home"
    home.mkdir()
    return Layout(home=home, library=tmp_path / "library.sqlite", allowed=allowed_media, outputs=tmp_path / "outputs")


@pytest.fixture
def indexed_layout(tmp_path, allowed_media, indexed_library) -> Layout:
    """A layout whose library holds the good tracks (of indexed_library's music folder, which the
    server may read too: its files are the library's own)."""
    home = tmp_path / "home"
    home.mkdir()
    library = tmp_path / "library.sqlite"
    shutil.copy2(indexed_library[1], library)
    return Layout(home=home, library=library, allowed=allowed_media, outputs=tmp_path / "outputs")
