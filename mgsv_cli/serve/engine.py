"""What ``mgsv serve`` keeps loaded, and the work it does with it (no HTTP here).

:class:`Engine` opens a :class:`~mgsv_cli.editor.suggest.Suggester` once (encoders,
MaDe, the index and its cached track tokens) and keeps it, with the CLIP features of
recent clips (keyed by path, size and mtime), so asking again for the same clip, with
another ``--top`` or ``--snap``, skips decoding and CLIP. All of it runs on one worker
thread: the index's SQLite connection belongs to the thread that opened it, and one
suggestion at a time is what the CPU can do anyway.

Before each suggestion the engine checks that what it loaded is still what its options
mean: when the index changed (``mgsv index`` added music) or, without ``--checkpoint``,
a newer training run appeared, it reopens (the encoders stay loaded). A command's
options are compared with the server's by :meth:`Engine.mismatch`; the CLI runs the
work itself when they differ.

Render, export and previews need no model: :func:`render_clip`, :func:`export_clip`
call the editor's functions exactly as the CLI does.
"""
from __future__ import annotations

import dataclasses
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from mgsv_cli import __version__, paths
from mgsv_cli.editor.record import SuggestionResult
from mgsv_cli.errors import MgsvError

if TYPE_CHECKING:
    from mgsv_cli.editor.suggest import Suggester
    from mgsv_cli.editor.tracklist import TrackList

FEATURE_CACHE_SIZE = 64  # clips whose CLIP features are kept (about 100 KB each)
StatusFn = Callable[[str], None]


class OptionsDiffer(Exception):
    """The command asked for another index, model, encoders or device than the server runs."""


