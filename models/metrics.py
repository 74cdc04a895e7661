"""Benchmark metrics of MGSV (spec section 1), exactly as the reference computes them.

- temporal IoU of (start, end) spans; mIoU is its mean (a fraction);
- R@k: % of queries whose ground-truth track has 0-based rank < k;
- MoR@k: % of queries whose GT track has rank < k AND whose moment on the GT track has
  IoU strictly greater than the threshold (0.7).

Inputs may be numpy arrays or torch tensors; results are numpy arrays / Python floats.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _np(values) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor, without importing torch here
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def temporal_iou(pred, gt) -> np.ndarray:
    """IoU of matching spans: pred [N, 2], gt [N, 2] (start, end; start <= end) -> [N].

    Disjoint spans give 0; two zero-length spans (empty union) give 0.
    """
    pred, gt = _np(pred).reshape(-1, 2), _np(gt).reshape(-1, 2)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} differ")
    inter = np.clip(np.minimum(pred[:, 1], gt[:, 1]) - np.maximum(pred[:, 0], gt[:, 0]), 0.0, None)
    # When the spans overlap their hull is their union; when they do not, inter is 0 anyway.
    union = np.maximum(pred[:, 1], gt[:, 1]) - np.minimum(pred[:, 0], gt[:, 0])
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def mean_iou(pred, gt) -> float:
    """Mean temporal IoU (a fraction in [0, 1]) of pred [N, 2] vs gt [N, 2]."""
    return float(temporal_iou(pred, gt).mean())


def gt_ranks(scores, gt_index) -> np.ndarray:
    """0-based rank of each query's ground-truth candidate.

    scores [n_queries, n_candidates] (higher = better), gt_index [n_queries] -> [n_queries] int.
    Ties count against the ground truth: rank = #candidates scoring strictly higher
    + #other candidates scoring exactly the same, so a constant scorer ranks every GT
    last rather than first. A NaN GT score gets the worst rank; NaN competitors never
    outrank it.
    """
    scores = _np(scores)
    gt_index = np.asarray(gt_index, dtype=np.int64)
    if scores.ndim != 2 or gt_index.shape != (scores.shape[0],):
        raise ValueError(f"scores {scores.shape} and gt_index {gt_index.shape} do not match")
    gt_score = scores[np.arange(scores.shape[0]), gt_index][:, None]
    higher = (scores > gt_score).sum(axis=1)
    tied_others = (scores == gt_score).sum(axis=1) - 1
    ranks = higher + tied_others
    ranks[np.isnan(gt_score[:, 0])] = scores.shape[1] - 1
    return ranks.astype(np.int64)


def recall_at_k(ranks, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """R@k for each k: % of queries with rank < k (ranks 0-based)."""
    ranks = np.asarray(ranks)
    return {int(k): float(100.0 * (ranks < k).mean()) for k in ks}


def moment_recall_at_k(ranks, ious, ks: Sequence[int] = (1, 10, 100),
                       iou_threshold: float = 0.7) -> dict[int, float]:
    """MoR@k for each k: % of queries with rank < k AND moment IoU > threshold (strict)."""
    ranks, ious = np.asarray(ranks), _np(ious)
    if ranks.shape != ious.shape:
        raise ValueError(f"ranks {ranks.shape} and ious {ious.shape} differ")
    good = ious > iou_threshold
    return {int(k): float(100.0 * ((ranks < k) & good).mean()) for k in ks}


def duration_exact_cut(pred_start, pred_end, video_duration, track_duration) -> tuple[np.ndarray, np.ndarray]:
    """Turn predicted moments into cuts exactly as long as the video (arrays [N] -> ([N], [N])).

    Keeps the predicted centre, sets the length to the video duration and shifts the cut
    to stay inside [0, track duration]; a track shorter than the video gives [0, track].
    """
    start, end = _np(pred_start), _np(pred_end)
    video, track = _np(video_duration), _np(track_duration)
    length = np.minimum(video, track)
    centre = (start + end) / 2.0
    cut_start = np.clip(centre - length / 2.0, 0.0, None)
    cut_start = np.minimum(cut_start, track - length)
    return cut_start, cut_start + length

