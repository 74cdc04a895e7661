"""The one search path (retrieval/search.py) on both stores: exactness, the rerank's scores,
derived rows, the first stage against numpy, and Lance's IVF-PQ index."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mgsv_cli.errors import UsageError
from mgsv_cli.index.backend import open_store
from mgsv_cli.index.records import NewTrack
from mgsv_cli.retrieval.derived import update_derived
from mgsv_cli.retrieval.first_stage import FirstStage
from mgsv_cli.retrieval.search import Retriever, rerank_ids

N_TRACKS = 40
MUSIC_DIM = 768


def tiny_made(seed: int = 0):
    from mgsv_cli.models.made import MaDe
    from mgsv_cli.models.variants import load_config

    torch.manual_seed(seed)
    return MaDe(dataclasses.replace(load_config("tiny").model, music_dim=MUSIC_DIM)).eval()


def new_track(i: int) -> NewTrack:
    """Track ``i``: 4-96 valid windows of random tokens around a per-track direction."""
    rng = np.random.default_rng(i)
    n = 4 + (i * 7) % 93
    tokens = np.zeros((96, MUSIC_DIM), np.float32)
    tokens[:n] = rng.standard_normal(MUSIC_DIM) + 0.7 * rng.standard_normal((n, MUSIC_DIM))
    return NewTrack(f"/music/{i}.wav", f"{i:032x}", 2.5 * n, tokens, np.arange(96) < n, "tiny-test",
                    {"title": f"T{i}"})


def fill(store, numbers) -> None:
    assert store.add_tracks([new_track(i) for i in numbers]) == len(list(numbers))


@pytest.fixture(params=["sqlite", "lance", "lance-int8"])
def store(request, tmp_path):
    uri = tmp_path / ("lib.sqlite" if request.param == "sqlite" else "lib.lance")
    store = open_store(str(uri), create=True, key_encoding="int8" if request.param == "lance-int8" else None)
    fill(store, range(N_TRACKS))
    yield store
    store.close()


def video_of(model, seed: int):
    frames = torch.randn(1, 50, model.cfg.video_dim, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return model.encode_video(frames, torch.arange(50)[None] < 10 + seed % 40)


def direct_scores(model, video, store, ids):
    """The model's relevance straight from the stored AST tokens (no derived rows)."""
    tokens, mask = store.tokens_for(list(ids))
    with torch.inference_mode():
        music = model.encode_music(torch.from_numpy(tokens), torch.from_numpy(mask), for_search=True)
        return model.score_pairs(video, music)[:, 0].numpy()


def exhaustive(model, video, store, fp):
    """Every track scored by the model from its stored derived rows, best first (the rows read per query)."""
    ids, _ = store.ids_and_durations()
    return rerank_ids(model, video, store, fp, ids)


def banked_made(seed: int = 0):
    """tiny with a made-plus querybank of 16 random video vectors: its scores have per-track offsets."""
    from mgsv_cli.models.made import MaDe
    from mgsv_cli.models.variants import load_config

    torch.manual_seed(seed)
    model = MaDe(dataclasses.replace(load_config("tiny").model, music_dim=MUSIC_DIM, querybank_size=16)).eval()
    model.set_querybank(torch.randn(16, model.cfg.d_model) * 3)
    return model


