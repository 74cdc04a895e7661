"""`mgsv mcp --http`: streamable HTTP behind `mgsv serve`'s guards (the bearer token, the Host
check, and the SDK's own DNS-rebinding check given the same names), the tools through the
SDK's client over HTTP, and a client killed mid-index leaving the server and library intact."""
from __future__ import annotations

import shutil
import signal
import time

import anyio
import pytest
from _library_helpers import TRACKS
from _mcp_helpers import (
    KILL_TRACKS,
    TOKEN,
    Layout,
    http_session,
    ok,
    refused,
    run,
    start_client,
    start_http,
    text_of,
    wait_for,
)

INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "0"}}}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def served(tmp_path_factory, allowed_media, indexed_library):
    """One `mgsv mcp --http` over a copy of the indexed library, for the module."""
    root = tmp_path_factory.mktemp("mcp_http")
    (root / "home").mkdir()
    shutil.copy2(indexed_library[1], root / "library.sqlite")
    layout = Layout(home=root / "home", library=root / "library.sqlite", allowed=allowed_media,
                    outputs=root / "outputs")
    server = start_http(layout)
    try:
        yield server, layout
    finally:
        server.stop()


def test_it_prints_where_and_the_header(served):
    server, _ = served
    assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/mcp")
    assert server.header == f"Authorization: Bearer {TOKEN}"


def _post(url: str, headers: dict):
    import httpx

    return httpx.post(url, json=INITIALIZE, headers={**MCP_HEADERS, **headers}, timeout=60)


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x"])
def test_a_missing_or_wrong_token_gets_nothing(served, authorization):
    server, _ = served
    reply = _post(server.url, {"Authorization": authorization} if authorization else {})
    assert reply.status_code == 401 and reply.headers["www-authenticate"] == "Bearer"
    body = reply.json()  # mgsv serve's shape of a refusal
    assert body["error"].startswith("missing or wrong access token") and "mgsv mcp --http" in body["error"]
    assert (body["type"], body["exit_code"], body["reason"]) == ("Unauthorized", 2, "unauthorized")


@pytest.mark.parametrize("host", ["evil.example:{port}", "evil.example", "127.0.0.1:{other}", "localhost",
                                  "attacker.127.0.0.1.nip.io:{port}", ""])
def test_a_foreign_host_gets_nothing_even_with_the_token(served, host):
    server, _ = served
    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    reply = _post(server.url, {"Authorization": f"Bearer {TOKEN}",
                               "Host": host.format(port=port, other=port + 1)})
    assert reply.status_code == 403
    assert reply.json()["reason"] == "forbidden_host"


def test_a_foreign_origin_is_refused_by_the_sdk_check(served):
    """A page of another site, even given the token, cannot talk to the server (the SDK's
    DNS-rebinding check is given the same names as the Host check)."""
    server, _ = served
    reply = _post(server.url, {"Authorization": f"Bearer {TOKEN}", "Origin": "http://evil.example"})
    assert reply.status_code == 403
    ours = _post(server.url, {"Authorization": f"Bearer {TOKEN}", "Origin": server.url.rsplit("/", 1)[0]})
    assert ours.status_code == 200, ours.text


def test_the_tools_over_http(served, allowed_media):
    server, layout = served
    clip = str(allowed_media / "clips" / "talk.mp4")

    async def go():
        steps = {}
        async with http_session(server.url) as client:
            steps["tools"] = sorted(t.name for t in (await client.list_tools()).tools)
            steps["info"] = await ok(client, "library_info")
            steps["suggest"] = await ok(client, "suggest_music", {"video": clip, "top": 3, "snap": "beat"})
            steps["again"] = await ok(client, "suggest_music", {"video": clip, "top": 3, "snap": "beat"})
            steps["render"] = await ok(client, "render_video", {"video": clip, "mix": "original"})
            steps["export"] = await ok(client, "export_timeline", {"video": clip, "format": "fcpxml", "snap": "beat"})
            secret = str(allowed_media.parent / "secret.mp4")
            steps["outside"] = await refused(client, "suggest_music", {"video": secret})
        return steps

    steps = run(go)
    assert steps["tools"] == sorted(["library_info", "list_tracks", "index_folder", "suggest_music", "render_video",
                                     "export_timeline"])
    assert steps["info"]["library"]["tracks"] == len(TRACKS)
    suggestions = steps["suggest"]["suggestions"]
    assert len(suggestions) == 3 and all(s["end"] - s["start"] == pytest.approx(6.0, abs=0.05) for s in suggestions)
    assert [s["track"] for s in steps["again"]["suggestions"]] == [s["track"] for s in suggestions]
    assert steps["render"]["out_path"] == str(layout.outputs.resolve() / "talk.mgsv.mp4")
    assert steps["export"]["out"] == str(layout.outputs.resolve() / "talk.mgsv.fcpxml")
    assert "outside the folders" in steps["outside"]


def test_a_killed_client_leaves_the_server_and_the_library_intact(tmp_path, allowed_media, indexed_library):
    """The client dies while the server indexes for it: the server goes on serving (a new client
    suggests at once), the library opens and reads, and indexing again completes it."""
    import mgsv_cli as mgsv

    (tmp_path / "home").mkdir()
    shutil.copy2(indexed_library[1], tmp_path / "library.sqlite")
    layout = Layout(home=tmp_path / "home", library=tmp_path / "library.sqlite", allowed=allowed_media,
                    outputs=tmp_path / "outputs")
    server = start_http(layout)
    try:
        marker = layout.home / "marker.json"
        client = start_client(layout, marker, allowed_media / "big", url=server.url)
        try:
            wait_for(lambda: marker.is_file(), "the first progress")
        finally:
            client.send_signal(signal.SIGKILL)
            client.wait(30)
        assert server.process.poll() is None

        async def go():
            async with http_session(server.url) as fresh:
                info = await ok(fresh, "library_info")
                suggested = await ok(fresh, "suggest_music", {"video": str(allowed_media / "clips" / "clip0.mp4")})
                # The killed client's run may still hold the library for a moment: ask until it is free.
                deadline = time.monotonic() + 600
                while True:
                    result = await fresh.call_tool("index_folder", {"folder": str(allowed_media / "big")})
                    if not result.is_error or "another `mgsv index`" not in text_of(result) or \
                            time.monotonic() > deadline:
                        break
                    await anyio.sleep(0.5)
                assert not result.is_error, text_of(result)
                return info, suggested, result.structured_content

        info, suggested, index = run(go)
        assert info["library"]["tracks"] >= len(TRACKS) and suggested["suggestions"]
        assert index["tracks"] == len(TRACKS) + KILL_TRACKS
        assert server.process.poll() is None
    finally:
        assert server.stop() == 0
    library = mgsv.open_library(layout.library)
    assert library.info(check=True).damage is None and len(library.tracks()) == len(TRACKS) + KILL_TRACKS


@pytest.mark.parametrize("args, message", [
    (["--port", "70000"], "--port 70000: expected 0 to 65535"),
    (["--port", "9000"], "--port go with --http"),
])
def test_address_flags_are_checked_before_anything_starts(capsys, tmp_path, args, message):
    from _library_helpers import run_cli

    http = ["--http"] if "70000" in args else []
    got = run_cli(capsys, "mcp", "--library", tmp_path / "none.sqlite", *http, *args)
    assert got.code == 2 and message in " ".join(got.err.split())
