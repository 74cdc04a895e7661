"""The public Python API of mgsv: a library to index, a suggester kept warm, render and export,
train and evaluate; the same functions the CLI, ``mgsv serve`` and ``mgsv mcp`` run.

    import mgsv_cli as mgsv

    library = mgsv.open_library("~/music/index.sqlite", create=True)   # an SQLite file or a Lance store
    library.index("~/Music", progress=lambda stage, done, total: None)
    suggester = mgsv.load_suggester(library)                # encoders, model and tracks loaded once
    result = suggester.suggest("clip.mp4", top=5)           # what `mgsv suggest --json` prints
    mgsv.render(result, "clip.with-music.mp4")              # the best pick under the clip
    mgsv.export(result, format="fcpxml")                    # or a timeline for an editing program

Two forms, one path. The keyword functions and methods here build the request object the CLI
builds (``editor.requests``, ``index.pipeline.IndexRequest``: which options go together,
defaults from the user's settings, errors naming the keyword), then call the library function
the front ends call. Those functions are re-exported here as the request forms
(:func:`run_index`, :func:`suggest_videos`, :func:`render_clip`, :func:`render_videos`,
:func:`export_suggestion`): the CLI builds its request naming its ``--flags``, ``mgsv serve``
its JSON fields, and both call them. Errors are the typed :class:`~mgsv_cli.errors.MgsvError`
subclasses, each with the exit code the CLI uses; nothing here prints (progress goes to the
callbacks given).

Heavy modules (torch, the encoders, opentimelineio) load inside the functions that need
them; ``mgsv_cli/__init__.py`` re-exports the names of ``__all__`` lazily, so ``import
mgsv_cli`` stays instant. ``tests/test_public_api.py`` records every public name and signature: a
change to them is deliberate.

An app-layer module, like the CLI. May import anything of mgsv but the front ends (``cli``,
``serve``, ``mcp``), which import it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Union

from mgsv_cli.editor.export import ExportedTimeline, ExportResult, export_suggestion
from mgsv_cli.editor.record import Suggestion, SuggestionResult
from mgsv_cli.editor.render import RenderOutcome, RenderResult, render_clip, render_videos
from mgsv_cli.editor.requests import ExportRequest, RenderRequest, SuggestRequest, keyword_arg
from mgsv_cli.editor.suggest import Outcome, suggest_videos
from mgsv_cli.editor.suggest import Suggester as _EditorSuggester
from mgsv_cli.errors import UsageError
from mgsv_cli.index.pipeline import IndexProgress, IndexReport, IndexRequest, run_index
from mgsv_cli.index.records import FailedFile, TrackRecord
from mgsv_cli.research.runs import Reporter, TrainResult

__all__ = [
    # the library and indexing
    "open_library", "Library", "LibraryInfo", "TrackRecord", "FailedFile", "IndexReport", "IndexProgress",
    # suggesting
    "load_suggester", "Suggester", "SuggestionResult", "Suggestion",
    # render and export
    "render", "RenderResult", "export", "ExportedTimeline",
    # research
    "train", "TrainResult", "Reporter", "evaluate", "load_model", "LoadedModel",
    # the request forms the front ends call
    "IndexRequest", "run_index", "SuggestRequest", "suggest_videos", "Outcome", "RenderRequest", "render_clip",
    "render_videos", "RenderOutcome", "ExportRequest", "export_suggestion", "ExportResult",
]

PathLike = Union[str, os.PathLike]
# ``progress(stage, done, total)``: the stage's name, units done, units in all (see IndexProgress).
ProgressFn = Callable[[str, float, float], None]


def _settings():
    """The user's settings (defaults, settings file, ``MGSV_*``): what every request defaults to."""
    from mgsv_cli.settings import load_settings

    return load_settings()


def _location(path: PathLike | None) -> str | None:
    """A store's location as the library takes it: ``~`` expanded, object-store URIs unchanged."""
    if path is None:
        return None
    text = os.fspath(path)
    return text if "://" in text else str(Path(text).expanduser())


