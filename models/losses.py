"""Training losses of MaDe: symmetric InfoNCE for matching, L1 + generalised IoU for moments.

made-plus adds :func:`multi_positive_info_nce` (same-track pairs as positives) and
:func:`start_window_loss` (the ``start_pointer`` decoder's cross-entropy on the start window).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def span_cxw_to_se(spans: Tensor) -> Tensor:
    """(centre, width) [..., 2] -> (start, end) [..., 2], same units."""
    centre, width = spans.unbind(-1)
    return torch.stack([centre - width / 2, centre + width / 2], dim=-1)


def generalized_iou(pred: Tensor, target: Tensor) -> Tensor:
    """Generalised IoU of 1-D spans given as (start, end): [..., 2] x [..., 2] -> [...]."""
    inter = (torch.minimum(pred[..., 1], target[..., 1]) - torch.maximum(pred[..., 0], target[..., 0])).clamp(min=0)
    union = (pred[..., 1] - pred[..., 0]) + (target[..., 1] - target[..., 0]) - inter
    hull = torch.maximum(pred[..., 1], target[..., 1]) - torch.minimum(pred[..., 0], target[..., 0])
    iou = inter / union.clamp(min=1e-6)
    return iou - (hull - union) / hull.clamp(min=1e-6)


def symmetric_info_nce(sim: Tensor, logit_scale: Tensor, same_track: Tensor | None = None) -> Tensor:
    """InfoNCE in both directions over a [B_music, B_video] cosine matrix whose diagonal are positives.

    ``same_track`` [B, B] bool, when given, removes off-diagonal pairs that share a track
    from the negatives (the reference keeps them as negatives).
    """
    logits = sim * logit_scale
    if same_track is not None:
        off_diagonal = same_track & ~torch.eye(len(sim), dtype=torch.bool, device=sim.device)
        logits = logits.masked_fill(off_diagonal, float("-inf"))
    labels = torch.arange(len(sim), device=sim.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def multi_positive_info_nce(sim: Tensor, logit_scale: Tensor, track_ids: Tensor) -> Tensor:
    """Symmetric InfoNCE over the batch's distinct tracks, every same-track video a positive.

    sim [B_music, B_video] cosines of a batch of matched pairs, track_ids [B]. Row i is
    track ``track_ids[i]``; the rows of one track are copies (the same feature file), so
    only its first row is kept. Track -> videos: each distinct track against all videos,
    the mean over its videos of -log softmax (every video of the track a positive).
    Video -> tracks: each video against the distinct tracks, its own the one positive.

    Why not the paper's square loss: there a track with k videos in the batch is k
    identical rows, so it is k negatives in every other video's softmax and weighs k
    times in the track -> video direction; here each track counts once, as in the
    candidate set at test time. Equals :func:`symmetric_info_nce` when tracks are distinct.
    """
    first = _first_of_each(track_ids)
    logits = sim[first] * logit_scale  # [T, B]
    positives = (track_ids[first][:, None] == track_ids[None, :]).to(logits.dtype)  # [T, B]
    track_to_video = (-(logits.log_softmax(dim=1) * positives).sum(1) / positives.sum(1)).mean()
    video_to_track = (-(logits.log_softmax(dim=0) * positives).sum(0)).mean()  # one positive per column
    return (track_to_video + video_to_track) / 2


def _first_of_each(ids: Tensor) -> Tensor:
    """Positions of the first occurrence of each distinct value of ``ids`` [B] (in batch order)."""
    earlier = torch.tril(ids[:, None] == ids[None, :], diagonal=-1).any(1)
    return torch.nonzero(~earlier).flatten()


def matching_loss(
    mean_sim: Tensor, xpool_sim: Tensor, log_logit_scale: Tensor, track_ids: Tensor | None = None,
    same_track_positives: bool = False,
) -> Tensor:
    """Equal-weight sum of symmetric InfoNCE on the mean-pooled and X-Pool similarity matrices.

    Similarities are [B_music, B_video]; ``track_ids`` [B], when given, masks same-track
    negatives, or with ``same_track_positives`` (made-plus) makes them positives
    (:func:`multi_positive_info_nce`).
    """
    scale = log_logit_scale.exp()
    same_track = None if track_ids is None else track_ids[:, None] == track_ids[None, :]
    if same_track_positives and track_ids is not None:
        return (multi_positive_info_nce(mean_sim, scale, track_ids)
                + multi_positive_info_nce(xpool_sim, scale, track_ids))
    return symmetric_info_nce(mean_sim, scale, same_track) + symmetric_info_nce(xpool_sim, scale, same_track)


def detection_loss(spans: Tensor, target: Tensor, l1_weight: float = 4.0, giou_weight: float = 1.0) -> Tensor:
    """Moment loss summed over decoder layers.

    spans [L, B, 2] predicted normalised (centre, width); target [B, 2] likewise.
    Per layer: ``l1_weight`` * L1 + ``giou_weight`` * (1 - GIoU), each averaged over the batch.
    """
    target = target.to(spans.dtype).expand_as(spans)
    l1 = (spans - target).abs().sum(-1).mean(-1)
    giou = generalized_iou(span_cxw_to_se(spans), span_cxw_to_se(target)).mean(-1)
    return (l1_weight * l1 + giou_weight * (1 - giou)).sum()


def start_window_loss(start_logits: Tensor, target: Tensor, n_windows: int) -> Tensor:
    """Cross-entropy of the pointed start window, summed over decoder layers (made-plus ``start_pointer``).

    start_logits [L, B, S] over a pair's music windows (-inf where padded; window j is
    centred at j / ``n_windows`` of the longest track, S <= n_windows);
    target [B, 2] normalised (centre, width). The labelled window is the one whose centre
    is nearest the cut's start, or the track's last valid window if the start lies beyond it.
    """
    layers, batch, length = start_logits.shape
    start = target[:, 0].float() - target[:, 1].float() / 2
    valid = torch.isfinite(start_logits[0])  # [B, S]
    last_valid = (valid * torch.arange(length, device=valid.device)).amax(1)
    window = torch.minimum((start * n_windows).round().long().clamp(min=0), last_valid)
    return F.cross_entropy(start_logits.reshape(layers * batch, length), window.repeat(layers), reduction="sum") / batch
