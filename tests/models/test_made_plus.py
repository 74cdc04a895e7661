"""made-plus: each switch changes the network or loss as claimed; all switches off is MaDe exactly."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _library_helpers import run_cli

from mgsv_cli.models.checkpoint import load_model
from mgsv_cli.models.losses import matching_loss, multi_positive_info_nce, start_window_loss, symmetric_info_nce
from mgsv_cli.models.made import POINTER_REACH_WINDOWS, MaDe, VideoTokens, known_width, pool_windows
from mgsv_cli.models.variants import ModelConfig, TrainConfig, load_config

SWITCHES_OFF = {"n_music_scales": 1, "known_width": False, "duration_query": False, "start_pointer": False,
                "xpool_sharpness": 0.0, "querybank_size": 0}


def inputs(n: int, seed: int = 0, n_frames=None):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(n, 50, 512, generator=g)
    counts = torch.randint(5, 51, (n,), generator=g) if n_frames is None else torch.as_tensor(n_frames)
    frame_mask = torch.arange(50)[None] < counts[:, None]
    windows = torch.randn(n, 96, 768, generator=g)
    window_mask = torch.arange(96)[None] < torch.randint(12, 97, (n, 1), generator=g)
    return frames, frame_mask, windows, window_mask


ALL_ON = {"n_music_scales": 3, "known_width": True, "duration_query": True, "start_pointer": True,
          "xpool_sharpness": 2.0, "querybank_size": 2048}  # a querybank does nothing until it is filled


def plus_model(seed: int = 0, **changes) -> MaDe:
    """tiny with every model switch on (whatever tiny-plus.toml keeps on), then ``changes``."""
    cfg = dataclasses.replace(load_config("tiny").model, **{**ALL_ON, **changes})
    torch.manual_seed(seed)
    return MaDe(cfg).eval()


# ------------------------------------------------------------------ all switches off = the paper's MaDe


def test_switch_defaults_are_the_papers_network():
    assert ModelConfig().n_music_scales == 1 and ModelConfig().known_width is False
    assert ModelConfig().duration_query is False and TrainConfig().same_track_positives is False
    assert ModelConfig().start_pointer is False and ModelConfig().xpool_sharpness == 0.0
    assert ModelConfig().querybank_size == 0
    for name in ("made", "tiny"):
        variant = load_config(name)
        assert (variant.model.n_music_scales, variant.model.known_width, variant.model.duration_query,
                variant.model.start_pointer, variant.model.xpool_sharpness, variant.train.same_track_positives,
                variant.model.querybank_size) == (1, False, False, False, 0.0, False, 0)


def test_tiny_plus_with_switches_off_is_tiny_bit_for_bit():
    tiny = load_config("tiny").model
    off = dataclasses.replace(load_config("tiny-plus").model, **SWITCHES_OFF)
    assert off == tiny  # tiny-plus differs from tiny by its switches only
    assert dataclasses.replace(load_config("tiny-plus").train, same_track_positives=False) == load_config("tiny").train
    torch.manual_seed(5)
    reference = MaDe(tiny).eval()
    torch.manual_seed(5)
    rebuilt = MaDe(off).eval()
    ref_state, new_state = reference.state_dict(), rebuilt.state_dict()
    assert list(ref_state) == list(new_state)
    assert all(torch.equal(ref_state[k], new_state[k]) for k in ref_state)
    batch = inputs(6, seed=2)
    with torch.no_grad():
        a, b = reference(*batch), rebuilt(*batch)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_made_plus_adds_few_parameters_at_paper_width():
    paper = load_config("made").model
    made, plus = MaDe(paper), MaDe(dataclasses.replace(paper, **ALL_ON))
    extra = plus.parameter_counts()["total"] - made.parameter_counts()["total"]
    # 3 fusion weights, a 1 -> d width embedding, minus the width row of the span head, a 16 -> d
    # duration embedding, the d -> d start pointer, X-Pool's sharpness (the querybank is a buffer).
    d = paper.d_model
    assert extra == 3 + (d + d) - (d + 1) + (16 * d + d) + (d * d + d) + 1
    assert load_config("made-plus").model == dataclasses.replace(paper, **{
        k: getattr(load_config("made-plus").model, k) for k in ALL_ON})  # made-plus = made + switches only


# ------------------------------------------------------------------ same-track positives


def brute_force_multi_positive(sim, scale, track_ids):
    """Loops over distinct tracks (first row of each) and videos; the mean of both directions."""
    logits = sim * scale
    tracks = list(dict.fromkeys(track_ids))
    rows = [track_ids.index(t) for t in tracks]
    track_terms = []
    for t, row in zip(tracks, rows):
        videos = [j for j, tid in enumerate(track_ids) if tid == t]
        lse = torch.logsumexp(logits[row], 0)
        track_terms.append(sum(float(lse - logits[row, j]) for j in videos) / len(videos))
    video_terms = []
    for j, t in enumerate(track_ids):
        column = logits[rows, j]
        video_terms.append(float(torch.logsumexp(column, 0) - logits[track_ids.index(t), j]))
    return (sum(track_terms) / len(track_terms) + sum(video_terms) / len(video_terms)) / 2


def test_same_track_positives_match_a_brute_force_reference():
    g = torch.Generator().manual_seed(0)
    sim = torch.rand(6, 6, generator=g) * 2 - 1
    ids = [0, 1, 0, 2, 1, 0]
    got = multi_positive_info_nce(sim, torch.tensor(10.0), torch.tensor(ids))
    assert got.item() == pytest.approx(brute_force_multi_positive(sim, 10.0, ids), rel=1e-5)
    # distinct tracks: exactly the paper's symmetric InfoNCE
    distinct = torch.arange(6)
    assert multi_positive_info_nce(sim, torch.tensor(10.0), distinct).item() == pytest.approx(
        symmetric_info_nce(sim, torch.tensor(10.0)).item(), rel=1e-6)


def test_two_videos_of_one_track_by_hand():
    # Videos 0 and 1 share a track (identical music rows 0 and 1); video 2 has its own.
    sim = torch.tensor([[0.9, 0.8, 0.1], [0.9, 0.8, 0.1], [0.2, 0.3, 0.7]])
    lse = torch.logsumexp
    track_a = ((lse(sim[0], 0) - sim[0, 0]) + (lse(sim[0], 0) - sim[0, 1])) / 2  # both videos positives
    track_b = lse(sim[2], 0) - sim[2, 2]
    videos = [lse(sim[[0, 2], 0], 0) - sim[0, 0],  # the shared track counts once in each video's softmax
              lse(sim[[0, 2], 1], 0) - sim[0, 1],
              lse(sim[[0, 2], 2], 0) - sim[2, 2]]
    by_hand = ((track_a + track_b) / 2 + sum(videos) / 3) / 2
    got = multi_positive_info_nce(sim, torch.tensor(1.0), torch.tensor([4, 4, 9]))
    assert got.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert got.item() != pytest.approx(symmetric_info_nce(sim, torch.tensor(1.0)).item(), rel=1e-3)


def test_matching_loss_switch_routes_both_similarities():
    g = torch.Generator().manual_seed(1)
    mean_sim, xpool_sim = torch.rand(4, 4, generator=g), torch.rand(4, 4, generator=g)
    ids = torch.tensor([3, 3, 1, 2])
    log_scale = torch.tensor(2.0)
    expected = multi_positive_info_nce(mean_sim, log_scale.exp(), ids) + multi_positive_info_nce(
        xpool_sim, log_scale.exp(), ids)
    assert torch.allclose(matching_loss(mean_sim, xpool_sim, log_scale, ids, same_track_positives=True), expected)
    # without the switch: the old behaviour (all others negatives, or masked with track ids)
    assert torch.allclose(matching_loss(mean_sim, xpool_sim, log_scale),
                          symmetric_info_nce(mean_sim, log_scale.exp())
                          + symmetric_info_nce(xpool_sim, log_scale.exp()))


# ------------------------------------------------------------------ multi-scale matching


def test_pool_windows_shapes_and_padding():
    keys = torch.arange(2 * 7 * 3, dtype=torch.float32).view(2, 7, 3)
    mask = torch.tensor([[True] * 7, [True] * 3 + [False] * 4])
    pooled, pooled_mask = pool_windows(keys, mask, 2)
    assert pooled.shape == (2, 4, 3) and pooled_mask.tolist() == [[True] * 4, [True, True, False, False]]
    assert torch.equal(pooled[0, 0], keys[0, :2].mean(0)) and torch.equal(pooled[0, 3], keys[0, 6])
    assert torch.equal(pooled[1, 1], keys[1, 2])  # window 3 is padding: the group is window 2 alone
    pooled4, mask4 = pool_windows(keys, mask, 4)
    assert pooled4.shape == (2, 2, 3) and mask4.tolist() == [[True, True], [True, False]]
    assert torch.equal(pooled4[1, 0], keys[1, :3].mean(0))
    same, same_mask = pool_windows(keys, mask, 1)
    assert same is keys and same_mask is mask


def test_multi_scale_similarity_is_the_weighted_fusion_and_ignores_padding():
    model = plus_model(seed=3)
    with torch.no_grad():
        model.scale_logits.copy_(torch.tensor([0.5, -1.0, 2.0]))
        frames, frame_mask, windows, window_mask = inputs(4, seed=4)
        video = model.encode_video(frames, frame_mask)
        music = model.encode_music(windows, window_mask)
        v = F.normalize(video.pooled, dim=-1)
        expected = 0.0
        for scale, weight in zip((1, 2, 4), model.scale_logits.softmax(0)):
            keys, mask = pool_windows(music.keys, music.mask, scale)
            h1 = model.xpool(video.pooled, keys, mask)
            expected = expected + weight * (F.normalize(h1, dim=-1) * v[None]).sum(-1)
        _, xpool_sim = model.similarities(video, music)
        assert torch.allclose(xpool_sim, expected, atol=1e-6)
        # what sits in padded windows never matters, and the scoring cache (keys only) suffices
        noisy = dataclasses.replace(music.for_scoring(), keys=music.keys + 50.0 * (~music.mask)[..., None])
        assert torch.allclose(model.score_pairs(video, noisy), model.score_pairs(video, music), atol=1e-5)


# ------------------------------------------------------------------ the width from the video


def test_known_width_cut_has_the_videos_length_and_the_width_reaches_the_query():
    counts = [6, 20, 50]
    model = plus_model(seed=6)
    frames, frame_mask, windows, window_mask = inputs(3, seed=7, n_frames=counts)
    with torch.no_grad():
        video, music = model.encode_video(frames, frame_mask), model.encode_music(windows, window_mask)
        spans = model.detect_all_layers(video, music)
        assert model.detector.head[-1].out_features == 1  # only the start is regressed
        expected = (torch.tensor(counts, dtype=torch.float32) - 0.5) / 240.0
        assert torch.allclose(spans[..., 1], expected.expand(spans.shape[0], -1))
        assert torch.allclose(known_width(frame_mask, 240.0), expected)
        seconds = model.spans_to_seconds(spans[-1], torch.full((3,), 240.0))
        inside = (seconds[:, 0] > 0) & (seconds[:, 1] < 240.0)
        lengths = seconds[:, 1] - seconds[:, 0]
        assert torch.allclose(lengths[inside], (torch.tensor(counts, dtype=torch.float32) - 0.5)[inside], atol=1e-3)
        # the decoder query is told the width: changing its embedding moves the centre
        before = spans[-1, :, 0].clone()
        model.detector.width_embed.weight.add_(1.0)
        after = model.detect(video, music)[:, 0]
        assert not torch.allclose(before, after)


# ------------------------------------------------------------------ X-Pool sharpness


def test_xpool_sharpness_scales_the_attention_logits_and_one_is_the_paper():
    paper = plus_model(seed=4, xpool_sharpness=0.0)
    sharp = plus_model(seed=4, xpool_sharpness=1.0)
    missing, unexpected = sharp.load_state_dict(paper.state_dict(), strict=False)
    assert missing == ["xpool.log_sharpness"] and unexpected == []
    frames, frame_mask, windows, window_mask = inputs(3, seed=5)
    with torch.no_grad():
        video, music = paper.encode_video(frames, frame_mask), paper.encode_music(windows, window_mask)
        torch.testing.assert_close(sharp.score_pairs(video, music), paper.score_pairs(video, music))
        sharp.xpool.log_sharpness.fill_(float(np.log(3.0)))
        # the weights are softmax(3 * the paper's logits), and scoring pools with those same weights
        logits = paper.xpool.attention(video.pooled, music.keys, music.mask).clamp_min(1e-30).log()
        expected = (3 * logits).masked_fill(~music.mask[:, None], float("-inf")).softmax(-1).nan_to_num(0.0)
        torch.testing.assert_close(sharp.xpool.attention(video.pooled, music.keys, music.mask), expected)
        assert not torch.allclose(sharp.score_pairs(video, music), paper.score_pairs(video, music))
    assert sharp.xpool.log_sharpness.requires_grad
    with pytest.raises(ValueError, match="xpool_sharpness"):
        ModelConfig(xpool_sharpness=-1.0)


# ------------------------------------------------------------------ the start pointer


def test_start_window_loss_by_hand():
    logits = torch.tensor([[[0.0, 1.0, 2.0, float("-inf")], [3.0, 0.0, -1.0, 0.5]]])  # [L=1, B=2, S=4]
    logits = torch.cat([logits, logits * 2])  # two layers: the loss is their sum
    n_windows = 4  # window j centred at j / 4 of the longest track
    # pair 0 starts at 0.27 (nearest centre: window 1); pair 1 at 0.9, beyond its last window: window 3
    target = torch.tensor([[0.27 + 0.05, 0.1], [0.9 + 0.05, 0.1]])
    expected = sum(F.cross_entropy(layer, torch.tensor([1, 3]), reduction="sum") for layer in logits) / 2
    assert start_window_loss(logits, target, n_windows).item() == pytest.approx(expected.item(), rel=1e-6)
    # a start beyond the last VALID window (pair 0: window 2) is labelled with that window
    late = torch.tensor([[0.95, 0.1], [0.0 + 0.05, 0.1]])
    expected = sum(F.cross_entropy(layer, torch.tensor([2, 0]), reduction="sum") for layer in logits) / 2
    assert start_window_loss(logits, late, n_windows).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("width_known", [True, False])
def test_start_pointer_cuts_near_the_window_it_points_at(width_known):
    model = plus_model(seed=8, known_width=width_known, n_music_scales=1, duration_query=False)
    frames, frame_mask, windows, window_mask = inputs(3, seed=9, n_frames=[8, 20, 40])
    window_mask = torch.arange(96)[None] < torch.tensor([[30], [60], [96]])
    with torch.no_grad():
        video, music = model.encode_video(frames, frame_mask), model.encode_music(windows, window_mask)
        out = model(frames, frame_mask, windows, window_mask)
        start_logits = out["start_logits"]
        assert start_logits.shape == (2, 3, 96)  # [layers, pairs, windows]
        assert torch.isneginf(start_logits[:, 0, 30:]).all() and torch.isfinite(start_logits[:, 0, :30]).all()
        spans = model.detect_all_layers(video, music)
        torch.testing.assert_close(spans, out["spans"])
        # the start is the softmax-expected window centre, plus at most POINTER_REACH_WINDOWS steps
        centres = torch.arange(96) / 96
        pointed = (start_logits.softmax(-1) * centres).sum(-1)
        start = spans[..., 0] - spans[..., 1] / 2
        assert ((start - pointed).abs() <= POINTER_REACH_WINDOWS / 96 + 1e-6).all()
        if width_known:
            expected = (torch.tensor([8.0, 20.0, 40.0]) - 0.5) / 240.0
            assert torch.allclose(spans[..., 1], expected.expand(2, -1))
        else:
            assert ((spans[..., 1] > 0) & (spans[..., 1] < 1)).all()
        # what sits in padded windows never matters
        noisy = windows + 30.0 * (~window_mask)[..., None]
        torch.testing.assert_close(model(frames, frame_mask, noisy, window_mask)["spans"], out["spans"])
        # a sharp pointer (near one-hot softmax): the cut starts within reach of the window it picks
        model.detector.pointer.weight.mul_(1e4)
        model.detector.pointer.bias.mul_(1e4)
        sharp = model(frames, frame_mask, windows, window_mask)
        picked = sharp["start_logits"][-1].argmax(-1)  # [pairs]
        assert (sharp["start_logits"][-1].softmax(-1).amax(-1) > 0.999).all()
        start_seconds = (sharp["spans"][-1, :, 0] - sharp["spans"][-1, :, 1] / 2) * 240.0
        assert ((start_seconds - picked * 2.5).abs() <= POINTER_REACH_WINDOWS * 2.5 + 1e-3).all()


# ------------------------------------------------------------------ end to end


def test_duration_query_starts_as_the_plain_network_and_then_reads_the_videos_length():
    from mgsv_cli.models.made import duration_features

    off = plus_model(seed=3, duration_query=False)
    on = plus_model(seed=3)
    missing, unexpected = on.load_state_dict(off.state_dict(), strict=False)
    assert missing == ["duration_embed.weight", "duration_embed.bias"] and unexpected == []
    frames, frame_mask, windows, window_mask = inputs(4, seed=1, n_frames=[5, 12, 30, 50])
    with torch.no_grad():
        plain, zero = off.encode_video(frames, frame_mask), on.encode_video(frames, frame_mask)
        assert torch.equal(plain.pooled, zero.pooled)  # zero-initialised: training starts from the paper's network
        torch.nn.init.normal_(on.duration_embed.weight)
        moved = on.encode_video(frames, frame_mask)
        shift = moved.pooled - plain.pooled
        expected = on.duration_embed(duration_features(frame_mask, 50))
        torch.testing.assert_close(shift, expected)
        assert not torch.allclose(shift[0], shift[1])  # lengths 5 and 12 s move the query differently
        # The length comes from the valid frames, not the mask's padding: a mask trimmed to the
        # clip's own frames gives the same query.
        trimmed = on.encode_video(frames[:1, :5], frame_mask[:1, :5])
        torch.testing.assert_close(trimmed.pooled, moved.pooled[:1])
        scores = on.score_pairs(moved, on.encode_music(windows, window_mask))
    assert scores.shape == (4, 4) and torch.isfinite(scores).all()
    features = duration_features(torch.arange(50)[None] < torch.tensor([[10], [50]]), 50)
    assert features.shape == (2, 16) and torch.allclose(features.norm(dim=1), torch.full((2,), 8 ** 0.5))


def test_tiny_plus_trains_through_the_cli_loads_and_suggests(tmp_path, capsys):
    from mgsv_cli.models.metrics import duration_exact_cut
    from mgsv_cli.research.dataset import load_split
    from mgsv_cli.research.synthetic import make_dataset
    from mgsv_cli.research.train import fill_querybank
    from mgsv_cli.retrieval.keys import ResidentKeys

    root = tmp_path / "data"
    make_dataset(root, n_videos=60, n_tracks=6, seed=1)
    run = tmp_path / "run"
    result = run_cli(capsys, "train", "--data", root, "--config", "tiny-plus", "--epochs", "1", "--device", "cpu",
                     "--out", run)
    assert result.code == 0, result.err
    model, variant, _meta = load_model(run)
    shipped = load_config("tiny-plus")
    assert variant.name == "tiny-plus" and variant.model == shipped.model and variant.model.known_width
    assert variant.train.same_track_positives == shipped.train.same_track_positives
    assert hasattr(model, "scale_logits") == (shipped.model.n_music_scales > 1)
    # The querybank was filled from the training videos under the saved weights: refilling it now
    # gives the same vectors.
    train_split = load_split(root, "train")
    n_bank = min(shipped.model.querybank_size, len(np.unique(train_split.video_index)))
    assert int(model.querybank_rows) == n_bank > 0
    saved_bank = model.querybank.clone()
    fill_querybank(model, train_split, variant.train.seed, torch.device("cpu"))
    torch.testing.assert_close(model.querybank, saved_bank)

    split = load_split(root, "test")
    tracks = np.arange(split.n_tracks)
    with torch.no_grad():
        windows, window_mask = split.track_inputs(tracks, torch.device("cpu"))
        music = model.encode_music(windows, window_mask, for_search=True)
        assert music.offsets is not None
        scoring = ResidentKeys.from_full(music.keys, music.pooled, music.mask, music.offsets)
        frames, frame_mask = split.video_inputs(split.video_index[:1], torch.device("cpu"))
        video = model.encode_video(frames, frame_mask)
        durations = split.track_durations.astype(np.float64)
        video_seconds = float(split.labels.video_duration[0])
        scores, top = torch.topk(scoring.score(model, video), 3)
        top = top.numpy()
        windows, window_mask = split.track_inputs(top, torch.device("cpu"))
        spans = model.detect(video.repeat(3), model.encode_music(windows, window_mask))
        predicted = model.spans_to_seconds(spans, torch.from_numpy(durations[top]).float()).double().numpy()
        cuts = np.stack(duration_exact_cut(predicted[:, 0], predicted[:, 1], video_seconds, durations[top]), axis=1)
    assert len(top) == 3 and np.all(np.diff(scores.numpy()) <= 0)
    assert np.allclose(cuts[:, 1] - cuts[:, 0], np.minimum(video_seconds, durations[top]), atol=1e-6)
    n_valid = int(frame_mask.sum())
    widths = predicted[:, 1] - predicted[:, 0]
    assert np.all(widths <= n_valid - 0.5 + 1e-3)  # the model's own width: the video's, unless the track clips it


# ------------------------------------------------------------------ querybank normalisation


def banked_model(size: int = 12, rows: int | None = None, seed: int = 3, **changes) -> MaDe:
    """tiny-plus-like, with a querybank of ``rows`` (default ``size``) random pooled video vectors."""
    model = plus_model(seed=seed, querybank_size=size, **changes)
    model.set_querybank(torch.randn(size if rows is None else rows, model.cfg.d_model,
                                    generator=torch.Generator().manual_seed(seed)))
    return model


def test_score_offsets_are_the_weighted_soft_maximum_over_the_querybank_by_hand():
    model = banked_model(size=12, rows=7, querybank_beta=4.0, querybank_weight=0.75)
    assert int(model.querybank_rows) == 7 and model.has_score_offsets
    frames, frame_mask, windows, window_mask = inputs(5, seed=4)
    with torch.no_grad():
        plain = model.encode_music(windows, window_mask)
        music = model.encode_music(windows, window_mask, for_search=True)
        assert plain.offsets is None and music.offsets.shape == (5,)
        def pair_score(q: int, t: int) -> torch.Tensor:  # one (bank video, track) pair, without offsets
            mean_sim, xpool_sim = model.similarities(VideoTokens(None, None, model.querybank[q:q + 1]),
                                                     plain.take(torch.tensor([t])))
            return (mean_sim + xpool_sim)[0, 0]

        to_bank = torch.stack([torch.stack([pair_score(q, t) for q in range(7)]) for t in range(5)])
        expected = 0.75 / 4.0 * (torch.logsumexp(4.0 * to_bank, dim=1) - np.log(7))
        torch.testing.assert_close(music.offsets, expected, rtol=1e-5, atol=1e-6)
        video = model.encode_video(frames, frame_mask)
        torch.testing.assert_close(model.score_pairs(video, music),
                                   model.score_pairs(video, plain) - expected[:, None], rtol=1e-5, atol=1e-6)
        # Offsets travel with the rows they belong to.
        torch.testing.assert_close(music.take(torch.tensor([3, 1])).offsets, music.offsets[[3, 1]])
        assert music.trimmed().offsets is music.offsets and music.for_scoring().offsets is music.offsets


def test_a_track_close_to_every_querybank_video_loses_more_than_one_close_to_none():
    model = plus_model(seed=5, querybank_size=64, n_music_scales=1)
    frames, frame_mask, windows, window_mask = inputs(2, seed=6)
    with torch.no_grad():
        music = model.encode_music(windows, window_mask)
        # A bank of videos that all point at track 0's mean vector: track 0 is their "hub".
        hub = music.pooled[0] / music.pooled[0].norm()
        noise = torch.randn(64, model.cfg.d_model, generator=torch.Generator().manual_seed(1))
        model.set_querybank(hub * 10 + 0.1 * noise)
        offsets = model.encode_music(windows, window_mask, for_search=True).offsets
    assert offsets[0] > offsets[1]


def test_set_querybank_keeps_the_first_rows_and_an_empty_bank_changes_nothing():
    model = plus_model(seed=2, querybank_size=4)
    frames, frame_mask, windows, window_mask = inputs(3, seed=2)
    with torch.no_grad():
        assert not model.has_score_offsets  # built, not filled: no offsets, the plain scores
        model.encode_video(frames, frame_mask)
        music = model.encode_music(windows, window_mask, for_search=True)
        assert music.offsets is None
        pooled = torch.randn(9, model.cfg.d_model)
        model.set_querybank(pooled)
    assert int(model.querybank_rows) == 4 and torch.equal(model.querybank, pooled[:4])
    model.set_querybank(pooled[:2])
    assert int(model.querybank_rows) == 2 and torch.equal(model.querybank[:2], pooled[:2])
    assert not model.querybank[2:].any()
    with pytest.raises(ValueError, match="no querybank"):
        plus_model(seed=2, querybank_size=0).set_querybank(pooled)


def test_model_config_rejects_impossible_switch_values(tmp_path):
    from mgsv_cli.errors import ConfigError
    from mgsv_cli.models.variants import variant_from_dict

    for bad in ({"n_music_scales": 0}, {"xpool_sharpness": -1.0}, {"querybank_size": -1},
                {"querybank_beta": 0.0}, {"querybank_weight": -0.5}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            variant_from_dict("bad", {"model": bad})


def test_the_querybank_survives_a_checkpoint_and_bf16(tmp_path):
    from mgsv_cli.models.checkpoint import save_checkpoint

    model = banked_model(size=8, rows=5)
    variant = dataclasses.replace(load_config("tiny-plus"), model=model.cfg)
    save_checkpoint(tmp_path, model, variant, {})
    loaded, _variant, _meta = load_model(tmp_path)
    assert int(loaded.querybank_rows) == 5 and torch.equal(loaded.querybank, model.querybank)
    frames, frame_mask, windows, window_mask = inputs(4, seed=9)
    with torch.no_grad():
        before = model.encode_music(windows, window_mask, for_search=True).offsets
        torch.testing.assert_close(loaded.encode_music(windows, window_mask, for_search=True).offsets, before)
        half = loaded.to(torch.bfloat16)
        assert int(half.querybank_rows) == 5  # the count is not a float: casting keeps it
        torch.testing.assert_close(half.encode_music(windows, window_mask, for_search=True).offsets, before,
                                   atol=0.05, rtol=0.05)


# ------------------------------------------------------------------ detection's gradient into the enhancers


@pytest.mark.parametrize("scale", [0.0, 0.25])
def test_detect_grad_scale_keeps_the_outputs_and_scales_only_detections_gradient_into_the_enhancers(scale):
    from mgsv_cli.models.losses import detection_loss

    model = plus_model(seed=3, n_music_scales=1, duration_query=False)  # eval mode: no dropout draws
    batch = inputs(4, seed=4)
    target = torch.tensor([[0.2, 0.05], [0.3, 0.1], [0.1, 0.04], [0.25, 0.08]])
    enhancers = [p for m in (model.video_enhancer, model.music_enhancer) for p in m.parameters()]
    detector = list(model.detector.parameters())

    def grads(out, which, params):
        if which == "detection":
            loss = detection_loss(out["spans"], target) + start_window_loss(out["start_logits"], target, 96)
        else:
            loss = matching_loss(out["mean_sim"], out["xpool_sim"], model.logit_scale)
        found = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
        return [torch.zeros_like(p) if g is None else g for g, p in zip(found, params)]

    plain, scaled = model(*batch), model(*batch, detect_grad_scale=scale)
    assert all(torch.equal(plain[k], scaled[k]) for k in plain)  # the forward pass is untouched
    for got, want in zip(grads(scaled, "detection", enhancers), grads(plain, "detection", enhancers)):
        torch.testing.assert_close(got, scale * want, rtol=1e-5, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in grads(plain, "detection", enhancers))
    for got, want in zip(grads(scaled, "detection", detector), grads(plain, "detection", detector)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)  # detection's own weights: all of it
    for got, want in zip(grads(scaled, "matching", enhancers), grads(plain, "matching", enhancers)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)  # matching: untouched


def test_detect_grad_scale_outside_0_to_1_is_a_config_error(tmp_path):
    from mgsv_cli.errors import ConfigError

    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[train]\ndetect_grad_scale = 1.5\n')
    with pytest.raises(ConfigError, match="detect_grad_scale"):
        load_config(str(bad))
