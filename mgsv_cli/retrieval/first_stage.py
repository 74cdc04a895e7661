"""The first stage of a search: ``cos(v, h0)`` against every track's pooled vector, the top N kept.

MaDe's relevance is ``p_s = cos(v, h0) + cos(v, h1)``: ``h0`` (a track's pooled vector)
does not depend on the video, ``h1`` (X-Pool over the track's keys) does. Scoring every
track with X-Pool costs memory traffic proportional to the keys, so a catalog of 10^5 to
10^7 tracks keeps the candidates of its first term first:

* **all**: a library the model can score whole (at most the rerank size) keeps every
  track: the rerank then is exhaustive scoring, exactly.
* **exact**: one matrix-vector product over all of them. Below :data:`BF16_MIN_TRACKS`
  tracks it runs on the store's pooled matrix as it is (float32 [N, d], memory-mapped for
  Lance) scaled by the rows' inverse norms; from there on a normalised bfloat16 copy is
  kept in memory instead (half the float32 matrix) and multiplied with float32
  accumulation: cosines within ~1e-3, so only the last few of the N candidates can differ
  from a float32 product; the rerank scores the candidates exactly either way.
* **ivf_pq**: Lance's vector index on the derived dataset's ``pooled`` column (cosine), for
  catalogs of :data:`IVF_MIN_TRACKS` and more or when asked.

The product runs in torch rather than numpy: numpy's BLAS threads spin after each call and
take the cores from torch's for the rerank that follows.
"""
from __future__ import annotations

import time
from typing import Any

from mgsv_cli.errors import IndexDatabaseError, UsageError
from mgsv_cli.index.trackstore import TrackStore

IVF_MIN_TRACKS = 4_000_000  # below, the exact product is fast enough
BF16_MIN_TRACKS = 200_000  # from here the first stage keeps a bfloat16 copy (half the memory traffic)
_NORM_CHUNK = 65_536  # rows per pass over a memory-mapped matrix (its temporaries: 3 x 64 MB at d 256)
_NORM_EPS = 1e-12  # F.normalize's: a zero vector has cosine 0 with everything


def first_stage_kinds() -> tuple[str, ...]:
    """What ``FirstStage.build(kind=...)`` accepts."""
    return ("auto", "exact", "ivf_pq")


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
    def keep_all(cls, ids) -> "FirstStage":
        """The first stage of a library scored whole: every track (``ids`` int64 [N]) is a candidate."""
        import numpy as np

        return cls(np.asarray(ids, dtype=np.int64), kind="all")

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
            kind = "ivf_pq" if len(ids) >= ivf_min_tracks and store.supports_vector_index else "exact"
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

        if self.kind == "all":  # every allowed track, by id (the rerank orders them)
            chosen = self.ids if allowed is None else self.ids[np.asarray(allowed, dtype=bool)]
            return chosen[:n], np.full(min(n, chosen.shape[0]), np.nan, dtype=np.float32)
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
        if not store.supports_vector_index:
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
