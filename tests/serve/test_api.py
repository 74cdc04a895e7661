"""The JSON API of `mgsv serve` through FastAPI's TestClient: token, Host check, what is served,
suggest / render / export / preview, and errors as JSON (tiny encoders, untrained MaDe)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from _library_helpers import TRACKS, run_cli
from _serve_helpers import AUTH, PORT, TOKEN, make_client


def upload(api, clip: Path, name: str | None = None) -> dict:
    reply = api.post("/api/upload", params={"name": name or clip.name}, content=clip.read_bytes(), headers=AUTH)
    assert reply.status_code == 200, reply.text
    return reply.json()


def suggest(api, video: str, **body) -> dict:
    reply = api.post("/api/suggest", json={"video": video, **body}, headers=AUTH)
    assert reply.status_code == 200, reply.text
    return reply.json()


def uploaded_and_suggested(api, serve_library, top: int = 3) -> tuple[dict, dict]:
    clip = upload(api, serve_library.clip)
    return clip, suggest(api, clip["video"], top=top)


# ---------------------------------------------------------------- who may ask


def test_health_needs_no_token_and_counts_the_tracks(api):
    reply = api.get("/api/health")
    assert reply.status_code == 200
    body = reply.json()
    assert body["ok"] is True and body["tracks"] == len(TRACKS) and body["version"]


PROTECTED = [
    ("GET", "/api/status"), ("GET", "/api/tracks"), ("GET", "/api/tracks/1"), ("POST", "/api/upload?name=a.mp4"),
    ("POST", "/api/suggest"), ("POST", "/api/render"), ("POST", "/api/export"),
    ("GET", "/api/preview?video=/x&rank=1"), ("GET", "/files/uploads/a/b.mp4"), ("GET", "/files/outputs/a.mp4"),
    ("GET", "/files/tracks/1"), ("GET", "/openapi.json"), ("GET", "/docs"),
]


def error_of(reply, status: int) -> dict:
    """The answer's JSON, checked to be an error of the README's shape `{"error", "type", "exit_code"}`."""
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json" and "Traceback" not in reply.text
    body = reply.json()
    assert isinstance(body["error"], str) and body["error"] and isinstance(body["type"], str) and body["type"]
    assert type(body["exit_code"]) is int
    return body


@pytest.mark.parametrize("method,path", PROTECTED)
def test_every_other_route_needs_the_token(api, method, path):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        reply = api.request(method, path, headers=headers)
        body = error_of(reply, 401)
        assert body["error"].startswith("missing or wrong access token"), (path, headers)
        assert (body["type"], body["exit_code"], body["reason"]) == ("Unauthorized", 2, "unauthorized")
        assert reply.headers["www-authenticate"] == "Bearer"


# (method, path, request options, status, type, exit code, reason: None for a library error)
ERRORS = [
    ("GET", "/api/status", {"headers": {"Host": "evil.example:8765"}}, 403, "Forbidden", 2, "forbidden_host"),
    ("GET", "/api/nothing-here", {}, 404, "NotFound", 2, "not_found"),
    ("DELETE", "/api/status", {}, 405, "MethodNotAllowed", 2, "method_not_allowed"),
    ("POST", "/api/suggest", {"json": {"video": "/x.mp4", "top": 0}}, 422, "BadRequest", 2, "bad_request"),
    ("GET", "/api/tracks?offset=-1", {}, 422, "BadRequest", 2, "bad_request"),
    ("POST", "/api/suggest", {"json": {"video": "/x.mp4", "options": {"index": "/elsewhere.sqlite"}}}, 409,
     "OptionsDiffer", 2, "options_differ"),
    ("POST", "/api/suggest", {"content": b"{oops", "headers": {"Content-Type": "application/json"}}, 400,
     "UsageError", 2, None),
    ("GET", "/api/tracks/999", {}, 404, "NotServable", 2, None),
    ("POST", "/api/suggest", {"json": {"video": "/no/such/clip.mp4"}}, 422, "MediaError", 5, None),
]


@pytest.mark.parametrize("method,path,options,status,kind,code,reason", ERRORS)
def test_every_error_is_json_of_one_shape(api, method, path, options, status, kind, code, reason):
    """The server's own refusals (Host check, routing, validation, other options) and library errors
    alike; only the server's own carry a `reason` (the CLI's client then does the work itself)."""
    extra = dict(options)
    headers = {**AUTH, **extra.pop("headers", {})}
    body = error_of(api.request(method, path, headers=headers, **extra), status)
    assert (body["type"], body["exit_code"], body.get("reason")) == (kind, code, reason), body


def test_the_token_in_the_query_only_opens_media_routes(api):
    assert api.get("/api/status", params={"token": TOKEN}).status_code == 401
    assert api.get("/api/tracks", params={"token": TOKEN}).status_code == 401
    assert api.get("/files/tracks/1", params={"token": TOKEN}).status_code == 200
    assert api.get("/openapi.json", params={"token": TOKEN}).status_code == 200


@pytest.mark.parametrize("host", ["evil.example:8765", "evil.example", f"127.0.0.1:{PORT + 1}", "localhost",
                                  f"attacker.127.0.0.1.nip.io:{PORT}", f"[::2]:{PORT}", ""])
def test_a_foreign_host_header_gets_nothing(api, host):
    """A DNS-rebinding page's requests carry its own name: not even health or the page answer it."""
    for path in ("/api/health", "/", "/static/app.js", "/api/status"):
        reply = api.get(path, headers={"Host": host, **AUTH})
        assert reply.status_code == 403 and reply.json() == {
            "error": "forbidden: the Host header does not name this server", "type": "Forbidden", "exit_code": 2,
            "reason": "forbidden_host"}, (host, path)


