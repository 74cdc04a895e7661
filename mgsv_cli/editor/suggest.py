"""``mgsv suggest``: rank every indexed track for a video and find the moment to cut.

Pipeline per video: frames at 1 fps -> CLIP features (``features``) -> MaDe scores every
indexed track in one batched pass (``model.score_pairs``) -> moments detected on the
top K only (``model.detect``) -> a cut exactly as long as the video, centred on the
predicted moment and kept inside the track (``metrics.duration_exact_cut``).

What scoring needs from the tracks is cached per (checkpoint, index) by
:mod:`mgsv_cli.index.token_cache`. Detection re-encodes the K winners from the index's
stored AST tokens (a few milliseconds), so the cache stays at keys only.

A library larger than the rerank size N (default 1,000 tracks), and any Lance track store
(``--index DIR.lance`` or ``s3://...``), is searched in two stages instead
(:mod:`mgsv_cli.index.search`): ``cos(v, h0)`` over every track's pooled vector keeps the
top N, MaDe reranks those, moments on the top K as above. A library of at most N tracks
is scored exhaustively, exactly as before.

The last suggestion per video is remembered for ``mgsv render`` and ``mgsv export``
(:mod:`mgsv_cli.editor.record`).
"""
from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from mgsv_cli.editor import outputs
from mgsv_cli.features.recipe import window_valid
from mgsv_cli.index.search import DEFAULT_RERANK
from mgsv_cli.index.token_cache import model_fingerprint, scoring_tokens_for
from mgsv_cli.editor.record import Suggestion, SuggestionResult, remember_suggestion
from mgsv_cli.editor.fitting import check_fit, fit_entry
from mgsv_cli.editor.snapping import check_snap, snap_entry
from mgsv_cli.editor.tracklist import TrackList
from mgsv_cli.media.beats import BeatGrid
from mgsv_cli.errors import CheckpointError, IndexDatabaseError, MgsvError, UsageError, first_line


StatusFn = Callable[[str], None]


# ---------------------------------------------------------------- the scoring core


def rank_and_detect(model, video_tokens, scoring_tokens, load_music_windows, track_durations, video_duration: float,
                    top_k: int, usable: Callable[[int], bool] | None = None):
    """Score every track for one video and detect the moment on the top K.

    ``video_tokens``: ``VideoTokens`` of one video (B = 1); ``scoring_tokens``: the cached
    :class:`ScoringTokens` of all N tracks;
    ``load_music_windows(positions)`` returns the frozen AST windows ``[K, S, music_dim]``
    and mask ``[K, S]`` of those track positions; ``track_durations`` float64 CPU tensor [N].
    ``usable(position)``: asked of the candidates best first until K are usable (the
    others are passed over, so K still come back when there are K usable tracks).

    Returns ``(top_positions [K], scores [K], predicted [K, 2], cuts [K, 2], relevance [K, S])``
    as numpy arrays, best first; times in seconds; ``relevance`` is the matching attention
    over each winner's windows (max 1, 0 on padding). K may be 0 when no track is usable.
    """
    import numpy as np
    import torch

    from mgsv_cli.models.metrics import duration_exact_cut

    scores = scoring_tokens.score(model, video_tokens)
    k = min(top_k, scores.shape[0])
    top_scores, top = torch.topk(scores, k)
    if usable is not None:
        usable = functools.lru_cache(maxsize=None)(usable)  # each candidate asked once (a file check)
    if usable is not None and not all(usable(p) for p in top.tolist()):
        # Only now sort everything: the usual case (all of the top K usable) stays one topk.
        top_scores, order = torch.sort(scores, descending=True, stable=True)
        chosen = []
        for rank, position in enumerate(order.tolist()):
            if usable(position):
                chosen.append(rank)
                if len(chosen) == top_k:
                    break
        top, top_scores, k = order[chosen], top_scores[chosen], len(chosen)
        if not chosen:
            empty = np.zeros((0, 2))
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32), empty, empty, np.zeros((0, 0))
    windows, window_mask = load_music_windows(top.tolist())
    device = video_tokens.pooled.device
    music = model.encode_music(windows.to(device), window_mask.to(device))
    spans = model.detect(video_tokens.repeat(k), music)
    relevance = model.window_relevance(video_tokens, music)[:, 0].float().cpu().numpy()  # [K, S]
    durations = track_durations[top.cpu()].numpy()  # float64: the cut must end inside the track exactly
    predicted = model.spans_to_seconds(spans, torch.from_numpy(durations).to(spans.device, spans.dtype))
    # spans are float32 (and MPS has no float64): clamp again so rounding never steps past the end.
    predicted = np.clip(predicted.cpu().double().numpy(), 0.0, durations[:, None])
    cut_start, cut_end = duration_exact_cut(predicted[:, 0], predicted[:, 1], video_duration, durations)
    cuts = np.stack([cut_start, cut_end], axis=1)
    return top.cpu().numpy(), top_scores.cpu().numpy(), predicted, cuts, relevance


