"""``mgsv suggest``: rank a store's tracks for a video and find the moment to cut.

Pipeline per video: frames at 1 fps -> CLIP features (``features``) -> the retrieval layer
ranks the tracks (``retrieval.search.Retriever``: every track of a library of at most the
rerank size scored with the model, a catalog's first-stage candidates reranked) -> the
candidates are walked best first, passing over tracks shorter than the clip (unless asked)
and tracks whose file is gone, until K are kept -> moments detected on those K only ->
a cut exactly as long as the video, centred on the predicted moment and kept inside the
track (``metrics.duration_exact_cut``), optionally moved onto the beat.

Either store works the same way (``index.backend.open_store``); a store's records are read
for the tracks suggested only (``tracklist.TrackList``). The last suggestion per video is
remembered for ``mgsv render`` and ``mgsv export`` (:mod:`mgsv_cli.editor.record`).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from mgsv_cli.editor import outputs
from mgsv_cli.editor.fitting import check_fit, fit_entry, structure_from_store
from mgsv_cli.editor.record import Suggestion, SuggestionResult, remember_suggestion
from mgsv_cli.editor.snapping import check_snap, snap_entry
from mgsv_cli.editor.tracklist import TrackList
from mgsv_cli.errors import CheckpointError, IndexDatabaseError, MediaError, MgsvError, UsageError, first_line
from mgsv_cli.features.recipe import window_valid
from mgsv_cli.media.beats import BeatGrid
from mgsv_cli.retrieval.search import DEFAULT_RERANK

StatusFn = Callable[[str], None]
_CANDIDATE_CHUNK = 64  # candidates whose records are read at once while looking for K usable ones


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
    """Models, the store and its retriever loaded once; :meth:`suggest_video` per clip."""

    def __init__(self, *, model, model_id: str, untrained: bool, encoders, encoders_kind: str, store, tracks: TrackList,
                 retriever, device, timings: dict[str, float]):
        self.model = model
        self.model_id = model_id
        self.untrained = untrained
        self.encoders = encoders
        self.encoders_kind = encoders_kind
        self.store = store
        self.tracks = tracks
        self.retriever = retriever
        self.device = device
        self.timings = timings
        self.prefetcher = VideoPrefetcher()
        # Where each track the retriever ranks sits in the track list (-1: added after loading).
        self._ranked_positions = tracks.positions_of(retriever.ids)

    @classmethod
    def open(cls, *, index_path=None, checkpoint=None, untrained: bool = False, encoders: str | None = None,
             device: str = "auto", offline: bool = False, weights_dir=None, status: StatusFn | None = None,
             encoders_obj=None, prefetch: str | os.PathLike | None = None, rerank: int | None = None,
             first_stage: str = "auto") -> "Suggester":
        """Open the store, load the encoders and the model, and bring the model's rows of the
        tracks up to date.

        ``index_path``: an ``.sqlite`` index file, or a Lance track store (a folder, ``*.lance``
        or an ``s3://``-style URI); None: mgsv's index. ``rerank``: candidates the model
        reranks (default 1,000; a library of at most that many tracks is scored whole);
        ``first_stage``: ``auto``, ``exact`` or ``ivf_pq`` (Lance only). ``prefetch``: a video
        to start decoding at once, overlapping the loading.

        ``encoders``: ``"pretrained"``, ``"tiny"`` or None (whichever the store was built with).
        ``encoders_obj`` injects already loaded ``features.Encoders`` (tests, benchmarks).
        Raises ``IndexDatabaseError`` (no/empty store, encoder mismatch) and ``CheckpointError``
        (no checkpoint, one trained for other encoders), the checks that need no model first.
        """
        from mgsv_cli.index.backend import open_store
        from mgsv_cli.retrieval.derived import fingerprint_of
        from mgsv_cli.retrieval.search import Retriever

        rerank = DEFAULT_RERANK if rerank is None else int(rerank)
        if rerank < 1:
            raise UsageError("the rerank size must be at least 1")
        timings: dict[str, float] = {}
        prefetcher = VideoPrefetcher()
        store = open_store(index_path, require_tracks=True)
        try:
            kind = _check_before_loading(store, encoders, checkpoint, untrained)
            if prefetch is not None:
                prefetcher.start(prefetch)
            store.pin()  # one consistent view even while `mgsv index` writes
            ids, durations = store.ids_and_durations()
            tracks = TrackList(ids, durations, store.tracks)  # records read only for the tracks suggested
            encoders_obj, torch_device, model, model_id = _load_models(
                store, kind, encoders_obj, checkpoint, untrained, device, offline, weights_dir, timings)
            retriever = Retriever.open(store, model, fingerprint_of(model, model_id), rerank=rerank,
                                       first_stage=first_stage, device=torch_device, status=status)
            timings.update(retriever.timings)
        except BaseException:
            store.close()
            prefetcher.close()
            raise
        suggester = cls(model=model, model_id=model_id, untrained=untrained, encoders=encoders_obj,
                        encoders_kind=kind, store=store, tracks=tracks, retriever=retriever, device=torch_device,
                        timings=timings)
        suggester.prefetcher.close()
        suggester.prefetcher = prefetcher  # keep the decoding already under way
        return suggester

    def close(self) -> None:
        self.prefetcher.close()
        self.store.close()

    def __enter__(self) -> "Suggester":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def suggest_video(self, video_path: str | os.PathLike, top_k: int = 5, snap: str | None = None,
                      include_short: bool = False, fit: str = "cut") -> SuggestionResult:
        """Embed one video and rank the store for it; raises ``MediaError`` on an unreadable file.

        ``snap="beat"`` moves each cut's start onto the nearest downbeat/beat stored with the track.
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

    def suggest_clip(self, video_path: str | os.PathLike, top_k: int = 5, snap: str | None = None,
                     include_short: bool = False, remember: bool = True, fit: str = "cut") -> SuggestionResult:
        """One clip as every front end asks for it (``mgsv suggest CLIP``, ``mgsv serve``, the
        Python API, ``mgsv mcp``): the argument checked first ("no such file", "a folder"), a
        decoder's error on an odd file as a ``MediaError`` naming it, and the result remembered
        for render and export unless ``remember`` is False. ``fit``: ``cut`` | ``ending`` |
        ``loop`` (each suggestion's edit list, ``editor.fitting``)."""
        path = outputs.check_video_input(video_path).resolve()
        try:
            result = self.suggest_video(path, top_k, snap=snap, include_short=include_short, fit=fit)
        except MediaError:
            # Not a readable video: said in the words of the check the batch path makes before
            # loading (one probe, on this failure only), whichever front end asked.
            check_video(path)
            raise
        except (OSError, ValueError, RuntimeError) as exc:  # a decoder or tensor error on one odd file
            raise MediaError(f"{path}: {type(exc).__name__}: {first_line(exc)}") from None
        if remember:  # render and export need it: a failure to store it fails the clip
            remember_suggestion(result)
        return result

    def suggest_features(self, frames, frame_mask, duration: float, top_k: int = 5, video: str = "",
                         snap: str | None = None, include_short: bool = False,
                         track_exists: Callable[[str], bool] | None = None, fit: str = "cut") -> SuggestionResult:
        """The encoder-free part: frames [F, video_dim] + mask [F] of one video -> result.

        Only tracks at least as long as the clip are ranked (a shorter one would end before
        the video does); ``include_short`` ranks them too, marked ``fits=False``.
        ``track_exists(path)``: when given, candidates whose file it denies are passed over and
        the next ones taken; it is asked only of candidates, best first, so a library on a
        slow share costs K checks, not N. (None: the disk is not looked at, as for a store of
        features without audio files.)

        Raises ``UsageError`` when every track is shorter than the clip, and
        ``IndexDatabaseError`` when no track of the store is left (files gone).
        """
        import numpy as np
        import torch

        from mgsv_cli.models.metrics import duration_exact_cut

        if top_k < 1:
            raise UsageError("--top must be at least 1")
        check_snap(snap)
        check_fit(fit)
        fits = self.tracks.fits(duration)  # bool [N], by position
        positions = self._ranked_positions
        allowed = positions >= 0
        if not include_short:
            allowed &= np.asarray(fits, dtype=bool)[positions]
        t0 = time.perf_counter()
        with torch.inference_mode():
            frames = torch.as_tensor(frames, dtype=torch.float32, device=self.device)[None]
            mask = torch.as_tensor(frame_mask, device=self.device)[None]
            video_tokens = self.model.encode_video(frames, mask)
            candidates = self.retriever.rank(video_tokens, allowed)
            chosen, missing = self._usable(candidates.track_ids, top_k, track_exists)
            left_out_short = 0 if include_short else int(np.count_nonzero(~fits))
            if not chosen:
                raise _nothing_to_suggest(video, duration, len(self.tracks), left_out_short, missing)
            picked = self.tracks.positions_of(candidates.track_ids[chosen])
            durations = self.tracks.durations[picked]  # float64: the cut must end inside the track exactly
            predicted, relevance = self.retriever.moments(video_tokens, candidates.track_ids[chosen], durations)
        cut_start, cut_end = duration_exact_cut(predicted[:, 0], predicted[:, 1], duration, durations)
        suggestions = []
        for rank, (pos, score, (ps, pe), cs, ce, weights) in enumerate(
                zip(picked, candidates.scores[chosen], predicted, cut_start, cut_end, relevance), start=1):
            track = self.tracks[int(pos)]
            entry = Suggestion(
                rank=rank, track=track.path, score=float(score), start=float(cs), end=float(ce),
                predicted_start=float(ps), predicted_end=float(pe), track_duration=track.duration,
                title=track.title, artist=track.artist, fits=bool(fits[int(pos)]),
                relevance=[round(float(w), 4) for w in weights[:n_windows(track.duration)]],
            )
            beats = self.store.beats_for([track.id])[0] if snap == "beat" else None
            if beats:  # the grid stored with the track; none: the cut stays
                entry, _ = snap_entry(entry, grid=BeatGrid.from_dict(beats))
            if fit != "cut":  # a step on the finished suggestion, like snapping: on the stored bars
                structure = structure_from_store(self.store.structures_for([track.id])[0])
                entry = fit_entry(entry, fit, duration, structure=structure, look_in_store=False)
            suggestions.append(entry)
        return SuggestionResult(
            video=video, duration=duration, suggestions=suggestions, checkpoint=self.model_id,
            encoders=self.encoders_kind, untrained=self.untrained,
            timings={"score_and_detect": time.perf_counter() - t0},
            left_out_short=left_out_short, left_out_missing=missing,
        )

    def _usable(self, ranked_ids, top_k: int, track_exists: Callable[[str], bool] | None) -> tuple[list[int], int]:
        """Ranks (into ``ranked_ids``, best first) of the first ``top_k`` candidates whose file is
        there, and how many were passed over because theirs is gone; records are read a chunk at
        a time, only as far as needed."""
        if track_exists is None:
            return list(range(min(top_k, len(ranked_ids)))), 0
        chosen: list[int] = []
        missing = 0
        for begin in range(0, len(ranked_ids), _CANDIDATE_CHUNK):
            chunk = self.tracks.positions_of(ranked_ids[begin:begin + _CANDIDATE_CHUNK])
            self.tracks.load(chunk)
            for offset, position in enumerate(chunk.tolist()):
                if track_exists(self.tracks[position].path):
                    chosen.append(begin + offset)
                    if len(chosen) == top_k:
                        return chosen, missing
                else:
                    missing += 1
        return chosen, missing


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


def _encoders_for_index(index, requested: str | None) -> str:
    """The encoder kind to load: the index's, unless asked otherwise (checked before any loading)."""
    from mgsv_cli.features.recipe import encoder_kind_of

    built_with = encoder_kind_of(index.encoder_id)
    if requested is not None and requested != built_with:
        raise IndexDatabaseError(
            f"the index {index.uri} was built with encoders '{index.encoder_id}', not {requested} ones: "
            f"use --encoders {built_with} (or leave --encoders out), or re-index with "
            f"`mgsv index MUSIC_DIR --force --encoders {requested}`"
        )
    return built_with


def _check_index_encoders(index, encoders, kind: str) -> None:
    if index.encoder_id and encoders.encoder_id != index.encoder_id:
        raise IndexDatabaseError(
            f"the index {index.uri} was built with encoders '{index.encoder_id}', but suggest loaded "
            f"'{encoders.encoder_id}' (--encoders {kind}); use the index's encoders, or re-index with "
            f"`mgsv index MUSIC_DIR --force --encoders {kind}`"
        )


def _check_checkpoint_fits(checkpoint, kind: str, index) -> None:
    """A checkpoint ranks only music embedded by the encoders it was trained on: say which, and how.

    The encoders a checkpoint records (``mgsv train`` copies them from the dataset) are compared
    with the index's by id; a checkpoint without a record is judged by its input widths."""
    from mgsv_cli.features.recipe import ENCODER_WIDTHS, describe_encoders, encoders_for_widths
    from mgsv_cli.models.checkpoint import checkpoint_encoders, checkpoint_variant

    try:
        path, variant = checkpoint_variant(checkpoint)
        trained_on = checkpoint_encoders(path, variant)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; or use --untrained for a demo") from None
    widths = (variant.model.video_dim, variant.model.music_dim)
    if trained_on["recorded"] and index.encoder_id:
        if trained_on["id"] == index.encoder_id:
            return
        needed = trained_on["kind"]
        how = (f"index the music with them (`mgsv index MUSIC_DIR --encoders {needed} --index NEW`) and pass that "
               f"--index" if needed in ENCODER_WIDTHS else "use an index built by the encoders it was trained on")
        raise CheckpointError(
            f"checkpoint {path} was trained on features of the encoders '{trained_on['id']}' (--encoders "
            f"{needed}), but the index {index.uri} holds tokens of '{index.encoder_id}': {how}, "
            "or use --untrained with this index")
    if widths == ENCODER_WIDTHS.get(kind):
        return
    needed = encoders_for_widths(*widths)
    if needed is None:
        fix = "use an index built by the encoders it was trained on"
    else:
        download = "`mgsv models download`, then " if needed == "pretrained" else ""
        fix = (f"index the music with them ({download}`mgsv index MUSIC_DIR --encoders {needed} --index NEW`) "
               "and pass that --index")
    raise CheckpointError(
        f"checkpoint {path} was trained on features of {describe_encoders(*widths)}, but the index "
        f"{index.uri} holds {kind} tokens ({index.encoder_id}): {fix}, or use --untrained with this index"
    )


def _load_network(checkpoint, untrained: bool, encoders, device):
    """``(model, model_id)``: a trained checkpoint, or a seeded random MaDe with ``untrained``."""
    from mgsv_cli.models.checkpoint import build_untrained, load_model
    from mgsv_cli.retrieval.derived import model_fingerprint

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


@dataclass(frozen=True)
class Outcome:
    """What became of one input of :func:`suggest_videos`: its ``result``, or why it failed (``error``,
    one line, with the ``exit_code`` of its kind)."""

    video: str
    result: SuggestionResult | None = None
    error: str | None = None
    exit_code: int = 0


def suggest_videos(videos: Sequence[str | os.PathLike], request, *, status: StatusFn | None = None,
                   remember: bool = True, encoders_obj=None) -> Iterator[Outcome]:
    """Suggest music for clips (files or folders of them): the inputs checked first (a missing,
    empty or non-video file is found before any model loads), the store and the models loaded
    once (``request``: an ``editor.requests.SuggestRequest``), then one :class:`Outcome` per clip,
    inputs that were refused first (yielded before any loading). Each result is remembered for
    render and export.

    Raises the loading errors (no store, no checkpoint, missing weights), and, for a
    :func:`single_clip`, that clip's own error, since nothing else can run.
    """
    found, problems = outputs.expand_video_inputs(videos)
    yield from (Outcome(name, error=reason, exit_code=UsageError.exit_code) for name, reason in problems)
    if not found:
        raise UsageError("; ".join(f"{name}: {reason}" for name, reason in problems) or "no video given")
    found, bad = probe_named_videos(videos, found)
    yield from (Outcome(name, error=reason, exit_code=code) for name, reason, code in bad)
    if not found:
        if len(bad) == 1 and not problems:
            raise MediaError(bad[0][1])
        raise UsageError("; ".join([f"{name}: {reason}" for name, reason in problems] + [r for _, r, _ in bad]))
    suggester = Suggester.open(status=status, prefetch=found[0], encoders_obj=encoders_obj, **request.open_options())
    with suggester:
        if outputs.single_clip(videos):  # its error (and exit code) is the command's
            result = suggester.suggest_clip(found[0], request.top, snap=request.snap,
                                            include_short=request.include_short, remember=remember, fit=request.fit)
            yield Outcome(str(found[0]), result)
            return
        for video, batch_result, error in suggest_many(suggester, found, top_k=request.top, remember=remember,
                                                       snap=request.snap, include_short=request.include_short,
                                                       fit=request.fit):
            yield Outcome(str(video), batch_result, error, 0 if error is None else 1)
