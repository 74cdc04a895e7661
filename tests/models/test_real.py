"""ReAL (models/real.py): MaDe's inference interface, its losses, Hungarian matching, checkpoints."""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from mgsv_cli.errors import CheckpointError
from mgsv_cli.models.checkpoint import build_untrained, load_model, save_checkpoint
from mgsv_cli.models.losses import symmetric_info_nce
from mgsv_cli.models.real import Real
from mgsv_cli.models.real_losses import (
    hungarian,
    localisation_loss,
    match_queries,
    matching_cost,
    multi_positive_info_nce,
    same_track_positives,
)
from mgsv_cli.models.variants import load_config


def tiny_real(seed: int = 0) -> Real:
    torch.manual_seed(seed)
    return Real(load_config("real-tiny").model).eval()


def inputs(n: int, n_frames: list[int], n_windows: list[int], seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    frames, windows = torch.randn(n, 50, 512, generator=g), torch.randn(n, 96, 768, generator=g)
    frame_mask = torch.arange(50)[None] < torch.tensor(n_frames)[:, None]
    window_mask = torch.arange(96)[None] < torch.tensor(n_windows)[:, None]
    return frames, frame_mask, windows, window_mask


# ----------------------------------------------------------------------------- losses


@pytest.mark.parametrize("n_queries, n_targets", [(2, 1), (3, 2), (4, 4), (5, 3), (6, 2)])
def test_hungarian_matches_brute_force(n_queries, n_targets):
    rng = np.random.default_rng(n_queries * 10 + n_targets)
    for _ in range(20):
        cost = rng.normal(size=(n_queries, n_targets))
        rows, cols = hungarian(cost)
        assert sorted(cols.tolist()) == list(range(n_targets)) and len(set(rows.tolist())) == n_targets
        best = min(sum(cost[q, t] for q, t in zip(chosen, range(n_targets)))
                   for chosen in itertools.permutations(range(n_queries), n_targets))
        assert cost[rows, cols].sum() == pytest.approx(best)


def test_matched_query_is_the_cheapest_one_for_a_single_moment():
    torch.manual_seed(0)
    spans, logits = torch.rand(6, 5, 2), torch.randn(6, 5, 2)
    cost = matching_cost(spans, logits, torch.rand(6, 2), 10.0, 1.0, 4.0)
    assert torch.equal(match_queries(cost), cost.argmin(1))


def test_same_track_positives_mask():
    track_ids = torch.tensor([4, 1, 4, 2, 1])
    mask = same_track_positives(track_ids)
    expected = [[track_ids[i] == track_ids[j] for j in range(5)] for i in range(5)]
    assert mask.tolist() == [[bool(x) for x in row] for row in expected]
    assert mask.diagonal().all() and mask.sum() == 5 + 2 * 2  # two pairs share a track


def test_multi_positive_info_nce_by_hand():
    torch.manual_seed(0)
    sim, log_scale = torch.rand(4, 4) * 2 - 1, torch.tensor(2.0)
    positives = same_track_positives(torch.tensor([0, 1, 0, 2]))
    logits = sim * log_scale.exp()
    m2v = -torch.stack([torch.log(logits[i].exp()[positives[i]].sum() / logits[i].exp().sum()) for i in range(4)])
    v2m = -torch.stack([torch.log(logits[:, j].exp()[positives[:, j]].sum() / logits[:, j].exp().sum())
                        for j in range(4)])
    assert multi_positive_info_nce(sim, log_scale, positives) == pytest.approx(float(m2v.mean() + v2m.mean()), rel=1e-5)
    # with every track distinct it is the ordinary symmetric InfoNCE (MaDe's averages the two directions)
    distinct = same_track_positives(torch.arange(4))
    assert multi_positive_info_nce(sim, log_scale, distinct) == pytest.approx(
        2 * float(symmetric_info_nce(sim, log_scale.exp())), rel=1e-5)


def test_localisation_loss_terms_and_gradients():
    model = tiny_real().train()
    frames, frame_mask, windows, window_mask = inputs(4, [10, 20, 30, 50], [30, 60, 96, 40])
    out = model.localisation_outputs(frames, frame_mask, windows, window_mask)
    losses = localisation_loss(out, torch.tensor([[0.2, 0.05]] * 4), load_config("real-tiny").train)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    assert model.localisation.class_head.weight.grad.abs().sum() > 0
    assert model.localisation.f_embed.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.retrieval.parameters())  # stage 2 never touches stage 1


