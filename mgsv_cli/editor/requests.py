"""What a suggest, render or export is asked to do, its options checked in one place.

The CLI, ``mgsv serve`` and the Python API build the same request from what they were given
and the user's defaults (``defaults``: any object with the settings' attributes, ``mix``,
``snap``, ``top_k``...; the settings file is the app's business, so it is passed in), and one
set of rules says what goes together. Each caller's errors name its own spelling of an
option (``names``): the CLI's ``--flags`` (:func:`cli_flag`), the server's JSON fields
(:func:`json_field`), the Python API's keyword arguments (:func:`keyword_arg`).

Every option a user can leave out is None here until :meth:`build` fills it from
``defaults``; a request once built is valid, and the library functions take it as it is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from mgsv_cli.errors import UsageError

Names = Callable[[str], str]
_FLAGS = {"fmt": "--format", "out": "-o", "top": "--top", "frame_rate": "--frame-rate"}


def cli_flag(field: str) -> str:
    """How the command line spells option ``field`` (``fade_in`` -> ``--fade-in``)."""
    return _FLAGS.get(field, "--" + field.replace("_", "-"))


def json_field(field: str) -> str:
    """How the JSON API spells option ``field`` (``fmt`` -> ``"format"``)."""
    return '"' + {"fmt": "format"}.get(field, field) + '"'


def keyword_arg(field: str) -> str:
    """How the Python API (``mgsv_cli.api``) spells option ``field`` (``fmt`` -> ``format``)."""
    return {"fmt": "format"}.get(field, field)


# ---------------------------------------------------------------- one rule per option (the others
# live with the fact they check: mix modes and loudness in ``render``, formats and frame rates in
# ``export``, snap modes in ``snapping``)


def check_pick(pick: int | None, names: Names = cli_flag) -> int | None:
    if pick is not None and pick < 1:
        raise UsageError(f"{names('pick')} {pick}: ranks start at 1")
    return pick


def check_fit(fit: str, names: Names = cli_flag) -> str:
    from mgsv_cli.editor.editlist import FIT_MODES

    if fit not in FIT_MODES:
        raise UsageError(f"{names('fit')} {fit!r}: expected one of {', '.join(FIT_MODES)}")
    return fit


def check_join(join, names: Names = cli_flag) -> float | None:
    if join is not None and not (math.isfinite(join) and join >= 0):
        raise UsageError(f"{names('join')} {join}: seconds into the track, 0 or more")
    return None if join is None else float(join)


def _path(value) -> Path | None:
    return None if value is None else Path(value).expanduser()


# ---------------------------------------------------------------- requests


@dataclass(frozen=True)
class SuggestRequest:
    """Rank a store's tracks for clips: how many, snapped or not, from which store and model."""

    top: int = 5
    snap: Optional[str] = None
    include_short: bool = False
    index: Optional[str] = None
    checkpoint: Optional[Path] = None
    untrained: bool = False
    encoders: Optional[str] = None
    device: str = "auto"
    offline: bool = False
    weights_dir: Optional[Path] = None
    rerank: Optional[int] = None
    first_stage: str = "auto"
    fit: str = "cut"

    @classmethod
    def build(cls, defaults: Any, names: Names = cli_flag, *, top=None, snap=None, include_short: bool = False,
              index=None, checkpoint=None, untrained: bool = False, encoders=None, device=None, offline: bool = False,
              weights_dir=None, rerank=None, first_stage: str = "auto", fit=None) -> "SuggestRequest":
        from mgsv_cli.editor.snapping import normalize_snap
        from mgsv_cli.features.recipe import ENCODER_IDS
        from mgsv_cli.retrieval.first_stage import first_stage_kinds

        top = defaults.top_k if top is None else int(top)
        if top < 1:
            raise UsageError(f"{names('top')} {top}: at least 1")
        if encoders is not None and encoders not in ENCODER_IDS:
            raise UsageError(f"{names('encoders')} {encoders!r}: expected {' or '.join(ENCODER_IDS)}")
        if first_stage not in first_stage_kinds():
            raise UsageError(f"{names('first_stage')} {first_stage!r}: expected one of "
                             f"{', '.join(first_stage_kinds())}")
        if rerank is not None and int(rerank) < 1:
            raise UsageError(f"{names('rerank')} {rerank}: at least 1")
        if untrained and checkpoint is not None:
            raise UsageError(f"give either {names('checkpoint')} or {names('untrained')}, not both")
        index = defaults.index if index is None else index
        return cls(top=top, snap=normalize_snap(defaults.snap if snap is None else snap, names),
                   include_short=bool(include_short), index=str(index) if index is not None else None,
                   checkpoint=_path(checkpoint), untrained=bool(untrained), encoders=encoders,
                   device=defaults.device if device is None else device,
                   offline=bool(offline or defaults.offline),
                   weights_dir=_path(defaults.weights_dir if weights_dir is None else weights_dir),
                   rerank=None if rerank is None else int(rerank), first_stage=first_stage,
                   fit=check_fit(getattr(defaults, "fit", "cut") if fit is None else fit, names))

    def open_options(self) -> dict[str, Any]:
        """The keyword arguments of ``Suggester.open`` this request means."""
        return dict(index_path=self.index, checkpoint=self.checkpoint, untrained=self.untrained,
                    encoders=self.encoders, device=self.device, offline=self.offline, weights_dir=self.weights_dir,
                    rerank=self.rerank, first_stage=self.first_stage)


