"""`mgsv mcp` over stdio, through the SDK's own client (the server is its child process): the tool
list and schemas, a whole index -> suggest -> render -> export flow on generated media (tiny
encoders, untrained MaDe), refusals as one-line tool errors, and a killed client."""
from __future__ import annotations

import json
import signal
import sys

import pytest
from _library_helpers import TRACKS
from _mcp_helpers import KILL_TRACKS, ok, process_gone, refused, run, start_client, stdio_session, wait_for

TOOLS = ["library_info", "list_tracks", "index_folder", "suggest_music", "render_video", "export_timeline"]


def test_the_tools_and_their_schemas(layout):
    async def go():
        async with stdio_session(layout) as client:
            return (await client.list_tools()).tools

    tools = {tool.name: tool for tool in run(go)}
    assert sorted(tools) == sorted(TOOLS)
    for tool in tools.values():
        assert tool.description and len(tool.description) > 80, tool.name
        assert tool.input_schema["type"] == "object"
        for name, prop in tool.input_schema.get("properties", {}).items():
            assert prop.get("description"), (tool.name, name)  # every argument says what it is
    assert tools["library_info"].annotations.read_only_hint and tools["list_tracks"].annotations.read_only_hint
    assert not tools["render_video"].annotations.read_only_hint
    suggest = tools["suggest_music"].input_schema
    assert suggest["required"] == ["video"]
    assert "absolute path" in suggest["properties"]["video"]["description"]
    assert suggest["properties"]["top"]["minimum"] == 1
    assert suggest["properties"]["snap"]["enum"] == ["off", "beat"]
    assert {e for o in suggest["properties"]["fit"]["anyOf"] for e in o.get("enum", [])} == {"cut", "ending", "loop"}
    assert "seconds" in tools["suggest_music"].description
    render = tools["render_video"].input_schema["properties"]
    assert {e for o in render["mix"]["anyOf"] for e in o.get("enum", [])} == {"replace", "original", "duck"}
    assert "seconds" in render["start"]["description"] and "LUFS" in render["loudness"]["description"]
    exported = tools["export_timeline"].input_schema["properties"]["format"]
    assert {e for o in exported["anyOf"] for e in o.get("enum", [])} == {"fcpxml", "fcp7", "edl", "otio"}
    assert tools["index_folder"].input_schema["required"] == ["folder"]


def test_index_suggest_render_export(layout, allowed_media):
    """The whole flow an agent runs, on an empty library."""
    clip = str(allowed_media / "clips" / "clip1.mp4")  # 9 s

    async def go():
        steps = {}
        async with stdio_session(layout) as client:
            steps["before"] = await ok(client, "library_info")
            progress = []

            async def heard(value, total, message):
                progress.append((value, total, message))

            steps["index"] = await ok(client, "index_folder", {"folder": str(allowed_media / "music")},
                                      progress_callback=heard)
            steps["progress"] = progress
            steps["after"] = await ok(client, "library_info")
            steps["tracks"] = await ok(client, "list_tracks", {"limit": 2})
            steps["found"] = await ok(client, "list_tracks", {"contains": "GAMMA"})
            steps["suggest"] = await ok(client, "suggest_music", {"video": clip, "top": 2})
            steps["again"] = await ok(client, "suggest_music", {"video": clip, "top": 2})  # warm: same models
            steps["loaded"] = await ok(client, "library_info")
            steps["render"] = await ok(client, "render_video", {"video": clip, "pick": 2, "mix": "duck"})
            steps["export"] = await ok(client, "export_timeline", {"video": clip, "format": "otio"})
            steps["fitted"] = await ok(client, "suggest_music", {"video": clip, "top": 2, "fit": "ending"})
        return steps

    steps = run(go)
    assert steps["before"]["library"]["tracks"] == 0 and "index_folder" in steps["before"]["library"]["hint"]
    assert steps["before"]["model"] == {"loaded": False}
    assert steps["before"]["readable_folders"] == [str(allowed_media), str(layout.outputs.resolve())]
    index = steps["index"]
    assert (index["added"], index["tracks"], index["failed"]) == (len(TRACKS), len(TRACKS), [])
    values = [value for value, *_ in steps["progress"]]
    assert values == sorted(values) and values[-1] == 100.0 and len(values) > 2  # rising, to the end
    assert all(total == 100.0 for _, total, _ in steps["progress"])
    assert any("embedding" in message for *_, message in steps["progress"])
    assert steps["after"]["library"]["tracks"] == len(TRACKS) and steps["after"]["library"]["encoders"] == "tiny"
    assert steps["tracks"]["total"] == len(TRACKS) and len(steps["tracks"]["tracks"]) == 2
    assert [t["path"].rsplit("/", 1)[1] for t in steps["found"]["tracks"]] == ["03-gamma.flac"]

    result = steps["suggest"]
    assert result["video"] == clip and result["untrained"] is True and len(result["suggestions"]) == 2
    for rank, entry in enumerate(result["suggestions"], start=1):
        assert entry["rank"] == rank and entry["track"].startswith(str(allowed_media / "music"))
        assert entry["end"] - entry["start"] == pytest.approx(result["duration"], abs=0.01)  # as long as the clip
        assert 0 <= entry["start"] and entry["end"] <= entry["track_duration"] + 1e-6
        assert entry["relevance"] and "score" in entry["why"] and "cut is" in entry["why"]
    assert [e["track"] for e in steps["again"]["suggestions"]] == [e["track"] for e in result["suggestions"]]
    assert [e["track"] for e in steps["fitted"]["suggestions"]] == [e["track"] for e in result["suggestions"]]
    for entry in steps["fitted"]["suggestions"]:  # fitted, or fallen back to a cut saying why
        assert entry["edit"]["requested"] == "ending" and (entry["edit"]["mode"] != "cut" or entry["edit"]["reason"])
    assert steps["loaded"]["model"]["loaded"] is True and steps["loaded"]["model"]["encoders"] == "tiny"

    render = steps["render"]
    out = layout.outputs.resolve() / "clip1.mgsv.mp4"
    assert render["out_path"] == str(out) and out.is_file() and render["mix"] in ("duck", "replace")
    assert render["track"] == result["suggestions"][1]["track"]
    assert render["start"] == pytest.approx(result["suggestions"][1]["start"], abs=1e-3)
    exported = steps["export"]
    assert exported["out"] == str(layout.outputs.resolve() / "clip1.mgsv.otio") and exported["rank"] == 1
    assert exported["track"] == result["suggestions"][0]["track"]
    assert (layout.outputs / "clip1.mgsv.otio").is_file()
    assert sorted(p.name for p in layout.outputs.iterdir()) == ["clip1.mgsv.mp4", "clip1.mgsv.otio"]


