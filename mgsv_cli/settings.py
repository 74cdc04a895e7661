"""User settings: defaults for the command-line options, from a TOML file and the environment.

Every setting has four possible sources, the later winning: the built-in default, the
settings file (``config.toml`` in :func:`mgsv_cli.paths.config_dir`), an environment
variable (``MGSV_`` + the key in capitals, e.g. ``MGSV_TOP_K=10``), and the command line.
Commands ask :func:`default` for an option the user did not give::

    top_k = settings.default("top_k", top)   # ``top`` is None when --top was not given

A malformed file, an unknown key or a value of the wrong kind is a ConfigError naming
the file (or variable) and the key; nothing is silently ignored.
"""
from __future__ import annotations

import dataclasses
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from mgsv_cli import paths
from mgsv_cli.editor.editlist import FIT_MODES
from mgsv_cli.editor.render import MIX_MODES
from mgsv_cli.editor.snapping import SNAP_MODES as _SNAPS
from mgsv_cli.errors import ConfigError, OutputExistsError, storage_error

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

FILE_NAME = "config.toml"
ENV_PREFIX = "MGSV_"
ENCODER_KINDS = ("pretrained", "tiny")
SNAP_MODES = ("off", *_SNAPS)  # the settings file's words: snapping's modes, or none
EXPORT_FORMATS = ("fcpxml", "fcp7", "edl", "otio")  # writers.FORMATS (a test keeps them equal)

SOURCE_DEFAULT = "default"
SOURCE_FILE = "config file"
SOURCE_ENV = "environment"
SOURCE_CLI = "command line"


@dataclass(frozen=True)
class Settings:
    """Effective defaults for mgsv's options (see :data:`FIELDS` for what each means)."""

    index: str
    device: str = "auto"
    encoders: str = "pretrained"
    weights_dir: str | None = None
    offline: bool = False
    top_k: int = 5
    mix: str = "replace"
    fade_in: float = 0.5
    fade_out: float = 1.0
    loudness: float = -16.0
    snap: str = "off"
    export_format: str = "fcpxml"
    fit: str = "cut"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Field:
    """One setting: its help line, how to read a value, and where the commands use it."""

    help: str
    parse: Callable[[Any], Any]
    used_by: str


# ---------------------------------------------------------------- value parsers


def _device(value: Any) -> str:
    text = _text(value).strip().lower()
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text):
        raise ValueError("expected auto, cpu, cuda, cuda:N or mps")
    return text


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _text(value).strip().lower()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return text

    return parse


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _path_or_none(value: Any) -> str | None:
    text = _text(value).strip()
    return str(Path(text).expanduser()) if text else None


def _path(value: Any) -> str:
    text = _text(value).strip()
    if not text:
        raise ValueError("expected a path")
    return str(Path(text).expanduser())


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = _text(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def _number(low: float, high: float, integer: bool = False) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        try:
            number = int(value) if integer else float(value)
        except (TypeError, ValueError):
            raise ValueError("expected an integer" if integer else "expected a number") from None
        if integer and isinstance(value, float) and value != int(value):
            raise ValueError("expected an integer")
        if not low <= number <= high:
            raise ValueError(f"expected a value from {low:g} to {high:g}")
        return number

    return parse


FIELDS: dict[str, Field] = {
    "index": Field("music index database", _path, "index, suggest, export --snap"),
    "device": Field("compute device: auto | cpu | cuda[:N] | mps", _device, "index, suggest, train, eval"),
    "encoders": Field("pretrained (CLIP + AST) | tiny (random networks, tests only)",
                      _choice(*ENCODER_KINDS), "index, suggest"),
    "weights_dir": Field("folder holding downloaded encoder weights (empty: mgsv's own)", _path_or_none,
                         "index, suggest, models"),
    "offline": Field("never download encoder weights", _bool, "index, suggest"),
    "top_k": Field("how many tracks `mgsv suggest` lists", _number(1, 1000, integer=True), "suggest"),
    "mix": Field("replace | original | duck (music lowered under the video's voice)", _choice(*MIX_MODES), "render"),
    "fade_in": Field("seconds of music fade-in", _number(0, 60), "render"),
    "fade_out": Field("seconds of music fade-out", _number(0, 60), "render"),
    "loudness": Field("target loudness, LUFS (EBU R128)", _number(-70, -5), "render"),
    "snap": Field("off | beat: move the cut's start onto the nearest downbeat or beat", _choice(*SNAP_MODES),
                  "render, export"),
    "export_format": Field("fcpxml | fcp7 | edl | otio", _choice(*EXPORT_FORMATS), "export"),
    "fit": Field("cut | ending (the track's own ending finishes the clip) | loop (repeats bars to fill it)",
                 _choice(*FIT_MODES), "suggest; render and export with --track"),
}


# ---------------------------------------------------------------- loading


def settings_path() -> Path:
    """Where the settings file lives (it need not exist)."""
    return paths.config_dir() / FILE_NAME


def env_var(key: str) -> str:
    """The environment variable that sets ``key`` (``top_k`` -> ``MGSV_TOP_K``)."""
    return ENV_PREFIX + key.upper()


def _defaults() -> dict[str, Any]:
    values = {f.name: f.default for f in dataclasses.fields(Settings) if f.default is not dataclasses.MISSING}
    values["index"] = str(paths.default_index_path())
    return values


def read_settings_file(path: Path | None = None) -> dict[str, Any]:
    """The validated values set in the settings file (``{}`` when there is none)."""
    path = path or settings_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read settings file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"settings file {path} is not UTF-8 text (byte {exc.start}): "
                          "save it as UTF-8, or remove it to use the defaults") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"settings file {path} is not valid TOML: {exc}") from None
    values = {}
    for key, raw in data.items():
        if key not in FIELDS:
            hint = " (a table: mgsv settings are plain top-level keys)" if isinstance(raw, dict) else ""
            raise ConfigError(f"settings file {path}: unknown key '{key}'{hint}; known keys: {', '.join(FIELDS)}")
        if key in ("index", "weights_dir") and isinstance(raw, str) and raw.strip():
            raw = _relative_to(path.parent, raw)
        values[key] = _parse(key, raw, f"settings file {path}: key '{key}'")
    return values


