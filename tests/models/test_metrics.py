"""Benchmark metrics against hand-computed cases (spec section 1)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mgsv_cli.models.metrics import (
    duration_exact_cut,
    gt_ranks,
    mean_iou,
    moment_recall_at_k,
    recall_at_k,
    temporal_iou,
)


def test_temporal_iou_hand_computed():
    pred = [[0, 7], [2, 6], [0, 2], [0, 2], [1, 3], [0, 10], [1, 1]]
    gt = [[0, 10], [4, 10], [3, 5], [2, 4], [1, 3], [2, 4], [1, 1]]
    # 7/10; overlap 2 of hull 8; disjoint; touching; identical; gt inside pred 2/10; both empty
    expected = [0.7, 0.25, 0.0, 0.0, 1.0, 0.2, 0.0]
    np.testing.assert_allclose(temporal_iou(pred, gt), expected, rtol=0, atol=1e-12)
    assert mean_iou(pred, gt) == pytest.approx(sum(expected) / len(expected))


def test_temporal_iou_is_symmetric_and_accepts_tensors():
    pred = torch.tensor([[2.0, 6.0], [10.0, 30.0]])
    gt = torch.tensor([[4.0, 10.0], [0.0, 20.0]])
    forward = temporal_iou(pred, gt)
    np.testing.assert_allclose(forward, temporal_iou(gt, pred))
    np.testing.assert_allclose(forward, [0.25, 10 / 30])


def test_temporal_iou_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        temporal_iou([[0, 1], [0, 2]], [[0, 1]])


def test_gt_ranks_with_ties_and_nan():
    nan = math.nan
    scores = np.array([
        [0.9, 0.5, 0.1],  # GT 0 is best -> 0
        [0.9, 0.5, 0.1],  # GT 2 is worst -> 2
        [0.5, 0.5, 0.1],  # GT 0 tied with 1: ties count against the GT -> 1
        [0.3, 0.3, 0.3],  # constant scorer: GT ranked last -> 2
        [nan, 0.2, 0.1],  # a NaN competitor never outranks -> 0
        [0.2, nan, 0.1],  # a NaN GT gets the worst rank -> 2
    ])
    ranks = gt_ranks(scores, [0, 2, 0, 1, 1, 1])
    assert ranks.tolist() == [0, 2, 1, 2, 0, 2]
    assert ranks.dtype == np.int64


def test_gt_ranks_accepts_tensors_and_checks_shapes():
    assert gt_ranks(torch.tensor([[0.1, 0.7, 0.3]]), torch.tensor([2])).tolist() == [1]
    with pytest.raises(ValueError):
        gt_ranks(np.zeros((2, 3)), [0])


def test_recall_counts_rank_strictly_below_k():
    ranks = np.array([0, 2, 1, 2, 0, 2])
    assert recall_at_k(ranks, ks=(1, 2, 3)) == pytest.approx({1: 100 * 2 / 6, 2: 50.0, 3: 100.0})
    assert recall_at_k([1], ks=(1,)) == {1: 0.0}  # rank 1 (second place) is not in the top 1
    assert recall_at_k([4, 5, 9, 10], ks=(5, 10)) == {5: 25.0, 10: 75.0}


def test_moment_recall_needs_rank_and_strict_iou():
    exactly_07 = temporal_iou([[0, 7]], [[0, 10]])[0]
    assert exactly_07 == 0.7
    ranks = np.array([0, 0, 5, 50, 120])
    ious = np.array([exactly_07, 0.71, 0.9, 0.8, 0.99])
    # k=1: only row 1 (row 0 sits exactly on the threshold); k=10: rows 1, 2; k=100: rows 1-3.
    assert moment_recall_at_k(ranks, ious) == pytest.approx({1: 20.0, 10: 40.0, 100: 60.0})
    assert moment_recall_at_k(ranks, ious, ks=(1,), iou_threshold=0.5) == pytest.approx({1: 40.0})
    with pytest.raises(ValueError):
        moment_recall_at_k([0, 1], [0.9])


def test_duration_exact_cut_keeps_centre_and_shifts_into_track():
    start, end = duration_exact_cut(
        pred_start=[40, 0, 190, 5, 10, 100],
        pred_end=[60, 10, 200, 15, 20, 100],
        video_duration=[30, 30, 30, 60, 45, 10],
        track_duration=[200, 200, 200, 45, 45, 240],
    )
    # centre 50 -> [35, 65]; centre 5 shifted right -> [0, 30]; centre 195 shifted left ->
    # [170, 200]; track shorter than the video -> [0, 45]; as long as the track -> [0, 45];
    # an empty prediction still yields a video-long cut around it -> [95, 105].
    np.testing.assert_allclose(start, [35, 0, 170, 0, 0, 95])
    np.testing.assert_allclose(end, [65, 30, 200, 45, 45, 105])


def test_duration_exact_cut_accepts_tensors():
    start, end = duration_exact_cut(torch.tensor([110.0]), torch.tensor([120.0]),
                                    torch.tensor([8.0]), torch.tensor([115.0]))
    assert start.tolist() == [107.0] and end.tolist() == [115.0]
