"""``mgsv suggest``: rank every indexed track for a video and find the moment to cut.

Pipeline per video: frames at 1 fps -> CLIP features (``features``) -> MaDe scores every
indexed track in one batched pass (``model.score_pairs``) -> moments detected on the
top K only (``model.detect``) -> a cut exactly as long as the video, centred on the
predicted moment and kept inside the track (``metrics.duration_exact_cut``).

What scoring needs from the tracks (``MusicTokens.keys``/``pooled``/``mask``) depends
only on the checkpoint and the index, so it is computed once and cached under
``paths.cache_dir()/music_tokens`` per (checkpoint, index); each track's ``token_stamp``
in the index tells which cached rows are still current, so after adding a few songs
only those are encoded. Detection re-encodes the K winners from the index's stored
AST tokens (a few milliseconds), so the cache stays at keys only.

The last suggestion per video is remembered (``paths.suggestions_dir()``) for
``mgsv render``: :func:`load_last_suggestion`.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from mgsv_cli import paths
from mgsv_cli.errors import CheckpointError, IndexDatabaseError, MgsvError, UsageError

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"})
RENDERED_TAG = ".mgsv."  # `mgsv render` writes <stem>.mgsv.<ext>
TOKEN_CACHE_FORMAT = "3"
ENCODE_CHUNK = 128  # tracks per encode_music call while building the cache

StatusFn = Callable[[str], None]


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class Suggestion:
    """One ranked track: its relevance and the cut to use (seconds)."""

    rank: int
    track: str  # absolute path of the audio file
    score: float  # p_s = cos(h(v), h0(M)) + cos(h(v), h1(M)), in [-2, 2]
    start: float  # the cut render uses: as long as the video, inside the track
    end: float
    predicted_start: float  # the raw span MaDe predicted
    predicted_end: float
    track_duration: float
    title: str | None = None
    artist: str | None = None
    snapped_to: str | None = None  # "downbeat" | "beat" when --snap beat moved the cut's start

    @property
    def name(self) -> str:
        if self.title and self.artist:
            return f"{self.artist} - {self.title}"
        return self.title or Path(self.track).name

    def to_json(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "track": self.track,
            "score": round(self.score, 6),
            "start": round(self.start, 6),
            "end": round(self.end, 6),
            "predicted_start": round(self.predicted_start, 6),
            "predicted_end": round(self.predicted_end, 6),
            "track_duration": round(self.track_duration, 6),
            "title": self.title,
            "artist": self.artist,
            **({"snapped_to": self.snapped_to} if self.snapped_to else {}),
        }


@dataclass
class SuggestionResult:
    """The suggestions for one video, best first."""

    video: str  # absolute path
    duration: float  # seconds; every cut is this long (unless the track is shorter)
    suggestions: list[Suggestion]
    checkpoint: str  # checkpoint id ("untrained-..." for --untrained)
    encoders: str  # "pretrained" or "tiny"
    untrained: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def notes(self) -> list[str]:
        """Warnings every output made with demo models must carry."""
        notes = []
        if self.untrained:
            notes.append("untrained model (random weights): rankings and moments are meaningless")
        if self.encoders == "tiny":
            notes.append("tiny random encoders, not CLIP/AST: for tests and demos only")
        return notes

    def to_json(self) -> dict[str, Any]:
        return {
            "video": self.video,
            "duration": round(self.duration, 6),
            "suggestions": [s.to_json() for s in self.suggestions],
            "checkpoint": self.checkpoint,
            "encoders": self.encoders,
            "untrained": self.untrained,
            **({"notes": self.notes} if self.notes else {}),
        }


# ---------------------------------------------------------------- the scoring core


def rank_and_detect(model, video_tokens, scoring_tokens, load_music_windows, track_durations, video_duration: float,
                    top_k: int):
    """Score every track for one video and detect the moment on the top K.

    ``video_tokens``: ``VideoTokens`` of one video (B = 1); ``scoring_tokens``: the cached
    :class:`ScoringTokens` of all N tracks;
    ``load_music_windows(positions)`` returns the frozen AST windows ``[K, S, music_dim]``
    and mask ``[K, S]`` of those track positions; ``track_durations`` float64 CPU tensor [N].

    Returns ``(top_positions [K], scores [K], predicted [K, 2], cuts [K, 2])`` as numpy
    arrays, best first; times in seconds.
    """
    import numpy as np
    import torch

    from mgsv_cli.models.metrics import duration_exact_cut

    scores = scoring_tokens.score(model, video_tokens)
    k = min(top_k, scores.shape[0])
    top_scores, top = torch.topk(scores, k)
    windows, window_mask = load_music_windows(top.tolist())
    device = video_tokens.pooled.device
    music = model.encode_music(windows.to(device), window_mask.to(device))
    spans = model.detect(video_tokens.repeat(k), music)
    durations = track_durations[top.cpu()].numpy()  # float64: the cut must end inside the track exactly
    predicted = model.spans_to_seconds(spans, torch.from_numpy(durations).to(spans.device, spans.dtype))
    # spans are float32 (and MPS has no float64): clamp again so rounding never steps past the end.
    predicted = np.clip(predicted.cpu().double().numpy(), 0.0, durations[:, None])
    cut_start, cut_end = duration_exact_cut(predicted[:, 0], predicted[:, 1], video_duration, durations)
    cuts = np.stack([cut_start, cut_end], axis=1)
    return top.cpu().numpy(), top_scores.cpu().numpy(), predicted, cuts


# ---------------------------------------------------------------- token cache


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

    def to_full(self, width: int):
        """Inverse of :meth:`from_full`: keys [N, width, d], pooled [N, d], mask [N, width] in track order."""
        import torch

        _, first = self.buckets[0]
        keys = first.keys.new_zeros(self.n_tracks, width, first.keys.shape[-1])
        pooled = first.pooled.new_zeros(self.n_tracks, first.pooled.shape[-1])
        mask = torch.zeros(self.n_tracks, width, dtype=torch.bool, device=first.mask.device)
        for positions, music in self.buckets:
            kept = music.keys.shape[1]
            keys[positions, :kept], mask[positions, :kept], pooled[positions] = music.keys, music.mask, music.pooled
        return keys, pooled, mask

    @classmethod
    def from_full(cls, keys, pooled, mask) -> "ScoringTokens":
        """Bucket full-length tensors: keys [N, S, d], pooled [N, d], mask [N, S] bool."""
        import torch

        from mgsv_cli.models.made import MusicTokens

        last_valid = torch.where(mask.any(1), mask.shape[1] - mask.flip(1).int().argmax(1), 0)
        bucket_of = torch.bucketize(last_valid, torch.tensor(BUCKET_EDGES), right=False)
        buckets = []
        for b in bucket_of.unique().tolist():
            positions = torch.nonzero(bucket_of == b).flatten()
            width = max(1, int(last_valid[positions].max()))
            music = MusicTokens(None, mask[positions, :width].contiguous(), pooled[positions].contiguous(),
                                keys[positions, :width].contiguous())
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
    if cached is not None and torch.equal(cached[0], ids) and torch.equal(cached[1], stamps):
        return cached[2], True
    known = {} if cached is None else {
        (int(i), int(st)): pos for pos, (i, st) in enumerate(zip(cached[0].tolist(), cached[1].tolist()))
    }
    from_cache = [(pos, known[key]) for pos, key in enumerate(zip(ids.tolist(), stamps.tolist())) if key in known]
    todo = sorted(set(range(len(tracks))) - {pos for pos, _ in from_cache})
    if status:
        status(f"encoding {len(todo)} of {len(tracks)} indexed tracks for this model (cached for later runs)")
    keys, pooled, mask = _assemble(model, index, tracks, device, cached[2] if cached else None, from_cache, todo)
    tokens = ScoringTokens.from_full(keys, pooled, mask)
    if use_cache:
        _write_token_cache(cache_file, tokens, ids, stamps, index.encoder_id, model_id)
    return tokens, False


def _assemble(model, index, tracks, device, cached: ScoringTokens | None, from_cache, todo):
    """Full-width keys [N, S, d], pooled [N, d], mask [N, S]: rows ``from_cache`` copied from
    the old cache (``(new position, old position)`` pairs), rows ``todo`` encoded now."""
    import torch

    width, dim = model.cfg.n_windows, model.cfg.d_model
    n_tracks = len(tracks)
    keys = torch.zeros(n_tracks, width, dim, device=device)
    pooled = torch.zeros(n_tracks, dim, device=device)
    mask = torch.zeros(n_tracks, width, dtype=torch.bool, device=device)
    if from_cache:
        old_keys, old_pooled, old_mask = cached.to_full(width)
        new_pos, old_pos = (torch.tensor(p, device=device) for p in zip(*from_cache))
        keys[new_pos], pooled[new_pos], mask[new_pos] = old_keys[old_pos], old_pooled[old_pos], old_mask[old_pos]
    with torch.inference_mode():
        for start in range(0, len(todo), ENCODE_CHUNK):
            chunk = todo[start:start + ENCODE_CHUNK]
            feats, feat_mask = index.tokens_for([tracks[p].id for p in chunk])
            music = model.encode_music(torch.from_numpy(feats).to(device), torch.from_numpy(feat_mask).to(device))
            rows = torch.tensor(chunk, device=device)
            n_kept = music.keys.shape[1]  # encode_music trims each batch to its last valid window
            keys[rows, :n_kept] = music.keys.to(keys.dtype)
            mask[rows, :n_kept] = music.mask
            pooled[rows] = music.pooled.to(pooled.dtype)
    return keys, pooled, mask


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

                buckets.append((read("positions"), MusicTokens(None, read("mask").bool(), read("pooled"), read("keys"))))
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
    meta = {"format": TOKEN_CACHE_FORMAT, "encoder_id": str(encoder_id), "model_id": model_id,
            "n_buckets": str(len(tokens.buckets))}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # the cache is an optimisation: failing to write it is not an error


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
                 scoring_tokens, device, timings: dict[str, float]):
        import torch

        self.model = model
        self.model_id = model_id
        self.untrained = untrained
        self.encoders = encoders
        self.encoders_kind = encoders_kind
        self.index = index
        self.tracks = tracks
        self.scoring_tokens = scoring_tokens
        self.device = device
        self.timings = timings
        self.track_durations = torch.tensor([t.duration for t in tracks], dtype=torch.float64)
        self._position_of_id = {t.id: i for i, t in enumerate(tracks)}
        self.prefetcher = VideoPrefetcher()

    @classmethod
    def open(cls, *, index_path=None, checkpoint=None, untrained: bool = False, encoders: str | None = None,
             device: str = "auto", offline: bool = False, weights_dir=None, status: StatusFn | None = None,
             encoders_obj=None, use_cache: bool = True, prefetch: str | os.PathLike | None = None) -> "Suggester":
        """Load the index, encoders and model, and the tracks' scoring tokens.

        ``prefetch``: a video to start decoding at once, overlapping all the loading.

        ``encoders``: ``"pretrained"``, ``"tiny"`` or None (whichever the index was built with).
        ``encoders_obj`` injects already loaded ``features.Encoders`` (tests, benchmarks).
        Raises ``IndexDatabaseError`` (no/empty index, encoder mismatch) and
        ``CheckpointError`` (no checkpoint, dims that do not fit the encoders).
        """
        from mgsv_cli.index.store import open_index

        timings: dict[str, float] = {}
        prefetcher = VideoPrefetcher()
        if prefetch is not None:
            prefetcher.start(prefetch)
        index = open_index(index_path)
        try:
            index.begin_snapshot()  # one consistent view even while `mgsv index` writes
            tracks = index.tracks()
            kind = _encoders_for_index(index, encoders)
            t0 = time.perf_counter()
            from mgsv_cli.device import resolve_device

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
            t0 = time.perf_counter()
            scoring, from_cache = scoring_tokens_for(model, model_id, index, tracks, torch_device, status, use_cache)
            timings["music_tokens_cached" if from_cache else "music_tokens_encoded"] = time.perf_counter() - t0
        except BaseException:
            index.close()
            prefetcher.close()
            raise
        suggester = cls(model=model, model_id=model_id, untrained=untrained, encoders=encoders_obj, encoders_kind=kind,
                   index=index, tracks=tracks, scoring_tokens=scoring, device=torch_device, timings=timings)
        suggester.prefetcher.close()
        suggester.prefetcher = prefetcher
        return suggester

    def close(self) -> None:
        self.prefetcher.close()
        self.index.close()

    def __enter__(self) -> "Suggester":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def suggest_video(self, video_path: str | os.PathLike, top_k: int = 5, snap: str | None = None) -> SuggestionResult:
        """Embed one video and rank the index for it; raises ``MediaError`` on an unreadable file.

        ``snap="beat"`` moves each cut's start onto the nearest downbeat/beat stored in the index.
        """
        t0 = time.perf_counter()
        video = self.encoders.embed_decoded(self.prefetcher.take(video_path))
        t_embed = time.perf_counter() - t0
        result = self.suggest_features(video.feats, video.mask, float(video.duration), top_k,
                                       video=str(Path(video_path).resolve()), snap=snap)
        result.timings["embed_video"] = t_embed
        return result

    def suggest_features(self, frames, frame_mask, duration: float, top_k: int = 5, video: str = "",
                         snap: str | None = None) -> SuggestionResult:
        """The encoder-free part: frames [F, video_dim] + mask [F] of one video -> result."""
        import torch

        if top_k < 1:
            raise UsageError("--top must be at least 1")
        if snap not in (None, "beat"):
            raise UsageError(f"--snap {snap!r}: the only snap is 'beat'")
        t0 = time.perf_counter()
        frames = torch.as_tensor(frames, dtype=torch.float32, device=self.device)[None]
        frame_mask = torch.as_tensor(frame_mask, device=self.device)[None]
        with torch.inference_mode():
            video_tokens = self.model.encode_video(frames, frame_mask)
            top, scores, predicted, cuts = rank_and_detect(
                self.model, video_tokens, self.scoring_tokens, self._load_windows, self.track_durations,
                duration, top_k,
            )
        suggestions = []
        for rank, (pos, score, (ps, pe), (cs, ce)) in enumerate(zip(top, scores, predicted, cuts), start=1):
            track = self.tracks[int(pos)]
            snapped_to = None
            if snap == "beat":
                length = float(ce) - float(cs)
                cs, snapped_to = _snap_to_beats(track, float(cs), length)
                ce = cs + length
            suggestions.append(Suggestion(
                rank=rank, track=track.path, score=float(score), start=float(cs), end=float(ce),
                predicted_start=float(ps), predicted_end=float(pe), track_duration=track.duration,
                title=track.title, artist=track.artist, snapped_to=snapped_to,
            ))
        return SuggestionResult(
            video=video, duration=duration, suggestions=suggestions, checkpoint=self.model_id,
            encoders=self.encoders_kind, untrained=self.untrained,
            timings={"score_and_detect": time.perf_counter() - t0},
        )

    def _load_windows(self, positions: list[int]):
        import torch

        ids = [self.tracks[p].id for p in positions]
        feats, mask = self.index.tokens_for(ids)
        return torch.from_numpy(feats), torch.from_numpy(mask)


def _snap_to_beats(track, start: float, length: float) -> tuple[float, str | None]:
    """The cut's start moved onto the track's nearest downbeat/beat (index beats); unchanged without beats."""
    from mgsv_cli.media.beats import BeatGrid, snap_start

    if not track.beats:
        return start, None
    grid = BeatGrid.from_dict(track.beats)
    return snap_start(start, length, grid.beats, grid.downbeats, track.duration)


def _encoders_for_index(index, requested: str | None) -> str:
    """The encoder kind to load: the index's, unless asked otherwise (checked before any loading)."""
    from mgsv_cli.index.store import encoder_kind_of

    built_with = encoder_kind_of(index.encoder_id)
    if requested is not None and requested != built_with:
        raise IndexDatabaseError(
            f"the index {index.path} was built with encoders '{index.encoder_id}', not {requested} ones: "
            f"use --encoders {built_with} (or leave --encoders out), or re-index with "
            f"`mgsv index MUSIC_DIR --force --encoders {requested}`"
        )
    return built_with


