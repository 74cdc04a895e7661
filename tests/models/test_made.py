"""MaDe's structure: parameter counts, the folded X-Pool, masks, batching, losses, checkpoints."""
from __future__ import annotations

import math

import pytest
import torch

from mgsv_cli.errors import CheckpointError
from mgsv_cli.models.checkpoint import build_untrained, load_model, save_checkpoint
from mgsv_cli.models.losses import detection_loss, generalized_iou, matching_loss, span_cxw_to_se
from mgsv_cli.models.made import MaDe, trim_padding
from mgsv_cli.models.variants import load_config

REFERENCE_PARAMS = {"enhancement": 2.04e6, "matching": 0.33e6, "detection": 8.03e6}


def random_inputs(n: int, seed: int = 0, video_dim: int = 512, music_dim: int = 768):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(n, 50, video_dim, generator=g)
    frame_mask = torch.arange(50)[None] < torch.randint(5, 51, (n, 1), generator=g)
    windows = torch.randn(n, 96, music_dim, generator=g)
    window_mask = torch.arange(96)[None] < torch.randint(12, 97, (n, 1), generator=g)
    return frames, frame_mask, windows, window_mask


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return MaDe(load_config("tiny").model).eval()


def test_parameter_counts_match_the_reference_within_two_percent():
    counts = MaDe(load_config("made").model).parameter_counts()
    for module, reference in REFERENCE_PARAMS.items():
        assert abs(counts[module] - reference) / reference < 0.02, (module, counts[module])
    assert counts["total"] == sum(counts[m] for m in REFERENCE_PARAMS)


def naive_xpool(xpool, video_pooled, raw_tokens, mask):
    """X-Pool exactly as described, one (track, video) pair at a time."""
    n_tracks, _, dim = raw_tokens.shape
    out = torch.zeros(n_tracks, len(video_pooled), dim)
    for n in range(n_tracks):
        segments = xpool.norm_in(raw_tokens[n])
        keys, values = xpool.k(segments), xpool.v(segments)
        for b, pooled in enumerate(video_pooled):
            logits = keys @ xpool.q(xpool.norm_in(pooled)) / math.sqrt(dim)
            logits[~mask[n]] = float("-inf")
            attended = xpool.norm_attn(xpool.o(logits.softmax(0) @ values))
            out[n, b] = xpool.norm_out(attended + xpool.linear(attended))
    return out


def test_folded_xpool_equals_the_plain_computation():
    torch.manual_seed(1)
    model = MaDe(load_config("tiny").model).eval()
    for param in model.xpool.parameters():  # move off the identity init so every projection matters
        param.data += 0.1 * torch.randn_like(param)
    raw = torch.randn(5, 96, 64)
    mask = torch.arange(96)[None] < torch.tensor([[96], [40], [1], [12], [70]])
    pooled = torch.randn(3, 64)
    with torch.no_grad():
        fast = model.xpool(pooled, model.xpool.keys(raw), mask)
        slow = naive_xpool(model.xpool, pooled, raw, mask)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-4)


def test_window_relevance_is_the_softmax_the_match_pools_with():
    torch.manual_seed(2)
    model = MaDe(load_config("tiny").model).eval()
    for param in model.xpool.parameters():
        param.data += 0.1 * torch.randn_like(param)
    raw = torch.randn(4, 96, 64)
    mask = torch.arange(96)[None] < torch.tensor([[96], [40], [1], [12]])
    pooled = torch.randn(3, 64)
    xpool = model.xpool
    with torch.no_grad():
        weights = xpool.attention(pooled, xpool.keys(raw), mask)  # [N, B, S]
        for n in range(4):
            for b in range(3):
                segments = xpool.norm_in(raw[n])
                logits = xpool.k(segments) @ xpool.q(xpool.norm_in(pooled[b])) / math.sqrt(64)
                logits[~mask[n]] = float("-inf")
                torch.testing.assert_close(weights[n, b], logits.softmax(0), atol=1e-5, rtol=1e-4)
        video = type("V", (), {"pooled": pooled})()
        music = type("M", (), {"keys": xpool.keys(raw), "mask": mask})()
        relevance = model.window_relevance(video, music)
    assert relevance.shape == (4, 3, 96)
    assert torch.all(relevance[~mask[:, None, :].expand(-1, 3, -1)] == 0)
    torch.testing.assert_close(relevance.amax(-1), torch.ones(4, 3))