@pytest.mark.parametrize("host", [f"127.0.0.1:{PORT}", f"localhost:{PORT}", f"[::1]:{PORT}", f"LOCALHOST:{PORT}"])
def test_the_loopback_names_are_ours(api, host):
    assert api.get("/api/health", headers={"Host": host}).status_code == 200


def test_hosts_allowed_for_other_interfaces():
    from mgsv_cli.serve.app import allowed_hosts, host_allowed

    named = allowed_hosts("192.168.1.20", 9000)
    assert host_allowed("192.168.1.20:9000", named, 9000) and host_allowed("localhost:9000", named, 9000)
    assert not host_allowed("192.168.1.21:9000", named, 9000)
    everywhere = allowed_hosts("0.0.0.0", 9000)
    assert everywhere is None
    assert host_allowed("10.1.2.3:9000", everywhere, 9000) and host_allowed("[fe80::1]:9000", everywhere, 9000)
    assert not host_allowed("evil.example:9000", everywhere, 9000)  # a name only a rebinding page would use
    assert not host_allowed("10.1.2.3:9001", everywhere, 9000)


def test_binding_beyond_loopback_warns():
    from mgsv_cli.serve.server import exposure_warning

    assert exposure_warning("127.0.0.1") is None and exposure_warning("::1") is None
    warning = exposure_warning("0.0.0.0")
    assert "reachable by other machines" in warning and "library" in warning


def test_the_page_shell_needs_no_token_and_carries_safe_headers(api):
    page = api.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text and TOKEN not in page.text
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"
    for name in ("app.js", "style.css"):
        assert api.get(f"/static/{name}").status_code == 200
    assert api.get("/static/../engine.py").status_code == 404
    assert "access-control-allow-origin" not in page.headers


def test_the_openapi_page_documents_the_api(api):
    spec = api.get("/openapi.json", headers=AUTH).json()
    for path in ("/api/health", "/api/suggest", "/api/render", "/api/export", "/api/preview", "/api/tracks",
                 "/api/status", "/api/upload"):
        assert path in spec["paths"], path
    assert "multipart/form-data" in spec["paths"]["/api/suggest"]["post"]["requestBody"]["content"]
    docs = api.get("/docs", params={"token": TOKEN})
    assert docs.status_code == 200 and "openapi.json" in docs.text


# ---------------------------------------------------------------- suggest