def n_windows(track_seconds: float) -> int:
    """How many of a track's 2.5 s windows exist (the recipe's validity rule)."""
    return int(window_valid(track_seconds).sum())


# ---------------------------------------------------------------- the suggester


class VideoPrefetcher:
    """Decodes videos (1 fps + CLIP preprocessing) on a background thread.

    ffmpeg and PIL's resize run outside the GIL, so a video decodes while the models
    load, or while the previous video goes through CLIP.
    """

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mgsv-decode")
        self._pending: dict[str, Any] = {}

    def start(self, video_path: str | os.PathLike) -> None:
        from mgsv_cli.features.encoders import decode_video

        key = str(Path(video_path).resolve())
        if key not in self._pending:
            self._pending[key] = self._pool.submit(decode_video, key)

    def take(self, video_path: str | os.PathLike):
        """The decoded video (``features.DecodedVideo``); decodes now if it was not started."""
        self.start(video_path)
        return self._pending.pop(str(Path(video_path).resolve())).result()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pending.clear()


class Suggester:
    """Models, index and cached track tokens loaded once; :meth:`suggest_video` per clip."""

    def __init__(self, *, model, model_id: str, untrained: bool, encoders, encoders_kind: str, index, tracks,
                 scoring_tokens, device, timings: dict[str, float], store=None, first_stage=None,
                 fingerprint: str | None = None, rerank: int | None = None):
        import numpy as np
        import torch

        self.model = model
        self.model_id = model_id
        self.untrained = untrained
        self.encoders = encoders
        self.encoders_kind = encoders_kind
        self.index = index
        self.tracks = tracks if isinstance(tracks, TrackList) else TrackList.of(tracks)
        self.scoring_tokens = scoring_tokens
        self.device = device
        self.timings = timings
        self.track_durations = torch.from_numpy(np.array(self.tracks.durations, dtype=np.float64))
        self.prefetcher = VideoPrefetcher()
        # The two-stage search (None: every track scored, as for a library of at most `rerank` tracks).
        self.store, self.first_stage, self.fingerprint = store, first_stage, fingerprint
        self.rerank = rerank or DEFAULT_RERANK
        self._stage_positions = None if first_stage is None else self.tracks.positions_of(first_stage.ids)

    @classmethod
    def open(cls, *, index_path=None, checkpoint=None, untrained: bool = False, encoders: str | None = None,
             device: str = "auto", offline: bool = False, weights_dir=None, status: StatusFn | None = None,
             encoders_obj=None, use_cache: bool = True, prefetch: str | os.PathLike | None = None,
             rerank: int | None = None, first_stage: str = "auto") -> "Suggester":
        """Load the index, encoders and model, and the tracks' scoring tokens.

        ``index_path``: an ``.sqlite`` index file, or a Lance track store (a folder, ``*.lance``
        or an ``s3://``-style URI). ``rerank``: candidates the model reranks in the two-stage
        search (default 1,000; an SQLite library of at most that many tracks is scored
        exhaustively); ``first_stage``: ``auto``, ``exact`` or ``ivf_pq`` (Lance only).
        ``prefetch``: a video to start decoding at once, overlapping all the loading.

        ``encoders``: ``"pretrained"``, ``"tiny"`` or None (whichever the index was built with).
        ``encoders_obj`` injects already loaded ``features.Encoders`` (tests, benchmarks).
        Raises ``IndexDatabaseError`` (no/empty index, encoder mismatch) and
        ``CheckpointError`` (no checkpoint, dims that do not fit the encoders).
        """
        from mgsv_cli.index.backend import is_lance_uri
        from mgsv_cli.index.store import open_index

        rerank = DEFAULT_RERANK if rerank is None else int(rerank)
        if rerank < 1:
            raise UsageError("the rerank size must be at least 1")
        if index_path is not None and is_lance_uri(str(index_path)):
            return cls._open_store(str(index_path), checkpoint=checkpoint, untrained=untrained, encoders=encoders,
                                   device=device, offline=offline, weights_dir=weights_dir, status=status,
                                   encoders_obj=encoders_obj, prefetch=prefetch, rerank=rerank,
                                   first_stage=first_stage)
        timings: dict[str, float] = {}
        prefetcher = VideoPrefetcher()
        index = open_index(index_path)
        try:
            kind = _check_before_loading(index, encoders, checkpoint, untrained)
            if prefetch is not None:
                prefetcher.start(prefetch)
            index.begin_snapshot()  # one consistent view even while `mgsv index` writes
            tracks = index.tracks()
            encoders_obj, torch_device, model, model_id = _load_models(
                index, kind, encoders_obj, checkpoint, untrained, device, offline, weights_dir, timings)
            t0 = time.perf_counter()
            store = stage = fingerprint = scoring = None
            if len(tracks) > rerank:  # too many to score each: the two-stage search
                from mgsv_cli.index.sqlite_store import SqliteTrackStore

                store, fingerprint = SqliteTrackStore(index), _fingerprint(model, model_id)
                stage = _prepare_search(store, model, fingerprint, first_stage, status, timings)
            else:
                scoring, from_cache = scoring_tokens_for(model, model_id, index, tracks, torch_device, status,
                                                         use_cache)
                timings["music_tokens_cached" if from_cache else "music_tokens_encoded"] = time.perf_counter() - t0
        except BaseException:
            index.close()
            prefetcher.close()
            raise
        return cls._built(prefetcher, model=model, model_id=model_id, untrained=untrained, encoders=encoders_obj,
                          encoders_kind=kind, index=index, tracks=tracks, scoring_tokens=scoring, device=torch_device,
                          timings=timings, store=store, first_stage=stage, fingerprint=fingerprint, rerank=rerank)

    @classmethod
    def _built(cls, prefetcher: "VideoPrefetcher", **parts) -> "Suggester":
        """The suggester from its loaded parts, keeping the video prefetch already under way."""
        suggester = cls(**parts)
        suggester.prefetcher.close()
        suggester.prefetcher = prefetcher
        return suggester

    @classmethod
    def _open_store(cls, uri: str, *, checkpoint, untrained: bool, encoders, device, offline: bool, weights_dir,
                    status, encoders_obj, prefetch, rerank: int, first_stage: str) -> "Suggester":
        """:meth:`open` for a Lance track store: always the two-stage search (its derived rows
        for this checkpoint are brought up to date in the store first)."""
        from mgsv_cli.index.backend import open_store

        timings: dict[str, float] = {}
        prefetcher = VideoPrefetcher()
        store = open_store(uri)
        try:
            ids, durations = store.ids_and_durations()
            if len(ids) == 0:
                raise IndexDatabaseError(f"the track store {store.uri} is empty: run `mgsv index MUSIC_DIR --store "
                                         f"{store.uri}` first")
            kind = _check_before_loading(store, encoders, checkpoint, untrained)
            if prefetch is not None:
                prefetcher.start(prefetch)
            tracks = TrackList.lazy(ids, durations, lambda wanted: [_track_info(r) for r in store.tracks(wanted)])
            encoders_obj, torch_device, model, model_id = _load_models(
                store, kind, encoders_obj, checkpoint, untrained, device, offline, weights_dir, timings)
            fingerprint = _fingerprint(model, model_id)
            stage = _prepare_search(store, model, fingerprint, first_stage, status, timings)
        except BaseException:
            store.close()
            prefetcher.close()
            raise
        return cls._built(prefetcher, model=model, model_id=model_id, untrained=untrained, encoders=encoders_obj,
                          encoders_kind=kind, index=store, tracks=tracks, scoring_tokens=None, device=torch_device,
                          timings=timings, store=store, first_stage=stage, fingerprint=fingerprint, rerank=rerank)

    def close(self) -> None:
        self.prefetcher.close()
        self.index.close()

    def __enter__(self) -> "Suggester":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def suggest_video(self, video_path: str | os.PathLike, top_k: int = 5, snap: str | None = None,
                      include_short: bool = False, fit: str = "cut") -> SuggestionResult:
        """Embed one video and rank the index for it; raises ``MediaError`` on an unreadable file.

        ``snap="beat"`` moves each cut's start onto the nearest downbeat/beat stored in the index.
        Tracks whose file is gone are passed over (counted in ``left_out_missing``); tracks
        shorter than the clip too, unless ``include_short`` (see :meth:`suggest_features`).
        """
        t0 = time.perf_counter()
        video = self.encoders.embed_decoded(self.prefetcher.take(video_path))
        t_embed = time.perf_counter() - t0
        result = self.suggest_features(video.feats, video.mask, float(video.duration), top_k,
                                       video=str(Path(video_path).resolve()), snap=snap,
                                       include_short=include_short, track_exists=os.path.exists, fit=fit)
        result.timings["embed_video"] = t_embed
        return result

    def suggest_features(self, frames, frame_mask, duration: float, top_k: int = 5, video: str = "",
                         snap: str | None = None, include_short: bool = False,
                         track_exists: Callable[[str], bool] | None = None, fit: str = "cut") -> SuggestionResult:
        """The encoder-free part: frames [F, video_dim] + mask [F] of one video -> result.

        Only tracks at least as long as the clip are ranked (a shorter one would end
        before the video does); ``include_short`` ranks them too, marked ``fits=False``.
        ``track_exists(path)``: when given, candidates whose file it denies are passed
        over and the next ones taken; it is asked only of candidates, best first, so a
        library on a slow share costs K checks, not N. (None: the disk is not looked at,
        as for an index of features without audio files.)

        Raises ``UsageError`` when every track is shorter than the clip, and
        ``IndexDatabaseError`` when no track of the index is left (files gone).
        """
        import numpy as np
        import torch

        if top_k < 1:
            raise UsageError("--top must be at least 1")
        check_snap(snap)
        check_fit(fit)
        fits = self.tracks.fits(duration)  # bool [N]
        missing: list[int] = []

        def usable(position: int) -> bool:
            if not (include_short or fits[position]):
                return False
            if track_exists is not None and not track_exists(self.tracks[position].path):
                missing.append(position)
                return False
            return True

        t0 = time.perf_counter()
        frames = torch.as_tensor(frames, dtype=torch.float32, device=self.device)[None]
        frame_mask = torch.as_tensor(frame_mask, device=self.device)[None]
        with torch.inference_mode():
            video_tokens = self.model.encode_video(frames, frame_mask)
            if self.first_stage is None:  # every track scored
                positions, scoring, durations = None, self.scoring_tokens, self.track_durations
            else:  # the reranked candidates stand for the library; positions map them back
                positions, scoring = self._candidates(video_tokens, fits, include_short)
                if positions.size == 0:  # every track shorter than the clip
                    raise _nothing_to_suggest(video, duration, len(self.tracks), int(np.count_nonzero(~fits)), 0)
                durations = self.track_durations[torch.from_numpy(positions)]

            def at(candidate: int) -> int:
                return candidate if positions is None else int(positions[candidate])

            top, scores, predicted, cuts, relevance = rank_and_detect(
                self.model, video_tokens, scoring, lambda found: self._load_windows([at(c) for c in found]),
                durations, duration, top_k,
                usable=None if include_short and track_exists is None else (lambda c: usable(at(c))),
            )
            if positions is not None:
                top = positions[top]
        left_out_short = 0 if include_short else int(np.count_nonzero(~fits))
        if len(top) == 0:
            raise _nothing_to_suggest(video, duration, len(self.tracks), left_out_short, len(missing))
        suggestions = []
        self.tracks.load(top)  # one read for a lazy (store) list
        for rank, (pos, score, (ps, pe), (cs, ce), weights) in enumerate(
                zip(top, scores, predicted, cuts, relevance), start=1):
            track = self.tracks[int(pos)]
            entry = Suggestion(
                rank=rank, track=track.path, score=float(score), start=float(cs), end=float(ce),
                predicted_start=float(ps), predicted_end=float(pe), track_duration=track.duration,
                title=track.title, artist=track.artist, fits=bool(fits[int(pos)]),
                relevance=[round(float(w), 4) for w in weights[:n_windows(track.duration)]],
            )
            beats = self._beats(track) if snap == "beat" else None
            if beats:  # the grid stored with the track; none: the cut stays
                entry, _ = snap_entry(entry, grid=BeatGrid.from_dict(beats))
            if fit != "cut":  # a step on the finished suggestion, like snapping
                entry = fit_entry(entry, fit, duration)
            suggestions.append(entry)
        return SuggestionResult(
            video=video, duration=duration, suggestions=suggestions, checkpoint=self.model_id,
            encoders=self.encoders_kind, untrained=self.untrained,
            timings={"score_and_detect": time.perf_counter() - t0},
            left_out_short=left_out_short, left_out_missing=len(missing),
        )

    def _load_windows(self, positions: list[int]):
        import torch

        ids = [int(self.tracks.ids[p]) for p in positions]
        feats, mask = self.index.tokens_for(ids)
        return torch.from_numpy(feats), torch.from_numpy(mask)

    def _beats(self, track) -> dict | None:
        """The track's beat grid: from the track list (SQLite), or read from the store (Lance)."""
        if track.beats is not None or self.store is None or self.store is not self.index:
            return track.beats
        return self.store.beats_for(track.id)

    def _candidates(self, video_tokens, fits, include_short: bool):
        """The two-stage search's reranked candidates: (positions int64 [n] in :attr:`tracks`,
        best first, and their scores in the form :func:`rank_and_detect` takes)."""
        import numpy as np

        from mgsv_cli.index.search import rerank_ids

        allowed = self._stage_positions >= 0  # tracks added after loading are not in the list yet
        if not include_short:
            allowed &= np.asarray(fits, dtype=bool)[self._stage_positions]
        ids, cos = self.first_stage.top(video_tokens.pooled[0].float().cpu().numpy(), self.rerank, allowed)
        found = rerank_ids(self.model, video_tokens, self.store, self.fingerprint, ids, cos)
        return self.tracks.positions_of(found.track_ids), _CandidateScores(found.scores)


