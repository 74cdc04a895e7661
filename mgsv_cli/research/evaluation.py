"""``mgsv eval``: the MGSV benchmark protocol on an MGSV-EC split (spec section 1).

- SmG: one moment per video, detected on its ground-truth track; spans to seconds
  clamped to [0, track duration]; mIoU against [music_start, music_end].
- V2MR: every video scored against every distinct track of the split (the split's own
  candidate set) with ``model.score_pairs``; R@k counts 0-based rank < k, ties count
  against the ground truth (:func:`mgsv_cli.metrics.gt_ranks`).
- MsG: MoR@k = GT track ranked < k AND IoU of the moment on the GT track > 0.7.
- ``*_cut``: the same moments turned into cuts exactly as long as the video
  (:func:`mgsv_cli.metrics.duration_exact_cut`), the way ``mgsv suggest`` cuts music.
  The video duration is ``video_segment_duration``: in the release it equals the GT
  moment length, while ``video_total_duration`` can be up to 100 s longer.

mIoU is a fraction, every other number a percentage.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Optional

import numpy as np

from mgsv_cli.models import metrics
from mgsv_cli.research.dataset import ProgressFn, SplitData, load_split, read_split_csv

METRIC_KEYS = ("miou", "r1", "r5", "r10", "mor1", "mor10", "mor100")
CUT_KEYS = ("miou_cut", "mor1_cut", "mor10_cut", "mor100_cut")
RESULT_KEYS = ("split", "n") + METRIC_KEYS + CUT_KEYS
RECALL_KS = (1, 5, 10)
MOMENT_RECALL_KS = (1, 10, 100)
IOU_THRESHOLD = 0.7

# MaDe as published (ICCV 2025), MGSV-EC test split.
PUBLISHED_MADE_TEST = {"miou": 0.722, "r1": 8.8, "r5": 16.3, "r10": 19.8,
                       "mor1": 8.3, "mor10": 17.6, "mor100": 30.7}


def evaluate_model(model, split_data: SplitData, device, batch_size: int = 256, dtype=None,
                   progress: Optional[ProgressFn] = None, details: bool = False) -> dict[str, Any]:
    """Run the full protocol of ``model`` (a MaDe) on one loaded split.

    ``split_data``: a memory-mapped ``SplitData`` or a ``DeviceSplit`` already on ``device``.
    Every distinct track is encoded once and kept on ``device``; every video is encoded
    once and ranked against all tracks by the search's resident keys (blocks of
    ``batch_size`` tracks per ``score_pairs`` call, so memory stays bounded by ``batch_size``
    squared), the scores of a block of videos gathered on the device and copied back once,
    and its moment detected on its GT track.
    ``dtype`` (e.g. ``torch.bfloat16``) runs a copy of the model whose
    weights are in that dtype (cheaper than autocast, which casts every activation);
    ``None`` runs in float32. Returns the keys of :data:`RESULT_KEYS` (plus ``n_tracks``);
    ``details``: also ``per_video`` (:func:`per_video_details`), what the plots are drawn from.
    """
    import torch

    device = torch.device(device)
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    was_training = model.training
    model.eval()
    runner = model if dtype is None or dtype == model.dtype else copy.deepcopy(model).to(dtype)
    try:
        with torch.inference_mode():
            tracks = _encode_tracks(runner, split_data, device, batch_size, progress)
            ranks, moments = _score_and_detect(runner, split_data, tracks, device, batch_size, progress)
    finally:
        model.train(was_training)
    per_video = per_video_details(split_data, ranks, moments)
    result = _protocol_metrics(split_data, per_video)
    if details:
        result["per_video"] = per_video
    return result


def per_video_details(split_data: SplitData, ranks: np.ndarray, moments: np.ndarray) -> dict[str, Any]:
    """Per video: 0-based rank of the GT track, IoU of the moment (paper protocol) and of the
    exact-length cut, and the video's category; plus ``n_tracks``."""
    labels = split_data.labels
    cut = np.stack(metrics.duration_exact_cut(moments[:, 0], moments[:, 1], labels.video_duration,
                                              labels.music_total_duration), axis=1)
    return {"ranks": ranks, "ious": metrics.temporal_iou(moments, labels.moments),
            "cut_ious": metrics.temporal_iou(cut, labels.moments), "categories": labels.video_category,
            "n_tracks": split_data.n_tracks}


