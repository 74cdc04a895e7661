"""`mgsv mcp`'s tools in-process (the SDK's client on the server object itself, no subprocess):
the one place errors become tool errors, and the folder rules of the workspace."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
from _library_helpers import TRACKS
from _mcp_helpers import ok, refused, run


@pytest.fixture
def workspace(indexed_layout):
    from mgsv_cli.mcp.tools import McpOptions, Workspace

    options = McpOptions(library=str(indexed_layout.library), untrained=True, encoders="tiny", device="cpu",
                         allow=(indexed_layout.allowed,), output_dir=indexed_layout.outputs)
    made = Workspace(options)
    yield made
    made.close()


def in_process(workspace, calls):
    """Run ``calls(client)`` against the server of ``workspace``, connected in-process."""
    from mcp import Client

    from mgsv_cli.mcp.server import build_server

    async def go():
        async with Client(build_server(workspace)) as client:
            return await calls(client)

    return run(go)


def test_a_bug_is_one_line_out_and_logged(workspace, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("secret detail\nand a second line")

    monkeypatch.setattr(workspace, "list_tracks", broken)
    with caplog.at_level(logging.ERROR, logger="mgsv.mcp"):
        message = in_process(workspace, lambda client: refused(client, "list_tracks", {}))
    assert message == "internal error: RuntimeError (see the mgsv mcp server's log)"
    assert "secret detail" not in message
    assert any("RuntimeError: secret detail" in r.getMessage() for r in caplog.records)


def test_a_library_error_keeps_its_one_line(workspace, monkeypatch):
    from mgsv_cli.errors import IndexDatabaseError

    def busy(*args, **kwargs):
        raise IndexDatabaseError("another `mgsv index` is updating it right now\n(details)")

    monkeypatch.setattr(workspace, "library_info", busy)
    assert in_process(workspace, lambda client: refused(client, "library_info", {})) == \
        "another `mgsv index` is updating it right now"


def test_inspecting_the_library(workspace):
    async def calls(client):
        return (await ok(client, "library_info"), await ok(client, "list_tracks", {"offset": 1, "limit": 1}),
                await ok(client, "list_tracks", {"contains": "synth b"}))

    info, page, found = in_process(workspace, calls)
    assert info["library"]["tracks"] == len(TRACKS) and info["library"]["with_beats"] == len(TRACKS)
    assert info["model"] == {"loaded": False}  # nothing loads until a suggestion is asked for
    assert page["total"] == len(TRACKS) and page["offset"] == 1 and len(page["tracks"]) == 1
    assert [t["artist"] for t in found["tracks"]] == ["Synth B"]


def test_the_folder_rules(workspace, indexed_layout, indexed_library, tmp_path):
    from mgsv_cli.errors import MgsvError, UsageError

    allowed, outputs = indexed_layout.allowed, indexed_layout.outputs.resolve()
    assert workspace.video(str(allowed / "clips" / "clip0.mp4")) == allowed / "clips" / "clip0.mp4"
    for bad in ("clips/clip0.mp4", str(allowed.parent / "secret.mp4"), str(allowed / "clips" / "link-out.mp4"),
                str(allowed / "clips" / ".." / ".." / "secret.mp4")):
        with pytest.raises(UsageError):
            workspace.video(bad)
    assert workspace.folder(str(allowed / "music")) == allowed / "music"
    with pytest.raises(UsageError, match="may index"):
        workspace.folder(str(tmp_path))
    assert workspace.output(None, "clip0.mgsv.mp4") == outputs / "clip0.mgsv.mp4"
    assert workspace.output(str(outputs / "sub" / "x.mp4"), "unused") == outputs / "sub" / "x.mp4"
    for bad in (str(tmp_path / "x.mp4"), str(outputs / ".." / "x.mp4")):
        with pytest.raises(UsageError, match="outside the output folder"):
            workspace.output(bad, "unused")
    track = str(indexed_library[0] / TRACKS[0][0])
    assert workspace.track(track) == track  # the library's own file, wherever it lies
    with pytest.raises(MgsvError, match="not a track of the index"):
        workspace.track(str(allowed / "big" / "song0.wav"))
    with pytest.raises(MgsvError, match="not a track of the index"):  # another name of the same file
        workspace.track(str(Path(track).parent / "sub" / ".." / Path(track).name))
