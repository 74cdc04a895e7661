"""A checkpoint's derived rows of a store's tracks: what the search keeps of each track.

For every track and model the search needs the track's pooled vector h0(M) [d], its X-Pool
keys [S, d] and its score offset (made-plus querybank normalisation; a per-track constant):
``model.encode_music(..., for_search=True)`` of the stored AST tokens. They depend only on the
checkpoint and the track's tokens, so they are computed once and kept in the store per model
fingerprint (``TrackStore.put_derived``), incrementally: after adding a few songs only those
are encoded.
"""
from __future__ import annotations

import hashlib

from mgsv_cli.index.records import DerivedRows, ProgressFn, to_numpy
from mgsv_cli.index.trackstore import TrackStore


def model_fingerprint(model) -> str:
    """A content id of a model's weights (for models that have no checkpoint id)."""
    digest = hashlib.blake2b(digest_size=8)
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def fingerprint_of(model, model_id: str) -> str:
    """The name of the model's derived rows in a store: the checkpoint id when it is a safe name,
    else a content id of the weights."""
    if model_id and all(c.isalnum() or c in "-_." for c in model_id):
        return model_id
    return model_fingerprint(model)


def derive_rows(model, track_ids, tokens, mask) -> DerivedRows:
    """What the search keeps of tracks for ``model``: ``tokens`` float32 [K, S, 768], ``mask`` [K, S].

    Runs ``model.encode_music`` (MaDe's music enhancer and X-Pool key projection) on the
    model's device; returns pooled float32 [K, d], keys float32 [K, S', d] (S' <= S: each store
    keeps them in its own precision) and the score offsets float32 [K] of a model that has them.
    """
    import numpy as np
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        music = model.encode_music(torch.as_tensor(np.asarray(tokens, dtype=np.float32), device=device),
                                   torch.as_tensor(np.asarray(mask), device=device).bool(), for_search=True)
    offsets = None if music.offsets is None else to_numpy(music.offsets.float()).astype(np.float32)
    return DerivedRows(np.asarray(track_ids, dtype=np.int64), to_numpy(music.pooled.float()).astype(np.float32),
                       to_numpy(music.keys.float()).astype(np.float32), to_numpy(music.mask).astype(bool),
                       offsets=offsets)


def update_derived(store: TrackStore, model, fingerprint: str, *, batch_size: int = 128,
                   progress: ProgressFn | None = None) -> int:
    """Compute and store ``model``'s derived rows for every track that lacks current ones;
    returns how many.

    Incremental: only :meth:`TrackStore.derived_missing` is encoded, ``batch_size`` tracks
    per ``model.encode_music`` call and per (atomic) :meth:`TrackStore.put_derived`.
    """
    missing = store.derived_missing(fingerprint)
    for start in range(0, len(missing), batch_size):
        ids = missing[start:start + batch_size]
        tokens, mask = store.tokens_for(ids)
        store.put_derived(fingerprint, derive_rows(model, ids, tokens, mask))
        if progress:
            progress("derived", min(start + batch_size, len(missing)), len(missing))
    return len(missing)
