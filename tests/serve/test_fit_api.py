"""`mgsv serve` fits music to the clip as the CLI does (``fit``): suggest carries the edit list,
the preview plays it (its header says which), render and export make it, the editor moves its
join to another bar line (``join``), and /api/structure gives the page a track's bars and
sections (from the index, where the pipeline stored them)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from _library_helpers import run_cli
from _serve_helpers import AUTH, TOKEN

JOIN_LEAD = 0.02  # editor.fitting.JOIN_LEAD_SECONDS: a join's cut lies this long before its bar line


def _upload(api, clip: Path) -> dict:
    reply = api.post("/api/upload", params={"name": clip.name}, content=clip.read_bytes(), headers=AUTH)
    assert reply.status_code == 200, reply.text
    return reply.json()


def _suggest(api, video: str, **body) -> dict:
    reply = api.post("/api/suggest", json={"video": video, **body}, headers=AUTH)
    assert reply.status_code == 200, reply.text
    return reply.json()


def _beta(result: dict) -> dict:
    """The suggestion of the library's 16 s song at 124 BPM: bars of 1.94 s, several of which can
    take the join of a 6 s clip (its 21 s song's bars are too long for more than one)."""
    found = [s for s in result["suggestions"] if Path(s["track"]).name == "02-beta.MP3"]
    assert found and found[0]["edit"]["mode"] == "ending", result["suggestions"]
    return found[0]


def test_structure_gives_the_bars_and_sections_the_index_keeps(api, serve_library):
    from mgsv_cli.index.backend import open_store

    with open_store(serve_library.index) as store:
        records = {Path(r.location).name: r for r in store.tracks()}
        stored = store.structures_for([records["02-beta.MP3"].track_id])[0]
    reply = api.get("/api/structure", params={"track": str(serve_library.music / "02-beta.MP3")}, headers=AUTH)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["source"] == "index" and body["bars"] == stored["bars"] and body["sections"] == stored["sections"]
    assert body["bars"] and body["last_downbeat"] in body["bars"]
    assert "chroma" not in body and "timbre" not in body  # the grid, not the features
    by_id = api.get("/api/structure", params={"track": records["02-beta.MP3"].track_id}, headers=AUTH)
    assert by_id.status_code == 200 and by_id.json()["bars"] == body["bars"]
    outside = api.get("/api/structure", params={"track": "/etc/passwd"}, headers=AUTH)
    assert outside.status_code == 404
    assert api.get("/api/structure", params={"track": records["02-beta.MP3"].track_id}).status_code == 401


def test_suggest_with_fit_answers_what_the_cli_prints(api, capsys, serve_library):
    served = _suggest(api, str(serve_library.clip), top=3, fit="ending")
    cli = run_cli(capsys, "suggest", serve_library.clip, "--index", serve_library.index, "--untrained", "--json",
                  "--top", "3", "--device", "cpu", "--fit", "ending")
    assert cli.code == 0, cli.err
    printed = json.loads(cli.out.splitlines()[-1])
    printed.pop("ok", None)
    assert served == printed
    edits = {Path(s["track"]).name: s["edit"] for s in served["suggestions"]}
    assert edits["01-alpha.wav"]["mode"] == "cut" and edits["01-alpha.wav"]["reason"]  # no bar lines: why
    for edit in edits.values():
        assert sum(s["end"] - s["start"] for s in edit["spans"]) == pytest.approx(served["duration"], abs=1e-5)
    bad = api.post("/api/suggest", json={"video": str(serve_library.clip), "fit": "remix"}, headers=AUTH)
    assert bad.status_code == 422


def test_preview_render_and_export_play_the_edit_and_move_its_join(api, serve_library):
    from mgsv_cli.media import ffmpeg as media

    clip = _upload(api, serve_library.clip)
    result = _suggest(api, clip["video"], top=3, fit="ending")
    pick = _beta(result)
    edit = pick["edit"]
    reply = api.get("/api/preview", params={"video": clip["video"], "rank": pick["rank"], "token": TOKEN})
    assert reply.status_code == 200, reply.text
    heard = json.loads(reply.headers["x-mgsv-edit"])
    assert heard["spans"] == edit["spans"] and heard["joins"] == edit["joins"]  # what suggest said, as it is
    assert float(reply.headers["x-mgsv-start"]) == pytest.approx(edit["spans"][0]["start"], abs=1e-3)

    # The start moved to the track's beginning (the untrained model's moment may lie near its
    # end, with no join): planned again from there, a join skips to the ending.
    start = 0.5
    base = {"video": clip["video"], "rank": pick["rank"], "start": start, "token": TOKEN}
    reply = api.get("/api/preview", params=base)
    assert reply.status_code == 200, reply.text
    edit = json.loads(reply.headers["x-mgsv-edit"])
    assert edit["mode"] == "ending" and len(edit["joins"]) == 1, edit

    # Move the join to another bar line of the moment: the edit is planned again with it there.
    bars = api.get("/api/structure", params={"track": pick["track"]}, headers=AUTH).json()["bars"]
    out_bar = edit["joins"][0]["out"] + JOIN_LEAD
    first = edit["spans"][0]["start"]
    others = [b for b in bars if abs(b - out_bar) > 1e-3 and b - first >= 2.0 and b < out_bar]
    others += [b for b in bars if b > out_bar + 1e-3 and b < edit["joins"][0]["into"] - 1.0]
    moved = None
    for bar in others:
        candidate = api.get("/api/preview", params={**base, "join": bar})
        if candidate.status_code == 200:
            moved, moved_to = json.loads(candidate.headers["x-mgsv-edit"]), bar
            break
        assert candidate.status_code == 400 and "no join at" in candidate.json()["error"]
    assert moved is not None, f"no other bar line of {bars} joins for {edit}"
    assert moved["joins"][0]["out"] == pytest.approx(moved_to - JOIN_LEAD, abs=1e-4)
    assert sum(s["end"] - s["start"] for s in moved["spans"]) == pytest.approx(result["duration"], abs=1e-5)

    rendered = api.post("/api/render", headers=AUTH, json={"video": clip["video"], "track": pick["track"],
                                                            "start": start, "fit": "ending", "join": moved_to})
    assert rendered.status_code == 200, rendered.text
    made = rendered.json()["result"]
    assert made["edit"]["joins"][0]["out"] == pytest.approx(moved["joins"][0]["out"], abs=1e-4)
    assert made["edit"]["spans"][-1] == moved["spans"][-1]  # the track's own ending, as previewed
    info = media.probe(made["out_path"])
    assert info.duration == pytest.approx(result["duration"], abs=0.1)

    exported = api.post("/api/export", headers=AUTH, json={"video": clip["video"], "pick": pick["rank"],
                                                            "start": start, "format": "otio", "join": moved_to,
                                                            "snap": "off"})
    assert exported.status_code == 200, exported.text
    import opentimelineio as otio

    timeline = otio.adapters.read_from_file(exported.json()["out"])
    music = next(t for t in timeline.tracks if t.kind == otio.schema.TrackKind.Audio)
    assert len(list(music.find_clips())) == len(moved["spans"])
    assert len([t for t in music if isinstance(t, otio.schema.Transition)]) == len(moved["joins"])

    nowhere = api.get("/api/preview", params={**base, "join": 0.0})
    assert nowhere.status_code == 400 and "no join at" in nowhere.json()["error"]
    cut = api.get("/api/preview", params={"video": clip["video"], "rank": pick["rank"], "fit": "cut",
                                          "token": TOKEN})
    assert cut.status_code == 200 and "x-mgsv-edit" not in cut.headers


def test_a_track_previews_fitted_from_a_start(api, serve_library):
    clip = _upload(api, serve_library.clip)
    track = str(serve_library.music / "sub" / "03-gamma.flac")
    reply = api.get("/api/preview", params={"video": clip["video"], "track": track, "start": 1.0, "fit": "ending",
                                            "token": TOKEN})
    assert reply.status_code == 200, reply.text
    edit = json.loads(reply.headers["x-mgsv-edit"])
    assert edit["mode"] == "ending" and edit["requested"] == "ending"
    assert float(reply.headers["x-mgsv-start"]) == pytest.approx(edit["spans"][0]["start"], abs=1e-3)
    status = api.get("/api/status", headers=AUTH).json()
    assert status["fit_modes"] == ["cut", "ending", "loop"] and status["defaults"]["fit"] == "cut"