def write_plots(result: dict[str, Any], folder: str | os.PathLike) -> list:
    """``mgsv eval --plots DIR``: the IoU histogram, R@k / MoR@k against k and the per-category
    table (CSV and Markdown) of an :func:`evaluate` result made with ``details=True``."""
    from pathlib import Path

    from mgsv_cli.research.curves import write_eval_plots

    return write_eval_plots(result["per_video"], Path(folder), f"{result['split']} ({result['n']} videos)",
                            IOU_THRESHOLD)


def _encode_tracks(model, split_data: SplitData, device, batch_size: int, progress: Optional[ProgressFn]):
    """Every distinct track of a split encoded once (``for_search``: keys and score offsets too):
    a MusicTokens [n_tracks, S, d] in split-track order. Encoded longest first, so a batch of
    similar lengths is trimmed to its own last valid window."""
    import torch

    order = np.argsort(-split_data.track_valid_counts(), kind="stable")
    parts = []
    for begin in range(0, order.size, batch_size):
        chunk = order[begin:begin + batch_size]
        windows, mask = split_data.track_inputs(chunk, device)
        parts.append(model.encode_music(windows, mask, for_search=True))
        if progress:
            progress("encoding music", begin + chunk.size, order.size)
    position = np.empty_like(order)
    position[order] = np.arange(order.size)
    return _concat_padded(parts).take(torch.from_numpy(position).to(device))


_PER_SLOT_FIELDS = ("tokens", "mask", "keys")  # MusicTokens fields with one entry per window


def _concat_padded(parts: list):
    """Join MusicTokens batches along the batch dim, padding the window dim (mask False)."""
    import dataclasses

    import torch

    if len(parts) == 1:
        return parts[0]
    length = max(p.mask.shape[1] for p in parts)
    joined: dict[str, Any] = {}
    for field in dataclasses.fields(parts[0]):
        values = [getattr(p, field.name) for p in parts]
        if any(v is None for v in values):
            joined[field.name] = None
            continue
        if field.name in _PER_SLOT_FIELDS:
            values = [_pad_dim1(v, length) for v in values]
        joined[field.name] = torch.cat(values, dim=0)
    return type(parts[0])(**joined)


def _pad_dim1(tensor, length: int):
    import torch

    missing = length - tensor.shape[1]
    if missing == 0:
        return tensor
    pad = torch.zeros((tensor.shape[0], missing, *tensor.shape[2:]), dtype=tensor.dtype, device=tensor.device)
    return torch.cat([tensor, pad], dim=1)


def _score_and_detect(model, split_data: SplitData, tracks, device, batch_size: int,
                      progress: Optional[ProgressFn]) -> tuple[np.ndarray, np.ndarray]:
    """Ranks of the GT track [n] and moments on the GT track [n, 2] (seconds). ``tracks``: the
    split's MusicTokens (:func:`_encode_tracks`), ranked through the search's own resident keys
    (``retrieval.keys.ResidentKeys``: length buckets, ``batch_size`` tracks per call)."""
    import torch

    from mgsv_cli.retrieval.keys import ResidentKeys

    resident = ResidentKeys.from_full(tracks.keys, tracks.pooled, tracks.mask, tracks.offsets)
    n = split_data.n
    ranks = np.empty(n, dtype=np.int64)
    moments = np.empty((n, 2), dtype=np.float64)
    durations = split_data.labels.music_total_duration
    for begin in range(0, n, batch_size):
        rows = np.arange(begin, min(n, begin + batch_size))
        videos = split_data.video_index[rows]
        frames, frame_mask = split_data.video_inputs(videos, device)
        video_tokens = model.encode_video(frames, frame_mask)
        scores = resident.score_videos(model, video_tokens, block=batch_size)  # [videos, tracks]
        gt_tracks = split_data.track_index[rows]
        ranks[rows] = metrics.gt_ranks(scores.cpu().numpy(), gt_tracks)
        gt_music = tracks.take(torch.from_numpy(gt_tracks).to(device)).trimmed()
        spans = model.detect(video_tokens, gt_music).float()
        seconds = model.spans_to_seconds(spans, torch.from_numpy(durations[rows]).float().to(device))
        moments[rows] = seconds.float().cpu().numpy()
        if progress:
            progress("scoring videos", int(rows[-1]) + 1, n)
    return ranks, moments


