"""The records a track store exchanges, and the packing every backend shares.

Kept apart from ``backend.py`` (which picks a backend) so that both backends can import
them without an import cycle. ``backend.py`` re-exports everything here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class TrackRecord:
    """One indexed track, without its tokens."""

    track_id: int
    location: str
    content_hash: str
    duration: float
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class NewTrack:
    """A track to add: its record fields and frozen features.

    ``tokens`` float16/float32 [S, 768], ``mask`` bool [S] (S <= 96, padded slots False),
    ``beats`` the beat-grid dict or None, ``encoder_id`` the encoders that made the tokens.
    """

    location: str
    content_hash: str
    duration: float
    tokens: Any
    mask: Any
    encoder_id: str
    tags: dict[str, str] = field(default_factory=dict)
    beats: dict | None = None


@dataclass
class DerivedRows:
    """Derived data of some tracks for one checkpoint.

    ``track_ids`` int64 [K]; ``pooled`` float32 [K, d] (h0 before normalisation);
    ``keys`` float16 [K, S, d] and ``mask`` bool [K, S] padded to the longest of the K.
    A store that keeps its keys in int8 (see :func:`quantize_keys`) returns ``keys`` int8
    [K, S, d] with ``key_scales`` float32 [K, S]: key = keys * key_scales[..., None].
    ``offsets`` float32 [K]: what the model subtracts from each track's score (made-plus
    querybank normalisation, ``MusicTokens.offsets``); None for a model without them.
    """

    track_ids: Any
    pooled: Any
    keys: Any
    mask: Any
    key_scales: Any = None
    offsets: Any = None


KEY_ENCODINGS = ("float16", "int8")  # how a store may keep X-Pool keys (int8: half the bytes)


def quantize_keys(keys):
    """Symmetric int8 per window: ``keys`` float [..., S, d] -> (int8 [..., S, d], scales float32 [..., S]).

    Each window's vector is scaled by its largest magnitude / 127 and rounded, so one key's
    relative error is at most 0.4% of its largest entry (d = 256: ~0.25% of its norm on
    average); an all-zero window gets scale 0.
    """
    import numpy as np

    keys = np.asarray(keys, dtype=np.float32)
    peak = np.abs(keys).max(axis=-1)
    scales = (peak / 127.0).astype(np.float32)
    safe = np.where(scales > 0, scales, 1.0).astype(np.float32)
    quantized = np.clip(np.rint(keys / safe[..., None]), -127, 127).astype(np.int8)
    return quantized, scales


def dequantize_keys(keys, scales):
    """The float32 keys of :func:`quantize_keys`' (int8 [..., S, d], scales [..., S])."""
    import numpy as np

    return np.asarray(keys, dtype=np.float32) * np.asarray(scales, dtype=np.float32)[..., None]


def to_numpy(x):
    """A numpy view of a numpy array or a (CPU or device) torch tensor."""
    import numpy as np

    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def valid_length(mask) -> int:
    """Slots up to and including the last valid one: what a trimmed row keeps of ``mask`` [S]."""
    import numpy as np

    valid = np.flatnonzero(np.asarray(mask))
    return int(valid[-1]) + 1 if valid.size else 0


def pad_rows(rows: Sequence, masks: Sequence, width: int, dim: int, dtype):
    """Stack trimmed rows ``[S_i, dim]`` (masks ``[S_i]``) into ``[K, width, dim]`` and bool ``[K, width]``."""
    import numpy as np

    out = np.zeros((len(rows), width, dim), dtype=dtype)
    mask = np.zeros((len(rows), width), dtype=bool)
    for k, (row, m) in enumerate(zip(rows, masks)):
        out[k, :row.shape[0]] = row
        mask[k, :m.shape[0]] = m
    return out, mask


def check_derived(rows: DerivedRows):
    """``rows`` as numpy (ids int64 [K], pooled float32 [K, d], keys float16 [K, S, d], mask bool [K, S],
    offsets float32 [K] or None), with their shapes checked: a caller's mistake is an error here, not
    a store with bad rows. Quantized keys (``key_scales`` given) come back dequantized."""
    import numpy as np

    from mgsv_cli.errors import DataError

    ids = to_numpy(rows.track_ids).astype(np.int64).reshape(-1)
    pooled = to_numpy(rows.pooled).astype(np.float32)
    keys = to_numpy(rows.keys)
    if rows.key_scales is not None:
        scales = to_numpy(rows.key_scales)
        if scales.shape != keys.shape[:-1]:
            raise DataError(f"key scales of shape {scales.shape} for keys of shape {keys.shape}")
        keys = dequantize_keys(keys, scales)
    keys = keys.astype(np.float16)
    mask = to_numpy(rows.mask).astype(bool)
    k = ids.shape[0]
    if pooled.ndim != 2 or pooled.shape[0] != k or keys.ndim != 3 or keys.shape[0] != k \
            or keys.shape[2] != pooled.shape[1] or mask.shape != keys.shape[:2]:
        raise DataError(f"derived rows of mismatched shapes: ids {ids.shape}, pooled {pooled.shape}, "
                        f"keys {keys.shape}, mask {mask.shape}")
    offsets = None if rows.offsets is None else to_numpy(rows.offsets).astype(np.float32)
    if offsets is not None and offsets.shape != (k,):
        raise DataError(f"derived rows of mismatched shapes: ids {ids.shape}, offsets {offsets.shape}")
    return ids, pooled, keys, mask, offsets


def derive_rows(model, track_ids, tokens, mask) -> DerivedRows:
    """What the search keeps of tracks for ``model``: ``tokens`` float32 [K, S, 768], ``mask`` [K, S].

    Runs ``model.encode_music`` (MaDe's music enhancer and X-Pool key projection) on the
    model's device; returns pooled float32 [K, d], keys float16 [K, S', d] (S' <= S) and the
    score offsets float32 [K] of a model that has them.
    """
    import numpy as np
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        music = model.encode_music(torch.as_tensor(np.asarray(tokens, dtype=np.float32), device=device),
                                   torch.as_tensor(np.asarray(mask), device=device).bool(), for_search=True)
    offsets = None if music.offsets is None else to_numpy(music.offsets.float()).astype(np.float32)
    return DerivedRows(np.asarray(track_ids, dtype=np.int64), to_numpy(music.pooled.float()).astype(np.float32),
                       to_numpy(music.keys.float()).astype(np.float16), to_numpy(music.mask).astype(bool),
                       offsets=offsets)