def _check_index_encoders(index, encoders, kind: str) -> None:
    if index.encoder_id and encoders.encoder_id != index.encoder_id:
        raise IndexDatabaseError(
            f"the index {index.path} was built with encoders '{index.encoder_id}', but suggest loaded "
            f"'{encoders.encoder_id}' (--encoders {kind}); use the index's encoders, or re-index with "
            f"`mgsv index MUSIC_DIR --force --encoders {kind}`"
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
    model, variant, meta = load_model(checkpoint, device=device)
    cfg = model.cfg
    if (cfg.video_dim, cfg.music_dim) != (encoders.video_dim, encoders.music_dim):
        raise CheckpointError(
            f"checkpoint {meta['path']} takes video/music features of {cfg.video_dim}/{cfg.music_dim} dims, "
            f"but the encoders ({encoders.encoder_id}) give {encoders.video_dim}/{encoders.music_dim}; "
            "use the encoders it was trained on"
        )
    return model, str(meta["checkpoint_id"])


# ---------------------------------------------------------------- batch


def expand_video_inputs(inputs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Videos named or found (recursively, by extension) in folders; plus ``(input, reason)`` for bad ones."""
    videos: list[Path] = []
    problems: list[tuple[str, str]] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
                and RENDERED_TAG not in p.name  # mgsv render's own outputs sit beside the clips
            )
            if not found:
                problems.append((str(path), f"no video files ({', '.join(sorted(VIDEO_EXTENSIONS))}) in this folder"))
            videos.extend(found)
        elif path.is_file():
            videos.append(path)
        else:
            problems.append((str(path), "no such file or folder"))
    unique = list(dict.fromkeys(p.resolve() for p in videos))
    return unique, problems


def suggest_many(suggester: Suggester, videos: Iterable[Path], top_k: int = 5, remember: bool = True,
                 snap: str | None = None) -> Iterator[tuple[Path, SuggestionResult | None, str | None]]:
    """Yield ``(video, result, None)`` or ``(video, None, reason)`` per video; a bad file never stops the batch."""
    videos = list(videos)
    for position, video in enumerate(videos):
        if position + 1 < len(videos):
            suggester.prefetcher.start(videos[position + 1])  # decodes while this one goes through CLIP
        try:
            result = suggester.suggest_video(video, top_k, snap=snap)
        except MgsvError as exc:
            yield video, None, _first_line(exc)
            continue
        except (OSError, ValueError, RuntimeError) as exc:  # a decoder or tensor error on one odd file
            yield video, None, f"{type(exc).__name__}: {_first_line(exc)}"
            continue
        if remember:
            remember_suggestion(result)
        yield video, result, None


def suggest(videos: Iterable[str | os.PathLike], *, top_k: int = 5, remember: bool = True,
            **open_options) -> list[tuple[Path, SuggestionResult | None, str | None]]:
    """One call: expand ``videos`` (files or folders), load index and models once
    (``open_options`` as :meth:`Suggester.open`), suggest for each video.

    Returns ``(video, result, None)`` or ``(video_or_input, None, reason)`` per input; raises
    the loading errors (no index, no checkpoint, missing weights) since nothing can run.
    """
    found, problems = expand_video_inputs(videos)
    outcomes: list[tuple[Path, SuggestionResult | None, str | None]] = [
        (Path(name), None, reason) for name, reason in problems
    ]
    if found:
        with Suggester.open(**open_options) as suggester:
            outcomes.extend(suggest_many(suggester, found, top_k=top_k, remember=remember))
    return outcomes


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# ---------------------------------------------------------------- remembered suggestions


def _remembered_path(video_path: Path) -> Path:
    key = hashlib.blake2b(str(video_path).encode(), digest_size=12).hexdigest()
    return paths.suggestions_dir() / f"{key}.json"


def remember_suggestion(result: SuggestionResult) -> Path:
    """Store ``result`` as the last suggestion of its video (keyed by absolute path)."""
    video = Path(result.video)
    stat = video.stat()
    record = {
        **result.to_json(),
        "video_size": stat.st_size,
        "video_mtime_ns": stat.st_mtime_ns,
        "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    target = _remembered_path(video)
    paths.atomic_write_text(target, json.dumps(record, indent=2) + "\n")
    return target


def load_last_suggestion(video_path: str | os.PathLike) -> dict[str, Any]:
    """The last suggestion remembered for this video: the ``--json`` object of ``mgsv suggest``.

    Raises ``UsageError`` when there is none, or when the video changed since.
    """
    video = Path(video_path).expanduser().resolve()
    hint = f"run `mgsv suggest {video_path}` first, or give --track and --start"
    source = _remembered_path(video)
    if not source.is_file():
        raise UsageError(f"no suggestion remembered for {video_path}: {hint}")
    try:
        record = json.loads(source.read_text())
    except (OSError, json.JSONDecodeError):
        raise UsageError(f"the remembered suggestion for {video_path} is unreadable: {hint}") from None
    if record.get("video") != str(video) or not record.get("suggestions"):
        raise UsageError(f"no suggestion remembered for {video_path}: {hint}")
    try:
        stat = video.stat()
    except OSError:
        raise UsageError(f"{video_path} does not exist") from None
    if (stat.st_size, stat.st_mtime_ns) != (record.get("video_size"), record.get("video_mtime_ns")):
        raise UsageError(f"{video_path} changed since its suggestion was made: {hint.replace('first', 'again')}")
    return record