def _protocol_metrics(split_data: SplitData, per_video: dict[str, Any]) -> dict[str, Any]:
    ranks, ious, cut_ious = per_video["ranks"], per_video["ious"], per_video["cut_ious"]
    recall = metrics.recall_at_k(ranks, RECALL_KS)
    moment_recall = metrics.moment_recall_at_k(ranks, ious, MOMENT_RECALL_KS, IOU_THRESHOLD)
    moment_recall_cut = metrics.moment_recall_at_k(ranks, cut_ious, MOMENT_RECALL_KS, IOU_THRESHOLD)
    result: dict[str, Any] = {"split": split_data.split, "n": split_data.n, "n_tracks": split_data.n_tracks,
                              "miou": float(ious.mean())}
    result.update({f"r{k}": v for k, v in recall.items()})
    result.update({f"mor{k}": v for k, v in moment_recall.items()})
    result["miou_cut"] = float(cut_ious.mean())
    result.update({f"mor{k}_cut": v for k, v in moment_recall_cut.items()})
    return result


def parameter_counts(model) -> dict[str, int]:
    """Parameters per top-level module plus ``total`` (or the model's own ``parameter_counts()``)."""
    own = getattr(model, "parameter_counts", None)
    if callable(own):
        return {str(k): int(v) for k, v in dict(own()).items()}
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def evaluate(root: str | os.PathLike, split: str, checkpoint: Optional[str | os.PathLike] = None,
             device: str = "auto", batch_size: int = 256, precision: str = "fp32",
             progress: Optional[ProgressFn] = None, plots: Optional[str | os.PathLike] = None) -> dict[str, Any]:
    """Load ``split`` under ``root`` and a trained model, and run :func:`evaluate_model`.

    ``checkpoint``: None (latest run), a run folder or a ``.safetensors`` file. On a CUDA
    GPU the split's features are copied there once when they fit (``dataset.place_split``);
    running out of GPU memory is a one-line error naming ``--batch-size``.
    Adds ``params`` (per-module counts), ``checkpoint`` (path) and ``checkpoint_id``.
    ``plots``: a folder to write the plots into (:func:`write_plots`); their paths are in ``plots``.
    """
    from mgsv_cli.device import compute_dtype, out_of_memory_hint, resolve_device
    from mgsv_cli.models.checkpoint import load_model
    from mgsv_cli.research.dataset import place_split

    torch_device = resolve_device(device)
    dtype = compute_dtype(torch_device, precision)
    model, _variant, meta = load_model(checkpoint, device=torch_device)  # first: fails fast, packing is slow
    split_data = load_split(root, split, progress=progress)
    with out_of_memory_hint("evaluating", "--batch-size", batch_size, torch_device):
        placed = place_split(split_data, torch_device)
        result = evaluate_model(model, placed, torch_device, batch_size=batch_size, dtype=dtype, progress=progress,
                                details=plots is not None)
    if plots is not None:
        result["plots"] = [str(path) for path in write_plots(result, plots)]
        del result["per_video"]
    result["params"] = parameter_counts(model)
    result["checkpoint"] = str(meta.get("path", "")) if meta else None
    result["checkpoint_id"] = meta.get("checkpoint_id") if meta else None
    return result


def evaluate_prior(root: str | os.PathLike, split: str) -> dict[str, Any]:
    """The content-free baseline: moment = [0, video duration] on the GT track (CSV only).

    Ranking metrics are None (the prior cannot rank tracks); ``miou_cut`` equals ``miou``
    since the prior is already exactly as long as the video.
    """
    labels = read_split_csv(root, split)
    end = np.minimum(labels.video_duration, labels.music_total_duration)
    prior = np.stack([np.zeros(labels.n), end], axis=1)
    miou = metrics.mean_iou(prior, labels.moments)
    result: dict[str, Any] = {"split": split, "n": labels.n, "baseline": "prior"}
    result.update({key: None for key in METRIC_KEYS + CUT_KEYS})
    result["miou"] = result["miou_cut"] = miou
    return result