# ---------------------------------------------------------------- the library


@dataclass(frozen=True)
class LibraryInfo:
    """What a library holds: counts, its encoders, and damage when checked (:meth:`Library.info`)."""

    uri: str
    backend: str  # "sqlite" (an editor's library) or "lance" (a catalog)
    tracks: int
    with_beats: int  # tracks with a beat grid (for cuts that start on a beat)
    failed: int  # files it could not take, remembered and skipped while unchanged
    encoders: str | None  # "pretrained" or "tiny"; None while the library is empty
    encoder_id: str | None
    content_version: str  # changes whenever a track is added, replaced or removed
    damage: str | None = None  # what a deeper check found (``info(check=True)``); None: healthy or unchecked

    def to_json(self) -> dict[str, Any]:
        import dataclasses

        return dataclasses.asdict(self)


class _CallbackProgress(IndexProgress):
    """An ``IndexProgress`` calling ``progress(stage, done, total)`` as each stage advances."""

    def __init__(self, progress: ProgressFn):
        self._progress = progress
        self._done: dict[str, float] = {}
        self._total: dict[str, float] = {}

    def stage(self, name: str, total: float) -> None:
        self._done[name], self._total[name] = 0.0, float(total)
        self._progress(name, 0.0, float(total))

    def advance(self, name: str, amount: float = 1.0, detail: str = "") -> None:
        self._done[name] = self._done.get(name, 0.0) + float(amount)
        self._progress(name, self._done[name], self._total.get(name, 0.0))