def test_xpool_projections_start_as_identity():
    xpool = MaDe(load_config("made").model).xpool
    for layer in (xpool.q, xpool.k, xpool.v, xpool.o, xpool.linear):
        assert torch.equal(layer.weight, torch.eye(256)) and not layer.bias.any()


def test_padding_content_and_trailing_slots_do_not_change_outputs(tiny_model):
    frames, frame_mask, windows, window_mask = random_inputs(4)
    noisy_frames = frames + 100 * (~frame_mask)[..., None]
    noisy_windows = windows + 100 * (~window_mask)[..., None]
    with torch.no_grad():
        a = tiny_model.encode_video(frames, frame_mask), tiny_model.encode_music(windows, window_mask)
        b = tiny_model.encode_video(noisy_frames, frame_mask), tiny_model.encode_music(noisy_windows, window_mask)
        torch.testing.assert_close(tiny_model.score_pairs(*a), tiny_model.score_pairs(*b))
        torch.testing.assert_close(tiny_model.detect(*a), tiny_model.detect(*b))


def test_trimming_keeps_every_valid_slot():
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[0, :4] = True
    mask[1, :7] = True
    tokens, trimmed = trim_padding(torch.randn(3, 10, 2), mask)
    assert tokens.shape == (3, 7, 2) and trimmed.sum() == mask.sum()


def test_batched_scores_and_moments_equal_one_pair_at_a_time(tiny_model):
    frames, frame_mask, windows, window_mask = random_inputs(5, seed=3)
    with torch.no_grad():
        video = tiny_model.encode_video(frames, frame_mask)
        music = tiny_model.encode_music(windows, window_mask)
        scores = tiny_model.score_pairs(video, music)
        spans = tiny_model.detect(video, music)
        for n in range(5):
            one_music = tiny_model.encode_music(windows[n:n + 1], window_mask[n:n + 1])
            for b in range(5):
                one_video = tiny_model.encode_video(frames[b:b + 1], frame_mask[b:b + 1])
                single = tiny_model.score_pairs(one_video, one_music)[0, 0]
                assert torch.isclose(single, scores[n, b], atol=1e-5)
            one_video = tiny_model.encode_video(frames[n:n + 1], frame_mask[n:n + 1])
            torch.testing.assert_close(tiny_model.detect(one_video, one_music)[0], spans[n], atol=1e-5, rtol=1e-4)


def test_spans_to_seconds_scales_by_240_and_clamps(tiny_model):
    spans = torch.tensor([[0.5, 0.1], [0.01, 0.1], [0.9, 0.2]])
    seconds = tiny_model.spans_to_seconds(spans, torch.tensor([240.0, 240.0, 200.0]))
    torch.testing.assert_close(seconds, torch.tensor([[108.0, 132.0], [0.0, 14.4], [192.0, 200.0]]))


def test_generalized_iou_hand_cases():
    pred = torch.tensor([[0.0, 2.0], [0.0, 1.0], [0.0, 1.0]])
    gt = torch.tensor([[1.0, 3.0], [0.0, 1.0], [2.0, 3.0]])
    # overlap 1 / union 3; identical; disjoint: 0 - (3 - 2) / 3
    torch.testing.assert_close(generalized_iou(pred, gt), torch.tensor([1 / 3, 1.0, -1 / 3]))
    torch.testing.assert_close(span_cxw_to_se(torch.tensor([[0.5, 0.2]])), torch.tensor([[0.4, 0.6]]))


