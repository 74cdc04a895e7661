"""The one search path: a store's tracks ranked for a video by a model, and the moments found.

:class:`Retriever` joins, for one (store, model):

1. **derived rows** brought up to date (``derived.update_derived``: only tracks the model has
   not encoded yet);
2. a **first stage** (``first_stage.FirstStage``): ``cos(v, h0)`` over the pooled vectors keeps
   the top N (the rerank size); a library of at most N tracks keeps them all;
3. the **rerank**: the model's full score ``model.score_pairs`` of the candidates, from keys
   held in memory for a library scored whole (``keys.ResidentKeys``) or read from the store
   per query for a catalog (``keys.score_ids``); scored in id order, so that one set of
   candidates always gets the same scores, and sorted best first (ties by id);
4. **moments** (:meth:`Retriever.moments`) on the tracks the caller keeps, from their stored
   AST tokens (``model.encode_music`` of the K winners, then ``model.detect``).

With N at least the catalog's size, the result is exhaustive scoring exactly. The search
needs of a model only ``encode_music`` (for the derived rows and the moments), ``score_pairs``
on a :class:`~mgsv_cli.models.made.MusicTokens` of pooled vectors, keys, mask and score
offsets, and ``detect``, ``window_relevance``, ``spans_to_seconds``: a model family that
scores with the pooled vectors alone (ReAL) works unchanged. The score offsets of made-plus's
querybank are a per-track constant: the first stage ignores them and the rerank applies them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from mgsv_cli.errors import UsageError
from mgsv_cli.index.trackstore import TrackStore
from mgsv_cli.retrieval.derived import update_derived
from mgsv_cli.retrieval.first_stage import FirstStage, first_stage_kinds
from mgsv_cli.retrieval.keys import RERANK_BATCH, ResidentKeys, score_ids

__all__ = ["DEFAULT_RERANK", "Candidates", "Retriever", "SearchResult", "detect_moments", "first_stage_kinds",
           "rerank_ids"]

DEFAULT_RERANK = 1000  # candidates the model reranks (>= 99% top-10 agreement with exhaustive scoring)
StatusFn = Callable[[str], None]


@dataclass
class Candidates:
    """The rerank's output, best first: ``track_ids`` int64 [n], ``scores`` float32 [n] (the
    model's full relevance), ``first_stage`` float32 [n] (``cos(v, h0)`` of the first stage; NaN
    where every track was a candidate)."""

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


class Retriever:
    """A store's tracks for one model: :meth:`rank` candidates for a video, :meth:`moments` in them.

    ``ids`` int64 [N] (by id) are the tracks it ranks; ``first_stage.kind`` is ``all`` for a
    library scored whole (its keys resident), else ``exact`` or ``ivf_pq``.
    """

    def __init__(self, model, store: TrackStore, fingerprint: str, first_stage: FirstStage,
                 resident: ResidentKeys | None, rerank: int, timings: dict[str, float] | None = None):
        import numpy as np

        self.model, self.store, self.fingerprint = model, store, fingerprint
        self.first_stage, self.resident, self.rerank = first_stage, resident, int(rerank)
        self.ids = np.asarray(first_stage.ids, dtype=np.int64)
        self.timings = timings if timings is not None else {}

    @classmethod
    def open(cls, store: TrackStore, model, fingerprint: str, *, rerank: int = DEFAULT_RERANK,
             first_stage: str = "auto", device=None, status: StatusFn | None = None) -> "Retriever":
        """Bring ``store``'s derived rows for ``model`` up to date and build the first stage (and the
        resident keys of a library of at most ``rerank`` tracks). ``first_stage``: ``auto``,
        ``exact`` or ``ivf_pq`` (a store with a vector index only); ``status`` hears progress."""
        if rerank < 1:
            raise UsageError("the rerank size must be at least 1")
        if first_stage not in first_stage_kinds():
            raise UsageError(f"first stage {first_stage!r}: expected one of {', '.join(first_stage_kinds())}")
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        missing = len(store.derived_missing(fingerprint))
        if missing and status:
            status(f"encoding {missing} of {len(store)} tracks for this model (kept for later runs)")

        def progress(stage: str, done: int, total: int) -> None:
            if status:
                status(f"encoding tracks for this model: {done} of {total}")

        encoded = update_derived(store, model, fingerprint, progress=progress) if missing else 0
        timings["music_derived_encoded" if encoded else "music_derived_current"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ids, _ = store.pooled_matrix(fingerprint)
        if len(ids) <= rerank and first_stage == "auto":
            stage = FirstStage.keep_all(ids)
            resident = ResidentKeys.load(store, fingerprint, stage.ids, device or _device_of(model))
            timings["load_resident_keys"] = time.perf_counter() - t0
        else:
            stage, resident = FirstStage.build(store, fingerprint, kind=first_stage), None
            timings["build_first_stage"] = stage.build_seconds
        return cls(model, store, fingerprint, stage, resident, rerank, timings)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def rank(self, video_tokens, allowed=None) -> Candidates:
        """Candidates for one video (``video_tokens``: B = 1, from ``model.encode_video``), best first.

        ``allowed``: bool [N] aligned with :attr:`ids` (False: never returned), or None. At most
        the rerank size of them: every allowed track of a library scored whole.
        """
        import numpy as np
        import torch

        query = video_tokens.pooled[0].detach().float().cpu().numpy()
        ids, cos = self.first_stage.top(query, self.rerank, allowed)
        if self.resident is None:
            return rerank_ids(self.model, video_tokens, self.store, self.fingerprint, ids, cos)
        with torch.inference_mode():  # as score_ids and detect_moments: callers need not ask for it
            scores = self.resident.score(self.model, video_tokens).cpu().numpy()  # every track, in id order
        at = np.searchsorted(self.ids, ids)
        best = np.lexsort((ids, -scores[at]))
        return Candidates(ids[best], scores[at][best].astype(np.float32), np.asarray(cos, np.float32)[best])

    def moments(self, video_tokens, track_ids: Sequence[int], durations):
        """(predicted float64 [K, 2] seconds inside each track, relevance float32 [K, S]) of one
        video in tracks ``track_ids`` [K] of ``durations`` float64 [K] seconds."""
        return detect_moments(self.model, video_tokens, self.store, track_ids, durations)

    def search(self, video_tokens, top_k: int = 5, allowed=None, moments: bool = True) -> SearchResult:
        """:meth:`rank`, then the moments of the top ``top_k`` (skipped with ``moments=False``)."""
        import numpy as np

        if top_k < 1:
            raise UsageError("the top K must be at least 1")
        t0 = time.perf_counter()
        candidates = self.rank(video_tokens, allowed)
        t1 = time.perf_counter()
        top_ids = candidates.track_ids[:top_k]
        durations = np.array([r.duration for r in self.store.tracks(top_ids.tolist())], dtype=np.float64)
        if moments:
            predicted, relevance = self.moments(video_tokens, top_ids, durations)
        else:
            predicted, relevance = np.zeros((0, 2)), np.zeros((0, 0), np.float32)
        t2 = time.perf_counter()
        return SearchResult(candidates, top_ids, candidates.scores[:top_k], predicted, relevance, durations,
                            {"rank": t1 - t0, "moments": t2 - t1})


def _device_of(model):
    return next(model.parameters()).device


def rerank_ids(model, video_tokens, store: TrackStore, fingerprint: str, track_ids, first_stage=None,
               batch_size: int = RERANK_BATCH) -> Candidates:
    """Score ``track_ids`` with the model from their stored derived rows (in id order, so that one
    set of candidates always gets the same scores) and sort them best first (ties by id).
    ``first_stage``: their first-stage cosines, aligned with ``track_ids`` (kept in the result)."""
    import numpy as np

    track_ids = np.asarray(track_ids, dtype=np.int64)
    order = np.argsort(track_ids, kind="stable")
    ids = track_ids[order]
    scores = score_ids(model, video_tokens, store, fingerprint, ids, batch_size)
    cos = np.full(ids.shape[0], np.nan, np.float32) if first_stage is None else np.asarray(first_stage)[order]
    best = np.lexsort((ids, -scores))
    return Candidates(ids[best], scores[best], np.asarray(cos, dtype=np.float32)[best])


def detect_moments(model, video_tokens, store: TrackStore, track_ids: Sequence[int], durations):
    """Moments of one video (B = 1) in tracks ``track_ids`` [K] from their stored AST tokens.

    ``durations`` float64 [K] seconds. Returns (predicted float64 [K, 2] seconds inside each
    track, relevance float32 [K, S]: the matching attention over each track's windows, max 1).
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
        # spans are float32 (MPS has no float64): clamp again so rounding never steps past the end.
        predicted = model.spans_to_seconds(spans, torch.from_numpy(durations).to(spans.device, spans.dtype))
    return np.clip(predicted.cpu().double().numpy(), 0.0, durations[:, None]), relevance