class Library:
    """A music library: one track store, an SQLite index file or a Lance store (:func:`open_library`).

    The store is opened for each call and closed after it, so a ``Library`` may be used from
    any thread and every call sees what the last :meth:`index` wrote.
    """

    def __init__(self, uri: str, *, keys: str | None = None):
        self.uri = uri
        self._keys = keys  # how a Lance store created by open_library keeps its keys

    def __repr__(self) -> str:
        return f"Library({self.uri!r})"

    @property
    def backend(self) -> str:
        """``"lance"`` for a Lance store, ``"sqlite"`` for an SQLite index file."""
        from mgsv_cli.index.backend import is_lance_uri

        return "lance" if is_lance_uri(self.uri) else "sqlite"

    def _open(self):
        from mgsv_cli.index.backend import open_store

        return open_store(self.uri)

    def info(self, *, check: bool = False) -> LibraryInfo:
        """How many tracks, beat grids and failed files it holds, and its encoders. ``check``
        also runs the store's deeper check (an SQLite index: ``quick_check``, which reads the
        whole file) and says what damage it found."""
        from mgsv_cli.features.recipe import encoder_kind_of

        with self._open() as store:
            encoder_id = store.encoder_id
            damage = store.health().damage if check else None
            return LibraryInfo(uri=store.uri, backend=self.backend, tracks=len(store), with_beats=store.beat_count(),
                               failed=len(store.failed_files()),
                               encoders=encoder_kind_of(encoder_id) if encoder_id else None, encoder_id=encoder_id,
                               content_version=store.content_version, damage=damage)

    def tracks(self, offset: int = 0, limit: int | None = None) -> list[TrackRecord]:
        """The tracks by id, ``limit`` of them from ``offset`` (all by default; a catalog's
        records are read only for the ids asked)."""
        if offset < 0 or (limit is not None and limit < 0):
            raise UsageError("offset and limit: 0 or more")
        with self._open() as store:
            ids, _ = store.ids_and_durations()
            chosen = ids[offset:None if limit is None else offset + limit]
            return store.tracks([int(i) for i in chosen]) if len(chosen) else []

    def find(self, path: PathLike) -> TrackRecord | None:
        """The track stored for the file at ``path`` (resolved as indexing resolves it), or None."""
        with self._open() as store:
            return store.find(path)

    def failed(self, under: PathLike | None = None) -> list[FailedFile]:
        """The files the library could not take, and why (those under the folder ``under`` only
        when given): what ``mgsv index --failed`` lists."""
        from mgsv_cli.index.pipeline import failed_files

        return failed_files(self.uri, under=under)[1]

    def index(self, folder: PathLike, *, progress: IndexProgress | ProgressFn | None = None, prune: bool = False,
              force: bool = False, retry_failed: bool = False, encoders: str | None = None,
              device: str | None = None, offline: bool = False, weights_dir: PathLike | None = None,
              detect_beats: bool = True, batch_windows: int | None = None, engine: str = "local",
              ray_address: str | None = None) -> IndexReport:
        """Bring the library up to date with the audio files under ``folder`` (what ``mgsv index
        FOLDER`` does): new and changed files embedded, unchanged ones not even read, failures
        remembered; safe to interrupt and run again.

        ``progress``: an :class:`IndexProgress`, or a function ``progress(stage, done, total)``
        (stages ``checking``, ``probing``, ``embedding`` in seconds of audio, ``beats``; the Ray
        engine reports ``indexing``). ``encoders``: ``pretrained`` or ``tiny`` (default: the
        library's own, else the settings'). ``prune`` drops tracks whose files are gone,
        ``force`` re-embeds everything (and moves a damaged index aside), ``retry_failed`` tries
        the remembered failures again; ``engine="ray"`` runs on Ray (a Lance store only).

        Raises ``UsageError`` (no such folder, no audio in it), ``IndexDatabaseError`` (another
        run holds the library; other encoders without ``force``), ``StorageError``.
        """
        if encoders is None and not force:
            with self._open() as store:
                encoders = _encoder_kind(store.encoder_id)
        lance = self.backend == "lance"
        source = _location(folder)
        request = IndexRequest.build(_settings(), keyword_arg, source=source, index=None if lance else self.uri,
                                     store=self.uri if lance else None, engine=engine, encoders=encoders,
                                     device=device, offline=offline, weights_dir=weights_dir,
                                     batch_windows=batch_windows, detect_beats=detect_beats, prune=prune, force=force,
                                     retry_failed=retry_failed, keys=self._keys if lance else None,
                                     ray_address=ray_address)
        if progress is not None and not isinstance(progress, IndexProgress):
            progress = _CallbackProgress(progress)
        return run_index(request, progress)


def _encoder_kind(encoder_id: str | None) -> str | None:
    from mgsv_cli.features.recipe import encoder_kind_of

    return encoder_kind_of(encoder_id) if encoder_id else None


def open_library(path: PathLike | None = None, *, create: bool = False, keys: str | None = None) -> Library:
    """The library at ``path``: an ``.sqlite`` index file, or a Lance store (a folder, ``DIR.lance``
    or an ``s3://``-style URI); None: the settings' index (mgsv's own by default).

    ``create`` makes an empty one when there is none (``keys``: how a new Lance store keeps the
    rerank's keys, ``float16`` or ``int8``). Raises ``IndexDatabaseError`` when there is none
    and ``create`` is not given, or when the file is not an mgsv library.
    """
    from mgsv_cli.index.backend import open_store

    uri = _location(path) if path is not None else str(_settings().index)
    with open_store(uri, create=create, key_encoding=keys) as store:
        uri = store.uri
    return Library(uri, keys=keys)


def _store_of(library: Library | PathLike | None) -> str | None:
    """The store location a function's ``library`` argument names (None: the settings' index)."""
    if isinstance(library, Library):
        return library.uri
    return _location(library)


# ---------------------------------------------------------------- suggesting


