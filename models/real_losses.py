"""Training losses of ReAL (seed 003): multi-positive InfoNCE for retrieval; for Music-DETR,
Hungarian matching of the Q queries to the ground truth, then L1 + generalised IoU on the
matched span, foreground/background cross-entropy on every query, and the alignment loss."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mgsv_cli.models.losses import generalized_iou, span_cxw_to_se
from mgsv_cli.models.real import FOREGROUND


def same_track_positives(track_ids: Tensor) -> Tensor:
    """[B] track of each pair -> [B_music, B_video] bool: music i is a positive of video j
    when both rows use the same track (the diagonal always is)."""
    return track_ids[:, None] == track_ids[None, :]


def multi_positive_info_nce(sim: Tensor, log_scale: Tensor, positives: Tensor) -> Tensor:
    """Symmetric InfoNCE over a cosine matrix [B_music, B_video], several positives per row/column.

    ``L = L_m2v + L_v2m`` (the paper's sum); each direction is the mean over anchors of
    ``-log(sum of exp over positives / sum of exp over all)`` with logits ``sim * exp(log_scale)``.
    """
    logits = sim.float() * log_scale.exp()
    masked = logits.masked_fill(~positives, float("-inf"))
    music_to_video = (logits.logsumexp(1) - masked.logsumexp(1)).mean()
    video_to_music = (logits.logsumexp(0) - masked.logsumexp(0)).mean()
    return music_to_video + video_to_music


def hungarian(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost one-to-one assignment of queries (rows) to targets (columns), scipy's
    ``linear_sum_assignment``: cost [Q, T] -> (query indices, target indices)."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(cost)
    return rows.astype(np.int64), cols.astype(np.int64)


def matching_cost(spans: Tensor, logits: Tensor, target: Tensor, l1_weight: float, giou_weight: float,
                  class_weight: float) -> Tensor:
    """DETR's matching cost of each query against its pair's moment: [B, Q].

    spans [B, Q, 2] and target [B, 2] normalised (centre, width); logits [B, Q, 2].
    ``class_weight * -p(foreground) + l1_weight * L1 + giou_weight * -GIoU``.
    """
    target = target.to(spans.dtype)[:, None, :].expand_as(spans)
    l1 = (spans - target).abs().sum(-1)
    giou = generalized_iou(span_cxw_to_se(spans), span_cxw_to_se(target))
    foreground = logits.softmax(-1)[..., FOREGROUND]
    return class_weight * -foreground + l1_weight * l1 + giou_weight * -giou


def match_queries(cost: Tensor) -> Tensor:
    """The query matched to each pair's (single) moment by the Hungarian algorithm: cost [B, Q] -> [B] long."""
    values = cost.detach().float().cpu().numpy()
    matched = [hungarian(values[b][:, None])[0][0] for b in range(values.shape[0])]
    return torch.as_tensor(np.asarray(matched, dtype=np.int64), device=cost.device)


def alignment_loss(moment_embed: Tensor, video_embed: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE between each pair's matched moment embedding [B, d] and its video [B, d]."""
    m = F.normalize(moment_embed.float(), dim=-1)
    v = F.normalize(video_embed.float(), dim=-1)
    logits = m @ v.T / temperature
    labels = torch.arange(len(m), device=m.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def localisation_loss(out: dict[str, Tensor], target: Tensor, recipe) -> dict[str, Tensor]:
    """Music-DETR's loss on a batch of B matched pairs.

    ``out``: :meth:`MusicDETR.forward`'s outputs; ``target`` [B, 2] normalised (centre, width);
    ``recipe``: a ``RealTrainConfig`` (weights). Returns ``l1``, ``giou``, ``cls``, ``align``
    (each unweighted) and ``total`` (weighted sum).
    """
    spans, logits = out["spans"], out["logits"]
    target = target.to(spans.dtype)
    cost = matching_cost(spans, logits, target, recipe.l1_weight, recipe.giou_weight, recipe.class_weight)
    matched = match_queries(cost)
    rows = torch.arange(len(matched), device=spans.device)
    span = spans[rows, matched]
    l1 = (span - target).abs().sum(-1).mean()
    giou = (1 - generalized_iou(span_cxw_to_se(span), span_cxw_to_se(target))).mean()
    labels = torch.full(logits.shape[:2], 1 - FOREGROUND, dtype=torch.long, device=logits.device)
    labels[rows, matched] = FOREGROUND
    class_weights = torch.ones(2, device=logits.device)
    class_weights[1 - FOREGROUND] = recipe.background_weight
    cls = F.cross_entropy(logits.transpose(1, 2), labels, weight=class_weights)
    align = alignment_loss(out["moment_embed"][rows, matched], out["video_embed"], recipe.align_temperature)
    total = (recipe.l1_weight * l1 + recipe.giou_weight * giou + recipe.class_weight * cls
             + recipe.align_weight * align)
    return {"l1": l1, "giou": giou, "cls": cls, "align": align, "total": total}
