"""`mgsv suggest`: ranking, moments, stored rows per checkpoint, batch, remembered suggestions (tiny encoders, --untrained)."""  # noqa: E501
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mgsv_cli import paths
from mgsv_cli.errors import CheckpointError, IndexDatabaseError, UsageError
from mgsv_cli.index.backend import open_store

pytest.register_assert_rewrite("_library_helpers")  # its asserts are test asserts too

from _library_helpers import CLIP_SECONDS, TRACKS, CallCounter, db_rows, json_close, run_cli  # noqa: E402

# Fixtures shared with test_index.py (media generated and tracks indexed once per session).
pytest_plugins = ["_library_helpers"]

SUGGESTION_KEYS = {"rank", "track", "score", "start", "end", "predicted_start", "predicted_end"}


@pytest.fixture
def indexed(built) -> Path:
    """The session's index of the three good tracks (read only: suggest never writes it)."""
    return built[1]


@pytest.fixture
def index_copy(indexed_music) -> Path:
    return indexed_music[1]


def clip(media_src, i: int = 0) -> Path:
    return media_src / "clips" / f"clip{i}.mp4"


def suggest_cli(capsys, *args):
    return run_cli(capsys, "suggest", *args, "--device", "cpu")


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_output_schema_and_exact_length_cuts(capsys, media_src, indexed):
    result = suggest_cli(capsys, clip(media_src), "--index", indexed, "--untrained", "--json", "--top", "2")
    assert result.code == 0, result.err
    [obj] = json_lines(result.out)
    assert obj["video"] == str(clip(media_src).resolve())
    assert obj["duration"] == pytest.approx(CLIP_SECONDS[0], abs=0.05)
    assert obj["untrained"] is True and obj["encoders"] == "tiny" and obj["notes"]
    durations = {r["path"]: r["duration"] for r in db_rows(indexed)}
    suggestions = obj["suggestions"]
    assert [s["rank"] for s in suggestions] == [1, 2]
    assert suggestions[0]["score"] >= suggestions[1]["score"]
    for s in suggestions:
        assert SUGGESTION_KEYS <= set(s)
        track_duration = durations[s["track"]]
        assert s["track_duration"] == pytest.approx(track_duration)
        assert abs((s["end"] - s["start"]) - obj["duration"]) < 1e-3  # as long as the video
        assert 0.0 <= s["start"] and s["end"] <= track_duration + 1e-6  # inside the track
        assert 0.0 <= s["predicted_start"] <= s["predicted_end"] <= track_duration + 1e-6
        centre = (s["predicted_start"] + s["predicted_end"]) / 2
        if obj["duration"] / 2 <= centre <= track_duration - obj["duration"] / 2:
            assert (s["start"] + s["end"]) / 2 == pytest.approx(centre, abs=1e-3)  # centred when it fits
        assert -2.0 <= s["score"] <= 2.0

    everything = suggest_cli(capsys, clip(media_src), "--index", indexed, "--untrained", "--json", "--top", "10")
    [obj_all] = json_lines(everything.out)
    assert len(obj_all["suggestions"]) == len(TRACKS)  # K capped at the index size
    scores = [s["score"] for s in obj_all["suggestions"]]
    assert scores == sorted(scores, reverse=True)
    assert obj_all["suggestions"][:2] == suggestions  # the same ranking whatever K


def test_table_output_names_tracks_and_says_untrained(capsys, media_src, indexed):
    result = suggest_cli(capsys, clip(media_src), "--index", indexed, "--untrained")
    assert result.code == 0, result.err
    assert "clip0.mp4" in result.out and "Synth A - Alpha" in result.out and "01-alpha.wav" in result.out
    assert "untrained model" in result.out and "tiny random encoders" in result.out


def test_without_checkpoint_says_how_to_get_one(capsys, media_src, indexed):
    result = suggest_cli(capsys, clip(media_src), "--index", indexed)
    assert result.code == CheckpointError.exit_code
    assert "mgsv train" in result.err and "--untrained" in result.err and "Traceback" not in result.err


def test_missing_or_empty_index_tells_to_run_index(capsys, media_src, tmp_path):
    missing = suggest_cli(capsys, clip(media_src), "--index", tmp_path / "none.sqlite", "--untrained")
    assert missing.code == IndexDatabaseError.exit_code and "mgsv index MUSIC_DIR" in missing.err

    empty_dir = tmp_path / "no_music"
    empty_dir.mkdir()
    refused = run_cli(capsys, "index", empty_dir, "--index", tmp_path / "empty.sqlite", "--encoders", "tiny")
    assert refused.code == 2 and "no audio files" in refused.err  # a mistyped folder, most likely
    # An index can still end up empty: every file of the library gone, and pruned.
    made = run_cli(capsys, "index", empty_dir, "--index", tmp_path / "empty.sqlite", "--encoders", "tiny", "--prune")
    assert made.code == 0, made.err
    empty = suggest_cli(capsys, clip(media_src), "--index", tmp_path / "empty.sqlite", "--untrained")
    assert empty.code == IndexDatabaseError.exit_code
    assert "empty" in empty.err and "mgsv index MUSIC_DIR" in empty.err