def _nothing_to_suggest(video: str, duration: float, n_tracks: int, short: int, missing: int) -> MgsvError:
    """Why no track could be suggested: all shorter than the clip, or their files gone."""
    name = Path(video).name if video else "the clip"
    parts = []
    if short:
        parts.append(f"{short} of the {n_tracks} indexed track(s) are shorter than {name} ({duration:.1f} s): "
                     "--include-short ranks them anyway (render fills the rest with silence)")
    if missing:
        parts.append(f"{missing} indexed track(s) are gone from the disk: "
                     "`mgsv index MUSIC_DIR --prune` drops them from the index")
    message = "no track to suggest: " + "; ".join(parts)
    return UsageError(message) if short else IndexDatabaseError(message)


def _check_before_loading(index, encoders: str | None, checkpoint, untrained: bool) -> str:
    """The encoder kind to load for ``index``, after the checks that need no model: the encoders
    asked for are the index's, and the checkpoint was trained on features of that kind. Seconds
    before loading anything, and before a video starts decoding."""
    kind = _encoders_for_index(index, encoders)
    if untrained:
        if checkpoint is not None:
            raise UsageError("give either --checkpoint or --untrained, not both")
    else:
        _check_checkpoint_fits(checkpoint, kind, index)
    return kind


def _load_models(index, kind: str, encoders_obj, checkpoint, untrained: bool, device, offline: bool,
                 weights_dir, timings: dict[str, float]):
    """``(encoders, torch device, model, model id)`` for ``index`` (either store), the encoders
    checked against the ones it was built with."""
    from mgsv_cli.device import resolve_device

    t0 = time.perf_counter()
    torch_device = resolve_device(device)
    if encoders_obj is None:
        from mgsv_cli.features.encoders import load_encoders

        encoders_obj = load_encoders(kind=kind, device=torch_device, offline=offline, weights_dir=weights_dir,
                                     parts=("video",))
    timings["load_encoders"] = time.perf_counter() - t0
    _check_index_encoders(index, encoders_obj, kind)
    t0 = time.perf_counter()
    model, model_id = _load_network(checkpoint, untrained, encoders_obj, torch_device)
    timings["load_model"] = time.perf_counter() - t0
    return encoders_obj, torch_device, model, model_id


