"""The records a track store exchanges, and the packing every backend shares.

One record per thing, whichever backend holds it: :class:`TrackRecord` (a stored track),
:class:`NewTrack` (a track to store, with its tokens), :class:`FileState` (what the store
knows of a file: size, mtime, content), :class:`FailedFile` (a file it could not take),
:class:`DerivedRows` (a checkpoint's rows of some tracks). Kept apart from ``backend.py``
so that both backends import them without an import cycle.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)
TAG_KEYS = ("title", "artist", "album")


@dataclass(frozen=True)
class TrackRecord:
    """One stored track, without its tokens or beat grid (``TrackStore.beats_for``).

    ``location`` is the file's resolved path (or object-store URI); ``tags`` its title,
    artist and album when the file has them; ``token_stamp`` changes whenever the
    track's stored tokens do (caches derived from the tokens compare it).
    """

    track_id: int
    location: str
    content_hash: str
    duration: float
    tags: dict[str, str] = field(default_factory=dict)
    token_stamp: int = 0

    @property
    def id(self) -> int:
        return self.track_id

    @property
    def path(self) -> str:
        return self.location

    @property
    def title(self) -> str | None:
        return self.tags.get("title")

    @property
    def artist(self) -> str | None:
        return self.tags.get("artist")

    @property
    def album(self) -> str | None:
        return self.tags.get("album")

    @property
    def name(self) -> str:
        """"Artist - Title" when tagged, else the file name."""
        if self.title and self.artist:
            return f"{self.artist} - {self.title}"
        return self.title or Path(self.location).name


def clean_tags(tags) -> dict[str, str]:
    """Title, artist and album of a tag mapping (any case of key), stripped; empty ones dropped."""
    wanted: dict[str, str] = {}
    for key, value in dict(tags or {}).items():
        name = str(key).lower()
        if name in TAG_KEYS and value is not None and str(value).strip():
            wanted[name] = str(value).strip()
    return wanted


class FileState(NamedTuple):
    """What a store knows of a file it took: ``size`` and ``mtime_ns`` (what tells an
    unchanged file without reading it) and the ``content_hash`` of the bytes it embedded."""

    size: int | None
    mtime_ns: int | None
    content_hash: str


@dataclass
class NewTrack:
    """A track to store: its file, its record fields and frozen features.

    ``tokens`` float16/float32 [S, D], ``mask`` bool [S] (S <= 96, padded slots False),
    ``beats`` the beat-grid dict or None, ``encoder_id`` the encoders that made the tokens;
    ``size``/``mtime_ns`` the file's when it was read (None for tokens made elsewhere), and
    ``sample_rate``/``channels`` its audio's, as probed.
    """

    location: str
    content_hash: str
    duration: float
    tokens: Any
    mask: Any
    encoder_id: str
    tags: dict[str, str] = field(default_factory=dict)
    beats: dict | None = None
    size: int | None = None
    mtime_ns: int | None = None
    sample_rate: int | None = None
    channels: int | None = None
    structure: dict | None = None  # ``media.structure.TrackStructure.to_dict()``: bars, sections, ending


@dataclass(frozen=True)
class FailedFile:
    """A file the store could not take, as it remembers it (unchanged: not tried again)."""

    path: str
    reason: str
    size: int | None
    mtime_ns: int | None
    failed_at: str

    @property
    def exists(self) -> bool:
        return os.path.lexists(self.path)

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason, "size": self.size, "mtime_ns": self.mtime_ns,
                "failed_at": self.failed_at, "exists": self.exists}


@dataclass(frozen=True)
class StoreHealth:
    """What ``mgsv doctor`` says about a store: counts, and damage (None when healthy)."""

    n_tracks: int
    n_beats: int
    n_failed: int
    damage: str | None


@dataclass
class DerivedRows:
    """Derived data of some tracks for one checkpoint.

    ``track_ids`` int64 [K]; ``pooled`` float32 [K, d] (h0 before normalisation);
    ``keys`` float16 [K, S, d] and ``mask`` bool [K, S] padded to the longest of the K.
    A store that keeps its keys in int8 (see :func:`quantize_keys`) returns ``keys`` int8
    [K, S, d] with ``key_scales`` float32 [K, S]: key = keys * key_scales[..., None].
    ``offsets`` float32 [K]: what the model subtracts from each track's score (made-plus
    querybank normalisation, ``MusicTokens.offsets``); None for a model without them.
    """

    track_ids: Any
    pooled: Any
    keys: Any
    mask: Any
    key_scales: Any = None
    offsets: Any = None


KEY_ENCODINGS = ("float16", "int8")  # how a store may keep X-Pool keys (int8: half the bytes)


def quantize_keys(keys):
    """Symmetric int8 per window: ``keys`` float [..., S, d] -> (int8 [..., S, d], scales float32 [..., S]).

    Each window's vector is scaled by its largest magnitude / 127 and rounded, so one key's
    relative error is at most 0.4% of its largest entry (d = 256: ~0.25% of its norm on
    average); an all-zero window gets scale 0.
    """
    import numpy as np

    keys = np.asarray(keys, dtype=np.float32)
    peak = np.abs(keys).max(axis=-1)
    scales = (peak / 127.0).astype(np.float32)
    safe = np.where(scales > 0, scales, 1.0).astype(np.float32)
    quantized = np.clip(np.rint(keys / safe[..., None]), -127, 127).astype(np.int8)
    return quantized, scales


def dequantize_keys(keys, scales):
    """The float32 keys of :func:`quantize_keys`' (int8 [..., S, d], scales [..., S])."""
    import numpy as np

    return np.asarray(keys, dtype=np.float32) * np.asarray(scales, dtype=np.float32)[..., None]