def test_index_encoders_must_match(capsys, media_src, indexed):
    result = suggest_cli(capsys, clip(media_src), "--index", indexed, "--untrained", "--encoders", "pretrained",
                         "--offline")
    assert result.code == IndexDatabaseError.exit_code
    assert "built with encoders" in result.err and "--encoders tiny" in result.err


def test_derived_rows_are_reused_then_updated_by_index_changes(capsys, monkeypatch, media_src, index_copy,
                                                                tiny_encoders):
    """The model's rows of the tracks are computed once per checkpoint and index, kept beside the
    index, and after the index changes only the new tracks are encoded."""
    from mgsv_cli.index.pipeline import import_tokens
    from mgsv_cli.index.records import NewTrack
    from mgsv_cli.models.made import MaDe

    real_encode_music = MaDe.encode_music
    counter = CallCounter(None)

    def counting_encode_music(self, windows, window_mask, **options):
        counter.calls.append(int(windows.shape[0]))
        return real_encode_music(self, windows, window_mask, **options)

    monkeypatch.setattr(MaDe, "encode_music", counting_encode_music)
    args = (clip(media_src), "--index", index_copy, "--untrained", "--json", "--top", "2")

    first = suggest_cli(capsys, *args)
    assert first.code == 0, first.err
    assert counter.calls == [3, 2]  # every track once (then kept), the top 2 for their moments
    cache_files = list((paths.cache_dir() / "track_derived").glob("*.sqlite"))
    assert len(cache_files) == 1

    counter.calls.clear()
    second = suggest_cli(capsys, *args)
    assert second.code == 0 and counter.calls == [2]  # only the moments: the rows were kept
    assert json_lines(second.out) == json_lines(first.out)  # scored from the same stored rows

    rng = np.random.default_rng(0)
    extra_file = index_copy.parent / "elsewhere" / "extra.mp3"  # suggest passes over tracks whose file is gone
    extra_file.parent.mkdir()
    extra_file.write_bytes(b"only its tokens are imported")
    extra = NewTrack(str(extra_file), "", 240.0, rng.standard_normal((96, tiny_encoders.music_dim)),
                     np.ones(96, bool), tiny_encoders.encoder_id)
    import_tokens(index_copy, [extra])
    counter.calls.clear()
    third = suggest_cli(capsys, *args)
    assert third.code == 0 and counter.calls == [1, 2]  # the index changed: only the new track is encoded
    assert list((paths.cache_dir() / "track_derived").glob("*.sqlite")) == cache_files  # the same cache

    cache_files[0].unlink()  # rows computed from scratch must give the same answer as the updated ones
    counter.calls.clear()
    fresh = suggest_cli(capsys, *args, "--top", "4")
    assert fresh.code == 0 and counter.calls == [4, 4]
    [patched], [rebuilt] = json_lines(third.out), json_lines(fresh.out)
    # Encoded in batches of 3 + 1 or of 4: the same rows but for float32 rounding in the network,
    # which the float16 keys mostly absorb.
    assert json_close(rebuilt["suggestions"][:2], patched["suggestions"], 1e-3)
    assert str(extra_file) in [s["track"] for s in rebuilt["suggestions"]]


def test_batch_loads_models_once_and_skips_bad_files(capsys, monkeypatch, media_src, indexed, tiny_encoders):
    import mgsv_cli.features.encoders as features
    import mgsv_cli.models.checkpoint as checkpoint

    encoder_loads = CallCounter(lambda *a, **k: tiny_encoders)
    model_builds = CallCounter(checkpoint.build_untrained)
    monkeypatch.setattr(features, "load_encoders", encoder_loads)
    monkeypatch.setattr(checkpoint, "build_untrained", model_builds)

    result = suggest_cli(capsys, media_src / "clips", media_src / "missing.mp4", "--index", indexed,
                         "--untrained", "--json")
    assert result.code == 1
    lines = json_lines(result.out)
    videos = [obj["video"] for obj in lines if obj["ok"]]
    assert videos == [str(clip(media_src, 0).resolve()), str(clip(media_src, 1).resolve())]
    failed = {Path(obj["video"]).name: obj for obj in lines if not obj["ok"]}
    assert sorted(failed) == ["corrupt.mp4", "missing.mp4"]  # --json says which videos failed, and why
    assert all(obj["error"] and set(obj) == {"video", "ok", "error"} for obj in failed.values())
    assert "corrupt.mp4" in result.err and "missing.mp4" in result.err
    assert "suggested music for 2 of 4 video(s), 2 failed" in result.err
    assert len(encoder_loads.calls) == 1 and len(model_builds.calls) == 1


