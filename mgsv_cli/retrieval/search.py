"""Two-stage search over any track store: first stage on the pooled vectors, model rerank, moments.

MaDe's relevance is ``p_s = cos(v, h0) + cos(v, h1)``: ``h0`` (a track's pooled vector)
does not depend on the video, ``h1`` (X-Pool over the track's keys) does. Scoring every
track with X-Pool costs memory traffic proportional to the keys (49 KB per track), so a
catalog of 10^5 to 10^7 tracks is searched in two stages:

1. **First stage** (:class:`FirstStage`): ``cos(v, h0)`` against every track's pooled
   vector, the top N kept. *Exact*: one matrix-vector product over all of them. Below
   :data:`BF16_MIN_TRACKS` tracks it runs on the store's pooled matrix as it is (float32
   [N, d], memory-mapped for Lance) scaled by the rows' inverse norms; from there on a
   normalised bfloat16 copy is kept in memory instead (512 MB at 1M tracks, d 256, half
   the float32 matrix) and multiplied with float32 accumulation: 29 ms instead of 40 ms
   at 1M on 2 cores, cosines within ~1e-3, so only the last few of the N candidates can
   differ from a float32 product (996 of the top 1,000 agree on random vectors); the
   rerank scores the candidates exactly either way. *IVF-PQ*: Lance's vector index on the
   derived dataset's ``pooled`` column (cosine), for catalogs of :data:`IVF_MIN_TRACKS`
   and more or when asked.
2. **Rerank** (:func:`rerank_ids`): ``model.score_pairs`` on the N candidates' derived rows
   (``store.derived_for``: pooled + keys), the model's full score; tracks are grouped by
   length as the token cache groups them (padding costs nothing then), converted into a
   per-thread workspace that is reused from query to query (a fresh 60 MB buffer per query
   cost more in page faults than the conversion itself). At 1M tracks on 2 cores
   (``bench/bench_scale.py``) the rerank of 1,000 is ~47 ms from a store of int8 keys
   (``mgsv index --store ... --keys int8``) and ~68 ms from float16 keys, most of it Lance's
   ``take`` of the 1,000 rows.
3. **Moments** (:func:`detect_moments`) on the top K, from the stored AST tokens
   (``store.tokens_for``), as ``mgsv suggest`` does.

With N at least the catalog size the result is exhaustive scoring exactly (the rerank
sees every track). The search needs of a model only ``encode_music`` (for the derived
rows), ``score_pairs`` on a :class:`~mgsv_cli.models.made.MusicTokens` of pooled vectors,
keys, mask and the score offsets the derived rows carry (made-plus querybank normalisation: a
per-track constant, so the first stage ignores it and the rerank applies it), and for moments
``detect``, ``window_relevance``, ``spans_to_seconds``: a model family that scores with the
pooled vectors alone (ReAL) works unchanged.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from mgsv_cli.errors import IndexDatabaseError, UsageError
from mgsv_cli.index.backend import TrackStore, is_lance_uri, update_derived

__all__ = ["DEFAULT_RERANK", "IVF_MIN_TRACKS", "Candidates", "FirstStage", "SearchResult", "detect_moments",
           "exhaustive", "first_stage_kinds", "rerank_ids", "score_ids", "search", "update_derived"]

DEFAULT_RERANK = 1000  # candidates the model reranks (issue 10: >= 99% top-10 agreement at 1,000)
IVF_MIN_TRACKS = 4_000_000  # below, the exact product is fast enough (1M: ~30 ms on 2 cores)
BF16_MIN_TRACKS = 200_000  # from here the first stage keeps a bfloat16 copy (half the memory traffic)
RERANK_BATCH = 1024  # tracks per derived_for + score_pairs call (one call for the default rerank)
_NORM_CHUNK = 65_536  # rows per pass over a memory-mapped matrix (its temporaries: 3 x 64 MB at d 256)
_NORM_EPS = 1e-12  # F.normalize's: a zero vector has cosine 0 with everything


def first_stage_kinds() -> tuple[str, ...]:
    """What ``FirstStage.build(kind=...)`` accepts."""
    return ("auto", "exact", "ivf_pq")


@dataclass
class Candidates:
    """The rerank's output, best first: ``track_ids`` int64 [n], ``scores`` float32 [n] (the
    model's full relevance), ``first_stage`` float32 [n] (``cos(v, h0)`` of the first stage)."""

    track_ids: Any
    scores: Any
    first_stage: Any