def test_suggest_answers_what_the_cli_prints_and_remembers_it(api, capsys, serve_library):
    from mgsv_cli.editor.record import load_last_suggestion

    served = suggest(api, str(serve_library.clip), top=2)
    cli = run_cli(capsys, "suggest", serve_library.clip, "--index", serve_library.index, "--untrained", "--json",
                  "--top", "2", "--device", "cpu")
    assert cli.code == 0, cli.err
    printed = json.loads(cli.out.splitlines()[-1])
    printed.pop("ok", None)
    assert served == printed
    assert load_last_suggestion(serve_library.clip).to_json() == served  # remembered, as the CLI does


def test_suggest_snaps_to_the_beat_like_the_cli(api, capsys, serve_library):
    served = suggest(api, str(serve_library.clip), top=3, snap="beat")
    cli = run_cli(capsys, "suggest", serve_library.clip, "--index", serve_library.index, "--untrained", "--json",
                  "--top", "3", "--snap", "beat", "--device", "cpu")
    printed = json.loads(cli.out.splitlines()[-1])
    printed.pop("ok", None)
    assert served == printed and any(s.get("snapped_to") for s in served["suggestions"])


def test_the_features_of_a_clip_are_kept(api, serve_library, engine, monkeypatch):
    suggest(api, str(serve_library.clip), top=1)
    calls = []
    encoders = engine.suggester.encoders._real
    real = type(encoders).embed_decoded
    monkeypatch.setattr(type(encoders), "embed_decoded", lambda self, v: calls.append(1) or real(self, v))
    again = suggest(api, str(serve_library.clip), top=3)
    assert calls == [] and len(again["suggestions"]) == 3


def test_a_multipart_upload_is_suggested_and_remembered(api, serve_library, folders):
    from mgsv_cli.editor.record import load_last_suggestion

    with open(serve_library.clip, "rb") as handle:
        reply = api.post("/api/suggest", files={"file": ("My Clip!.mp4", handle, "video/mp4")},
                         data={"top": "2", "snap": "beat"}, headers=AUTH)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    video = Path(body["video"])
    assert video.parent.parent == folders.uploads.resolve() and video.name == "My Clip!.mp4"
    assert video.read_bytes() == serve_library.clip.read_bytes()
    assert len(body["suggestions"]) == 2 and load_last_suggestion(video).to_json() == body


def test_uploads_are_limited_in_kind_and_size(engine, folders, serve_library, tmp_path):
    with make_client(engine, folders, max_upload_bytes=50_000) as small:
        big = small.post("/api/upload", params={"name": "clip.mp4"}, content=serve_library.clip.read_bytes(),
                         headers=AUTH)
        assert big.status_code == 413 and "limit" in big.json()["error"]
        with open(serve_library.clip, "rb") as handle:
            multipart = small.post("/api/suggest", files={"file": ("clip.mp4", handle)}, headers=AUTH)
        assert multipart.status_code == 413
        kind = small.post("/api/upload", params={"name": "notes.txt"}, content=b"hello", headers=AUTH)
        assert kind.status_code == 415 and ".mp4" in kind.json()["error"]
        fake = small.post("/api/upload", params={"name": "fake.mp4"}, content=b"not a video at all" * 10,
                          headers=AUTH)
        assert fake.status_code == 415 and "not a readable video" in fake.json()["error"]
        empty = small.post("/api/upload", params={"name": "empty.mov"}, content=b"", headers=AUTH)
        assert empty.status_code == 415
    leftovers = [p for p in folders.uploads.rglob("*") if p.is_file()]
    assert leftovers == []  # nothing refused is kept