class _CandidateScores:
    """Scores of the reranked candidates, shaped as :class:`ScoringTokens` scores: float32 [n]."""

    def __init__(self, scores):
        self.scores = scores

    def score(self, model, video_tokens):
        import torch

        return torch.from_numpy(self.scores).to(video_tokens.pooled.device)


def _fingerprint(model, model_id: str) -> str:
    """The name of the model's derived rows in a store: the checkpoint id when it is a safe name."""
    if model_id and all(c.isalnum() or c in "-_." for c in model_id):
        return model_id
    return model_fingerprint(model)


def _prepare_search(store, model, fingerprint: str, first_stage: str, status: StatusFn | None,
                    timings: dict[str, float]):
    """Bring the store's derived rows for ``model`` up to date and build the first stage."""
    from mgsv_cli.index.search import FirstStage, update_derived

    t0 = time.perf_counter()
    missing = len(store.derived_missing(fingerprint))
    if missing and status:
        status(f"encoding {missing} of {len(store)} tracks for this model (kept in the store for later runs)")

    def progress(stage: str, done: int, total: int) -> None:
        if status:
            status(f"encoding tracks for this model: {done} of {total}")

    encoded = update_derived(store, model, fingerprint, progress=progress) if missing else 0
    timings["music_derived_encoded" if encoded else "music_derived_current"] = time.perf_counter() - t0
    stage = FirstStage.build(store, fingerprint, kind=first_stage)
    timings["build_first_stage"] = stage.build_seconds
    return stage