@dataclass
class SearchResult:
    """One video's search: the reranked ``candidates`` and the moments of the top K.

    ``top_ids`` int64 [K], ``scores`` float32 [K], ``predicted`` float64 [K, 2] (start, end in
    seconds, inside the track), ``relevance`` float32 [K, S] (X-Pool attention per window,
    max 1), ``durations`` float64 [K]; ``timings`` in seconds per stage.
    """

    candidates: Candidates
    top_ids: Any
    scores: Any
    predicted: Any
    relevance: Any
    durations: Any
    timings: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------- first stage


class FirstStage:
    """``cos(v, h0)`` of one video against every track with derived rows; see the module docstring.

    ``ids`` int64 [N] (by id); then either ``pooled`` float32 [N, d] (memory-mapped for Lance)
    with ``inv_norm`` float32 [N], or ``unit`` a torch bfloat16 [N, d] of normalised rows.
    ``kind`` is ``"exact"`` or ``"ivf_pq"``.
    """

    def __init__(self, ids, pooled=None, inv_norm=None, kind: str = "exact", vector_index: Any = None,
                 build_seconds: float = 0.0, unit=None):
        self.ids = ids
        self.pooled = pooled
        self.inv_norm = inv_norm
        self.unit = unit
        self.kind = kind
        self._vector_index = vector_index
        self.build_seconds = build_seconds

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @classmethod
    def build(cls, store: TrackStore, fingerprint: str, *, kind: str = "auto", ivf_min_tracks: int = IVF_MIN_TRACKS,
              bf16_min_tracks: int = BF16_MIN_TRACKS, nprobes: int = 32, refine_factor: int = 4) -> "FirstStage":
        """The first stage over ``store``'s pooled vectors for ``fingerprint`` (derived rows must exist:
        see :func:`update_derived`). ``kind``: ``auto`` (IVF-PQ from ``ivf_min_tracks`` tracks on a
        Lance store), ``exact`` or ``ivf_pq`` (Lance stores only; builds the index when missing).
        The exact product keeps a bfloat16 copy from ``bf16_min_tracks`` tracks on."""
        import numpy as np

        if kind not in first_stage_kinds():
            raise UsageError(f"first stage {kind!r}: expected one of {', '.join(first_stage_kinds())}")
        start = time.perf_counter()
        ids, pooled = store.pooled_matrix(fingerprint)
        ids = np.asarray(ids)
        if kind == "auto":
            kind = "ivf_pq" if len(ids) >= ivf_min_tracks and is_lance_uri(store.uri) else "exact"
        if kind == "ivf_pq":
            vector_index = _LanceVectorIndex.open(store, fingerprint, len(ids), pooled.shape[1], nprobes, refine_factor)
            return cls(ids, kind=kind, vector_index=vector_index, build_seconds=time.perf_counter() - start)
        if len(ids) >= bf16_min_tracks:
            # The float32 matrix is dropped once copied: its pages leave this process's memory.
            unit = _unit_rows_bf16(pooled)
            return cls(ids, unit=unit, kind=kind, build_seconds=time.perf_counter() - start)
        return cls(ids, pooled, _inverse_norms(pooled), kind, build_seconds=time.perf_counter() - start)

    def top(self, query, n: int, allowed=None):
        """The ``n`` tracks of highest ``cos(query, h0)``, best first (ties by id).

        ``query`` float [d] (a video's pooled vector, any norm); ``allowed`` bool [N] aligned
        with :attr:`ids` (False: never returned), or None. Returns (ids int64 [n'], cos float32 [n']),
        n' = min(n, tracks allowed).
        """
        import numpy as np

        query = np.asarray(query, dtype=np.float32).reshape(-1)
        query = query / max(float(np.linalg.norm(query)), _NORM_EPS)
        if self._vector_index is not None:
            return self._vector_index.top(query, n, self.ids, allowed)
        import torch

        if self.unit is not None:
            # bf16 x bf16 -> float32 accumulation inside; the result rounded to bf16, so cast back.
            cos = torch.mv(self.unit, torch.from_numpy(query).to(self.unit.dtype)).float().numpy()
        else:
            # One pass over the (memory-mapped) matrix, in torch rather than numpy: numpy's BLAS
            # threads spin after each call and take the cores from torch's for the rerank that
            # follows (50k tracks: rerank 112 ms after a numpy product, 49 ms after this one).
            cos = (torch.mv(_as_tensor(self.pooled), torch.from_numpy(query)) * _as_tensor(self.inv_norm)).numpy()
        if allowed is not None:
            cos = np.where(allowed, cos, -np.inf).astype(np.float32)
            n = min(n, int(np.count_nonzero(allowed)))
        return _best(self.ids, cos, n)