def test_an_upload_keeps_its_name_in_any_script_and_so_do_its_outputs(api, serve_library, folders):
    import unicodedata
    from urllib.parse import quote

    name = "Café – été.mp4"
    clip = upload(api, serve_library.clip, name=unicodedata.normalize("NFD", name))  # as macOS spells it
    assert clip["name"] == name and Path(clip["video"]).name == name
    assert clip["url"].endswith("/" + quote(name)) and " " not in clip["url"]
    played = api.get(clip["url"], params={"token": TOKEN})
    assert played.status_code == 200 and played.content == serve_library.clip.read_bytes()
    suggest(api, clip["video"], top=1)
    rendered = api.post("/api/render", headers=AUTH, json={"video": clip["video"], "pick": 1}).json()
    assert Path(rendered["result"]["out_path"]).name == "Café – été.mgsv.mp4"
    download = api.get(rendered["download_url"] + "&token=" + TOKEN)
    expected = "filename*=UTF-8''" + quote("Café – été.mgsv.mp4", safe="")
    assert download.status_code == 200 and download.headers["content-disposition"] == (
        f'attachment; filename="Cafe ete.mgsv.mp4"; {expected}')
    timeline = api.post("/api/export", headers=AUTH, json={"video": clip["video"], "format": "edl", "download": True})
    assert timeline.status_code == 200 and timeline.headers["content-disposition"].endswith(
        "filename*=UTF-8''" + quote("Café – été.mgsv.edl", safe=""))


@pytest.mark.parametrize("given,kept", [("../../x\x00y.mp4", "xy.mp4"), ("..\\..\\évil\u202egnp.mov", "évilgnp.mov"),
                                        ("..mp4", "clip.mp4"), ("a/.hidden.mkv", "hidden.mkv")])
def test_an_upload_name_is_made_safe(api, serve_library, folders, given, kept):
    """Path separators, NUL, bidi overrides and leading dots go; the file stays inside the uploads."""
    clip = upload(api, serve_library.silent_clip, name=given)
    video = Path(clip["video"])
    assert clip["name"] == video.name == kept and video.parent.parent == folders.uploads.resolve()


@pytest.mark.parametrize("body,status", [
    ({"video": "relative/clip.mp4"}, 400), ({"video": "/x.mp4", "top": 0}, 422), ({"top": 2}, 422),
    ({"video": "/x.mp4", "nonsense": 1}, 422), ({"video": "/x.mp4", "snap": "bar"}, 422),
])
def test_bad_suggest_requests_get_json_errors(api, body, status):
    reply = api.post("/api/suggest", json=body, headers=AUTH)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"] and "Traceback" not in reply.text


def test_not_json_is_a_json_error(api):
    reply = api.post("/api/suggest", content=b"{oops", headers={**AUTH, "Content-Type": "application/json"})
    assert reply.status_code == 400 and "not JSON" in reply.json()["error"]


def test_a_clip_that_cannot_be_read_is_a_media_error(api, media_src):
    reply = api.post("/api/suggest", json={"video": str((media_src / "clips" / "corrupt.mp4").resolve())},
                     headers=AUTH)
    assert reply.status_code == 422
    assert reply.json()["type"] == "MediaError" and reply.json()["exit_code"] == 5


def test_a_command_with_other_options_is_turned_away(engine, serve_library, tmp_path):
    from mgsv_cli import paths
    from mgsv_cli.serve.engine import OptionsDiffer

    same = {"index": str(serve_library.index), "untrained": True, "device": "cpu", "data_dir": str(paths.data_dir())}
    assert engine.mismatch(same) is None
    for change in ({"index": str(tmp_path / "other.sqlite")}, {"untrained": False}, {"encoders": "pretrained"},
                   {"checkpoint": str(tmp_path)}, {"weights_dir": str(tmp_path)}, {"data_dir": str(tmp_path)},
                   {"device": "cuda:7"}):
        assert engine.mismatch({**same, **change}), change
        with pytest.raises(OptionsDiffer):
            engine.suggest(serve_library.clip, 1, asked={**same, **change})


def test_options_differ_answers_409_for_the_cli(api, serve_library, tmp_path):
    reply = api.post("/api/suggest", headers=AUTH, json={
        "video": str(serve_library.clip), "options": {"index": str(tmp_path / "x.sqlite"), "untrained": True}})
    assert reply.status_code == 409 and reply.json()["reason"] == "options_differ"


# ---------------------------------------------------------------- the library


