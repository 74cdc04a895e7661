"""``mgsv doctor``: what this installation has and lacks, in one table.

Each check is cheap (no model is loaded, nothing is downloaded, the index is opened
read-only). ffmpeg, torch and a readable settings file are *required*: without them
nothing works; the rest (weights, index, checkpoints, GPU) explain what a command will need.

A missing index is only a note (a new user has none yet), but an index that exists and
cannot be used, damaged, foreign or unreadable, fails as *required*: every command that
touches it would stop. Damage is looked for with SQLite's ``quick_check``, which reads
the whole file once (a second or so for a large library), because damage in the
middle of the file can pass unnoticed by the reads that count tracks.
"""
from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

from mgsv_cli.errors import MgsvError


@dataclass(frozen=True)
class Check:
    """One line of the report. ``ok`` False on a ``required`` check means mgsv cannot run."""

    name: str
    ok: bool
    detail: str
    required: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


PROBES = ("ffmpeg", "torch", "devices", "memory", "locations", "settings", "weights", "index", "checkpoints",
          "extras")  # each is the function _<name> below, in display order


def run_checks() -> list[Check]:
    """Every check, in display order; a check that crashes is reported, not raised."""
    checks: list[Check] = []
    for name in PROBES:
        try:
            checks.extend(globals()[f"_{name}"]())
        except MgsvError as exc:
            checks.append(Check(name, False, str(exc)))
        except Exception as exc:  # a diagnosis tool must survive what it diagnoses
            checks.append(Check(name, False, f"check failed: {type(exc).__name__}: {exc}"))
    return checks


def missing_required(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.required and not c.ok]


# ---------------------------------------------------------------- the checks


def _ffmpeg() -> list[Check]:
    from mgsv_cli.media.ffmpeg import ffmpeg_exe, run_ffmpeg

    try:
        exe = ffmpeg_exe()
    except MgsvError as exc:
        return [Check("ffmpeg", False, str(exc), required=True)]
    proc = run_ffmpeg(["-version"], "asking ffmpeg its version", check=False)
    first = proc.stdout.decode("utf-8", "replace").splitlines()[:1] if proc.returncode == 0 else []
    if not first:
        return [Check("ffmpeg", False, f"{exe} does not run", required=True)]
    version = first[0].replace("ffmpeg version ", "").split(" Copyright")[0]
    return [Check("ffmpeg", True, f"{version} ({exe})", required=True)]


def _torch() -> list[Check]:
    try:
        import torch
    except ImportError as exc:
        return [Check("torch", False, f"not importable: {exc}", required=True)]
    return [Check("torch", True, f"{torch.__version__} (Python {platform.python_version()})", required=True)]


def _devices() -> list[Check]:
    import torch

    checks = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            checks.append(Check(f"cuda:{i}", True, f"{props.name}, {props.total_memory / 2**30:.1f} GiB"))
    else:
        checks.append(Check("CUDA", False, "no CUDA GPU visible: indexing a large library will be slow"))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        checks.append(Check("MPS", True, "Apple GPU available"))
    threads = torch.get_num_threads()
    checks.append(Check("CPU", True, f"{os.cpu_count()} cores, torch uses {threads} threads"))
    return checks


def _memory() -> list[Check]:
    total = _total_ram_bytes()
    if total is None:
        return [Check("RAM", True, "unknown")]
    return [Check("RAM", True, f"{total / 2**30:.1f} GiB")]


def _total_ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _locations() -> list[Check]:
    from mgsv_cli import paths

    rows = (("data folder", paths.data_dir()), ("cache folder", paths.cache_dir()),
            ("config folder", paths.config_dir()))
    return [Check(name, True, f"{folder}" + ("" if folder.exists() else " (not created yet)"))
            for name, folder in rows]


def _settings() -> list[Check]:
    from mgsv_cli import settings

    path = settings.settings_path()
    if not path.exists():
        return [Check("settings file", True, f"{path} (none: built-in defaults; `mgsv config init` writes one)")]
    try:
        settings.load_settings()
    except MgsvError as exc:
        return [Check("settings file", False, str(exc), required=True)]  # every command would stop on it
    return [Check("settings file", True, str(path))]


def _weights() -> list[Check]:
    from mgsv_cli.features import weights as hub

    weights_dir = _configured_weights_dir()
    checks = []
    for status in hub.models_status(weights_dir):
        if status.present:
            detail = f"{status.location} ({status.source})"
        else:
            detail = status.detail + (f" ({status.location})" if status.location else "")
        checks.append(Check(status.name, status.present, detail))
    return checks


def _configured_weights_dir() -> Path | None:
    from mgsv_cli import settings

    try:
        value = settings.load_settings().weights_dir
    except MgsvError:
        return None  # reported by the settings check
    return Path(value) if value else None


def _index() -> list[Check]:
    from mgsv_cli import settings
    from mgsv_cli.index.backend import is_lance_uri, open_store

    try:
        location = str(settings.load_settings().index)
    except MgsvError:
        from mgsv_cli.paths import default_index_path

        location = str(default_index_path())
    lance = is_lance_uri(location)
    if not lance and not Path(location).is_file():
        return [Check("music index", False, f"{location} (none yet: `mgsv index MUSIC_DIR`)")]
    try:
        with open_store(location) as store:
            health = store.health()
    except MgsvError as exc:
        # A store that exists but cannot be used stops index, suggest and render alike.
        return [Check("music index", False, str(exc), required=True)]
    if health.damage is not None:
        from mgsv_cli.index.sqlite_db import damaged_error

        return [Check("music index", False, str(damaged_error(Path(location), health.damage)), required=True)]
    size = "" if lance else f", {Path(location).stat().st_size / 2**20:.1f} MiB"
    detail = f"{health.n_tracks} track(s), {health.n_beats} with beats{size} — {location}"
    if health.n_failed:
        detail += f"; {health.n_failed} file(s) could not be indexed (`mgsv index --failed` lists them)"
    return [Check("music index", health.n_tracks > 0, detail)]


def _checkpoints() -> list[Check]:
    from mgsv_cli.models.checkpoint import WEIGHTS_NAME
    from mgsv_cli.paths import runs_dir

    folder = runs_dir()
    runs = sorted(p for p in folder.iterdir() if (p / WEIGHTS_NAME).is_file()) if folder.is_dir() else []
    if not runs:
        detail = f"none in {folder} (`mgsv train`; no pretrained MaDe is published)"
        return [Check("trained checkpoints", False, detail)]
    latest = max(runs, key=lambda p: (p / WEIGHTS_NAME).stat().st_mtime)
    return [Check("trained checkpoints", True, f"{len(runs)} run(s) in {folder}; latest {latest.name}")]


def _extras() -> list[Check]:
    """Optional libraries behind single features (beat snapping, timeline export)."""
    checks = []
    for module, feature in (("librosa", "beat snapping (--snap beat)"), ("opentimelineio", "mgsv export")):
        version = _version_of(module)
        checks.append(Check(module, version is not None, f"{version or 'missing'}: {feature}"))
    return checks


def _version_of(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def checkpoint_status():
    """A :class:`~mgsv_cli.features.weights.WeightsStatus` for the newest trained run (``mgsv models list``)."""
    from mgsv_cli.features.weights import WeightsStatus
    from mgsv_cli.models.checkpoint import MADE_CHECKPOINT_NOTE, WEIGHTS_NAME, latest_run

    run = latest_run()
    if run is not None:
        return WeightsStatus("MaDe checkpoint", True, str(run / WEIGHTS_NAME), "trained run")
    return WeightsStatus("MaDe checkpoint", False, None, "missing", MADE_CHECKPOINT_NOTE)