def test_a_querybank_models_offsets_live_in_the_derived_rows_and_reach_the_rerank(store):
    model, fp = banked_made(), "banked0"
    assert update_derived(store, model, fp) == N_TRACKS
    ids = store.ids_and_durations()[0].tolist()
    rows = store.derived_for(fp, ids)
    tokens, mask = store.tokens_for(ids)
    with torch.inference_mode():
        offsets = model.encode_music(torch.from_numpy(tokens), torch.from_numpy(mask), for_search=True).offsets
    assert rows.offsets.shape == (N_TRACKS,) and offsets.std() > 0.01  # the tracks differ: ranking changes
    np.testing.assert_allclose(rows.offsets, offsets.numpy(), atol=2e-3)  # from fp16 (int8) keys
    resident = Retriever.open(store, model, fp, rerank=N_TRACKS)  # the offsets also reach keys held in memory
    assert resident.resident is not None and resident.resident.has_offsets
    for seed in range(2):
        video = video_of(model, seed)
        full = exhaustive(model, video, store, fp)
        np.testing.assert_allclose(full.scores, direct_scores(model, video, store, full.track_ids), atol=3e-3)
        found = resident.search(video, top_k=3)
        assert found.top_ids.tolist() == full.track_ids[:3].tolist()
        np.testing.assert_allclose(found.scores, full.scores[:3], atol=1e-5)  # two code paths: float sums only
    # Beside it, a plain model's rows of the same tracks have none.
    update_derived(store, tiny_made(), "tiny0")
    assert store.derived_for("tiny0", ids[:3]).offsets is None
    if store.uri.endswith(".lance"):
        from mgsv_cli.errors import DataError
        from mgsv_cli.index import lance_store

        meta = store.derived_dataset(fp).schema.metadata
        assert meta[b"mgsv_store_format"] == b"4" and lance_store._has_offsets(store.derived_dataset(fp))
        assert not lance_store._has_offsets(store.derived_dataset("tiny0"))
        with pytest.raises(DataError, match="score offsets"):
            store.put_derived(fp, dataclasses.replace(rows, offsets=None))


def test_a_derived_cache_from_before_score_offsets_still_reads(tmp_path):
    import sqlite3

    store = open_store(str(tmp_path / "lib.sqlite"), create=True)
    fill(store, range(5))
    model = tiny_made()
    update_derived(store, model, "old")
    path = store._derived_path("old")
    with sqlite3.connect(path) as conn:  # the schema of mgsv before score offsets
        conn.execute("ALTER TABLE derived DROP COLUMN offset")
    assert store.derived_missing("old") == []  # its rows stay current
    ids = store.pooled_matrix("old")[0].tolist()
    assert store.derived_for("old", ids).offsets is None
    video = video_of(model, 0)
    np.testing.assert_allclose(exhaustive(model, video, store, "old").scores,
                               np.sort(direct_scores(model, video, store, ids))[::-1], atol=2e-3)
    store.close()


def test_rerank_of_the_whole_catalog_is_exhaustive_scoring_exactly(store):
    model = tiny_made()
    fp = "tiny0"
    assert update_derived(store, model, fp) == N_TRACKS
    stage = FirstStage.build(store, fp)
    assert stage.kind == "exact" and len(stage) == N_TRACKS
    # A catalog of at most the rerank size is scored whole from keys held in memory; asked for
    # the exact first stage, the same catalog's candidates are read from the store per query.
    whole = Retriever.open(store, model, fp, rerank=N_TRACKS)
    per_query = Retriever.open(store, model, fp, rerank=N_TRACKS, first_stage="exact")
    assert (whole.first_stage.kind, per_query.first_stage.kind) == ("all", "exact")
    assert whole.resident is not None and per_query.resident is None
    for seed in range(3):
        video = video_of(model, seed)
        full = exhaustive(model, video, store, fp)
        for retriever in (whole, per_query):
            found = retriever.search(video, top_k=5)
            np.testing.assert_array_equal(found.candidates.track_ids, full.track_ids)
            # The same rows; the resident keys are bucketed by their longest track, the per-query
            # ones by the bucket's edge (padding is exact to drop), and MKL's float32 sums may change
            # in their last bits with the shapes and the threads a loaded machine gives them.
            np.testing.assert_allclose(found.candidates.scores, full.scores, rtol=0, atol=1e-5)
            assert found.top_ids.tolist() == full.track_ids[:5].tolist()
            assert found.predicted.shape == (5, 2) and (found.predicted[:, 1] <= found.durations + 1e-9).all()
            assert found.relevance.shape[0] == 5 and np.isclose(found.relevance.max(1), 1.0).all()
        # The derived rows (float32 keys in SQLite, float16 or int8 in Lance) score as the model does
        # from the tokens themselves.
        np.testing.assert_allclose(full.scores, direct_scores(model, video, store, full.track_ids), atol=2e-3)
        # Tracks not allowed are never returned, and the others keep their scores.
        allowed = np.arange(N_TRACKS) % 3 != 0
        kept = whole.rank(video, allowed)
        assert set(kept.track_ids.tolist()) == set(whole.ids[allowed].tolist())
        score_of = dict(zip(full.track_ids.tolist(), full.scores.tolist()))
        np.testing.assert_allclose(kept.scores, [score_of[i] for i in kept.track_ids.tolist()], atol=1e-5)