def to_numpy(x):
    """A numpy view of a numpy array or a (CPU or device) torch tensor."""
    import numpy as np

    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def valid_length(mask) -> int:
    """Slots up to and including the last valid one: what a trimmed row keeps of ``mask`` [S]."""
    import numpy as np

    valid = np.flatnonzero(np.asarray(mask))
    return int(valid[-1]) + 1 if valid.size else 0


def pad_rows(rows: Sequence, masks: Sequence, width: int, dim: int, dtype):
    """Stack trimmed rows ``[S_i, dim]`` (masks ``[S_i]``) into ``[K, width, dim]`` and bool ``[K, width]``."""
    import numpy as np

    out = np.zeros((len(rows), width, dim), dtype=dtype)
    mask = np.zeros((len(rows), width), dtype=bool)
    for k, (row, m) in enumerate(zip(rows, masks)):
        out[k, :row.shape[0]] = row
        mask[k, :m.shape[0]] = m
    return out, mask


def check_derived(rows: DerivedRows, key_dtype: str = "float16"):
    """``rows`` as numpy (ids int64 [K], pooled float32 [K, d], keys [K, S, d] in ``key_dtype``, mask bool
    [K, S], offsets float32 [K] or None), with their shapes checked: a caller's mistake is an error here,
    not a store with bad rows. Quantized keys (``key_scales`` given) come back dequantized."""
    import numpy as np

    from mgsv_cli.errors import DataError

    ids = to_numpy(rows.track_ids).astype(np.int64).reshape(-1)
    pooled = to_numpy(rows.pooled).astype(np.float32)
    keys = to_numpy(rows.keys)
    if rows.key_scales is not None:
        scales = to_numpy(rows.key_scales)
        if scales.shape != keys.shape[:-1]:
            raise DataError(f"key scales of shape {scales.shape} for keys of shape {keys.shape}")
        keys = dequantize_keys(keys, scales)
    keys = keys.astype(key_dtype)
    mask = to_numpy(rows.mask).astype(bool)
    k = ids.shape[0]
    if pooled.ndim != 2 or pooled.shape[0] != k or keys.ndim != 3 or keys.shape[0] != k \
            or keys.shape[2] != pooled.shape[1] or mask.shape != keys.shape[:2]:
        raise DataError(f"derived rows of mismatched shapes: ids {ids.shape}, pooled {pooled.shape}, "
                        f"keys {keys.shape}, mask {mask.shape}")
    offsets = None if rows.offsets is None else to_numpy(rows.offsets).astype(np.float32)
    if offsets is not None and offsets.shape != (k,):
        raise DataError(f"derived rows of mismatched shapes: ids {ids.shape}, offsets {offsets.shape}")
    return ids, pooled, keys, mask, offsets