def _track_info(record):
    """A store's :class:`TrackRecord` as the ``TrackInfo`` suggestions are made of (beats read later)."""
    from mgsv_cli.index.store import TrackInfo

    tags = record.tags or {}
    return TrackInfo(record.track_id, record.location, float(record.duration), tags.get("title"), tags.get("artist"),
                     tags.get("album"), None)


def _index_name(index) -> str:
    return str(getattr(index, "path", None) or index.uri)


def _encoders_for_index(index, requested: str | None) -> str:
    """The encoder kind to load: the index's, unless asked otherwise (checked before any loading)."""
    from mgsv_cli.index.store import encoder_kind_of

    built_with = encoder_kind_of(index.encoder_id)
    if requested is not None and requested != built_with:
        raise IndexDatabaseError(
            f"the index {_index_name(index)} was built with encoders '{index.encoder_id}', not {requested} ones: "
            f"use --encoders {built_with} (or leave --encoders out), or re-index with "
            f"`mgsv index MUSIC_DIR --force --encoders {requested}`"
        )
    return built_with


def _check_index_encoders(index, encoders, kind: str) -> None:
    if index.encoder_id and encoders.encoder_id != index.encoder_id:
        raise IndexDatabaseError(
            f"the index {_index_name(index)} was built with encoders '{index.encoder_id}', but suggest loaded "
            f"'{encoders.encoder_id}' (--encoders {kind}); use the index's encoders, or re-index with "
            f"`mgsv index MUSIC_DIR --force --encoders {kind}`"
        )