def _as_tensor(array):
    """A torch view of a numpy array, a read-only memory map included (torch only reads it)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "not writable": nothing here writes through it
        return torch.from_numpy(array)


def _row_chunks(pooled):
    """(first row, float32 rows) of [N, d] a chunk at a time. A memory-mapped ``.npy`` is read
    through plain file reads instead of its mapping, so that its pages (1 GB at 1M tracks)
    stay in the page cache and never count as this process's memory."""
    import numpy as np

    filename = getattr(pooled, "filename", None)
    if filename is None or not pooled.flags.c_contiguous or pooled.dtype != np.float32:
        for begin in range(0, pooled.shape[0], _NORM_CHUNK):
            yield begin, np.asarray(pooled[begin:begin + _NORM_CHUNK], dtype=np.float32)
        return
    row_bytes = pooled.shape[1] * 4
    with open(filename, "rb") as handle:
        for begin in range(0, pooled.shape[0], _NORM_CHUNK):
            count = min(_NORM_CHUNK, pooled.shape[0] - begin)
            handle.seek(pooled.offset + begin * row_bytes)
            yield begin, np.fromfile(handle, dtype=np.float32, count=count * pooled.shape[1]).reshape(count, -1)


def _norms(rows):
    """max(||row||, eps) of float32 [n, d], as F.normalize divides by."""
    import numpy as np

    return np.maximum(np.sqrt(np.einsum("nd,nd->n", rows, rows)), _NORM_EPS)


def _inverse_norms(pooled):
    """1 / max(||row||, eps) of float32 [N, d], a chunk at a time."""
    import numpy as np

    out = np.empty(pooled.shape[0], dtype=np.float32)
    for begin, rows in _row_chunks(pooled):
        out[begin:begin + rows.shape[0]] = 1.0 / _norms(rows)
    return out


def _unit_rows_bf16(pooled):
    """Rows of float32 [N, d] divided by their norms (as F.normalize does), as a torch bfloat16 [N, d],
    converted a chunk at a time."""
    import torch

    unit = torch.empty(pooled.shape, dtype=torch.bfloat16)
    for begin, rows in _row_chunks(pooled):
        unit[begin:begin + rows.shape[0]] = torch.from_numpy(rows / _norms(rows)[:, None])
    return unit


def _best(ids, values, n: int):
    """(ids, values) of the ``n`` largest ``values``, largest first, ties broken by id."""
    import numpy as np

    n = max(0, min(n, values.shape[0]))
    if n == 0:
        return ids[:0].astype(np.int64), values[:0].astype(np.float32)
    pick = np.argpartition(-values, n - 1)[:n] if n < values.shape[0] else np.arange(values.shape[0])
    pick = pick[np.isfinite(values[pick])]
    order = np.lexsort((ids[pick], -values[pick]))
    pick = pick[order]
    return np.asarray(ids[pick], dtype=np.int64), np.asarray(values[pick], dtype=np.float32)