def test_single_bad_video_fails_with_its_own_error(capsys, media_src, indexed):
    from mgsv_cli.errors import MediaError

    result = suggest_cli(capsys, media_src / "clips" / "corrupt.mp4", "--index", indexed, "--untrained")
    assert result.code == MediaError.exit_code
    assert "corrupt.mp4" in result.err and "Traceback" not in result.err and result.out == ""


def test_last_suggestion_is_remembered_for_render(capsys, media_src, indexed, tmp_path):
    from mgsv_cli.editor.record import load_last_suggestion

    video = Path(shutil.copy2(clip(media_src, 1), tmp_path / "mine.mp4"))
    with pytest.raises(UsageError, match="no suggestion remembered .* run `mgsv suggest"):
        load_last_suggestion(video)
    result = suggest_cli(capsys, video, "--index", indexed, "--untrained", "--json", "--top", "3")
    [printed] = json_lines(result.out)
    assert printed.pop("ok") is True
    remembered = load_last_suggestion(video)
    assert remembered.to_json() == printed  # the typed record round-trips what suggest printed
    assert load_last_suggestion(tmp_path / "." / "mine.mp4").video == str(video.resolve())  # any spelling

    with open(video, "ab") as handle:
        handle.write(b"\0" * 16)  # the video changed: its remembered cut may no longer fit
    with pytest.raises(UsageError, match="changed since"):
        load_last_suggestion(video)


def _save_run(run_dir: Path, video_dim: int, music_dim: int) -> str:
    from mgsv_cli.models.checkpoint import save_checkpoint
    from mgsv_cli.models.made import MaDe
    from mgsv_cli.models.variants import load_config

    variant = load_config("tiny")
    variant = dataclasses.replace(variant, model=dataclasses.replace(variant.model, video_dim=video_dim,
                                                                     music_dim=music_dim))
    torch.manual_seed(3)
    return save_checkpoint(run_dir, MaDe(variant.model), variant, {"note": "test run"})


def test_trained_checkpoint_is_used_and_dims_are_checked(capsys, media_src, indexed, tiny_encoders, tmp_path):
    checkpoint_id = _save_run(paths.runs_dir() / "run1", tiny_encoders.video_dim, tiny_encoders.music_dim)
    result = suggest_cli(capsys, clip(media_src), "--index", indexed, "--json")  # latest run by default
    assert result.code == 0, result.err
    [obj] = json_lines(result.out)
    assert obj["untrained"] is False and obj["checkpoint"] == checkpoint_id and len(obj["suggestions"]) == 3

    _save_run(tmp_path / "wrong", tiny_encoders.video_dim + 8, tiny_encoders.music_dim)
    wrong = suggest_cli(capsys, clip(media_src), "--index", indexed, "--checkpoint", tmp_path / "wrong")
    assert wrong.code == CheckpointError.exit_code
    assert f"{tiny_encoders.video_dim + 8}" in wrong.err and "encoders" in wrong.err

    both = suggest_cli(capsys, clip(media_src), "--index", indexed, "--checkpoint", tmp_path / "wrong",
                       "--untrained")
    assert both.code == UsageError.exit_code


def test_suggest_videos_checks_inputs_then_answers_each(media_src, indexed, tiny_encoders):
    from mgsv_cli.editor.record import load_last_suggestion
    from mgsv_cli.editor.requests import SuggestRequest
    from mgsv_cli.editor.suggest import suggest_videos

    request = SuggestRequest(top=1, index=str(indexed), untrained=True, device="cpu")
    outcomes = list(suggest_videos([clip(media_src, 1), media_src / "nope.mp4"], request,
                                   encoders_obj=tiny_encoders))
    missing, answered = outcomes  # the refused input comes first, before anything loads
    assert missing.video == str(media_src / "nope.mp4") and missing.result is None
    assert missing.error == "no such file or folder" and missing.exit_code == 2
    assert answered.video == str(clip(media_src, 1).resolve()) and answered.error is None
    assert len(answered.result.suggestions) == 1
    assert answered.result.duration == pytest.approx(CLIP_SECONDS[1], abs=0.05)
    assert load_last_suggestion(clip(media_src, 1)).to_json()["suggestions"] == answered.result.to_json()["suggestions"]