def _check_checkpoint_fits(checkpoint, kind: str, index) -> None:
    """A checkpoint ranks only music embedded by the encoders it was trained on: say which, and how."""
    from mgsv_cli.features.recipe import ENCODER_WIDTHS, describe_encoders, encoders_for_widths
    from mgsv_cli.models.checkpoint import checkpoint_variant

    try:
        path, variant = checkpoint_variant(checkpoint)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; or use --untrained for a demo") from None
    widths = (variant.model.video_dim, variant.model.music_dim)
    if widths == ENCODER_WIDTHS.get(kind):
        return
    needed = encoders_for_widths(*widths)
    if needed is None:
        fix = "use an index built by the encoders it was trained on"
    else:
        download = "`mgsv models download`, then " if needed == "pretrained" else ""
        fix = f"index the music with them ({download}`mgsv index MUSIC_DIR --encoders {needed} --index NEW`) and pass that --index"
    raise CheckpointError(
        f"checkpoint {path} was trained on features of {describe_encoders(*widths)}, but the index "
        f"{_index_name(index)} holds {kind} tokens ({index.encoder_id}): {fix}, or use --untrained with this index"
    )


def _load_network(checkpoint, untrained: bool, encoders, device):
    """``(model, model_id)``: a trained checkpoint, or a seeded random MaDe with ``untrained``."""
    from mgsv_cli.models.checkpoint import build_untrained, load_model

    if untrained:
        if checkpoint is not None:
            raise UsageError("give either --checkpoint or --untrained, not both")
        model, variant = build_untrained(video_dim=encoders.video_dim, music_dim=encoders.music_dim, seed=0)
        model.to(device)
        return model, f"untrained-{variant.name}-{model_fingerprint(model)}"
    try:
        model, variant, meta = load_model(checkpoint, device=device)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; or use --untrained for a demo") from None
    cfg = model.cfg
    if (cfg.video_dim, cfg.music_dim) != (encoders.video_dim, encoders.music_dim):
        raise CheckpointError(
            f"checkpoint {meta['path']} takes video/music features of {cfg.video_dim}/{cfg.music_dim} dims, "
            f"but the encoders ({encoders.encoder_id}) give {encoders.video_dim}/{encoders.music_dim}; "
            "use the encoders it was trained on"
        )
    return model, str(meta["checkpoint_id"])