class _LanceVectorIndex:
    """Lance's IVF-PQ index (cosine) on the ``pooled`` column of a Lance store's derived dataset."""

    def __init__(self, dataset_uri: str, nprobes: int, refine_factor: int):
        self.dataset_uri = dataset_uri
        self.nprobes = nprobes
        self.refine_factor = refine_factor

    @classmethod
    def open(cls, store, fingerprint: str, n_tracks: int, dim: int, nprobes: int, refine_factor: int):
        """Open (building it first when missing) the vector index of ``store``'s derived rows."""
        if not hasattr(store, "build_vector_index"):
            raise UsageError("the IVF-PQ first stage needs a Lance track store (an .sqlite index is searched exactly)")
        derived = store.derived_dataset(fingerprint)
        if derived is None:
            raise IndexDatabaseError(f"the track store {store.uri} has no derived rows for checkpoint {fingerprint}")
        dataset_uri = derived.uri
        if not _has_vector_index(derived):
            # About sqrt(N) partitions of ~N/sqrt(N) rows; 8 dims per PQ sub-vector.
            store.build_vector_index(fingerprint, num_partitions=max(1, min(4096, int(n_tracks ** 0.5))),
                                     num_sub_vectors=max(1, dim // 8) if dim % 8 == 0 else 1)
        return cls(dataset_uri, nprobes, refine_factor)

    def top(self, query, n: int, ids, allowed):
        import lance
        import numpy as np

        # The filter is a mask over the caller's ids: ask for more, keep the allowed ones.
        wanted = n if allowed is None else min(len(ids), 2 * n + int(np.count_nonzero(~allowed)))
        table = lance.dataset(self.dataset_uri).to_table(
            columns=["track_id"], nearest={"column": "pooled", "q": query, "k": max(1, wanted), "metric": "cosine",
                                           "nprobes": self.nprobes, "refine_factor": self.refine_factor})
        found = table.column("track_id").to_numpy().astype(np.int64)
        cos = (1.0 - table.column("_distance").to_numpy()).astype(np.float32)
        at = np.clip(np.searchsorted(ids, found), 0, len(ids) - 1)
        keep = ids[at] == found  # rows of tracks the pooled matrix has (current ones)
        if allowed is not None:
            keep &= allowed[at]
        return _best(found[keep], cos[keep], n)


def _has_vector_index(dataset) -> bool:
    return any("pooled" in (getattr(index, "field_names", None) or []) for index in dataset.describe_indices())


# ---------------------------------------------------------------- rerank and moments


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
    bucket). Keys are float16, or int8 with ``scales`` float32 [K, S] (see
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

    track_ids = np.asarray(track_ids, dtype=np.int64)
    out = np.empty(track_ids.shape[0], dtype=np.float32)
    device, dtype = video_tokens.pooled.device, _model_dtype(model)
    with torch.inference_mode():
        for begin in range(0, track_ids.shape[0], batch_size):
            chunk = track_ids[begin:begin + batch_size]
            rows = store.derived_for(fingerprint, chunk.tolist())
            mask = np.ascontiguousarray(rows.mask, dtype=bool)
            scales = None if rows.key_scales is None else np.ascontiguousarray(rows.key_scales, dtype=np.float32)
            keys = np.ascontiguousarray(rows.keys, dtype=np.float16 if scales is None else np.int8)
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
    """Rows of ``mask`` bool [K, S] grouped by their last valid window, as the token cache groups
    tracks (padding is exact to drop and most tracks are short): [(rows int64 [k_b], width)].
    Each bucket is cut at its edge, not at its longest member, so that a track's score does not
    depend on which others share its batch."""
    import numpy as np

    from mgsv_cli.features.recipe import N_MUSIC_WINDOWS
    from mgsv_cli.index.token_cache import BUCKET_EDGES

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


def rerank_ids(model, video_tokens, store: TrackStore, fingerprint: str, track_ids, first_stage=None,
           batch_size: int = RERANK_BATCH) -> Candidates:
    """Score ``track_ids`` with the model (in id order, so that one set of candidates always gets
    the same scores, bit for bit) and sort them best first (ties by id). ``first_stage``: their first-stage
    cosines, aligned with ``track_ids`` (kept in the result)."""
    import numpy as np

    track_ids = np.asarray(track_ids, dtype=np.int64)
    order = np.argsort(track_ids, kind="stable")
    ids = track_ids[order]
    scores = score_ids(model, video_tokens, store, fingerprint, ids, batch_size)
    cos = np.full(ids.shape[0], np.nan, np.float32) if first_stage is None else np.asarray(first_stage)[order]
    best = np.lexsort((ids, -scores))
    return Candidates(ids[best], scores[best], np.asarray(cos, dtype=np.float32)[best])


def exhaustive(model, video_tokens, store: TrackStore, fingerprint: str, first_stage: FirstStage | None = None,
               batch_size: int = RERANK_BATCH) -> Candidates:
    """Every track with derived rows scored by the model, best first: the reference the
    two-stage search is measured against."""
    if first_stage is None:
        first_stage = FirstStage.build(store, fingerprint, kind="exact")
    return rerank_ids(model, video_tokens, store, fingerprint, first_stage.ids, batch_size=batch_size)


def detect_moments(model, video_tokens, store: TrackStore, track_ids: Sequence[int], durations, video_duration=None):
    """Moments of one video (B = 1) in tracks ``track_ids`` [K] from their stored AST tokens.

    ``durations`` float64 [K] seconds. Returns (predicted float64 [K, 2] seconds inside each
    track, relevance float32 [K, S]) as ``mgsv suggest`` computes them.
    """
    import numpy as np
    import torch

    k = len(track_ids)
    if k == 0:
        return np.zeros((0, 2)), np.zeros((0, 0), np.float32)
    windows, window_mask = store.tokens_for([int(i) for i in track_ids])
    device = video_tokens.pooled.device
    durations = np.asarray(durations, dtype=np.float64)
    with torch.inference_mode():
        music = model.encode_music(torch.from_numpy(np.asarray(windows, np.float32)).to(device),
                                   torch.from_numpy(np.asarray(window_mask)).to(device).bool())
        spans = model.detect(video_tokens.repeat(k), music)
        relevance = model.window_relevance(video_tokens, music)[:, 0].float().cpu().numpy()
        predicted = model.spans_to_seconds(spans, torch.from_numpy(durations).to(spans.device, spans.dtype))
    return np.clip(predicted.cpu().double().numpy(), 0.0, durations[:, None]), relevance


def search(model, video_tokens, store: TrackStore, fingerprint: str, rerank: int = DEFAULT_RERANK,
           top_k: int = 5, *, first_stage: FirstStage | None = None, allowed=None,
           moments: bool = True) -> SearchResult:
    """Two-stage search for one video (``video_tokens``: B = 1, from ``model.encode_video``).

    First stage ``cos(v, h0)`` keeps ``rerank`` tracks (``allowed``: bool [N] over
    ``first_stage.ids``), the model reranks them, moments are detected on the top ``top_k``
    (skipped with ``moments=False``). ``first_stage``: built once per store and reused across
    videos (built here when None). Derived rows must be current (:func:`update_derived`).
    """
    import numpy as np

    if rerank < 1 or top_k < 1:
        raise UsageError("the rerank size and top K must be at least 1")
    timings: dict[str, float] = {}
    if first_stage is None:
        first_stage = FirstStage.build(store, fingerprint)
        timings["build_first_stage"] = first_stage.build_seconds
    t0 = time.perf_counter()
    ids, cos = first_stage.top(video_tokens.pooled[0].detach().float().cpu().numpy(), max(rerank, top_k), allowed)
    t1 = time.perf_counter()
    candidates = rerank_ids(model, video_tokens, store, fingerprint, ids, cos)
    t2 = time.perf_counter()
    top_ids = candidates.track_ids[:top_k]
    durations = np.array([r.duration for r in store.tracks(top_ids.tolist())], dtype=np.float64)
    if moments:
        predicted, relevance = detect_moments(model, video_tokens, store, top_ids, durations)
    else:
        predicted, relevance = np.zeros((0, 2)), np.zeros((0, 0), np.float32)
    t3 = time.perf_counter()
    timings.update(first_stage=t1 - t0, rerank=t2 - t1, moments=t3 - t2)
    return SearchResult(candidates, top_ids, candidates.scores[:top_k], predicted, relevance, durations, timings)

