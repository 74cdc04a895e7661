"""`mgsv serve`'s engine over a Lance track store: the same tracks, beat grids and suggestions as
over the SQLite index of the same files, the same refusals, and a change to the store reloads it."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _serve_helpers import AUTH, TOKEN, make_client

pytest.importorskip("lance")


def by_name(tracks: list[dict]) -> dict[str, dict]:
    return {Path(t["path"]).name: t for t in tracks}


def test_the_engine_serves_a_lance_store_as_it_serves_an_sqlite_index(tmp_path, serve_library, engine, media_src,
                                                                       tiny_encoders, folders):
    from mgsv_cli.index.pipeline import index_folder
    from mgsv_cli.serve.engine import Engine
    from mgsv_cli.serve.files import NotServable

    music = Path(shutil.copytree(serve_library.music, tmp_path / "music")).resolve()
    uri = str(tmp_path / "catalog.lance")
    assert index_folder(music, uri, encoders=tiny_encoders, detect_beats=True).ok
    warm = Engine(index_path=uri, untrained=True, device="cpu", encoders_obj=tiny_encoders)
    try:
        status, expected_status = warm.status(), engine.status()
        assert status["index"]["path"] == uri and status["index"]["encoder_id"] == tiny_encoders.encoder_id
        for key in ("tracks", "with_beats"):
            assert status["index"][key] == expected_status["index"][key] == 3, key

        listed = warm.tracks_json(beats=True)
        tracks, expected = by_name(listed["tracks"]), by_name(engine.tracks_json(beats=True)["tracks"])
        assert listed["total"] == 3 and tracks.keys() == expected.keys()
        for name, track in tracks.items():
            assert track["path"] == str(music / Path(expected[name]["path"]).relative_to(serve_library.music))
            # The same bytes, so the same grid found at index time; the rest as recorded.
            assert {k: v for k, v in track.items() if k not in ("id", "path")} == \
                {k: v for k, v in expected[name].items() if k not in ("id", "path")}
            assert track["has_beats"] and track["beats"]["beats"]
            assert warm.track_json(track["id"]) == track == warm.track_json(track["path"])
            assert warm.tracks_json([track["path"]], beats=True)["tracks"] == [track]
        for ref in (12345, str(serve_library.music / next(iter(tracks))), "/etc/passwd"):
            with pytest.raises(NotServable):
                warm.track(ref)  # an id or a path the store does not hold (the SQLite index's own path)

        asked = {"index": uri, "untrained": True, "device": "cpu"}
        assert warm.mismatch(asked) is None
        assert "the server uses the index" in warm.mismatch({**asked, "index": str(serve_library.index)})

        for snap in (None, "beat"):
            found = warm.suggest(serve_library.clip, top_k=3, snap=snap, remember=False).suggestions
            wanted = engine.suggest(serve_library.clip, top_k=3, snap=snap, remember=False).suggestions
            assert [Path(s.track).name for s in found] == [Path(s.track).name for s in wanted]
            for a, b in zip(found, wanted):
                # Keys in float16 (Lance) and float32 (SQLite); moments from the same fp16 tokens.
                assert a.score == pytest.approx(b.score, abs=2e-3)
                assert (a.start, a.end) == pytest.approx((b.start, b.end), abs=1e-3)
                assert a.snapped_to == b.snapped_to

        with make_client(warm, folders) as client:
            reply = client.get("/api/tracks", headers=AUTH)
            assert reply.status_code == 200 and reply.json()["total"] == 3
            first = reply.json()["tracks"][0]
            served = client.get(f"/files/tracks/{first['id']}", params={"token": TOKEN})
            assert served.status_code == 200 and served.content == Path(first["path"]).read_bytes()

        # `mgsv index` adds a track to the store: the engine sees it and reloads (encoders kept).
        before = status["index"]["content_version"]
        shutil.copy2(media_src / "spare.flac", music / "spare.flac")
        assert index_folder(music, uri, encoders=tiny_encoders, detect_beats=False).added == 1
        found = warm.suggest(serve_library.clip, top_k=4, remember=False).suggestions
        assert warm.reloads == 1 and len(found) == 4 and "spare.flac" in {Path(s.track).name for s in found}
        after = warm.status()["index"]
        assert after["tracks"] == 4 and after["content_version"] != before
    finally:
        warm.close()
