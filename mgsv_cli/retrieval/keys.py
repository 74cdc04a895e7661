"""The per-checkpoint token cache: what scoring needs from every indexed track.

What scoring needs from the tracks (``MusicTokens.keys``/``pooled``/``mask``) depends
only on the checkpoint and the index, so it is computed once and cached under
``paths.cache_dir()/music_tokens`` per (checkpoint, index); each track's ``token_stamp``
in the index tells which cached rows are still current, so after adding a few songs
only those are encoded. Tracks are grouped by length into buckets so that short tracks
(most of a library) are scored without the padding of long ones. The cache is only an
optimisation: a failed write is ignored, an unreadable or stale file is rebuilt.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mgsv_cli import paths

TOKEN_CACHE_FORMAT = "3"
ENCODE_CHUNK = 128  # tracks per encode_music call while building the cache
StatusFn = Callable[[str], None]


BUCKET_EDGES = (24, 48, 72)  # valid-window counts that split tracks into length buckets


@dataclass
class ScoringTokens:
    """What scoring needs of every indexed track, grouped by length.

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
        import torch

        scores = torch.full((self.n_tracks,), float("-inf"), device=video_tokens.pooled.device)
        for positions, music in self.buckets:
            scores[positions] = model.score_pairs(video_tokens, music)[:, 0].float()
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
    def from_full(cls, keys, pooled, mask, offsets=None) -> "ScoringTokens":
        """Bucket full-length tensors: keys [N, S, d], pooled [N, d], mask [N, S] bool, score
        offsets [N] (or None: a model without them)."""
        import torch

        from mgsv_cli.models.made import MusicTokens

        last_valid = torch.where(mask.any(1), mask.shape[1] - mask.flip(1).int().argmax(1), 0)
        bucket_of = torch.bucketize(last_valid, torch.tensor(BUCKET_EDGES), right=False)
        buckets = []
        for b in bucket_of.unique().tolist():
            positions = torch.nonzero(bucket_of == b).flatten()
            width = max(1, int(last_valid[positions].max()))
            music = MusicTokens(None, mask[positions, :width].contiguous(), pooled[positions].contiguous(),
                                keys[positions, :width].contiguous(),
                                None if offsets is None else offsets[positions].contiguous())
            buckets.append((positions.to(keys.device), music))
        return cls(buckets, int(keys.shape[0]))


def model_fingerprint(model) -> str:
    """A content id of a model's weights (for models that have no checkpoint id)."""
    digest = hashlib.blake2b(digest_size=8)
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def token_cache_path(model_id: str, index) -> Path:
    return paths.cache_dir() / "music_tokens" / f"{model_id}-{index.index_uuid[:16]}.safetensors"


def scoring_tokens_for(model, model_id: str, index, tracks, device, status: StatusFn | None = None,
                       use_cache: bool = True) -> tuple[ScoringTokens, bool]:
    """:class:`ScoringTokens` of every track in ``tracks`` (the index's order, by id).

    Taken from the per-(checkpoint, index) cache when it holds every track's current
    tokens (same ids and ``token_stamp``s). After the index changed, only new and
    re-embedded tracks go through ``model.encode_music``; the rest are reused from the
    cache, which is then rewritten. Returns ``(tokens, fully_from_cache)``.
    """
    import torch

    cache_file = token_cache_path(model_id, index)
    ids = torch.tensor([t.id for t in tracks], dtype=torch.int64)
    stamps = torch.tensor([t.token_stamp for t in tracks], dtype=torch.int64)
    cached = _read_token_cache(cache_file, index.encoder_id, device) if use_cache else None
    if cached is not None and cached[2].has_offsets != model.has_score_offsets:
        cached = None  # offsets where the model has none, or none where it has them: rebuilt, never trusted
    if cached is not None and torch.equal(cached[0], ids) and torch.equal(cached[1], stamps):
        return cached[2], True
    known = {} if cached is None else {
        (int(i), int(st)): pos for pos, (i, st) in enumerate(zip(cached[0].tolist(), cached[1].tolist()))
    }
    from_cache = [(pos, known[key]) for pos, key in enumerate(zip(ids.tolist(), stamps.tolist())) if key in known]
    todo = sorted(set(range(len(tracks))) - {pos for pos, _ in from_cache})
    if status:
        status(f"encoding {len(todo)} of {len(tracks)} indexed tracks for this model (cached for later runs)")
    keys, pooled, mask, offsets = _assemble(model, index, tracks, device, cached[2] if cached else None, from_cache,
                                            todo)
    tokens = ScoringTokens.from_full(keys, pooled, mask, offsets)
    if use_cache:
        _write_token_cache(cache_file, tokens, ids, stamps, index.encoder_id, model_id)
    return tokens, False