def test_bad_arguments_and_places_are_refused(indexed_layout, allowed_media, tmp_path, indexed_library):
    """Every refusal is a tool error of one line; nothing is read or written outside the folders."""
    clip = str(allowed_media / "clips" / "clip0.mp4")
    unindexed = str(allowed_media / "big" / "song0.wav")
    outside = tmp_path / "elsewhere"
    outside.mkdir()

    async def go():
        said = {}
        async with stdio_session(indexed_layout) as client:
            cases = {
                "missing video": ("suggest_music", {}),
                "top 0": ("suggest_music", {"video": clip, "top": 0}),
                "top text": ("suggest_music", {"video": clip, "top": "many"}),
                "snap": ("suggest_music", {"video": clip, "snap": "sideways"}),
                "relative": ("suggest_music", {"video": "clips/clip0.mp4"}),
                "outside": ("suggest_music", {"video": str(allowed_media.parent / "secret.mp4")}),
                "link out": ("suggest_music", {"video": str(allowed_media / "clips" / "link-out.mp4")}),
                "no such clip": ("suggest_music", {"video": str(allowed_media / "clips" / "none.mp4")}),
                "index outside": ("index_folder", {"folder": str(outside)}),
                "index relative": ("index_folder", {"folder": "music"}),
                "out outside": ("render_video", {"video": clip, "out": str(outside / "x.mp4")}),
                "not a library track": ("render_video", {"video": clip, "track": unindexed, "start": 0}),
                "start alone": ("render_video", {"video": clip, "start": 3}),
                "not suggested yet": ("export_timeline", {"video": clip}),
                "format": ("export_timeline", {"video": clip, "format": "mov"}),
                "unknown tool": ("delete_everything", {}),
            }
            for case, (tool, arguments) in cases.items():
                said[case] = await refused(client, tool, arguments)
            said["info"] = await ok(client, "library_info")  # the server goes on serving
        return said

    said = run(go)
    assert said["missing video"].startswith("bad arguments for suggest_music: video:")
    assert "top" in said["top 0"] and "greater than or equal to 1" in said["top 0"]
    assert "top" in said["top text"] and "snap" in said["snap"]
    assert said["relative"] == "video 'clips/clip0.mp4': give an absolute path"
    for case in ("outside", "link out"):
        assert "outside the folders this server may read" in said[case] and "--allow" in said[case], case
    assert said["no such clip"].endswith("no such file")
    assert "outside the folders this server may index" in said["index outside"]
    assert "give an absolute path" in said["index relative"]
    assert "outside the output folder" in said["out outside"] and not (outside / "x.mp4").exists()
    assert said["not a library track"] == "not a track of the index"
    assert "track and start go together" in said["start alone"]
    assert said["not suggested yet"].startswith("no suggestion remembered") and "suggest_music" in said[
        "not suggested yet"]
    assert "format" in said["format"]
    assert "delete_everything" in said["unknown tool"]
    assert said["info"]["library"]["tracks"] == len(TRACKS)
    assert not indexed_layout.outputs.exists() or not any(indexed_layout.outputs.iterdir())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the server's pid in /proc")
def test_a_killed_client_leaves_the_library_intact(layout, allowed_media):
    """The client dies mid-index: its server (its child) stops at the next file and exits; the
    library opens, its tracks read, and a new server indexes the rest and suggests."""
    import mgsv_cli as mgsv

    marker = layout.home / "marker.json"
    client = start_client(layout, marker, allowed_media / "big")
    try:
        started = json.loads(wait_for(lambda: marker.is_file() and marker.read_text(), "the first progress"))
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait(30)
    [server] = started["server"]
    wait_for(lambda: process_gone(server), "the server to exit after its client died")

    library = mgsv.open_library(layout.library)
    info = library.info(check=True)
    assert info.damage is None and info.tracks == len(library.tracks()) <= KILL_TRACKS

    async def go():
        async with stdio_session(layout) as client:
            index = await ok(client, "index_folder", {"folder": str(allowed_media / "big")})
            suggested = await ok(client, "suggest_music", {"video": str(allowed_media / "clips" / "clip0.mp4")})
            return index, suggested

    index, suggested = run(go)
    assert index["tracks"] == KILL_TRACKS and index["added"] + index["unchanged"] == KILL_TRACKS
    assert index["unchanged"] == info.tracks  # what the killed run committed was kept, not redone
    assert suggested["suggestions"]
    assert "Traceback" not in (layout.home / "client.stderr").read_text()
