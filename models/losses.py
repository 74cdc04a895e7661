"""Training losses of MaDe: symmetric InfoNCE for matching, L1 + generalised IoU for moments."""
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


def matching_loss(
    mean_sim: Tensor, xpool_sim: Tensor, log_logit_scale: Tensor, track_ids: Tensor | None = None
) -> Tensor:
    """Equal-weight sum of symmetric InfoNCE on the mean-pooled and X-Pool similarity matrices.

    Similarities are [B_music, B_video]; ``track_ids`` [B] masks same-track negatives when given.
    """
    scale = log_logit_scale.exp()
    same_track = None if track_ids is None else track_ids[:, None] == track_ids[None, :]
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