def _same_path(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _stamp(path: Path) -> tuple[str, int, int]:
    info = path.stat()
    return str(path), info.st_size, info.st_mtime_ns


class Engine:
    """The warm models and index; thread-safe (everything runs on one worker thread)."""

    def __init__(self, *, index_path=None, checkpoint=None, untrained: bool = False, encoders: str | None = None,
                 device: str = "auto", offline: bool = False, weights_dir=None, status: StatusFn | None = None,
                 encoders_obj=None, feature_cache_size: int = FEATURE_CACHE_SIZE):
        self.index_path = _store_location(index_path)
        self.checkpoint = Path(checkpoint).expanduser().absolute() if checkpoint is not None else None
        self.untrained = untrained
        self.encoders_asked = encoders
        self.device_asked = device or "auto"
        self.offline = offline
        self.weights_dir = Path(weights_dir).expanduser().absolute() if weights_dir is not None else None
        self.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.reloads = 0
        self._status = status
        self._features: OrderedDict[tuple, Any] = OrderedDict()
        self._feature_cache_size = feature_cache_size
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mgsv-engine")
        self._lock = threading.Lock()
        self._suggester: Suggester | None = None
        self._signature: tuple | None = None
        try:
            self._run(self._open, encoders_obj)
        except BaseException:
            self._worker.shutdown(wait=False)
            raise

    # ------------------------------------------------------------ plumbing

    def _run(self, fn, *args, **kwargs):
        """Run ``fn`` on the worker thread and wait for it."""
        return self._worker.submit(fn, *args, **kwargs).result()

    def _open(self, encoders_obj=None) -> None:
        from mgsv_cli.api import load_suggester

        signature = self._current_signature()
        suggester = load_suggester(self.index_path, checkpoint=self.checkpoint, untrained=self.untrained,
                                   encoders=self.encoders_asked, device=self.device_asked, offline=self.offline,
                                   weights_dir=self.weights_dir, status=self._status, loaded_encoders=encoders_obj)
        if not isinstance(suggester.encoders, _CachingEncoders):
            suggester.encoders = _CachingEncoders(suggester.encoders, self._features, self._feature_cache_size)
        # A duck-typed wrapper, not a VideoPrefetcher: its __getattr__ passes start and close on.
        suggester.prefetcher = _CachingPrefetcher(suggester.prefetcher, self._features)  # type: ignore[assignment]
        old, self._suggester = self._suggester, suggester
        if old is not None:
            old.close()
        self._signature = (suggester.store.content_version, signature[1])
        self.checkpoint_file = None if self.untrained else self._checkpoint_file(self.checkpoint)

    @staticmethod
    def _checkpoint_file(checkpoint) -> Path:
        from mgsv_cli.models.checkpoint import resolve_checkpoint

        return resolve_checkpoint(checkpoint).resolve()

    def _current_signature(self) -> tuple:
        """What the server's own options mean now: the index's content, the checkpoint file."""
        from mgsv_cli.index.backend import open_store

        with open_store(self.index_path) as store:
            content = store.content_version
        weights = None if self.untrained else _stamp(self._checkpoint_file(self.checkpoint))
        return content, weights

    def _refresh(self) -> None:
        """Reopen when the index or the checkpoint changed since loading (encoders kept)."""
        if self._current_signature() != self._signature:
            if self._status:
                self._status("the index or checkpoint changed: reloading")
            self._open(self.suggester.encoders)  # the features of clips stay valid: same encoders
            self.reloads += 1

    @property
    def suggester(self) -> Suggester:
        """The open suggester (``__init__`` opens one; a reload replaces it)."""
        assert self._suggester is not None
        return self._suggester

    def close(self) -> None:
        def close_suggester():
            if self._suggester is not None:
                self._suggester.close()

        try:
            self._run(close_suggester)
        finally:
            self._worker.shutdown(wait=False)

    # ------------------------------------------------------------ facts

    @property
    def encoders_kind(self) -> str:
        return self.suggester.encoders_kind

    @property
    def tracks(self) -> TrackList:
        return self.suggester.tracks

    def mismatch(self, asked: dict[str, Any]) -> str | None:
        """Why a command with options ``asked`` must not be served here (None: it may).

        ``asked``: the command's effective ``index``, ``checkpoint``, ``untrained``,
        ``encoders``, ``device``, ``weights_dir`` (absolute paths or None) and its
        ``data_dir`` (where it keeps runs and remembered suggestions).
        """
        from mgsv_cli.errors import MgsvError as _Error

        if "data_dir" in asked and not _same_path(asked["data_dir"], paths.data_dir()):
            return "the command keeps its data elsewhere (another MGSV_HOME)"
        if _store_location(asked.get("index")) != self.index_path:
            return f"the server uses the index {self.index_path}"
        if bool(asked.get("untrained")) != self.untrained:
            return "the server runs " + ("an untrained model" if self.untrained else "a trained checkpoint")
        if self.untrained:
            if asked.get("checkpoint") is not None:
                return "the server runs an untrained model"
        else:
            try:
                wanted = self._checkpoint_file(asked.get("checkpoint"))
            except _Error:
                return "no such checkpoint"
            if wanted != self.checkpoint_file:
                return f"the server runs the checkpoint {self.checkpoint_file}"
        if asked.get("encoders") not in (None, self.encoders_kind):
            return f"the server runs {self.encoders_kind} encoders"
        if not _same_path(asked.get("weights_dir"), self.weights_dir):
            return "the server loaded its encoder weights from elsewhere"
        try:
            from mgsv_cli.device import resolve_device

            if resolve_device(asked.get("device") or "auto") != self.suggester.device:
                return f"the server runs on {self.suggester.device}"
        except _Error as exc:
            return str(exc)
        return None

    def status(self) -> dict[str, Any]:
        def read():
            s = self.suggester
            return {
                "version": __version__, "pid": os.getpid(), "started_at": self.started_at,
                "index": {"path": s.store.uri, "tracks": len(s.tracks), "encoder_id": s.store.encoder_id,
                          "content_version": s.store.content_version, "with_beats": s.store.beat_count()},
                "model": {"id": s.model_id, "untrained": s.untrained,
                          "checkpoint": str(self.checkpoint_file) if self.checkpoint_file else None},
                "encoders": s.encoders_kind, "device": str(s.device), "load_timings": s.timings,
                "clips_cached": len(self._features), "reloads": self.reloads,
            }

        return self._run(read)

    # ------------------------------------------------------------ tracks

    def track(self, ref: str | int):
        """The stored track ``ref`` (an id, or a path) whose file really is that stored path.

        Raises NotServable for anything else: a path not in the store, or one that is a
        symlink (or lies under one) leading elsewhere.
        """
        return self._run(self._track, ref)

    def _track(self, ref: str | int):
        from mgsv_cli.serve.files import NotServable, indexed_track

        if (isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit())) and \
                self.suggester.tracks.positions_of([int(ref)])[0] < 0:
            raise NotServable("not a track of the index")  # not among the tracks loaded
        return indexed_track(self.suggester.store, ref)

    def tracks_json(self, wanted_paths: list[str] | None = None, beats: bool = False, offset: int = 0,
                    limit: int | None = None) -> dict[str, Any]:
        def read():
            self._refresh_quietly()
            tracks, store = self.suggester.tracks, self.suggester.store
            if wanted_paths:
                found = (store.find(p) for p in dict.fromkeys(wanted_paths) if p and "\x00" not in p)
                chosen = [t for t in found if t is not None]
            else:
                chosen = tracks[offset:None if limit is None else offset + limit]
            grids = store.beats_for([t.id for t in chosen]) if chosen else []
            return {"total": len(tracks), "tracks": [track_json(t, g, beats) for t, g in zip(chosen, grids)]}

        return self._run(read)

    def track_json(self, ref: str | int) -> dict[str, Any]:
        """The stored track ``ref`` (see :meth:`track`) for the API, with its beat grid."""
        def read():
            info = self._track(ref)
            return track_json(info, self.suggester.store.beats_for([info.id])[0], beats=True)

        return self._run(read)

    def _refresh_quietly(self) -> None:
        try:
            self._refresh()
        except MgsvError:
            pass  # keep serving what is loaded; a suggestion will report the problem

    # ------------------------------------------------------------ suggest

    def suggest(self, video: str | os.PathLike, top_k: int = 5, snap: str | None = None, remember: bool = True,
                asked: dict[str, Any] | None = None, include_short: bool = False, fit: str = "cut") -> SuggestionResult:
        """What ``mgsv suggest VIDEO`` gives (and remembers), from the warm models.

        ``asked``: the command's options; raises :class:`OptionsDiffer` when they do not
        match the server's (then the command runs in its own process).
        """
        return self._run(self._suggest, video, top_k, snap, remember, asked, include_short, fit)

    def _suggest(self, video, top_k: int, snap: str | None, remember: bool, asked, include_short: bool,
                 fit: str = "cut"):
        if asked is not None:
            try:
                self._refresh()
            except MgsvError as exc:  # e.g. the index vanished: the command says so itself
                raise OptionsDiffer(str(exc)) from None
            reason = self.mismatch(asked)
            if reason:
                raise OptionsDiffer(reason)
        else:
            self._refresh()
        return self.suggester.suggest_clip(Path(video).expanduser(), top_k, snap=snap, include_short=include_short,
                                           remember=remember, fit=fit)