# ---------------------------------------------------------------- batch


def check_video(path: str | os.PathLike) -> None:
    """Raise ``MediaError`` unless ``path`` is a readable file with a picture: a missing, empty,
    audio-only or non-media file is found in one ffmpeg probe, before seconds of model loading."""
    from mgsv_cli.errors import MediaError
    from mgsv_cli.media.ffmpeg import probe

    if not probe(path).has_video:
        raise MediaError(f"{path}: has no video stream (an audio file?): suggest needs a video clip")


def probe_named_videos(named: Iterable[str | os.PathLike], found: list[Path]
                       ) -> tuple[list[Path], list[tuple[str, str, int]]]:
    """Probe the videos named one by one among ``found`` (those in folders are probed as they are
    reached); returns the videos left and ``(video, reason, exit code)`` for each one refused."""
    named_files = set()
    for item in named:
        path = Path(item).expanduser()
        if outputs.is_folder(path):
            continue
        try:
            named_files.add(path.resolve())
        except OSError:
            continue
    kept, refused = [], []
    for video in found:
        if video in named_files:
            try:
                check_video(video)
            except MgsvError as exc:
                refused.append((str(video), first_line(exc), exc.exit_code))
                continue
        kept.append(video)
    return kept, refused


def suggest_many(suggester: Suggester, videos: Iterable[Path], top_k: int = 5, remember: bool = True,
                 snap: str | None = None, include_short: bool = False, fit: str = "cut",
                 ) -> Iterator[tuple[Path, SuggestionResult | None, str | None]]:
    """Yield ``(video, result, None)`` or ``(video, None, reason)`` per video; a bad file never stops the batch."""
    videos = list(videos)
    for position, video in enumerate(videos):
        if position + 1 < len(videos):
            suggester.prefetcher.start(videos[position + 1])  # decodes while this one goes through CLIP
        try:
            result = suggester.suggest_video(video, top_k, snap=snap, include_short=include_short, fit=fit)
            if remember:  # render and export need it: a failure to store it fails the video
                remember_suggestion(result)
        except MgsvError as exc:
            yield video, None, first_line(exc)
            continue
        except (OSError, ValueError, RuntimeError) as exc:  # a decoder or tensor error on one odd file
            yield video, None, f"{type(exc).__name__}: {first_line(exc)}"
            continue
        yield video, result, None


def suggest(videos: Iterable[str | os.PathLike], *, top_k: int = 5, remember: bool = True,
            include_short: bool = False, **open_options) -> list[tuple[Path, SuggestionResult | None, str | None]]:
    """One call: expand ``videos`` (files or folders), load index and models once
    (``open_options`` as :meth:`Suggester.open`), suggest for each video.

    Returns ``(video, result, None)`` or ``(video_or_input, None, reason)`` per input; raises
    the loading errors (no index, no checkpoint, missing weights) since nothing can run.
    """
    found, problems = outputs.expand_video_inputs(videos)
    outcomes: list[tuple[Path, SuggestionResult | None, str | None]] = [
        (Path(name), None, reason) for name, reason in problems
    ]
    if found:
        with Suggester.open(**open_options) as suggester:
            outcomes.extend(suggest_many(suggester, found, top_k=top_k, remember=remember,
                                         include_short=include_short))
    return outcomes