def test_tracks_come_with_their_beat_grids(api, serve_library):
    listing = api.get("/api/tracks", headers=AUTH).json()
    assert listing["total"] == len(TRACKS) and "beats" not in listing["tracks"][0]
    wanted = listing["tracks"][1]["path"]
    chosen = api.get("/api/tracks", params={"path": [wanted, "/not/indexed.mp3"], "beats": "true"},
                     headers=AUTH).json()["tracks"]
    assert [t["path"] for t in chosen] == [wanted]
    grid = chosen[0]["beats"]
    assert grid["tempo_bpm"] > 0 and len(grid["beats"]) > 4 and chosen[0]["has_beats"]
    one = api.get(f"/api/tracks/{chosen[0]['id']}", headers=AUTH).json()
    assert one["beats"] == grid
    assert api.get("/api/tracks/999", headers=AUTH).status_code == 404


def test_status_says_what_is_loaded(api, serve_library):
    status = api.get("/api/status", headers=AUTH).json()
    assert status["index"]["tracks"] == len(TRACKS) and status["index"]["path"] == str(serve_library.index)
    assert status["model"]["untrained"] is True and status["encoders"] == "tiny" and status["device"] == "cpu"
    assert status["mix_modes"] == ["replace", "original", "duck"] and ".mp4" in status["video_extensions"]
    assert status["defaults"]["top_k"] == 5


# ---------------------------------------------------------------- only its own files are served


TRICKS = ["../serve.json", "..%2fserve.json", "%2e%2e%2fserve.json", "%2e%2e/%2e%2e/etc/passwd", "/etc/passwd",
          "..\\serve.json", "a/../../serve.json", ".hidden.mp4", "%2fetc%2fpasswd", "..", "%00.mp4", "x%00/y.mp4"]


@pytest.mark.parametrize("trick", TRICKS)
def test_no_file_outside_the_servers_folders_is_served(api, folders, trick):
    folders.uploads.mkdir(parents=True, exist_ok=True)
    (folders.uploads.parent / "serve.json").write_text("secret")
    (folders.uploads / ".hidden.mp4").write_text("hidden")
    for area in ("uploads", "outputs"):
        reply = api.get(f"/files/{area}/{trick}", params={"token": TOKEN})
        assert reply.status_code in (404, 400), (trick, reply.status_code)
        assert "secret" not in reply.text and "root:" not in reply.text and "hidden" != reply.text


def test_a_symlink_out_of_the_uploads_is_not_followed(api, folders, tmp_path):
    outside = tmp_path / "outside.mp4"
    outside.write_text("secret")
    (folders.uploads / "x").mkdir(parents=True)
    (folders.uploads / "x" / "link.mp4").symlink_to(outside)
    (folders.uploads / "dirlink").symlink_to(tmp_path)
    for name in ("x/link.mp4", "dirlink/outside.mp4"):
        reply = api.get(f"/files/uploads/{name}", params={"token": TOKEN})
        assert reply.status_code == 404 and "secret" not in reply.text
    (folders.uploads / "x" / "real.mp4").write_text("fine")
    assert api.get("/files/uploads/x/real.mp4", params={"token": TOKEN}).text == "fine"


def test_only_indexed_tracks_are_served(api, serve_library, engine, tmp_path, tiny_encoders):
    listing = api.get("/api/tracks", headers=AUTH).json()["tracks"]
    first = listing[0]
    track = api.get(f"/files/tracks/{first['id']}", params={"token": TOKEN})
    assert track.status_code == 200 and track.content == Path(first["path"]).read_bytes()
    clip = upload(api, serve_library.clip)
    for bad in ("/etc/passwd", str(serve_library.music), first["path"] + "/../x", "../" + first["path"]):
        reply = api.get("/api/preview", params={"video": clip["video"], "track": bad, "token": TOKEN})
        assert reply.status_code == 404, bad