def test_a_smaller_rerank_keeps_the_first_stage_top_n_with_their_exact_scores(store):
    model = tiny_made()
    fp = "tiny0"
    update_derived(store, model, fp)
    stage = FirstStage.build(store, fp)
    ids, pooled = store.pooled_matrix(fp)
    video = video_of(model, 5)
    v = video.pooled[0].numpy()
    cos = (np.asarray(pooled) @ v) / np.linalg.norm(pooled, axis=1) / np.linalg.norm(v)
    top_ids, top_cos = stage.top(v, 10)
    assert set(top_ids.tolist()) == set(np.asarray(ids)[np.argsort(-cos)[:10]].tolist())
    np.testing.assert_allclose(top_cos, np.sort(cos)[::-1][:10], rtol=1e-5)

    full = exhaustive(model, video, store, fp)
    retriever = Retriever.open(store, model, fp, rerank=10)
    assert retriever.first_stage.kind == "exact" and retriever.resident is None  # more tracks than the rerank
    found = retriever.search(video, top_k=3)
    assert set(found.candidates.track_ids.tolist()) == set(top_ids.tolist())
    np.testing.assert_allclose(found.candidates.first_stage, top_cos[[top_ids.tolist().index(i) for i in
                                                                      found.candidates.track_ids.tolist()]],
                               rtol=1e-5)
    score_of = dict(zip(full.track_ids.tolist(), full.scores.tolist()))
    # The model's full score of each candidate (batched with other tracks: float rounding only).
    np.testing.assert_allclose(found.candidates.scores, [score_of[i] for i in found.candidates.track_ids.tolist()],
                               rtol=1e-6, atol=1e-7)
    assert (np.diff(found.candidates.scores) <= 0).all()

    allowed = np.zeros(len(stage), bool)
    allowed[::3] = True
    kept, _ = stage.top(v, 100, allowed)
    assert len(kept) == allowed.sum() and set(kept.tolist()) == set(np.asarray(ids)[allowed].tolist())
    with pytest.raises(UsageError):
        Retriever.open(store, model, fp, rerank=0)
    with pytest.raises(UsageError):
        retriever.search(video, top_k=0)


def test_update_derived_encodes_only_new_tracks(store):
    model = tiny_made()
    fp = "tiny0"
    encoded: list[int] = []
    encode = model.encode_music

    def counting(windows, mask, **options):
        encoded.append(int(windows.shape[0]))
        return encode(windows, mask, **options)

    model.encode_music = counting
    assert update_derived(store, model, fp, batch_size=16) == N_TRACKS
    assert sum(encoded) == N_TRACKS and max(encoded) <= 16
    encoded.clear()
    assert update_derived(store, model, fp) == 0 and encoded == []
    fill(store, range(N_TRACKS, N_TRACKS + 3))
    assert update_derived(store, model, fp) == 3 and encoded == [3]
    assert len(FirstStage.build(store, fp)) == N_TRACKS + 3
    other = tiny_made(seed=1)  # another checkpoint: its own rows, all of them
    assert update_derived(store, other, "tiny1") == N_TRACKS + 3