def _relative_to(folder: Path, text: str) -> str:
    """Relative paths in the file are read from the file's folder, not the current one."""
    candidate = Path(text.strip()).expanduser()
    return str(candidate if candidate.is_absolute() else folder / candidate)


def _parse(key: str, raw: Any, where: str) -> Any:
    try:
        return FIELDS[key].parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{where} = {raw!r}: {exc}") from None


def _from_environment(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    environ = os.environ if environ is None else environ
    values = {}
    for key in FIELDS:
        name = env_var(key)
        if name in environ:
            values[key] = _parse(key, environ[name], f"environment variable {name}")
    return values


def effective(cli_overrides: dict[str, Any] | None = None,
              environ: Mapping[str, str] | None = None) -> tuple[Settings, dict[str, str]]:
    """The settings in force and where each value came from.

    ``cli_overrides``: values given on the command line (``None`` values mean "not given"
    and are skipped). Returns ``(Settings, {key: "default" | "config file" |
    "environment" | "command line"})``.
    """
    values, sources = _defaults(), {key: SOURCE_DEFAULT for key in FIELDS}
    for layer, source in ((read_settings_file(), SOURCE_FILE), (_from_environment(environ), SOURCE_ENV)):
        for key, value in layer.items():
            values[key], sources[key] = value, source
    for key, value in (cli_overrides or {}).items():
        if value is None:
            continue
        if key not in FIELDS:
            raise ConfigError(f"unknown setting '{key}'; known: {', '.join(FIELDS)}")
        values[key] = _parse(key, str(value) if isinstance(value, Path) else value, f"command-line value of {key}")
        sources[key] = SOURCE_CLI
    return Settings(**values), sources


def load_settings() -> Settings:
    """Defaults, overridden by the settings file, overridden by ``MGSV_*`` variables."""
    return effective()[0]


def default(key: str, cli_value: Any = None) -> Any:
    """``cli_value`` when the option was given (not None), else the effective setting."""
    if key not in FIELDS:
        raise ConfigError(f"unknown setting '{key}'; known: {', '.join(FIELDS)}")
    if cli_value is not None:
        return cli_value
    return getattr(load_settings(), key)


def source_label(key: str, source: str) -> str:
    """Human wording of a source, naming the variable or file that set ``key``."""
    if source == SOURCE_ENV:
        return f"environment ({env_var(key)})"
    if source == SOURCE_FILE:
        return f"config file ({settings_path()})"
    return source


# ---------------------------------------------------------------- the commented starter file


def default_file_text() -> str:
    """A settings file listing every key, commented out at its default value."""
    defaults = _defaults()
    lines = [
        "# mgsv settings: defaults for command-line options (the command line still wins).",
        "# Uncomment a line to change it. Environment variables MGSV_<KEY> (e.g. MGSV_TOP_K=10)",
        "# override this file. Relative paths are read from this file's folder.",
        "",
    ]
    for key, spec in FIELDS.items():
        value = defaults[key]
        lines.append(f"# {spec.help} (used by: {spec.used_by})")
        lines.append(f"# {key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def init_settings_file() -> Path:
    """Write the commented starter file; an existing one is never overwritten."""
    path = settings_path()
    if path.exists():
        raise OutputExistsError(f"{path} exists: edit it, or delete it to start again from the defaults")
    created = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "x", encoding="utf-8") as handle:  # "x": fails if it appeared meanwhile
            created = True
            handle.write(default_file_text())
    except FileExistsError:
        raise OutputExistsError(f"{path} exists: edit it, or delete it to start again from the defaults") from None
    except OSError as exc:
        if created:
            paths.remove_quietly(path)  # our own half-written file, never the user's
        raise storage_error("write", path, exc) from None
    return path