class Suggester(_EditorSuggester):
    """The encoders, the model and the library's tracks loaded once (:func:`load_suggester`);
    :meth:`suggest` per clip, each in a fraction of the loading time.

    It reads the library as it was when loaded: load it again after indexing to see new
    tracks. Use it from the thread that loaded it (an SQLite library's connection belongs
    to that thread); ``close()`` it, or use it in a ``with`` block.
    """

    @property
    def library(self) -> Library:
        """The library it ranks."""
        return Library(self.store.uri)

    def suggest(self, video: PathLike, *, top: int | None = None, snap: str | None = None,
                include_short: bool = False, remember: bool = True, fit: str | None = None) -> SuggestionResult:
        """The ``top`` tracks for ``video`` (default: the settings' ``top_k``), best first, each with
        the cut to use (exactly as long as the clip, inside the track, in seconds) and the
        relevance along the track: the record ``mgsv suggest --json`` prints.

        ``snap="beat"`` starts each cut on the nearest downbeat/beat; ``include_short`` ranks
        tracks shorter than the clip too (marked ``fits=False``). ``remember`` keeps the result
        as the clip's last suggestion, for ``render``/``export`` given the clip's path (and for
        ``mgsv render CLIP``). ``fit`` (default: the settings'): ``cut`` (the model's moment, as
        long as the clip), ``ending`` (starts at the moment, ends on the track's real ending through
        one join on a bar line) or ``loop`` (whole bars or sections repeated to fill a clip longer
        than the track); each suggestion then carries its edit list (``edit``: spans and joins), or
        falls back to ``cut`` and says why. Raises ``MediaError`` (no such file, not a readable
        video) and ``UsageError`` (every track shorter than the clip, an unknown ``fit``).
        """
        request = SuggestRequest.build(_settings(), keyword_arg, top=top, snap=snap, include_short=include_short,
                                       fit=fit)
        return self.suggest_clip(video, request.top, snap=request.snap, include_short=request.include_short,
                                 remember=remember, fit=request.fit)


def load_suggester(library: Library | PathLike | None = None, *, checkpoint: PathLike | None = None,
                   untrained: bool = False, encoders: str | None = None, device: str | None = None,
                   offline: bool = False, weights_dir: PathLike | None = None, rerank: int | None = None,
                   first_stage: str = "auto", status: Callable[[str], None] | None = None,
                   loaded_encoders: Any = None) -> Suggester:
    """Load what suggesting needs, once: the library's tracks and the model's rows of them, the
    video encoder and the network (``mgsv suggest``'s options, the same defaults).

    ``library``: a :class:`Library`, a store's path, or None (the settings' index).
    ``checkpoint``: a run folder or ``.safetensors`` file (default: the latest training run);
    ``untrained``: random weights instead (demos, tests). ``encoders``: ``pretrained`` or
    ``tiny`` (default: the library's). ``rerank``/``first_stage``: the catalog search (see
    ``mgsv suggest --help``). ``status(message)`` hears what is loading; ``loaded_encoders``
    reuses a loaded ``features.Encoders`` (reloading, tests).

    Raises ``IndexDatabaseError`` (no library, an empty one, other encoders),
    ``CheckpointError`` (none, or trained for other encoders), ``WeightsMissingError``.
    """
    request = SuggestRequest.build(_settings(), keyword_arg, index=_store_of(library), checkpoint=checkpoint,
                                   untrained=untrained, encoders=encoders, device=device, offline=offline,
                                   weights_dir=weights_dir, rerank=rerank, first_stage=first_stage)
    suggester = Suggester.open(status=status, encoders_obj=loaded_encoders, **request.open_options())
    assert isinstance(suggester, Suggester)  # open() makes an instance of the class it is called on
    return suggester


# ---------------------------------------------------------------- render and export


def _clip_and_record(suggestion: SuggestionResult | PathLike) -> tuple[Path, SuggestionResult | None]:
    """The clip and the record a render or export is of: a ``SuggestionResult``'s own, or a
    clip's path (its remembered suggestion is read when needed)."""
    if isinstance(suggestion, SuggestionResult):
        return Path(suggestion.video), suggestion
    return Path(os.fspath(suggestion)).expanduser(), None


