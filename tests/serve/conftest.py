"""Fixtures of the `mgsv serve` tests: a small indexed library with beats, a clip with sound,
the warm engine, the app behind FastAPI's TestClient, and a real server in a subprocess
(helpers and constants: ``_serve_helpers``)."""
from __future__ import annotations

import os

import pytest

# Their asserts are test asserts too; registered before this conftest imports them (it is
# loaded before the test modules that register _library_helpers themselves).
pytest.register_assert_rewrite("_library_helpers", "_serve_helpers")

from _library_helpers import index_good_tracks, media_src, tiny_encoders  # noqa: E402,F401  (fixtures)
from _serve_helpers import Library, make_client, start_server  # noqa: E402


@pytest.fixture(scope="session")
def serve_library(tmp_path_factory, media_src, tiny_encoders):  # noqa: F811
    """The good tracks indexed once with their beat grids (read only: copy before changing)."""
    from mgsv_cli.media import synth

    root = tmp_path_factory.mktemp("serve_library")
    music, index = index_good_tracks(root, media_src, tiny_encoders, detect_beats=True)
    clip = synth.synth_clip(root / "clips" / "talk.mp4", seconds=6.0, with_audio=True, speech_like=True, seed=3)
    silent = media_src / "clips" / "clip0.mp4"
    return Library(music, index, clip.resolve(), silent.resolve())


@pytest.fixture(scope="session")
def engine(serve_library, tiny_encoders, tmp_path_factory):  # noqa: F811
    """The warm models (tiny encoders, untrained MaDe) over the library, loaded once."""
    from mgsv_cli.serve.engine import Engine

    home = tmp_path_factory.mktemp("engine_home")
    saved = os.environ.get("MGSV_HOME")
    os.environ["MGSV_HOME"] = str(home)  # the token cache goes here, whatever test comes first
    try:
        warm = Engine(index_path=serve_library.index, untrained=True, device="cpu", encoders_obj=tiny_encoders)
    finally:
        if saved is None:
            os.environ.pop("MGSV_HOME", None)
        else:
            os.environ["MGSV_HOME"] = saved
    yield warm
    warm.close()


@pytest.fixture
def folders(tmp_path):
    from mgsv_cli.serve.files import Folders

    return Folders(uploads=tmp_path / "uploads", outputs=tmp_path / "outputs", previews=tmp_path / "previews")


@pytest.fixture
def api(engine, folders):
    """The app through FastAPI's TestClient, with the right Host header (requests add ``AUTH`` themselves)."""
    with make_client(engine, folders) as client:
        yield client


@pytest.fixture(scope="session")
def live_server(tmp_path_factory, serve_library):
    """One real `mgsv serve` for the session (its own MGSV_HOME); always stopped at the end."""
    home = tmp_path_factory.mktemp("live_home")
    server = start_server(home, serve_library.index)
    try:
        yield server
    finally:
        server.stop()
