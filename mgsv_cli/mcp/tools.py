"""What ``mgsv mcp`` keeps between calls and the work of each of its tools, without the SDK.

:class:`Workspace` holds the library, the folders the server may read (``--allow``) and
write (the output folder), and ``mgsv serve``'s :class:`~mgsv_cli.serve.engine.Engine`,
built on the first suggestion and kept: the encoders, the model and the tracks stay
loaded, the CLIP features of recent clips are cached, and the engine reloads by itself
when indexing changed the library. Every tool method calls the public API and returns a
JSON-ready dict, or raises a typed ``MgsvError`` (``server`` makes it a tool error).

Paths in tool inputs must be absolute (a relative one would be read against the server's
working folder, which the agent does not know). A video is read only when it lies under
an allowed folder or the output folder (symlinks followed: a link out is refused), a
track only when it is one of the library's own files, a folder is indexed only under an
allowed folder, and renders and timelines are written only under the output folder
(default ``<name>.mgsv.<ext>`` there): ``serve.files``' rules, reused.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mgsv_cli.errors import MgsvError, UsageError

# ``progress(percent, message)``: how far an indexing run is, 0 to 100, rising only.
PercentFn = Callable[[float, str], None]
# Where each stage of an indexing run lies on the 0-100 scale reported to the client
# (embedding is where the time goes); the Ray engine reports one stage, ``indexing``.
_STAGE_SPANS = {"checking": (0.0, 10.0), "probing": (10.0, 15.0), "embedding": (15.0, 90.0),
                "beats": (90.0, 100.0), "indexing": (0.0, 100.0)}
_STAGE_WORDS = {"checking": "checking files", "probing": "reading tags", "embedding": "embedding audio",
                "beats": "finding beats", "indexing": "indexing on Ray"}
TRACK_PAGE = 1000  # records read at a time while filtering the track list


@dataclass(frozen=True)
class McpOptions:
    """What ``mgsv mcp`` was started with (the model options are ``mgsv suggest``'s)."""

    library: str | None = None  # a store's location; None: the settings' index
    checkpoint: Path | None = None
    untrained: bool = False
    encoders: str | None = None  # pretrained | tiny; None: the library's (indexing: else the settings')
    device: str | None = None
    offline: bool = False
    weights_dir: Path | None = None
    allow: tuple[Path, ...] = ()  # folders whose videos and music may be read
    output_dir: Path | None = None  # where renders and timelines go; None: mgsv's data folder's mcp/outputs
    extra: dict[str, Any] = field(default_factory=dict)  # tests: loaded_encoders


def default_output_dir() -> Path:
    from mgsv_cli import paths

    return paths.data_dir() / "mcp" / "outputs"


class Workspace:
    """The library, the warm engine and the folder rules of one ``mgsv mcp`` server; thread-safe
    (the engine runs its work on its own thread, the library is opened per call)."""

    def __init__(self, options: McpOptions):
        from mgsv_cli.api import Library, open_library

        self.options = options
        self.allow = tuple(_real_folder(folder, "--allow") for folder in options.allow)
        self.output_dir = Path(options.output_dir or default_output_dir()).expanduser().absolute()
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            from mgsv_cli.errors import storage_error

            raise storage_error("create the output folder", self.output_dir, exc) from None
        self.output_dir = self.output_dir.resolve()
        try:
            self.library = open_library(options.library)
        except MgsvError:  # none yet: index_folder makes it, the other tools say so
            from mgsv_cli import settings

            location = options.library if options.library is not None else settings.load_settings().index
            self.library = Library(str(Path(location).expanduser()) if "://" not in str(location) else str(location))
        self._engine = None
        self._engine_lock = threading.Lock()

    # ------------------------------------------------------------ the folder rules

    @property
    def readable(self) -> tuple[Path, ...]:
        return (*self.allow, self.output_dir)

    def video(self, value: str) -> Path:
        """The clip ``value`` names, when the server may read it."""
        from mgsv_cli.serve import files

        path = files.absolute_path(value, "video")
        try:
            return files.contained(path, self.readable)
        except files.NotServable as exc:
            if not path.exists():
                raise UsageError(f"video {value}: no such file") from None
            raise UsageError(f"video {value}: {self._outside('read', exc)}") from None

    def folder(self, value: str) -> Path:
        """The music folder ``value`` names, when the server may read it."""
        from mgsv_cli.serve import files

        path = files.absolute_path(value, "folder")
        if not path.is_dir():
            raise UsageError(f"folder {value}: no such folder")
        try:
            return files.within(path, self.allow, strict=True)
        except files.NotServable as exc:
            raise UsageError(f"folder {value}: {self._outside('index', exc)}") from None

    def output(self, value: str | None, default_name: str, what: str = "out") -> Path:
        """Where an output goes: ``value`` (absolute, under the output folder) or the default
        name in the output folder."""
        from mgsv_cli.serve import files

        if value is None:
            return self.output_dir / default_name
        path = files.absolute_path(value, what)
        try:
            return files.within(path, [self.output_dir])
        except files.NotServable:
            raise UsageError(f"{what} {value}: outside the output folder {self.output_dir}, the only place this "
                             "server writes (leave it out to write there)") from None

    def track(self, value: str) -> str:
        """A track's path, when it is one of the library's own files."""
        from mgsv_cli.index.backend import open_store
        from mgsv_cli.serve import files

        path = files.absolute_path(value, "track")
        with open_store(self.library.uri) as store:
            return files.indexed_track(store, str(path)).path

    def _outside(self, verb: str, exc: Exception) -> str:
        if "no such file" in str(exc):
            return "no such file"
        folders = ", ".join(str(f) for f in (self.allow if verb == "index" else self.readable)) or "none"
        return (f"outside the folders this server may {verb} ({folders}); `mgsv mcp --allow FOLDER` adds one")

    # ------------------------------------------------------------ the warm models

    def engine(self):
        """``mgsv serve``'s engine over the library, loaded on first use and kept."""
        with self._engine_lock:
            if self._engine is None:
                from mgsv_cli.serve.engine import Engine

                o = self.options
                self._engine = Engine(index_path=self.library.uri, checkpoint=o.checkpoint, untrained=o.untrained,
                                      encoders=o.encoders, device=o.device or "auto", offline=o.offline,
                                      weights_dir=o.weights_dir, encoders_obj=o.extra.get("loaded_encoders"))
            return self._engine

    def close(self) -> None:
        with self._engine_lock:
            if self._engine is not None:
                self._engine.close()
                self._engine = None

    # ------------------------------------------------------------ the tools

    def library_info(self) -> dict[str, Any]:
        try:
            info = self.library.info().to_json()
        except MgsvError as exc:  # no library yet: what to do about it
            from mgsv_cli.errors import first_line

            info = {"uri": self.library.uri, "tracks": 0, "problem": first_line(exc),
                    "hint": "index a music folder with the index_folder tool"}
        engine = self._engine
        model = {"loaded": engine is not None}
        if engine is not None:
            s = engine.suggester
            model.update(id=s.model_id, untrained=s.untrained, encoders=s.encoders_kind, device=str(s.device))
        return {"library": info, "model": model, "readable_folders": [str(f) for f in self.readable],
                "output_folder": str(self.output_dir)}

    def list_tracks(self, offset: int = 0, limit: int = 50, contains: str | None = None) -> dict[str, Any]:
        if contains is None:
            total = self.library.info().tracks
            chosen = self.library.tracks(offset, limit)
        else:
            needle = contains.casefold()
            matches, start = [], 0
            while True:
                page = self.library.tracks(start, TRACK_PAGE)
                matches += [t for t in page if needle in " ".join(filter(None, (t.path, t.title, t.artist,
                                                                                t.album))).casefold()]
                if len(page) < TRACK_PAGE:
                    break
                start += TRACK_PAGE
            total, chosen = len(matches), matches[offset:offset + limit]
        return {"total": total, "offset": offset, "tracks": [_track_json(t) for t in chosen]}

    def index_folder(self, folder: str, *, prune: bool = False, force: bool = False, retry_failed: bool = False,
                     progress: PercentFn | None = None) -> dict[str, Any]:
        from mgsv_cli.api import open_library

        source = self.folder(folder)
        o = self.options
        library = open_library(self.library.uri, create=True)
        self.library = library
        report = library.index(source, progress=_percent(progress) if progress else None, prune=prune, force=force,
                               retry_failed=retry_failed, encoders=o.encoders, device=o.device, offline=o.offline,
                               weights_dir=o.weights_dir)
        return {
            "library": report.index_path, "folder": str(source), "tracks": report.n_tracks, "added": report.added,
            "updated": report.updated, "unchanged": report.unchanged, "pruned": report.pruned,
            "failed": [{"path": path, "reason": reason} for path, reason in report.failed],
            "skipped_failed": report.skipped_failed, "missing": report.missing, "long_tracks": report.long_tracks,
            "moved_aside": str(report.moved_aside) if report.moved_aside else None,
        }

    def suggest(self, video: str, *, top: int = 5, snap: str | None = None,
                include_short: bool = False, fit: str | None = None) -> dict[str, Any]:
        from mgsv_cli import settings
        from mgsv_cli.editor.explain import why
        from mgsv_cli.editor.requests import check_fit, keyword_arg
        from mgsv_cli.editor.snapping import normalize_snap

        clip = self.video(video)
        snap = normalize_snap(snap, lambda name: name)
        fit = check_fit(getattr(settings.load_settings(), "fit", "cut") if fit is None else fit, keyword_arg)
        result = self.engine().suggest(clip, top, snap, True, None, include_short, fit)
        data = result.to_json()
        for entry, shown in zip(result.suggestions, data["suggestions"]):
            shown["why"] = why(entry)
        return data

    def render(self, video: str, *, pick: int | None = None, track: str | None = None, start: float | None = None,
               out: str | None = None, mix: str | None = None, fade_in: float | None = None,
               fade_out: float | None = None, loudness: float | None = None, snap: str | None = None,
               force: bool = False, fit: str | None = None) -> dict[str, Any]:
        from mgsv_cli import api
        from mgsv_cli.editor.render import default_output_path

        clip = self.video(video)
        target = self.output(out, default_output_path(clip).name)
        chosen: Any = clip
        if track is not None:
            track = self.track(track)
        elif start is None:  # a remembered suggestion: its track must be the library's too
            chosen = self._remembered(clip, pick)
        return api.render(chosen, target, pick=pick, track=track, start=start, mix=mix, fade_in=fade_in,
                          fade_out=fade_out, loudness=loudness, snap=snap, force=force,
                          library=self.library, fit=fit).to_dict()

    def export(self, video: str, *, format: str | None = None, pick: int | None = None, out: str | None = None,
               snap: str | None = None, start: float | None = None, frame_rate: float | None = None,
               force: bool = False, fit: str | None = None) -> dict[str, Any]:
        from mgsv_cli import api, settings
        from mgsv_cli.editor.export import default_output_path
        from mgsv_cli.editor.requests import keyword_arg

        clip = self.video(video)
        # The format decides the default name: the request's rules say which it is (or that it is none).
        fmt = api.ExportRequest.build(settings.load_settings(), keyword_arg, fmt=format, out=out).fmt
        target = self.output(out, default_output_path(clip, fmt).name)
        record = self._remembered(clip, pick)
        return api.export(record, target, format=fmt, pick=pick, snap=snap, start=start, frame_rate=frame_rate,
                          force=force, library=self.library, fit=fit).to_json()

    def _remembered(self, clip: Path, pick: int | None):
        """The suggestion remembered for ``clip``, its pick checked to be a track of the library."""
        from mgsv_cli.editor.record import load_last_suggestion

        record = load_last_suggestion(clip, hint="call suggest_music for it first")
        self.track(record.pick(pick or 1).track)
        return record


def _real_folder(folder, what: str) -> Path:
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise UsageError(f"{what} {folder}: no such folder")
    return path.resolve()


def _track_json(track) -> dict[str, Any]:
    return {"id": track.id, "path": track.path, "name": track.name, "title": track.title, "artist": track.artist,
            "album": track.album, "duration": round(track.duration, 3)}


def _percent(report: PercentFn):
    """An ``IndexProgress`` that reports one rising percentage (and what is happening) to ``report``."""
    from mgsv_cli.api import IndexProgress

    class Percent(IndexProgress):
        def __init__(self) -> None:
            self.done: dict[str, float] = {}
            self.total: dict[str, float] = {}
            self.shown = -1.0

        def stage(self, name: str, total: float) -> None:
            self.done[name], self.total[name] = 0.0, float(total)
            self._report(name, "")

        def advance(self, name: str, amount: float = 1.0, detail: str = "") -> None:
            self.done[name] = self.done.get(name, 0.0) + float(amount)
            self._report(name, detail)

        def _report(self, name: str, detail: str) -> None:
            low, high = _STAGE_SPANS.get(name, (0.0, 100.0))
            total = self.total.get(name) or 0.0
            fraction = min(1.0, self.done.get(name, 0.0) / total) if total else 0.0
            percent = max(self.shown, low + (high - low) * fraction)  # the protocol wants it rising
            message = _STAGE_WORDS.get(name, name) + (f": {Path(detail).name}" if detail else "")
            self.shown = percent
            report(round(percent, 1), message)

    return Percent()