def test_results_equal_a_direct_model_computation(media_src, indexed, tiny_encoders):
    """Stored rows and length buckets must not change what MaDe says (float32 keys in an SQLite index)."""
    from mgsv_cli.editor.suggest import Suggester
    from mgsv_cli.models.checkpoint import build_untrained

    with Suggester.open(index_path=indexed, untrained=True, device="cpu", encoders_obj=tiny_encoders) as s:
        result = s.suggest_video(clip(media_src), top_k=3)
        tracks = s.tracks
    model, _ = build_untrained(video_dim=tiny_encoders.video_dim, music_dim=tiny_encoders.music_dim, seed=0)
    video = tiny_encoders.embed_video(clip(media_src))
    with open_store(indexed) as index, torch.inference_mode():
        _, feats, mask = next(index.iter_tokens())
        music = model.encode_music(torch.from_numpy(feats), torch.from_numpy(mask))
        vt = model.encode_video(torch.as_tensor(video.feats)[None].float(), torch.as_tensor(video.mask)[None])
        scores = model.score_pairs(vt, music)[:, 0]
        order = torch.argsort(scores, descending=True)
        spans = model.detect(vt.repeat(3), music.take(order))
        durations = torch.tensor([tracks[i].duration for i in order.tolist()])
        seconds = model.spans_to_seconds(spans, durations)
    assert [s.track for s in result.suggestions] == [tracks[i].path for i in order.tolist()]
    np.testing.assert_allclose([s.score for s in result.suggestions], scores[order].numpy(), atol=1e-5)
    np.testing.assert_allclose([[s.predicted_start, s.predicted_end] for s in result.suggestions],
                               seconds.numpy(), atol=1e-3)


def test_a_querybank_checkpoint_ranks_with_its_offsets_cold_and_cached(media_src, indexed, tiny_encoders, tmp_path):
    """made-plus querybank normalisation: the stored rows keep each track's offset, and the
    suggestions score exactly as the model does with them."""
    import sqlite3

    from mgsv_cli.editor.suggest import Suggester
    from mgsv_cli.models.checkpoint import save_checkpoint
    from mgsv_cli.models.made import MaDe
    from mgsv_cli.models.variants import load_config

    variant = load_config("tiny-plus")
    variant = dataclasses.replace(variant, model=dataclasses.replace(
        variant.model, video_dim=tiny_encoders.video_dim, music_dim=tiny_encoders.music_dim, querybank_size=8))
    torch.manual_seed(4)
    model = MaDe(variant.model).eval()
    model.set_querybank(torch.randn(8, variant.model.d_model))
    save_checkpoint(tmp_path / "qb", model, variant, {})
    video = tiny_encoders.embed_video(clip(media_src))
    with open_store(indexed) as index, torch.inference_mode():
        _, feats, mask = next(index.iter_tokens())
        vt = model.encode_video(torch.as_tensor(video.feats)[None].float(), torch.as_tensor(video.mask)[None])
        music = model.encode_music(torch.from_numpy(feats), torch.from_numpy(mask), for_search=True)
        expected = model.score_pairs(vt, music)[:, 0]
    assert music.offsets is not None and music.offsets.abs().min() > 0
    runs = []
    for _ in range(2):  # cold (the rows are written), then from the stored rows
        with Suggester.open(index_path=indexed, checkpoint=tmp_path / "qb", device="cpu",
                            encoders_obj=tiny_encoders) as s:
            runs.append(s.suggest_video(clip(media_src), top_k=3))
            tracks = s.tracks
    order = torch.argsort(expected, descending=True)
    for result in runs:
        assert [s.track for s in result.suggestions] == [tracks[i].path for i in order.tolist()]
        np.testing.assert_allclose([s.score for s in result.suggestions], expected[order].numpy(), atol=1e-5)
    [cache_file] = [f for f in (paths.cache_dir() / "track_derived").glob("*.sqlite")]
    with sqlite3.connect(cache_file) as conn:
        assert conn.execute("SELECT count(*) FROM derived WHERE offset IS NOT NULL").fetchone()[0] == len(TRACKS)