def test_detection_loss_is_zero_when_exact_and_counts_every_layer():
    target = torch.tensor([[0.3, 0.1], [0.6, 0.2]])
    assert detection_loss(target.expand(6, -1, -1), target).item() == pytest.approx(0.0, abs=1e-6)
    off = target + torch.tensor([0.05, 0.0])
    one_layer = detection_loss(off[None], target).item()
    assert detection_loss(off.expand(3, -1, -1), target).item() == pytest.approx(3 * one_layer)
    # 4 x L1 (0.05 per pair) + (1 - GIoU); GIoU of spans shifted by half their... computed by hand:
    # pair 1: [0.25,0.35] vs [0.30,0.40]: IoU 0.05/0.15; hull = union -> GIoU = 1/3
    # pair 2: [0.55,0.75] vs [0.50,0.70]: IoU 0.15/0.25 = 0.6
    assert one_layer == pytest.approx(4 * 0.05 + (1 - (1 / 3 + 0.6) / 2), rel=1e-5)


def test_matching_loss_prefers_a_diagonal_and_can_mask_same_track_negatives():
    log_scale = torch.tensor(math.log(1 / 0.03))
    good = torch.eye(4) * 0.9
    bad = torch.full((4, 4), 0.5)
    assert matching_loss(good, good, log_scale) < matching_loss(bad, bad, log_scale)
    # Rows 0 and 1 share a track: masking removes that pair as a negative, lowering the loss.
    sim = torch.eye(4) * 0.05 + 0.4
    tracks = torch.tensor([7, 7, 1, 2])
    assert matching_loss(sim, sim, log_scale, tracks) < matching_loss(sim, sim, log_scale)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    variant = load_config("tiny")
    torch.manual_seed(0)
    model = MaDe(variant.model).eval()
    save_checkpoint(tmp_path / "run", model, variant, {"epoch": 1})
    loaded, loaded_variant, meta = load_model(tmp_path / "run")
    assert loaded_variant.model == variant.model and len(meta["checkpoint_id"]) == 16
    frames, frame_mask, windows, window_mask = random_inputs(3)
    with torch.no_grad():
        for m in (model, loaded):
            m.out = (m.score_pairs(m.encode_video(frames, frame_mask), m.encode_music(windows, window_mask)),
                     m.detect(m.encode_video(frames, frame_mask), m.encode_music(windows, window_mask)))
    assert torch.equal(model.out[0], loaded.out[0]) and torch.equal(model.out[1], loaded.out[1])
    # The weights file alone carries its config.
    alone = tmp_path / "alone.safetensors"
    alone.write_bytes((tmp_path / "run" / "model.safetensors").read_bytes())
    assert load_model(alone)[1].model == variant.model


def test_missing_or_broken_checkpoints_say_how_to_get_one(tmp_path):
    with pytest.raises(CheckpointError, match="mgsv train"):
        load_model(None)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_model(broken)


def test_untrained_model_takes_the_encoders_dims_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    model, variant = build_untrained(video_dim=32, music_dim=48, config="tiny", seed=5)
    assert torch.equal(torch.rand(1), expected)
    assert variant.model.video_dim == 32 and model.video_enhancer.project.in_features == 32


def test_packing_valid_tokens_keeps_them_in_order():
    from mgsv_cli.models.made import pack_valid_tokens

    tokens = torch.arange(12, dtype=torch.float32).view(2, 6, 1)
    mask = torch.tensor([[1, 0, 0, 1, 1, 0], [0, 1, 0, 0, 0, 0]], dtype=torch.bool)
    packed, packed_mask = pack_valid_tokens(tokens, mask)
    assert packed[0, :, 0].tolist() == [0.0, 3.0, 4.0]
    assert packed[1, 0, 0].item() == 7.0 and packed_mask.tolist() == [[True] * 3, [True, False, False]]


def test_chunked_grounding_equals_one_batch(tiny_model):
    frames, frame_mask, windows, window_mask = random_inputs(9, seed=4)
    with torch.no_grad():
        whole = tiny_model.detect(tiny_model.encode_video(frames, frame_mask),
                                  tiny_model.encode_music(windows, window_mask))
        chunked = tiny_model.ground_pairs(frames, frame_mask, windows, window_mask, chunk_size=4)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-4)