def render(suggestion: SuggestionResult | PathLike, out: PathLike | None = None, *, pick: int | None = None,
           track: PathLike | None = None, start: float | None = None, mix: str | None = None,
           fade_in: float | None = None, fade_out: float | None = None, loudness: float | None = None,
           snap: str | None = None, force: bool = False, library: Library | PathLike | None = None,
           fit: str | None = None, join: float | None = None) -> RenderResult:
    """Put suggestion ``pick`` (1 = best) under its clip: the music cut to the clip's length, faded,
    loudness-normalised, the video stream copied (what ``mgsv render`` does).

    ``suggestion``: a :class:`SuggestionResult`, or a clip's path (its remembered suggestion,
    or with ``track`` and ``start`` that track from that second). ``out``: the file to write,
    or a folder (default ``<clip>.mgsv.<ext>`` beside the clip); an existing file needs
    ``force``. ``mix``: ``replace``, ``original`` or ``duck``; ``fade_in``/``fade_out`` in
    seconds; ``loudness`` in LUFS; ``snap="beat"`` moves the start onto the beat (the grid
    stored in ``library``, else detected). ``fit``: ``cut``, ``ending`` or ``loop`` (default: as
    the suggestion was made; with ``track``/``start``, the settings'); ``join``: move the edit's
    join to the bar line nearest this second of the track. Defaults come from the settings.

    Raises ``UsageError``, ``MediaError``, ``OutputExistsError``, ``StorageError``.
    """
    clip, record = _clip_and_record(suggestion)
    request = RenderRequest.build(_settings(), keyword_arg, pick=pick, track=track, start=start, out=out, mix=mix,
                                  fade_in=fade_in, fade_out=fade_out, loudness=loudness, snap=snap,
                                  index=_store_of(library), force=force, fit=fit, join=join)
    return render_clip(clip, request, record=record)


def export(suggestion: SuggestionResult | PathLike, out: PathLike | None = None, *, format: str | None = None,
           pick: int | None = None, frame_rate: float | None = None, snap: str | None = None,
           start: float | None = None, force: bool = False,
           library: Library | PathLike | None = None, fit: str | None = None,
           join: float | None = None) -> ExportedTimeline:
    """Write suggestion ``pick`` (1 = best) as a timeline for editing software, the clip on V1 and
    the music on A1 (what ``mgsv export`` does).

    ``suggestion``: a :class:`SuggestionResult` or a clip's path (its remembered suggestion).
    ``format``: ``fcpxml``, ``fcp7``, ``edl`` or ``otio`` (default: ``out``'s extension, else
    the settings'). ``out``: a file or a folder (default ``<clip>.mgsv.<ext>`` beside the
    clip). ``start`` moves the cut to start there (seconds, same length); ``snap="beat"``
    onto the beat; ``frame_rate`` overrides the clip's. ``fit``/``join`` as for :func:`render`: an
    edit list is written as clips joined by a crossfade.

    Raises ``UsageError``, ``MediaError``, ``OutputExistsError``, ``StorageError``.
    """
    clip, record = _clip_and_record(suggestion)
    request = ExportRequest.build(_settings(), keyword_arg, pick=pick, fmt=format, out=out, frame_rate=frame_rate,
                                  snap=snap, index=_store_of(library), force=force, fit=fit, join=join)
    exported, written, snapped = export_suggestion(clip, request, start=start, record=record)
    return ExportedTimeline.of(exported, written, snapped, request.fmt, request.pick)


# ---------------------------------------------------------------- research


class LoadedModel(NamedTuple):
    """A trained network ready for inference (:func:`load_model`)."""

    model: Any  # the torch module (MaDe or ReAL), in eval mode
    variant: Any  # models.variants.VariantConfig: its config
    meta: dict[str, Any]  # path, checkpoint_id, metrics


