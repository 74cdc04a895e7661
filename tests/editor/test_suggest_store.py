"""`mgsv suggest --index` on a Lance track store and the two-stage search inside the Suggester
(tiny encoders, --untrained): the same suggestions as the SQLite index of the same folder."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mgsv_cli.errors import IndexDatabaseError

pytest.register_assert_rewrite("_library_helpers")
from _library_helpers import TRACKS, run_cli  # noqa: E402

pytest_plugins = ["_library_helpers"]


def clip(media_src, i: int = 0):
    return media_src / "clips" / f"clip{i}.mp4"


def suggestions(capsys, video, index) -> list[dict]:
    result = run_cli(capsys, "suggest", video, "--index", index, "--untrained", "--json", "--top", "3",
                     "--device", "cpu", "--no-server")
    assert result.code == 0, result.err
    [obj] = [json.loads(line) for line in result.out.splitlines() if line.strip()]
    return obj["suggestions"]


@pytest.fixture
def lance_store(tmp_path, built, tiny_encoders) -> str:
    pytest.importorskip("lance")
    from mgsv_cli.index.pipeline import index_folder

    uri = str(tmp_path / "catalog.lance")
    assert index_folder(built[0], uri, encoders=lambda: tiny_encoders, detect_beats=False).added == len(TRACKS)
    return uri


def test_lance_store_and_sqlite_index_of_one_folder_give_the_same_suggestions(capsys, media_src, built,
                                                                              lance_store):
    for i in range(2):
        from_sqlite = suggestions(capsys, clip(media_src, i), built[1])
        from_lance = suggestions(capsys, clip(media_src, i), lance_store)
        assert [s["track"] for s in from_lance] == [s["track"] for s in from_sqlite]
        for a, b in zip(from_lance, from_sqlite):
            assert a["score"] == pytest.approx(b["score"], abs=2e-3)  # keys kept in fp16 by the store
            for key in ("start", "end", "predicted_start", "predicted_end", "track_duration"):
                assert a[key] == pytest.approx(b[key], abs=1e-4), key  # moments from the same fp16 tokens
            assert a["relevance"] == pytest.approx(b["relevance"], abs=1e-3)
            assert (a["title"], a["artist"]) == (b["title"], b["artist"])


def test_a_store_is_searched_without_reading_every_track_record(monkeypatch, capsys, media_src, built, lance_store):
    """A catalog's records are read for the suggested tracks only (1M records: ~6 s, ~1 GB)."""
    from mgsv_cli.index.lance_store import LanceTrackStore

    whole = LanceTrackStore.tracks
    asked = []

    def tracks(self, ids=None):
        assert ids is not None, "every record read"
        asked.append(len(ids))
        return whole(self, ids)

    monkeypatch.setattr(LanceTrackStore, "tracks", tracks)
    found = suggestions(capsys, clip(media_src), lance_store)
    assert [s["track"] for s in found] == [s["track"] for s in suggestions(capsys, clip(media_src), built[1])]
    assert asked and max(asked) <= 3


def test_a_store_of_int8_keys_gives_the_same_tracks_and_near_scores(capsys, media_src, built, tmp_path):
    pytest.importorskip("lance")
    uri = str(tmp_path / "int8.lance")
    result = run_cli(capsys, "index", built[0], "--store", uri, "--keys", "int8", "--encoders", "tiny", "--no-beats")
    assert result.code == 0, result.err
    again = run_cli(capsys, "index", built[0], "--store", uri, "--keys", "float16", "--encoders", "tiny")
    assert again.code == 2 and "keeps int8 keys" in again.err and "Traceback" not in again.err
    for i in range(2):
        from_sqlite = suggestions(capsys, clip(media_src, i), built[1])
        from_int8 = suggestions(capsys, clip(media_src, i), uri)
        assert [s["track"] for s in from_int8] == [s["track"] for s in from_sqlite]
        for a, b in zip(from_int8, from_sqlite):
            assert a["score"] == pytest.approx(b["score"], abs=5e-3)  # keys rounded to int8 steps
            assert a["start"] == pytest.approx(b["start"], abs=1e-4)  # moments come from the tokens