def test_a_symlink_leading_out_of_the_library_is_refused(serve_library, tiny_encoders, tmp_path, folders):
    """A track whose file is (now) a symlink to elsewhere is never served, even though it is indexed."""
    import shutil

    from mgsv_cli.index.pipeline import import_tokens, index_folder
    from mgsv_cli.index.records import NewTrack
    from mgsv_cli.serve.engine import Engine

    music = tmp_path / "music"
    shutil.copytree(serve_library.music, music)
    index = tmp_path / "index.sqlite"
    assert index_folder(music, index, encoders=tiny_encoders, detect_beats=False).ok
    secret = tmp_path / "secret.wav"
    secret.write_bytes(b"RIFF secret")
    link = music / "link.mp3"
    link.symlink_to(secret)
    rng = np.random.default_rng(0)
    import_tokens(index, [NewTrack(str(link), "", 30.0, rng.standard_normal((96, tiny_encoders.music_dim)),
                                   np.ones(96, bool), tiny_encoders.encoder_id)])
    warm = Engine(index_path=index, untrained=True, device="cpu", encoders_obj=tiny_encoders)
    try:
        with make_client(warm, folders) as client:
            tracks = client.get("/api/tracks", headers=AUTH).json()["tracks"]
            linked = next(t for t in tracks if t["path"] == str(link))
            reply = client.get(f"/files/tracks/{linked['id']}", params={"token": TOKEN})
            assert reply.status_code == 404 and b"secret" not in reply.content
            clip = upload(client, serve_library.clip)
            preview = client.get("/api/preview", params={"video": clip["video"], "track": str(link), "token": TOKEN})
            assert preview.status_code == 404
            good = next(t for t in tracks if t["path"] != str(link))
            assert client.get(f"/files/tracks/{good['id']}", params={"token": TOKEN}).status_code == 200
    finally:
        warm.close()


def test_previews_are_only_made_of_uploaded_clips(api, serve_library):
    reply = api.get("/api/preview", params={"video": str(serve_library.clip), "rank": 1, "token": TOKEN})
    assert reply.status_code == 404


# ---------------------------------------------------------------- preview, render, export


def test_preview_is_the_cut_under_the_clip_and_is_cached(api, serve_library, folders):
    from mgsv_cli.media import ffmpeg as media

    clip, result = uploaded_and_suggested(api, serve_library)
    best = result["suggestions"][0]
    made = {}
    for mix in ("replace", "original", "duck"):
        reply = api.get("/api/preview", params={"video": clip["video"], "rank": 1, "mix": mix, "token": TOKEN})
        assert reply.status_code == 200 and reply.headers["content-type"] == "audio/wav", reply.text
        assert float(reply.headers["x-mgsv-start"]) == pytest.approx(best["start"], abs=1e-3)
        assert reply.headers["x-mgsv-mix"] == mix
        made[mix] = reply.content
        wav = folders.previews / f"{mix}.wav"
        wav.write_bytes(reply.content)
        assert media.probe(wav).duration == pytest.approx(result["duration"], abs=0.05)
    samples = {mix: np.frombuffer(data[44:], dtype="<i2").astype(np.float32) for mix, data in made.items()}
    assert np.abs(samples["replace"]).max() > 1000  # music, not silence
    assert np.abs(samples["original"] - samples["replace"]).mean() > 100  # the clip's own sound is in
    files_before = sorted(p.name for p in folders.previews.iterdir())
    again = api.get("/api/preview", params={"video": clip["video"], "rank": 1, "mix": "replace", "token": TOKEN})
    assert again.content == made["replace"] and sorted(p.name for p in folders.previews.iterdir()) == files_before
    moved = api.get("/api/preview", params={"video": clip["video"], "track": best["track"], "start": 1.0,
                                            "format": "m4a"}, headers=AUTH)
    assert moved.status_code == 200 and moved.headers["content-type"] == "audio/mp4"
    assert float(moved.headers["x-mgsv-start"]) == pytest.approx(1.0)


def test_a_clip_without_sound_previews_as_replace(api, serve_library):
    clip = upload(api, serve_library.silent_clip)
    suggest(api, clip["video"], top=1)
    reply = api.get("/api/preview", params={"video": clip["video"], "rank": 1, "mix": "duck", "token": TOKEN})
    assert reply.status_code == 200 and reply.headers["x-mgsv-mix"] == "replace"