def test_length_buckets_score_exactly_like_full_tokens():
    from mgsv_cli.models.checkpoint import build_untrained
    from mgsv_cli.retrieval.keys import ResidentKeys

    model, _ = build_untrained(video_dim=32, music_dim=24, config="tiny", seed=1)
    gen = torch.Generator().manual_seed(0)
    lengths = torch.tensor([1, 5, 24, 25, 60, 96, 40, 3])
    mask = torch.arange(96)[None] < lengths[:, None]
    windows = torch.randn(len(lengths), 96, 24, generator=gen) * mask[..., None]
    with torch.inference_mode():
        music = model.encode_music(windows, mask.float())
        video = model.encode_video(torch.randn(1, 50, 32, generator=gen), torch.ones(1, 50))
        full = model.score_pairs(video, music)[:, 0]
        bucketed = ResidentKeys.from_full(music.keys, music.pooled, music.mask).score(model, video)
        # Score offsets (a made-plus querybank) follow their tracks into the buckets and back.
        offsets = torch.randn(len(lengths), generator=gen)
        with_offsets = ResidentKeys.from_full(music.keys, music.pooled, music.mask, offsets)
        torch.testing.assert_close(with_offsets.score(model, video), full - offsets, atol=1e-5, rtol=1e-5)
        assert torch.equal(with_offsets.to_full(96)[3], offsets) and with_offsets.has_offsets
    assert len(ResidentKeys.from_full(music.keys, music.pooled, music.mask).buckets) == 4
    torch.testing.assert_close(bucketed, full, atol=1e-5, rtol=1e-5)


def test_a_batch_of_videos_scored_in_blocks_of_tracks_matches_one_score_pairs_call():
    """``mgsv eval`` ranks through ``ResidentKeys.score_videos``: blocks of tracks inside each length
    bucket must not change a score (tolerance 1e-5: block sizes change the summation order)."""
    from mgsv_cli.models.checkpoint import build_untrained
    from mgsv_cli.retrieval.keys import ResidentKeys

    model, _ = build_untrained(video_dim=32, music_dim=24, config="tiny", seed=2)
    gen = torch.Generator().manual_seed(1)
    lengths = torch.tensor([2, 7, 30, 31, 33, 80, 96, 12, 50])
    mask = torch.arange(96)[None] < lengths[:, None]
    windows = torch.randn(len(lengths), 96, 24, generator=gen) * mask[..., None]
    with torch.inference_mode():
        music = model.encode_music(windows, mask.float(), for_search=True)
        videos = model.encode_video(torch.randn(3, 50, 32, generator=gen), torch.ones(3, 50))
        expected = model.score_pairs(videos, music).t()  # [videos, tracks]
        resident = ResidentKeys.from_full(music.keys, music.pooled, music.mask, music.offsets)
        for block in (None, 1, 2, 100):
            scores = resident.score_videos(model, videos, block=block)
            assert scores.shape == (3, len(lengths))
            torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)


def test_expand_video_inputs(media_src, tmp_path):
    from mgsv_cli.editor.outputs import expand_video_inputs

    folder = tmp_path / "videos"
    (folder / "nested").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    for name in ("a.MP4", "nested/b.mov", ".hidden/c.mp4", "a.mgsv.mp4", "notes.txt"):
        (folder / name).write_bytes(b"x")
    explicit = tmp_path / "odd.name"
    explicit.write_bytes(b"x")
    found, problems = expand_video_inputs([folder, explicit, tmp_path / "gone.mp4", folder / "a.MP4"])
    assert found == [(folder / "a.MP4").resolve(), (folder / "nested" / "b.mov").resolve(), explicit.resolve()]
    assert problems == [(str(tmp_path / "gone.mp4"), "no such file or folder")]


def test_json_carries_relevance_per_window_and_explain_draws_it(capsys, media_src, indexed):
    result = suggest_cli(capsys, clip(media_src), "--index", indexed, "--untrained", "--json", "--top", "2")
    assert result.code == 0, result.err
    [obj] = json_lines(result.out)
    for s in obj["suggestions"]:
        relevance = s["relevance"]
        assert len(relevance) == int(s["track_duration"] // 2.5) + 1  # one value per valid 2.5 s window
        assert max(relevance) == pytest.approx(1.0) and min(relevance) >= 0.0
    explained = suggest_cli(capsys, clip(media_src), "--index", indexed, "--untrained", "--top", "2", "--explain")
    assert explained.code == 0, explained.err
    strips = [line for line in explained.out.splitlines() if "[" in line and "]" in line and "█" in line]
    assert len(strips) == 2


def test_relevance_strip_marks_the_cut_and_scales_blocks():
    from mgsv_cli.editor.explain import relevance_strip

    strip = relevance_strip([0.0, 0.5, 1.0, 0.25], start=2.5, end=7.5, width=4)
    assert strip == " [▄█]▂"
    assert relevance_strip([], 0.0, 1.0) == ""
    assert len(relevance_strip([1.0] * 96, 0.0, 20.0, width=48)) == 48 + 2