# ----------------------------------------------------------------------------- inference interface


def test_inference_interface_matches_made():
    model = tiny_real()
    frames, frame_mask, windows, window_mask = inputs(3, [12, 30, 7], [20, 50, 35])
    with torch.no_grad():
        video = model.encode_video(frames, frame_mask)
        music = model.encode_music(windows, window_mask)
        scores = model.score_pairs(video, music)
        spans = model.detect(video, music)
        relevance = model.window_relevance(video, music)
    d = model.cfg.d_model
    assert video.tokens.shape == (3, 30, d) and video.pooled.shape == (3, d)  # trimmed to the last frame
    assert music.tokens.shape == music.keys.shape == (3, 50, d) and music.pooled.shape == (3, d)
    cos = torch.nn.functional.cosine_similarity(music.pooled[:, None], video.pooled[None], dim=-1)
    assert torch.allclose(scores, cos, atol=1e-5)
    assert spans.shape == (3, 2) and ((spans >= 0) & (spans <= 1)).all()
    assert relevance.shape == (3, 3, 50)
    assert torch.allclose(relevance.amax(-1), torch.ones(3, 3))
    assert (relevance[0, :, 20:] == 0).all()  # padded windows
    # scoring needs only what an index cache keeps
    assert torch.equal(model.score_pairs(video, music.for_scoring()), scores)
    seconds = model.spans_to_seconds(spans, torch.tensor([60.0, 120.0, 90.0]))
    assert (seconds[:, 0] <= seconds[:, 1]).all() and (seconds[:, 1] <= torch.tensor([60.0, 120.0, 90.0])).all()


def test_padding_never_changes_a_pair():
    """One pair alone or in a batch with longer items gives the same outputs (trimming is exact)."""
    model = tiny_real()
    frames, frame_mask, windows, window_mask = inputs(3, [9, 40, 25], [30, 80, 12])
    with torch.no_grad():
        together = model.detect(model.encode_video(frames, frame_mask), model.encode_music(windows, window_mask))
        alone = model.detect(model.encode_video(frames[:1], frame_mask[:1]),
                             model.encode_music(windows[:1], window_mask[:1]))
    assert torch.allclose(together[0], alone[0], atol=1e-5)


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_keeps_the_family(tmp_path):
    model, variant = build_untrained(config="real-tiny", seed=4)
    assert isinstance(model, Real) and variant.family == "real"
    save_checkpoint(tmp_path / "run", model, variant, {"note": "test"})
    loaded, loaded_variant, _ = load_model(tmp_path / "run", expect_family="real")
    assert isinstance(loaded, Real) and loaded_variant.family == "real" and loaded_variant.model == variant.model
    assert all(k.startswith(("retrieval.", "localisation.")) for k in loaded.state_dict())
    frames, frame_mask, windows, window_mask = inputs(2, [10, 20], [30, 40])
    with torch.no_grad():
        a = model.detect(model.encode_video(frames, frame_mask), model.encode_music(windows, window_mask))
        b = loaded.detect(loaded.encode_video(frames, frame_mask), loaded.encode_music(windows, window_mask))
    assert torch.equal(a, b)


def test_loading_the_other_family_is_a_clear_error(tmp_path):
    real, real_variant = build_untrained(config="real-tiny")
    save_checkpoint(tmp_path / "real", real, real_variant, {})
    made, made_variant = build_untrained(config="tiny")
    save_checkpoint(tmp_path / "made", made, made_variant, {})
    with pytest.raises(CheckpointError, match="is a ReAL checkpoint; this needs a MaDe one"):
        load_model(tmp_path / "real", expect_family="made")
    with pytest.raises(CheckpointError, match="is a MaDe checkpoint; this needs a ReAL one"):
        load_model(tmp_path / "made", expect_family="real")


def test_paper_sizes_load():
    variant = load_config("real")
    assert variant.family == "real" and variant.model.d_model == 256 and variant.model.n_queries == 10
    recipe = variant.train
    assert (recipe.batch_size, recipe.retrieval_lr, recipe.retrieval_epochs) == (512, 1e-4, 100)
    assert (recipe.localisation_lr, recipe.localisation_epochs, recipe.warmup_fraction) == (3e-4, 80, 0.05)
    # --epochs / --lr replace both stages' values
    both = dataclasses.replace(recipe, epochs=3, lr=1e-3)
    assert [both.stage_epochs(s) for s in ("retrieval", "localisation")] == [3, 3]
    assert both.stage_lr("localisation") == 1e-3