def test_ivf_pq_first_stage_finds_the_exact_top_tracks(tmp_path):
    pytest.importorskip("lance")
    store = open_store(str(tmp_path / "big.lance"), create=True)
    fill(store, range(300))  # PQ trains 256 centroids per sub-vector
    model = tiny_made()
    update_derived(store, model, "tiny0", batch_size=300)
    exact = FirstStage.build(store, "tiny0", kind="exact")
    ivf = FirstStage.build(store, "tiny0", kind="ivf_pq", nprobes=64, refine_factor=10)
    assert ivf.kind == "ivf_pq"
    import lance

    version = lance.dataset(store._derived_uri("tiny0")).version
    again = FirstStage.build(store, "tiny0", kind="auto", ivf_min_tracks=100)
    assert again.kind == "ivf_pq" and lance.dataset(store._derived_uri("tiny0")).version == version  # index reused
    hits = 0
    for seed in range(5):
        v = video_of(model, seed).pooled[0].numpy()
        hits += len(set(exact.top(v, 10)[0].tolist()) & set(ivf.top(v, 10)[0].tolist()))
        allowed = np.arange(len(exact)) % 2 == 0
        assert set(ivf.top(v, 10, allowed)[0].tolist()) <= set(exact.ids[allowed].tolist())
    assert hits >= 45  # all 16 partitions probed and the PQ scores refined: (nearly) exact
    sqlite = open_store(str(tmp_path / "lib.sqlite"), create=True)
    fill(sqlite, range(3))
    update_derived(sqlite, model, "tiny0")
    with pytest.raises(UsageError, match="Lance"):
        FirstStage.build(sqlite, "tiny0", kind="ivf_pq")


def test_the_bfloat16_first_stage_keeps_nearly_the_same_candidates(store):
    model = tiny_made()
    update_derived(store, model, "tiny0")
    exact = FirstStage.build(store, "tiny0")
    half = FirstStage.build(store, "tiny0", bf16_min_tracks=1)
    assert exact.unit is None and half.unit is not None and half.pooled is None
    for seed in range(4):
        video = video_of(model, seed)
        v = video.pooled[0].numpy()
        ids_a, cos_a = exact.top(v, N_TRACKS)
        ids_b, cos_b = half.top(v, N_TRACKS)
        np.testing.assert_allclose(cos_b, cos_a, atol=1e-2)  # bf16 rows and query, float32 sums
        assert len(set(ids_a[:10].tolist()) & set(ids_b[:10].tolist())) >= 8
        # The rerank scores exactly whatever the first stage's precision.
        full = exhaustive(model, video, store, "tiny0")
        found = Retriever(model, store, "tiny0", half, None, N_TRACKS).search(video, top_k=3)
        np.testing.assert_array_equal(found.candidates.track_ids, full.track_ids)
        # The same rows through the same code (score_ids): MKL's float32 sums may still change in
        # their last bits with the threads a loaded machine gives them.
        np.testing.assert_allclose(found.candidates.scores, full.scores, rtol=0, atol=1e-6)


def test_a_model_that_scores_with_pooled_vectors_only_is_searched_the_same_way(store):
    from mgsv_cli.models.real import Real
    from mgsv_cli.models.variants import load_config

    torch.manual_seed(0)
    model = Real(load_config("real-tiny").model).eval()  # ReAL: relevance = cos(v, h0) alone
    update_derived(store, model, "real0")
    stage = FirstStage.build(store, "real0")
    video = video_of(model, 2)
    found = Retriever.open(store, model, "real0", rerank=12).search(video, top_k=3)
    first_ids, first_cos = stage.top(video.pooled[0].numpy(), 12)
    # The rerank recomputes the same cosine: the first stage's order stands.
    np.testing.assert_allclose(found.candidates.scores, first_cos, atol=1e-5)
    assert found.predicted.shape == (3, 2) and (found.predicted[:, 1] <= found.durations + 1e-9).all()
