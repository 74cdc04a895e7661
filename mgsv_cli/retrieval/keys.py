"""What the model scores a video against: each track's keys, in memory or read from the store.

The rerank of a search scores candidate tracks with the model's full relevance
(``model.score_pairs`` on a :class:`~mgsv_cli.models.made.MusicTokens` of pooled vectors, X-Pool
keys, masks and score offsets: a track's derived rows). Two sources give those rows:

* :class:`ResidentKeys`: every track of a library the model scores whole (at most the rerank
  size), read once from the store's derived rows and kept in memory, grouped by length;
* :func:`score_ids`: the candidates of a catalog, read from the store per query
  (``store.derived_for``), converted into a per-thread workspace reused from query to
  query (a fresh 60 MB buffer per query cost more in page faults than the conversion).

Both group tracks by their last valid window (:data:`BUCKET_EDGES`): padded windows get zero
attention weight in X-Pool, so trimming them is exact, and short tracks (most of a library:
139 s on average, 57 of 96 windows) stop costing memory traffic, the bound of CPU scoring.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Sequence

from mgsv_cli.index.trackstore import TrackStore

BUCKET_EDGES = (24, 48, 72)  # valid-window counts that split tracks into length buckets
RERANK_BATCH = 1024  # tracks per derived_for + score_pairs call (one call for the default rerank)


@dataclass
class ResidentKeys:
    """What scoring needs of every track of a library, in memory, grouped by length.

    Each bucket is ``(positions [n_b] long, MusicTokens with keys [n_b, S_b, d], mask
    [n_b, S_b], pooled [n_b, d])`` where ``S_b`` is the last valid window of the bucket's
    longest track: padded windows get zero attention weight in X-Pool, so trimming
    them is exact, and short tracks (most of a library: 139 s on average, 57 of 96
    windows) stop costing memory traffic, the bound of CPU scoring.
    """

    buckets: list[tuple[Any, Any]]
    n_tracks: int

    def score(self, model, video_tokens):
        """Relevance p_s of every track for one video (B = 1): float32 [N], track order."""
        return self.score_videos(model, video_tokens)[0]

    def score_videos(self, model, video_tokens, block: int | None = None):
        """Relevance p_s of every track for each video of a batch: float32 [B, N], track order.

        ``block``: tracks per ``score_pairs`` call, which holds ``block x B`` pairs at once (the
        benchmark's thousands of tracks x hundreds of videos); None scores a bucket in one call.
        """
        import torch

        n_videos = video_tokens.pooled.shape[0]
        scores = torch.full((n_videos, self.n_tracks), float("-inf"), device=video_tokens.pooled.device)
        for positions, music in self.buckets:
            step = len(positions) if block is None else max(1, int(block))
            for begin in range(0, len(positions), step):
                part = music if step >= len(positions) else _rows(music, begin, begin + step)
                scores[:, positions[begin:begin + step]] = model.score_pairs(video_tokens, part).float().t()
        return torch.nan_to_num(scores, nan=float("-inf"))

    @property
    def has_offsets(self) -> bool:
        """Whether the tracks carry score offsets (a model with a made-plus querybank)."""
        return any(music.offsets is not None for _, music in self.buckets)

    def to_full(self, width: int):
        """Inverse of :meth:`from_full`: keys [N, width, d], pooled [N, d], mask [N, width], offsets [N]
        (or None) in track order."""
        import torch

        _, first = self.buckets[0]
        keys = first.keys.new_zeros(self.n_tracks, width, first.keys.shape[-1])
        pooled = first.pooled.new_zeros(self.n_tracks, first.pooled.shape[-1])
        mask = torch.zeros(self.n_tracks, width, dtype=torch.bool, device=first.mask.device)
        offsets = torch.zeros(self.n_tracks, device=first.mask.device) if self.has_offsets else None
        for positions, music in self.buckets:
            kept = music.keys.shape[1]
            keys[positions, :kept], mask[positions, :kept], pooled[positions] = music.keys, music.mask, music.pooled
            if offsets is not None:
                offsets[positions] = music.offsets
        return keys, pooled, mask, offsets

    @classmethod
    def from_full(cls, keys, pooled, mask, offsets=None) -> "ResidentKeys":
        """Bucket full-length tensors: keys [N, S, d], pooled [N, d], mask [N, S] bool, score
        offsets [N] (or None: a model without them)."""
        import torch

        from mgsv_cli.models.made import MusicTokens

        last_valid = torch.where(mask.any(1), mask.shape[1] - mask.flip(1).int().argmax(1), 0)
        bucket_of = torch.bucketize(last_valid, torch.tensor(BUCKET_EDGES, device=mask.device), right=False)
        buckets = []
        for b in bucket_of.unique().tolist():
            positions = torch.nonzero(bucket_of == b).flatten()
            width = max(1, int(last_valid[positions].max()))
            music = MusicTokens(None, mask[positions, :width].contiguous(), pooled[positions].contiguous(),
                                keys[positions, :width].contiguous(),
                                None if offsets is None else offsets[positions].contiguous())
            buckets.append((positions.to(keys.device), music))
        return cls(buckets, int(keys.shape[0]))

    @classmethod
    def load(cls, store: TrackStore, fingerprint: str, ids, device) -> "ResidentKeys":
        """The derived rows of tracks ``ids`` [N] (every row current: see ``derived.update_derived``),
        bucketed on ``device``, in the order of ``ids``."""
        import numpy as np
        import torch

        ids = np.asarray(ids, dtype=np.int64)
        rows = store.derived_for(fingerprint, ids.tolist())
        mask = torch.from_numpy(np.ascontiguousarray(rows.mask, dtype=bool))
        keys = torch.from_numpy(_dequantized(rows)).to(device)
        offsets = None if rows.offsets is None else torch.from_numpy(np.asarray(rows.offsets, np.float32)).to(device)
        return cls.from_full(keys.float(), torch.from_numpy(np.asarray(rows.pooled, np.float32)).to(device),
                             mask.to(device), offsets)


def _rows(music, begin: int, stop: int):
    """Rows [begin, stop) of a MusicTokens (views, no copy)."""
    from dataclasses import fields, replace

    return replace(music, **{f.name: None if getattr(music, f.name) is None else getattr(music, f.name)[begin:stop]
                             for f in fields(music)})


def _dequantized(rows):
    """The keys of derived rows as float numpy [K, S, d] (int8 keys scaled back)."""
    import numpy as np

    from mgsv_cli.index.records import dequantize_keys

    if rows.key_scales is not None:
        return dequantize_keys(rows.keys, rows.key_scales)
    return np.ascontiguousarray(rows.keys)


# ---------------------------------------------------------------- keys read per query


_workspaces = threading.local()  # per thread: one reusable buffer for the rerank's key buckets


def _workspace(shape, dtype):
    """A torch tensor of ``shape`` and ``dtype`` (contents undefined) in this thread's reusable
    buffer, which grows to the largest bucket asked and stays. A fresh 60 MB array for every
    query costs ~15k page faults (the allocator hands it back to the kernel when freed): tens of
    ms on 2 cores, more than converting the keys. Valid until the next call in the thread."""
    import math

    import torch

    count = math.prod(int(size) for size in shape)
    buffers = getattr(_workspaces, "buffers", None)
    if buffers is None:
        buffers = _workspaces.buffers = {}
    buffer = buffers.get(dtype)
    if buffer is None or buffer.numel() < count:
        buffer = buffers[dtype] = torch.empty(count, dtype=dtype)
    return buffer[:count].view(shape)


def _bucket_keys(keys, members, width: int, dtype, scales=None):
    """Rows ``members`` (numpy int64 [k_b]) of keys numpy [K, S, d], windows [:width] (zero-padded past S), as a torch
    [k_b, width, d] of ``dtype`` on the CPU, in this thread's workspace (valid until the next
    bucket). Keys are float32 or float16, or int8 with ``scales`` float32 [K, S] (see
    ``records.quantize_keys``), dequantized here. Each row's windows are read once and written
    converted."""
    import torch

    out = _workspace((len(members), width, keys.shape[2]), dtype)
    kept = min(width, keys.shape[1])
    if kept < width:
        out[:, kept:] = 0
    source = torch.from_numpy(keys)
    if scales is not None:
        # int8 rows are a quarter of float32's bytes: gathering them first (contiguous) costs
        # little, then one conversion and one scaling pass over contiguous memory.
        pick = torch.from_numpy(members)
        gathered = source[:, :kept].index_select(0, pick)
        factors = torch.from_numpy(scales)[:, :kept].index_select(0, pick).unsqueeze(-1).to(dtype)
        if kept == width:
            out.copy_(gathered)
            out.mul_(factors)
        else:
            out[:, :kept] = gathered.to(dtype) * factors
        return out
    # Row by row: a gather (index_select) would first write an fp16 copy of every row.
    for j, row in enumerate(members.tolist()):
        out[j, :kept].copy_(source[row, :kept])
    return out


def _model_dtype(model):
    return getattr(model, "dtype", None) or next(model.parameters()).dtype


def score_ids(model, video_tokens, store: TrackStore, fingerprint: str, track_ids: Sequence[int],
              batch_size: int = RERANK_BATCH):
    """The model's relevance of tracks ``track_ids`` (their derived rows) for one video (B = 1):
    float32 numpy [len(track_ids)], in the order given."""
    import numpy as np
    import torch

    from mgsv_cli.features.recipe import N_MUSIC_WINDOWS
    from mgsv_cli.models.made import MusicTokens

    ids = np.asarray(track_ids, dtype=np.int64)
    out = np.empty(ids.shape[0], dtype=np.float32)
    device, dtype = video_tokens.pooled.device, _model_dtype(model)
    with torch.inference_mode():
        for begin in range(0, ids.shape[0], batch_size):
            chunk = ids[begin:begin + batch_size]
            rows = store.derived_for(fingerprint, chunk.tolist())
            mask = np.ascontiguousarray(rows.mask, dtype=bool)
            scales = None if rows.key_scales is None else np.ascontiguousarray(rows.key_scales, dtype=np.float32)
            # float32 (an SQLite index), float16 or int8 (a Lance store): converted per bucket below.
            keys = np.ascontiguousarray(rows.keys) if scales is None else np.ascontiguousarray(rows.keys, np.int8)
            mask_t = torch.from_numpy(_pad_to(mask, N_MUSIC_WINDOWS))
            pooled = torch.from_numpy(np.ascontiguousarray(rows.pooled, dtype=np.float32))
            offsets = None if rows.offsets is None else torch.from_numpy(np.asarray(rows.offsets, dtype=np.float32))
            for members, width in _length_buckets(mask):
                pick = torch.from_numpy(members)
                music = MusicTokens(None, mask_t[:, :width].index_select(0, pick).to(device),
                                    pooled.index_select(0, pick).to(device=device, dtype=dtype),
                                    _bucket_keys(keys, members, width, dtype, scales).to(device),
                                    None if offsets is None else offsets.index_select(0, pick).to(device))
                scores = model.score_pairs(video_tokens, music)[:, 0].float()
                out[begin + members] = torch.nan_to_num(scores, nan=float("-inf")).cpu().numpy()
    return out


def _length_buckets(mask):
    """Rows of ``mask`` bool [K, S] grouped by their last valid window, as the resident keys group
    tracks (padding is exact to drop and most tracks are short): [(rows int64 [k_b], width)].
    Each bucket is cut at its edge, not at its longest member, so that a track's score does not
    depend on which others share its batch."""
    import numpy as np

    from mgsv_cli.features.recipe import N_MUSIC_WINDOWS

    width = mask.shape[1]
    last = np.where(mask.any(1), width - np.argmax(mask[:, ::-1], axis=1), 0)
    edges = np.asarray([*BUCKET_EDGES, max(N_MUSIC_WINDOWS, width)])
    bucket = np.searchsorted(edges, last, side="left")
    return [(np.flatnonzero(bucket == b), int(edges[b])) for b in np.unique(bucket)]


def _pad_to(rows, width: int):
    """``rows`` [k, S, ...] zero-padded to at least ``width`` slots on axis 1 (never copied when wide enough)."""
    import numpy as np

    if rows.shape[1] >= width:
        return rows
    out = np.zeros((rows.shape[0], width, *rows.shape[2:]), dtype=rows.dtype)
    out[:, :rows.shape[1]] = rows
    return out