def test_render_gives_the_result_and_a_download(api, serve_library):
    from mgsv_cli.media import ffmpeg as media

    clip, result = uploaded_and_suggested(api, serve_library)
    second = result["suggestions"][1]
    reply = api.post("/api/render", headers=AUTH, json={"video": clip["video"], "track": second["track"],
                                                         "start": second["start"], "mix": "original"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["result"]["track"] == second["track"] and body["result"]["mix"] == "original"
    assert body["download_url"].startswith("/files/outputs/") and "token" not in body["download_url"]
    download = api.get(body["download_url"] + "&token=" + TOKEN)
    assert download.status_code == 200 and "attachment" in download.headers["content-disposition"]
    assert download.content == Path(body["result"]["out_path"]).read_bytes()
    info = media.probe(body["result"]["out_path"])
    assert info.has_video and info.has_audio
    # rendering again (after a nudge) replaces the page's output
    again = api.post("/api/render", headers=AUTH, json={"video": clip["video"], "pick": 1})
    assert again.status_code == 200 and again.json()["result"]["out_path"] == body["result"]["out_path"]


def test_the_page_renders_only_indexed_tracks(api, serve_library, tmp_path):
    from mgsv_cli.media import synth

    clip, _ = uploaded_and_suggested(api, serve_library)
    stray = synth.synth_tone(tmp_path / "stray.wav", seconds=10.0)
    reply = api.post("/api/render", headers=AUTH, json={"video": clip["video"], "track": str(stray), "start": 0})
    assert reply.status_code == 404


def test_a_failing_render_is_a_json_error_and_the_server_goes_on(api, serve_library):
    clip, result = uploaded_and_suggested(api, serve_library)
    track = result["suggestions"][0]
    reply = api.post("/api/render", headers=AUTH, json={"video": clip["video"], "track": track["track"],
                                                         "start": 10_000})
    assert reply.status_code == 400 and reply.json()["type"] == "UsageError" and "past the end" in reply.json()["error"]
    missing = api.post("/api/render", headers=AUTH, json={"video": "/no/such/clip.mp4", "pick": 1})
    assert missing.status_code in (400, 422) and missing.json()["exit_code"] in (2, 5)
    assert api.get("/api/health").status_code == 200


def test_an_unexpected_error_is_a_json_500_and_logged(api, engine, monkeypatch, caplog):
    def broken():
        raise RuntimeError("boom: a bug")

    monkeypatch.setattr(engine, "status", broken)
    with caplog.at_level(logging.ERROR, logger="mgsv.serve"):
        reply = api.get("/api/status", headers=AUTH)
    assert reply.status_code == 500
    assert reply.json() == {"error": "internal error: RuntimeError (see the server's log)", "type": "InternalError",
                            "exit_code": 70, "reason": "internal"}
    assert "Traceback" not in reply.text and "boom" not in reply.text
    assert any("boom: a bug" in (r.exc_text or "") or "internal error" in r.getMessage() for r in caplog.records)
    monkeypatch.undo()
    assert api.get("/api/status", headers=AUTH).status_code == 200


def test_export_writes_the_timeline_with_the_nudged_cut(api, serve_library):
    clip, result = uploaded_and_suggested(api, serve_library)
    best = result["suggestions"][0]
    reply = api.post("/api/export", headers=AUTH, json={"video": clip["video"], "pick": 1, "format": "otio",
                                                         "start": 1.5, "snap": "off"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    length = best["end"] - best["start"]
    assert body["start"] == pytest.approx(1.5) and body["end"] == pytest.approx(1.5 + length)
    assert body["out"].endswith(".mgsv.otio") and body["download_url"]
    timeline = api.get(body["download_url"] + "&token=" + TOKEN)
    assert timeline.status_code == 200 and "Timeline" in timeline.text
    direct = api.post("/api/export", headers=AUTH, json={"video": clip["video"], "format": "edl", "download": True})
    assert direct.status_code == 200 and "attachment" in direct.headers["content-disposition"]
    assert "TITLE" in direct.text


def test_export_without_a_suggestion_says_so(api, serve_library):
    clip = upload(api, serve_library.silent_clip, name="never-suggested.mp4")
    reply = api.post("/api/export", headers=AUTH, json={"video": clip["video"]})
    assert reply.status_code == 400 and "mgsv suggest" in reply.json()["error"]