def assert_same_suggestions(found, expected) -> None:
    """The same tracks and cuts, scores to float32 precision: the same stored rows scored in
    buckets of other shapes, and MKL's float32 sums can differ in the last bits with the shapes,
    the memory's alignment or the threads a loaded machine gives them (0.025895080 vs 0.025895083
    was seen)."""
    assert [s.track for s in found] == [s.track for s in expected]
    for a, b in zip(found, expected):
        assert a.score == pytest.approx(b.score, abs=1e-5)
        for key in ("start", "end", "predicted_start", "predicted_end"):
            assert getattr(a, key) == pytest.approx(getattr(b, key), abs=1e-3), key  # seconds; 1 ms
        assert a.relevance == pytest.approx(b.relevance, abs=1e-4)


def test_a_library_larger_than_the_rerank_size_is_searched_in_two_stages(media_src, built, tiny_encoders):
    from mgsv_cli.editor.suggest import Suggester

    def open_with(rerank):
        return Suggester.open(index_path=built[1], untrained=True, encoders_obj=tiny_encoders, device="cpu",
                              rerank=rerank)

    with open_with(None) as everything, open_with(len(TRACKS)) as same, open_with(2) as two_stage:
        # At most N tracks: every one is a candidate, scored from keys held in memory.
        for whole in (everything, same):
            assert whole.retriever.first_stage.kind == "all" and whole.retriever.resident is not None
        assert two_stage.retriever.first_stage.kind == "exact" and two_stage.retriever.resident is None
        for i in range(2):
            full = everything.suggest_video(clip(media_src, i), top_k=3).suggestions
            assert_same_suggestions(same.suggest_video(clip(media_src, i), top_k=3).suggestions, full)
            found = two_stage.suggest_video(clip(media_src, i), top_k=3).suggestions
            assert len(found) == 2  # only the first stage's top 2 are reranked

            # The candidates are the two tracks nearest the clip's pooled vector (cos(v, h0)) ...
            video = tiny_encoders.embed_video(clip(media_src, i))
            with torch.inference_mode():
                pooled = two_stage.model.encode_video(torch.as_tensor(video.feats)[None],
                                                      torch.as_tensor(video.mask)[None]).pooled[0].numpy()
            ids, matrix = two_stage.store.pooled_matrix(two_stage.retriever.fingerprint)
            cos = (matrix @ pooled) / np.linalg.norm(matrix, axis=1)
            path_of = {t.id: t.path for t in two_stage.tracks}
            assert {s.track for s in found} == {path_of[int(ids[k])] for k in np.argsort(-cos)[:2]}
            # ... with the model's full score, as exhaustive scoring gives it, in that order.
            score_of = {s.track: s.score for s in full}
            assert [s.score for s in found] == pytest.approx([score_of[s.track] for s in found], abs=2e-3)
            assert [s.score for s in found] == sorted((s.score for s in found), reverse=True)
    with open_with(2) as again:  # the derived rows were kept: nothing to encode
        assert "music_derived_current" in again.timings


def test_an_empty_or_foreign_store_is_a_one_line_error(capsys, media_src, tmp_path, tiny_encoders):
    pytest.importorskip("lance")
    from mgsv_cli.editor.suggest import Suggester
    from mgsv_cli.index.backend import open_store

    open_store(str(tmp_path / "empty.lance"), create=True).close()
    with pytest.raises(IndexDatabaseError, match="empty"):
        Suggester.open(index_path=str(tmp_path / "empty.lance"), untrained=True, encoders_obj=tiny_encoders,
                       device="cpu")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("not a store")
    result = run_cli(capsys, "suggest", clip(media_src), "--index", tmp_path / "notes", "--untrained",
                     "--device", "cpu", "--no-server")
    assert result.code != 0 and "not an mgsv track store" in result.err and "Traceback" not in result.err


def test_the_rerank_and_first_stage_options_reach_the_search(capsys, media_src, built, tiny_encoders):
    from mgsv_cli.editor.suggest import Suggester

    with Suggester.open(index_path=built[1], untrained=True, encoders_obj=tiny_encoders, device="cpu",
                        rerank=2) as two_stage:
        expected = [s.track for s in two_stage.suggest_video(clip(media_src), top_k=3).suggestions]
    result = run_cli(capsys, "suggest", clip(media_src), "--index", built[1], "--untrained", "--json", "--top", "3",
                     "--device", "cpu", "--rerank", "2", "--first-stage", "exact")
    assert result.code == 0, result.err
    [obj] = [json.loads(line) for line in result.out.splitlines() if line.strip()]
    assert [s["track"] for s in obj["suggestions"]] == expected and len(expected) == 2

    result = run_cli(capsys, "suggest", clip(media_src), "--index", built[1], "--untrained", "--first-stage", "hnsw")
    assert result.code == 2 and "--first-stage 'hnsw'" in result.err and "Traceback" not in result.err
