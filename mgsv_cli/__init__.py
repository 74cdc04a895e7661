"""mgsv: background music for short videos, built on MaDe (Music Grounding by Short Video).

The public API (:mod:`mgsv_cli.api`) is importable from here::

    import mgsv_cli as mgsv

    library = mgsv.open_library("~/music/index.sqlite", create=True)
    library.index("~/Music")
    suggester = mgsv.load_suggester(library)
    mgsv.render(suggester.suggest("clip.mp4"))

Its names (``__all__``) are imported on first use (PEP 562), and heavy modules (torch,
encoders) only by the functions that need them, so ``import mgsv_cli`` and ``mgsv --help``
stay instant. The library is organised one sub-package per stage (docs/DESIGN.md).
"""

__version__ = "0.1.0"

# What mgsv_cli.api exports, and the typed errors (mgsv_cli.errors), re-exported lazily.
_API = (
    "open_library", "Library", "LibraryInfo", "TrackRecord", "FailedFile", "IndexReport", "IndexProgress",
    "load_suggester", "Suggester", "SuggestionResult", "Suggestion",
    "render", "RenderResult", "export", "ExportedTimeline",
    "train", "TrainResult", "Reporter", "evaluate", "load_model", "LoadedModel",
)
_ERRORS = (
    "MgsvError", "UsageError", "ConfigError", "DataError", "MediaError", "StorageError", "CheckpointError",
    "WeightsMissingError", "IndexDatabaseError", "DeviceMemoryError", "OutputExistsError",
)
__all__ = ["__version__", *_API, *_ERRORS]


def __getattr__(name: str):
    """``mgsv_cli.<name>`` of the public API, imported on first use (then kept here)."""
    if name in _ERRORS:
        from mgsv_cli import errors

        value = getattr(errors, name)
    elif name in _API:
        from mgsv_cli import api

        value = getattr(api, name)
    else:
        raise AttributeError(f"module 'mgsv_cli' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