def _assemble(model, index, tracks, device, cached: ScoringTokens | None, from_cache, todo):
    """Full-width keys [N, S, d], pooled [N, d], mask [N, S], score offsets [N] (None for a model
    without them): rows ``from_cache`` copied from the old cache (``(new position, old position)``
    pairs), rows ``todo`` encoded now."""
    import torch

    width, dim = model.cfg.n_windows, model.cfg.d_model
    n_tracks = len(tracks)
    keys = torch.zeros(n_tracks, width, dim, device=device)
    pooled = torch.zeros(n_tracks, dim, device=device)
    mask = torch.zeros(n_tracks, width, dtype=torch.bool, device=device)
    # One score offset per track when the model has them (a made-plus querybank; see MusicTokens).
    offsets = torch.zeros(n_tracks, device=device) if model.has_score_offsets else None
    if from_cache:
        old_keys, old_pooled, old_mask, old_offsets = cached.to_full(width)
        new_pos, old_pos = (torch.tensor(p, device=device) for p in zip(*from_cache))
        keys[new_pos], pooled[new_pos], mask[new_pos] = old_keys[old_pos], old_pooled[old_pos], old_mask[old_pos]
        if offsets is not None:
            offsets[new_pos] = old_offsets[old_pos]
    with torch.inference_mode():
        for start in range(0, len(todo), ENCODE_CHUNK):
            chunk = todo[start:start + ENCODE_CHUNK]
            feats, feat_mask = index.tokens_for([tracks[p].id for p in chunk])
            music = model.encode_music(torch.from_numpy(feats).to(device), torch.from_numpy(feat_mask).to(device),
                                       for_search=True)
            rows = torch.tensor(chunk, device=device)
            n_kept = music.keys.shape[1]  # encode_music trims each batch to its last valid window
            keys[rows, :n_kept] = music.keys.to(keys.dtype)
            mask[rows, :n_kept] = music.mask
            pooled[rows] = music.pooled.to(pooled.dtype)
            if offsets is not None:
                offsets[rows] = music.offsets.float()
    return keys, pooled, mask, offsets


def _read_token_cache(path: Path, encoder_id: str | None, device):
    """``(track_ids [N], token_stamps [N], ScoringTokens)`` from a cache file, or None."""
    from safetensors import safe_open

    from mgsv_cli.models.made import MusicTokens

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("format") != TOKEN_CACHE_FORMAT or meta.get("encoder_id") != str(encoder_id):
                return None
            buckets = []
            for b in range(int(meta["n_buckets"])):
                def read(name: str):
                    return handle.get_tensor(f"{name}.{b}").to(device)

                offsets = read("offsets") if f"offsets.{b}" in handle.keys() else None
                buckets.append((read("positions"), MusicTokens(None, read("mask").bool(), read("pooled"), read("keys"),
                                                               offsets)))
            ids, stamps = handle.get_tensor("track_ids"), handle.get_tensor("token_stamps")
    except Exception:  # a truncated or foreign cache file is rebuilt, never trusted
        return None
    return ids, stamps, ScoringTokens(buckets, len(ids))


def _write_token_cache(path: Path, tokens: ScoringTokens, track_ids, token_stamps, encoder_id: str | None,
                       model_id: str) -> None:
    """Atomic write (temporary file + rename): a killed run never leaves half a cache.

    Stored exactly as scored (bucketed, the model's dtype), so loading is a plain read
    (memory-mapped) and cached results equal fresh ones bit for bit. One file per
    (checkpoint, index): the rename replaces the cache of older index contents.
    """
    import torch
    from safetensors.torch import save_file

    tensors = {"track_ids": track_ids.contiguous(), "token_stamps": token_stamps.contiguous()}
    for b, (positions, music) in enumerate(tokens.buckets):
        tensors[f"keys.{b}"] = music.keys.cpu().contiguous()
        tensors[f"pooled.{b}"] = music.pooled.cpu().contiguous()
        tensors[f"mask.{b}"] = music.mask.to(torch.uint8).cpu().contiguous()
        tensors[f"positions.{b}"] = positions.cpu().contiguous()
        if music.offsets is not None:
            tensors[f"offsets.{b}"] = music.offsets.float().cpu().contiguous()
    meta = {"format": TOKEN_CACHE_FORMAT, "encoder_id": str(encoder_id), "model_id": model_id,
            "n_buckets": str(len(tokens.buckets))}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # the cache is an optimisation: failing to write it is not an error