@dataclass(frozen=True)
class RenderRequest:
    """Put music under clips: a remembered suggestion (``pick``) or a given ``track`` from ``start``."""

    pick: int = 1
    track: Optional[Path] = None
    start: Optional[float] = None
    out: Optional[Path] = None
    mix: str = "replace"
    fade_in: float = 0.5
    fade_out: float = 1.0
    loudness: float = -16.0
    snap: Optional[str] = None
    index: Optional[str] = None
    force: bool = False
    # None: as the remembered suggestion was made (its edit list); with track/start, the settings' fit.
    fit: Optional[str] = None
    join: Optional[float] = None  # move the (first) join to the bar line nearest this time in the track

    @classmethod
    def build(cls, defaults: Any, names: Names = cli_flag, *, pick=None, track=None, start=None, out=None, mix=None,
              fade_in=None, fade_out=None, loudness=None, snap=None, index=None, force: bool = False, fit=None,
              join=None) -> "RenderRequest":
        from mgsv_cli.editor.render import check_fade, check_loudness, check_mix
        from mgsv_cli.editor.snapping import normalize_snap

        if (track is None) != (start is None):
            raise UsageError(f"{names('track')} and {names('start')} go together "
                             "(or give neither to use `mgsv suggest`'s pick)")
        if track is not None and pick is not None:
            raise UsageError(f"{names('pick')} chooses among remembered suggestions; it cannot be combined with "
                             f"{names('track')}")
        check_pick(pick, names)
        if start is not None and not (math.isfinite(start) and start >= 0):
            raise UsageError(f"{names('start')} {start}: seconds into the track, 0 or more")
        index = defaults.index if index is None else index
        return cls(pick=pick or 1, track=_path(track), start=None if start is None else float(start), out=_path(out),
                   mix=check_mix(defaults.mix if mix is None else mix, names),
                   fade_in=check_fade("fade_in", defaults.fade_in if fade_in is None else fade_in, names),
                   fade_out=check_fade("fade_out", defaults.fade_out if fade_out is None else fade_out, names),
                   loudness=check_loudness(defaults.loudness if loudness is None else loudness, names),
                   snap=normalize_snap(defaults.snap if snap is None else snap, names),
                   index=str(index) if index is not None else None, force=bool(force),
                   fit=_fit_or_default(defaults, fit, track is not None, names), join=check_join(join, names))

    def mixdown(self) -> dict[str, Any]:
        """The keyword arguments of ``render.render`` this request means."""
        return dict(out=self.out, mix=self.mix, fade_in=self.fade_in, fade_out=self.fade_out,
                    loudness=self.loudness, force=self.force)


@dataclass(frozen=True)
class ExportRequest:
    """Write a remembered suggestion as a timeline: which one, in which format, where."""

    pick: int = 1
    fmt: str = "fcpxml"
    out: Optional[Path] = None
    frame_rate: Optional[float] = None
    snap: Optional[str] = None
    index: Optional[str] = None
    force: bool = False
    fit: Optional[str] = None  # None: as the remembered suggestion was made
    join: Optional[float] = None

    @classmethod
    def build(cls, defaults: Any, names: Names = cli_flag, *, pick=None, fmt=None, out=None, frame_rate=None,
              snap=None, index=None, force: bool = False, fit=None, join=None) -> "ExportRequest":
        from mgsv_cli.editor import export as writers
        from mgsv_cli.editor.snapping import normalize_snap

        check_pick(pick, names)
        out = _path(out)
        fmt = fmt or (writers.format_from_path(out) if out is not None else None) or defaults.export_format
        if fmt not in writers.FORMATS:
            raise UsageError(f"{names('fmt')} {fmt!r}: expected one of {', '.join(writers.FORMATS)}")
        index = defaults.index if index is None else index
        return cls(pick=pick or 1, fmt=fmt, out=out, frame_rate=writers.check_frame_rate(frame_rate, names),
                   snap=normalize_snap(defaults.snap if snap is None else snap, names),
                   index=str(index) if index is not None else None, force=bool(force),
                   fit=None if fit is None else check_fit(fit, names), join=check_join(join, names))


def _fit_or_default(defaults: Any, fit, given_track: bool, names: Names) -> str | None:
    """A render's fit: the one asked for; else, music given by track and start has no
    suggestion to follow and takes the settings' (a remembered suggestion keeps its own: None)."""
    if fit is not None:
        return check_fit(fit, names)
    return check_fit(getattr(defaults, "fit", "cut"), names) if given_track else None