class _Cached:
    """What the caching prefetcher hands over for a clip whose features are cached."""

    def __init__(self, key: tuple):
        self.key = key


class _Fresh:
    """A clip decoded now, to be embedded and then cached under ``key``."""

    def __init__(self, decoded, key: tuple | None):
        self.decoded = decoded
        self.key = key


class _CachingPrefetcher:
    """The suggester's decoder, skipped for clips whose CLIP features are cached.

    ``Suggester.suggest_video`` runs ``encoders.embed_decoded(prefetcher.take(path))``;
    with this prefetcher and :class:`_CachingEncoders` a cached clip is neither decoded
    nor embedded again. Anything else is passed to the real prefetcher.
    """

    def __init__(self, real, cache: OrderedDict):
        self._real = real
        self._cache = cache

    def take(self, video_path):
        try:
            key = _stamp(Path(video_path).resolve())
        except OSError:
            key = None
        if key is not None and key in self._cache:
            self._cache.move_to_end(key)
            return _Cached(key)
        return _Fresh(self._real.take(video_path), key)

    def __getattr__(self, name):
        return getattr(self._real, name)


class _CachingEncoders:
    """The loaded encoders, remembering the CLIP features of the clips they embed."""

    def __init__(self, real, cache: OrderedDict, size: int):
        self._real = real
        self._cache = cache
        self._size = size

    def embed_decoded(self, video):
        if isinstance(video, _Cached):
            return self._cache[video.key]
        if isinstance(video, _Fresh):
            features = self._real.embed_decoded(video.decoded)
            if video.key is not None:
                self._cache[video.key] = features
                while len(self._cache) > self._size:
                    self._cache.popitem(last=False)
            return features
        return self._real.embed_decoded(video)

    def __getattr__(self, name):
        return getattr(self._real, name)


def track_json(track, grid: dict | None = None, beats: bool = False) -> dict[str, Any]:
    """One stored track for the API, with its beat grid ``grid`` when ``beats``."""
    data = {
        "id": track.id, "path": track.path, "name": track.name, "title": track.title, "artist": track.artist,
        "album": track.album, "duration": round(track.duration, 6),
        "tempo_bpm": (grid or {}).get("tempo_bpm"), "has_beats": bool(grid and grid.get("beats")),
    }
    if beats:
        data["beats"] = grid
    return data


def _store_location(index) -> str:
    """The store the options name, as one string: a URI as it is, a path made absolute; None is
    mgsv's index."""
    if index is None or str(index) == "":
        return str(paths.default_index_path())
    text = str(index)
    return text if "://" in text else str(Path(text).expanduser().resolve())


def exact_suggestions(result: SuggestionResult) -> dict[str, Any]:
    """Every field of the result, unrounded (``to_json`` rounds to 6 places), so the CLI
    prints exactly what it would have printed itself."""
    return dataclasses.asdict(result)