def load_model(checkpoint: PathLike | None = None, *, device: str | None = None) -> LoadedModel:
    """The network of ``checkpoint`` (a run folder or ``.safetensors`` file; default: the latest
    training run) on ``device`` (``auto``, ``cpu``, ``cuda[:N]``, ``mps``; default: the settings').
    Raises ``CheckpointError``."""
    from mgsv_cli.device import resolve_device
    from mgsv_cli.models.checkpoint import load_model as load

    torch_device = resolve_device(device or _settings().device)
    return LoadedModel(*load(checkpoint, device=torch_device))


def train(data: PathLike, *, config: str | None = None, out: PathLike | None = None, epochs: int | None = None,
          batch_size: int | None = None, lr: float | None = None, precision: str | None = None,
          seed: int | None = None, device: str | None = None, resume: bool = False, compile: bool = False,
          stage: str = "both", reporter: Reporter | None = None) -> TrainResult:
    """Train MaDe (or another variant: ``config``, a shipped name such as ``made``, ``made-plus``,
    ``real``, ``tiny``, or a ``.toml`` path) on the MGSV-EC layout at ``data``; the best-on-val
    weights are kept in the run folder (``out``, default a new one under mgsv's data folder).

    ``epochs``, ``batch_size``, ``lr``, ``precision``, ``seed`` override the variant's recipe;
    ``resume`` continues an interrupted run (``out``'s, or the latest); ``stage`` trains one
    stage of a ReAL variant. ``reporter`` (a ``research.runs.Reporter``) hears each epoch and
    step. Raises ``DataError``, ``UsageError``, ``ConfigError``, ``DeviceMemoryError``.
    """
    from mgsv_cli.models.variants import load_config, replace_train
    from mgsv_cli.research.train import train as run

    chosen = load_config(config or "made")
    variant = replace_train(chosen, epochs=epochs, batch_size=batch_size, lr=lr, precision=precision, seed=seed)
    # What the caller set explicitly: a resumed run keeps its own recipe and refuses a different one.
    asked = dict(epochs=epochs, batch_size=batch_size, lr=lr, precision=precision, seed=seed,
                 model=chosen.model if config is not None else None)
    return run(Path(os.fspath(data)).expanduser(), variant, out_dir=None if out is None else Path(out).expanduser(),
               device=device or _settings().device, resume=resume, reporter=reporter, asked=asked, compile=compile,
               stage=stage)


EVAL_SPLITS = ("val", "test", "train")


def evaluate(data: PathLike, split: str = "test", *, checkpoint: PathLike | None = None,
             baseline: str | None = None, device: str | None = None, batch_size: int = 256,
             progress: ProgressFn | None = None, plots: PathLike | None = None) -> dict[str, Any]:
    """The benchmark protocol on an MGSV-EC split at ``data``: mIoU, R@1/5/10, MoR@1/10/100, and
    the same for the exact-length cut ``suggest`` makes (``*_cut``), as ``mgsv eval --json``.

    ``checkpoint``: a run folder or ``.safetensors`` file (default: the latest run);
    ``baseline="prior"``: the content-free moment instead of a model (labels only).
    ``plots``: a folder to draw the IoU histogram, recall@k curve and per-category table into
    (their paths under ``result["plots"]``).
    ``progress(stage, done, total)`` hears the packing and scoring. Raises ``DataError``,
    ``CheckpointError``, ``UsageError``.
    """
    from mgsv_cli.research import evaluation

    if split not in EVAL_SPLITS:
        raise UsageError(f"split {split!r}: expected val or test")
    if baseline is not None:
        if baseline != "prior":
            raise UsageError(f"baseline {baseline!r}: the only baseline is 'prior'")
        if checkpoint is not None:
            raise UsageError("the prior baseline uses no checkpoint: give either baseline or checkpoint")
        if plots is not None:
            raise UsageError("plots draw a model's rankings and moments; the prior baseline has none")
        return evaluation.evaluate_prior(data, split)
    return evaluation.evaluate(data, split, checkpoint=checkpoint, device=device or _settings().device,
                               batch_size=batch_size, progress=progress, plots=plots)
