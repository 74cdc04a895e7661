"""The MGSV-EC dataset as released: split CSVs, per-id feature files, and a packed cache.

The official layout (read as is)::

    ROOT/dataset/MGSV-EC/{train,val,test}_data.csv
    ROOT/features/Kuai_feature/ast_feature2p5/ast_feature/<music_id>.pt   float [96, 768]
    ROOT/features/Kuai_feature/ast_feature2p5/ast_mask/<music_id>.pt      [96], 1 = valid
    ROOT/features/Kuai_feature/vit_feature1/vit_feature/<video_id>.pt     float [50, 512]
    ROOT/features/Kuai_feature/vit_feature1/vit_mask/<video_id>.pt        [50], 1 = valid

Reading ~100k small pickles every epoch is slow, so the first :func:`load_split` of a
split packs its features into ``.npy`` files under ``paths.cache_dir()/packed/<key>``
and every later use memory-maps them. The key hashes the absolute root, the split,
the CSV's size/mtime and the size/mtime of every feature file the split needs, so
editing any source file makes a fresh pack.

Storage precision: video features are stored as float16. The reference extracted
them with CLIP running in half precision, so every value is float16-derived and the
float16 copy is bit-exact (each pack records whether that held, see ``meta.json``
``video_fp16_exact``); features from a float32 extractor lose ~5e-4 relative, far below
the noise the network is trained with. Music features stay float32: AST ran in full
precision, the whole music set is ~1 GB at float32, and keeping it exact costs little.

On a CUDA GPU the whole packed split fits easily (MGSV-EC's train split is ~2.5 GB of
float16 video tokens and ~1.2 GB of float32 music tokens): :meth:`SplitData.to_device`
copies it there once and :class:`DeviceSplit` gathers every batch on the device with
index tensors, so training does no per-step host work or copies. :func:`place_split`
chooses: device-resident on CUDA when the split fits in a fraction of the free memory,
else (and always on a CPU) the memory-mapped host path. Both give identical batches.

Durations: in the release ``video_segment_duration`` equals the ground-truth moment
length ``music_end - music_start`` (to a few ms; ``video_total_duration`` can be up to
100 s longer), so it is the "video duration" used for the exact-length cut and the
content-free prior.
"""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import shutil
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional

import numpy as np

from mgsv_cli import paths
from mgsv_cli.errors import DataError
from mgsv_cli.features import recipe

if TYPE_CHECKING:  # pragma: no cover
    import torch

SPLITS = ("train", "val", "test")
CSV_COLUMNS = (
    "video_id", "music_id", "video_start", "video_end", "music_start", "music_end",
    "music_total_duration", "video_segment_duration", "music_segment_duration", "music_path",
    "video_total_duration", "video_width", "video_height", "video_total_frames",
    "video_frame_rate", "video_category",
)
# What mgsv reads; the other columns may be absent without harm.
REQUIRED_COLUMNS = (
    "video_id", "music_id", "music_start", "music_end", "music_total_duration",
    "video_segment_duration", "video_total_duration",
)
_FLOAT_COLUMNS = ("video_start", "video_end", "music_start", "music_end", "music_total_duration",
                  "video_segment_duration", "video_total_duration")

N_FRAMES, VIDEO_DIM = recipe.N_VIDEO_FRAMES, recipe.CLIP_EMBED_DIM
N_WINDOWS, MUSIC_DIM = recipe.N_MUSIC_WINDOWS, recipe.AST_EMBED_DIM
MAX_MUSIC_SECONDS = recipe.MAX_MUSIC_SECONDS
PACK_FORMAT = 1

# The release layout (spec section 2): CSVs and one .pt file per feature and mask.
CSV_DIR = Path("dataset") / "MGSV-EC"
FEATURE_DIRS = {
    "video": "features/Kuai_feature/vit_feature1/vit_feature",
    "video_mask": "features/Kuai_feature/vit_feature1/vit_mask",
    "music": "features/Kuai_feature/ast_feature2p5/ast_feature",
    "music_mask": "features/Kuai_feature/ast_feature2p5/ast_mask",
}

ProgressFn = Callable[[str, int, int], None]
"""``progress(stage, done, total)``; stages: ``"checking"``, ``"packing videos"``, ``"packing music"``."""


def csv_path(root: str | os.PathLike, split: str) -> Path:
    """``ROOT/dataset/MGSV-EC/<split>_data.csv`` (the official layout)."""
    return Path(root) / CSV_DIR / f"{split}_data.csv"


def find_csv(root: str | os.PathLike, split: str) -> Path:
    """The split CSV: the official place, else ``ROOT/MGSV-EC/`` or ``ROOT/`` (labels-only copies).

    Returns the official path when none exists (for the error message).
    """
    official = csv_path(root, split)
    for candidate in (official, Path(root) / "MGSV-EC" / official.name, Path(root) / official.name):
        if candidate.is_file():
            return candidate
    return official


def feature_path(root: str | os.PathLike, kind: str, item_id: str) -> Path:
    """Path of one feature file; ``kind`` is ``video``, ``video_mask``, ``music`` or ``music_mask``."""
    if kind not in FEATURE_DIRS:
        raise ValueError(f"unknown feature kind {kind!r}")
    return Path(root) / FEATURE_DIRS[kind] / f"{item_id}.pt"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")


# ------------------------------------------------------------------ labels


@dataclass(frozen=True)
class SplitLabels:
    """The rows of one split CSV as numpy arrays (one entry per row, CSV order).

    Ids are strings (``video_id``, ``music_id``); times are float64 seconds.
    """

    split: str
    path: Path
    video_id: np.ndarray
    music_id: np.ndarray
    video_start: np.ndarray
    video_end: np.ndarray
    music_start: np.ndarray
    music_end: np.ndarray
    music_total_duration: np.ndarray
    video_segment_duration: np.ndarray
    video_total_duration: np.ndarray
    video_category: np.ndarray

    @property
    def n(self) -> int:
        return int(self.video_id.shape[0])

    @property
    def video_duration(self) -> np.ndarray:
        """Length the music must cover: ``video_segment_duration`` (equals the GT moment length)."""
        return self.video_segment_duration

    @property
    def moments(self) -> np.ndarray:
        """Ground-truth moments ``[n, 2]`` (start, end) in seconds."""
        return np.stack([self.music_start, self.music_end], axis=1)


def read_split_csv(root: str | os.PathLike, split: str) -> SplitLabels:
    """Read ``ROOT/dataset/MGSV-EC/<split>_data.csv``.

    Raises DataError naming the file when it is missing, lacks required columns
    (all listed), or holds an unparsable or impossible value (naming the line).
    """
    _check_split(split)
    path = find_csv(root, split)
    if not path.is_file():
        raise DataError(f"missing split file {path}")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = [h.strip().lstrip("\ufeff") for h in next(reader, [])]
            columns = _column_positions(path, header)
            n_fields = max(columns.values()) + 1
            cells: dict[str, list[str]] = {name: [] for name in columns}
            line_numbers: list[int] = []
            for line_no, row in enumerate(reader, start=2):
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) < n_fields:
                    raise DataError(f"{path} line {line_no}: {len(row)} fields, expected at least {n_fields}")
                line_numbers.append(line_no)
                for name, pos in columns.items():
                    cells[name].append(row[pos].strip())
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if not line_numbers:
        raise DataError(f"{path}: no rows")
    return _labels_from_cells(split, path, cells, np.asarray(line_numbers))


def _column_positions(path: Path, header: list[str]) -> dict[str, int]:
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    wanted = set(REQUIRED_COLUMNS) | set(_FLOAT_COLUMNS) | {"video_category"}
    return {name: header.index(name) for name in wanted if name in header}


def _float_column(path: Path, name: str, cells: list[str], line_numbers: np.ndarray) -> np.ndarray:
    """A column as float64, checked finite and non-negative (the first bad line is named)."""
    try:
        values = np.array(cells, dtype=np.float64)
    except ValueError:
        for line_no, cell in zip(line_numbers, cells):
            try:
                float(cell)
            except ValueError:
                raise DataError(f"{path} line {line_no}: column {name} is not a number: {cell!r}") from None
        raise
    bad = np.flatnonzero(~np.isfinite(values) | (values < 0))
    if bad.size:
        first = bad[0]
        raise DataError(f"{path} line {line_numbers[first]}: column {name} must be a finite "
                        f"non-negative number, got {cells[first]!r}")
    return values


def _id_column(path: Path, name: str, cells: list[str], line_numbers: np.ndarray) -> np.ndarray:
    # Ids name feature files: refuse anything that could point outside the feature folders.
    for line_no, cell in zip(line_numbers, cells):
        if not cell or "/" in cell or "\\" in cell or cell in (".", ".."):
            raise DataError(f"{path} line {line_no}: {name} {cell!r} is not a usable id")
    return np.asarray(cells, dtype=str)


def _labels_from_cells(split: str, path: Path, cells: dict[str, list[str]], line_numbers: np.ndarray) -> SplitLabels:
    n = line_numbers.size
    floats = {name: _float_column(path, name, cells[name], line_numbers) for name in _FLOAT_COLUMNS if name in cells}
    backwards = np.flatnonzero(floats["music_end"] < floats["music_start"])
    if backwards.size:
        raise DataError(f"{path} line {line_numbers[backwards[0]]}: music_end is before music_start")
    # Optional columns: a segment that starts at 0 and lasts the segment duration.
    floats.setdefault("video_start", np.zeros(n))
    floats.setdefault("video_end", floats["video_start"] + floats["video_segment_duration"])
    return SplitLabels(
        split=split,
        path=path,
        video_id=_id_column(path, "video_id", cells["video_id"], line_numbers),
        music_id=_id_column(path, "music_id", cells["music_id"], line_numbers),
        video_category=np.asarray(cells.get("video_category", [""] * n), dtype=str),
        **floats,
    )


# ------------------------------------------------------------------ split data


@dataclass
class Batch:
    """One batch of rows as torch tensors (B rows; U distinct tracks when de-duplicated).

    frames [B, 50, 512] float32, frame_mask [B, 50] bool,
    windows [B or U, 96, 768] float32, window_mask [B or U, 96] bool,
    track_slot [B] long: row of ``windows`` holding each row's track (``arange(B)`` unless de-duplicated),
    span [B, 2] float32: target (centre, width) / 240 s,
    moment [B, 2] float32: target (start, end) in seconds,
    track_duration [B], video_duration [B] float32 seconds,
    track_index [B] long: index into the split's distinct tracks, rows [B] long: split row numbers.
    """

    rows: "torch.Tensor"
    frames: "torch.Tensor"
    frame_mask: "torch.Tensor"
    windows: "torch.Tensor"
    window_mask: "torch.Tensor"
    track_slot: "torch.Tensor"
    span: "torch.Tensor"
    moment: "torch.Tensor"
    track_duration: "torch.Tensor"
    video_duration: "torch.Tensor"
    track_index: "torch.Tensor"

    def to(self, device, non_blocking: bool = False) -> "Batch":
        """Copy every tensor to ``device``."""
        moved = {name: getattr(self, name).to(device, non_blocking=non_blocking)
                 for name in self.__dataclass_fields__}
        return Batch(**moved)

    def __len__(self) -> int:
        return int(self.rows.shape[0])


@dataclass
class SplitData:
    """One split: labels plus memory-mapped features.

    video_feats [n_videos, 50, 512] float16 memmap, video_masks [n_videos, 50] uint8,
    video_index [n]: packed video row of each CSV row;
    track_ids [n_tracks] distinct music ids (first-appearance order),
    track_feats [n_tracks, 96, 768] float32 memmap, track_masks [n_tracks, 96] uint8,
    track_durations [n_tracks] seconds (from the CSV; the last row of a track wins if rows
    disagree), track_index [n]: distinct track of each row.
    """

    labels: SplitLabels
    video_feats: np.ndarray
    video_masks: np.ndarray
    video_index: np.ndarray
    track_ids: np.ndarray
    track_feats: np.ndarray
    track_masks: np.ndarray
    track_durations: np.ndarray
    track_index: np.ndarray
    cache_path: Path
    meta: dict = field(default_factory=dict)

    @property
    def split(self) -> str:
        return self.labels.split

    @property
    def n(self) -> int:
        return self.labels.n

    @property
    def n_tracks(self) -> int:
        return int(self.track_ids.shape[0])

    def __len__(self) -> int:
        return self.n

    def spans(self) -> np.ndarray:
        """Targets ``[n, 2]``: (centre, width) of the GT moment divided by 240 s."""
        start, end = self.labels.music_start, self.labels.music_end
        return np.stack([(start + end) / 2.0, end - start], axis=1) / MAX_MUSIC_SECONDS

    def batch(self, rows: np.ndarray, dedupe_tracks: bool = False, keep_fp16: bool = False) -> Batch:
        """Gather the given split rows into a :class:`Batch` (fancy indexing on the memmaps).

        ``keep_fp16`` leaves ``frames`` in float16 as stored (half the bytes to copy to a
        GPU; convert there with ``.float()``).
        """
        import torch

        rows = np.asarray(rows, dtype=np.int64)
        videos = self.video_index[rows]
        tracks = self.track_index[rows]
        if dedupe_tracks:
            wanted, slot = np.unique(tracks, return_inverse=True)
        else:
            wanted, slot = tracks, np.arange(rows.shape[0])
        targets = _row_targets(self.labels, rows)
        return Batch(
            rows=torch.from_numpy(rows),
            frames=_gather(self.video_feats, videos) if keep_fp16 else _gather(self.video_feats, videos).float(),
            frame_mask=_gather(self.video_masks, videos).bool(),
            windows=_gather(self.track_feats, wanted).float(),
            window_mask=_gather(self.track_masks, wanted).bool(),
            track_slot=torch.from_numpy(np.asarray(slot, dtype=np.int64)),
            track_index=torch.from_numpy(tracks.astype(np.int64)),
            **{name: torch.from_numpy(value) for name, value in targets.items()},
        )

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                dedupe_tracks: bool = False, keep_fp16: bool = False) -> Iterator[Batch]:
        """Iterate over the split in batches of rows (see :meth:`batch` for the options).

        With ``shuffle`` the batches are drawn from a permutation seeded by ``seed`` (pass
        ``seed + epoch`` for a new draw each epoch); the rows inside a batch come in
        ascending order so the memmap reads stay sequential. Otherwise CSV order.
        """
        for rows in batch_rows(self.n, batch_size, shuffle, seed, drop_last):
            yield self.batch(rows, dedupe_tracks=dedupe_tracks, keep_fp16=keep_fp16)

    def n_batches(self, batch_size: int, drop_last: bool = False) -> int:
        return self.n // batch_size if drop_last else -(-self.n // batch_size)

    # -- what evaluation needs, on any device (DeviceSplit has the same methods)

    def video_inputs(self, videos, device) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Frames float32 [k, 50, 512] and mask bool [k, 50] of packed video rows ``videos``, on ``device``."""
        videos = _as_numpy_index(videos)
        return (_gather(self.video_feats, videos).float().to(device),
                _gather(self.video_masks, videos).bool().to(device))

    def track_inputs(self, tracks, device) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Windows float32 [k, 96, 768] and mask bool [k, 96] of distinct tracks ``tracks``, on ``device``."""
        tracks = _as_numpy_index(tracks)
        return (_gather(self.track_feats, tracks).float().to(device),
                _gather(self.track_masks, tracks).bool().to(device))

    def track_valid_counts(self) -> np.ndarray:
        """Valid windows per distinct track [n_tracks] (int)."""
        return np.asarray(self.track_masks).sum(axis=1)

    # -- keeping the whole split on a device

    def device_bytes(self, dtype=None) -> int:
        """Bytes :meth:`to_device` would allocate (see there for ``dtype``)."""
        import torch

        video_item = 2 if dtype is None else torch.empty((), dtype=dtype).element_size()
        track_item = 4 if dtype is None else torch.empty((), dtype=dtype).element_size()
        n_videos, n_tracks = int(self.video_feats.shape[0]), self.n_tracks
        return (n_videos * (N_FRAMES * VIDEO_DIM * video_item + N_FRAMES)
                + n_tracks * (N_WINDOWS * MUSIC_DIM * track_item + N_WINDOWS)
                + self.n * (2 * 8 + 6 * 4))

    def to_device(self, device, dtype=None) -> "DeviceSplit":
        """Copy the packed features and every per-row target onto ``device`` once.

        ``dtype`` None keeps the stored precision (float16 video, float32 music) and gives
        float32 batches, equal to :meth:`batch`'s; a 16-bit ``dtype`` stores both in it (less
        memory) and gives batches in it, equal to :meth:`batch`'s converted with ``.to(dtype)``.
        """
        return DeviceSplit.from_split(self, device, dtype)


def batch_rows(n: int, batch_size: int, shuffle: bool = False, seed: int = 0,
               drop_last: bool = False) -> Iterator[np.ndarray]:
    """The split rows of each batch, in order: what :meth:`SplitData.batches` and
    :meth:`DeviceSplit.batches` both draw (so both paths see the same rows)."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    stop = n - (n % batch_size if drop_last else 0)
    for begin in range(0, stop, batch_size):
        yield np.sort(order[begin:begin + batch_size])


def _row_targets(labels: SplitLabels, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Per-row float32 targets of :class:`Batch` (``span``, ``moment``, ``track_duration``,
    ``video_duration``), computed in float64 as numpy does it, row by row."""
    moment = np.stack([labels.music_start[rows], labels.music_end[rows]], axis=1)
    span = np.stack([moment.mean(axis=1), moment[:, 1] - moment[:, 0]], axis=1) / MAX_MUSIC_SECONDS
    return {
        "span": span.astype(np.float32),
        "moment": moment.astype(np.float32),
        "track_duration": labels.music_total_duration[rows].astype(np.float32),
        "video_duration": labels.video_duration[rows].astype(np.float32),
    }


def _as_numpy_index(index) -> np.ndarray:
    if hasattr(index, "detach"):
        index = index.detach().cpu().numpy()
    return np.asarray(index, dtype=np.int64)


# Rows copied per transfer when a split moves to a device: bounds the host memory the
# copy needs (~50 MB of video rows at a time) whatever the split's size.
_UPLOAD_ROWS = 1024


def _upload(array: np.ndarray, device, dtype) -> "torch.Tensor":
    """A (memory-mapped) array as one tensor on ``device``, copied in chunks of rows."""
    import torch

    out = torch.empty(array.shape, dtype=dtype, device=device)
    for begin in range(0, array.shape[0], _UPLOAD_ROWS):
        chunk = torch.from_numpy(np.array(array[begin:begin + _UPLOAD_ROWS]))
        out[begin:begin + chunk.shape[0]].copy_(chunk.to(dtype) if chunk.dtype != dtype else chunk)
    return out


@dataclass
class DeviceSplit:
    """A split whose features and per-row targets live on one device (see :meth:`SplitData.to_device`).

    Batches are gathered there with index tensors: :meth:`batches` draws the same rows as
    :meth:`SplitData.batches` (uploading one epoch's row order at once) and :meth:`batch`
    returns the same values as :meth:`SplitData.batch`, already on the device. ``host``
    is the memory-mapped split (labels, ids); ``n``, ``split``, ``labels``, ``n_tracks``,
    ``video_index`` and ``track_index`` (numpy) read through to it.
    """

    host: SplitData
    device: "torch.device"
    dtype: "torch.dtype"  # of the float tensors of a batch
    video_feats: "torch.Tensor"
    video_masks: "torch.Tensor"
    track_feats: "torch.Tensor"
    track_masks: "torch.Tensor"
    row_video: "torch.Tensor"
    row_track: "torch.Tensor"
    targets: dict

    @classmethod
    def from_split(cls, split: SplitData, device, dtype=None) -> "DeviceSplit":
        import torch

        device = torch.device(device)
        if dtype is not None and torch.empty((), dtype=dtype).element_size() != 2:
            dtype = None  # 32-bit: the stored precision is the exact one
        video_dtype, track_dtype = (torch.float16, torch.float32) if dtype is None else (dtype, dtype)
        rows = np.arange(split.n)
        return cls(
            host=split, device=device, dtype=torch.float32 if dtype is None else dtype,
            video_feats=_upload(split.video_feats, device, video_dtype),
            video_masks=_upload(split.video_masks, device, torch.bool),
            track_feats=_upload(split.track_feats, device, track_dtype),
            track_masks=_upload(split.track_masks, device, torch.bool),
            row_video=torch.from_numpy(split.video_index.astype(np.int64)).to(device),
            row_track=torch.from_numpy(split.track_index.astype(np.int64)).to(device),
            targets={name: torch.from_numpy(value).to(device)
                     for name, value in _row_targets(split.labels, rows).items()},
        )

    @property
    def n(self) -> int:
        return self.host.n

    @property
    def split(self) -> str:
        return self.host.split

    @property
    def labels(self) -> SplitLabels:
        return self.host.labels

    @property
    def n_tracks(self) -> int:
        return self.host.n_tracks

    @property
    def video_index(self) -> np.ndarray:
        return self.host.video_index

    @property
    def track_index(self) -> np.ndarray:
        return self.host.track_index

    def __len__(self) -> int:
        return self.n

    def n_batches(self, batch_size: int, drop_last: bool = False) -> int:
        return self.host.n_batches(batch_size, drop_last)

    def _index(self, index) -> "torch.Tensor":
        import torch

        if isinstance(index, torch.Tensor):
            return index.to(self.device, torch.int64)
        return torch.from_numpy(np.asarray(index, dtype=np.int64)).to(self.device)

    def batch(self, rows, dedupe_tracks: bool = False, keep_fp16: bool = False) -> Batch:
        """:meth:`SplitData.batch` gathered on the device; ``rows`` numpy or an index tensor.

        ``keep_fp16`` leaves ``frames`` in the stored 16-bit dtype.
        """
        import torch

        rows = self._index(rows)
        videos = self.row_video[rows]
        tracks = self.row_track[rows]
        if dedupe_tracks:
            wanted, slot = torch.unique(tracks, sorted=True, return_inverse=True)
        else:
            wanted, slot = tracks, torch.arange(rows.shape[0], device=self.device)
        frames = self.video_feats[videos]
        return Batch(
            rows=rows,
            frames=frames if keep_fp16 else frames.to(self.dtype),
            frame_mask=self.video_masks[videos],
            windows=self.track_feats[wanted].to(self.dtype),
            window_mask=self.track_masks[wanted],
            track_slot=slot,
            track_index=tracks,
            **{name: value[rows] for name, value in self.targets.items()},
        )

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                dedupe_tracks: bool = False, keep_fp16: bool = False) -> Iterator[Batch]:
        """:meth:`SplitData.batches` on the device: the epoch's rows go over in one copy."""
        import torch

        chunks = list(batch_rows(self.n, batch_size, shuffle, seed, drop_last))
        if not chunks:
            return
        order = torch.from_numpy(np.concatenate(chunks)).to(self.device)
        begin = 0
        for chunk in chunks:
            rows = order[begin:begin + chunk.size]
            begin += chunk.size
            yield self.batch(rows, dedupe_tracks=dedupe_tracks, keep_fp16=keep_fp16)

    def video_inputs(self, videos, device=None) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Frames [k, 50, 512] (batch dtype) and mask bool [k, 50] of packed video rows, on the device."""
        videos = self._index(videos)
        return self.video_feats[videos].to(self.dtype), self.video_masks[videos]

    def track_inputs(self, tracks, device=None) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Windows [k, 96, 768] (batch dtype) and mask bool [k, 96] of distinct tracks, on the device."""
        tracks = self._index(tracks)
        return self.track_feats[tracks].to(self.dtype), self.track_masks[tracks]

    def track_valid_counts(self) -> np.ndarray:
        return self.host.track_valid_counts()


def place_split(split: SplitData, device, resident: str = "auto", fraction: float = 0.5, dtype=None):
    """``split`` as training and evaluation should read it on ``device``.

    ``resident``: ``auto`` moves it onto a CUDA device when it takes at most ``fraction``
    of the free GPU memory (a :class:`DeviceSplit`) and keeps the memory-mapped host
    path otherwise and on every other device; ``always`` / ``never`` force either.
    """
    from mgsv_cli.device import fits_in_memory

    if resident not in ("auto", "always", "never"):
        raise ValueError(f"resident {resident!r}: expected auto, always or never")
    if resident == "never" or (resident == "auto" and not fits_in_memory(split.device_bytes(dtype), device, fraction)):
        return split
    return split.to_device(device, dtype)


def _gather(array: np.ndarray, index: np.ndarray) -> "torch.Tensor":
    """Rows ``index`` of a memmap as a (writable, in-memory) tensor."""
    import torch

    return torch.from_numpy(np.take(array, index, axis=0))


def load_split(root: str | os.PathLike, split: str, progress: Optional[ProgressFn] = None) -> SplitData:
    """Labels and memory-mapped features of one split, packing the cache on first use.

    Raises DataError for a missing/malformed CSV or feature file (naming it).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data root {root} is not a folder")
    labels = read_split_csv(root, split)
    video_ids = _first_appearance(labels.video_id)
    track_ids = _first_appearance(labels.music_id)
    key = _cache_key(root.resolve(), labels, video_ids, track_ids, progress)
    folder = paths.cache_dir() / "packed" / key
    if not (folder / "meta.json").is_file():
        _pack(root, labels, video_ids, track_ids, folder, progress)
    return _open_pack(folder, labels, video_ids, track_ids)


def _first_appearance(ids: np.ndarray) -> np.ndarray:
    unique, first = np.unique(ids, return_index=True)
    return unique[np.argsort(first, kind="stable")]


def _cache_key(root: Path, labels: SplitLabels, video_ids: np.ndarray, track_ids: np.ndarray,
               progress: Optional[ProgressFn]) -> str:
    """Hash of everything the pack is made from; stats every needed file (missing -> DataError)."""
    stat = labels.path.stat()
    digest = hashlib.sha256()
    digest.update(json.dumps([PACK_FORMAT, str(root), labels.split, stat.st_size, stat.st_mtime_ns]).encode())
    jobs = [("video", video_ids), ("video_mask", video_ids), ("music", track_ids), ("music_mask", track_ids)]
    total = sum(len(ids) for _, ids in jobs)
    done = 0
    for kind, ids in jobs:
        # Plain strings and os.stat: ~100k Path objects would cost more than the stats themselves.
        folder = os.path.join(str(root), FEATURE_DIRS[kind])
        for item_id in ids.tolist():
            path = os.path.join(folder, item_id + ".pt")
            try:
                info = os.stat(path)
            except OSError:
                raise DataError(f"missing feature file {path}") from None
            digest.update(b"%d:%d;" % (info.st_size, info.st_mtime_ns))
        done += len(ids)
        if progress:
            progress("checking", done, total)
    return digest.hexdigest()[:24]


# ------------------------------------------------------------------ packing


def _pack(root: Path, labels: SplitLabels, video_ids: np.ndarray, track_ids: np.ndarray,
          folder: Path, progress: Optional[ProgressFn]) -> None:
    """Write the pack into a temp folder, then rename it into place (atomic)."""
    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{folder.name}-{os.getpid()}-{time.monotonic_ns()}"
    tmp.mkdir()
    try:
        meta = _write_arrays(root, tmp, video_ids, track_ids, progress)
        meta.update(format=PACK_FORMAT, root=str(root.resolve()), split=labels.split,
                    n_videos=len(video_ids), n_tracks=len(track_ids), created=time.time())
        (tmp / "ids.json").write_text(json.dumps({"video_ids": video_ids.tolist(),
                                                  "track_ids": track_ids.tolist()}))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "meta.json").is_file():  # not a concurrent twin: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _remove_stale_packs(parent, folder, meta)


def _write_arrays(root: Path, tmp: Path, video_ids: np.ndarray, track_ids: np.ndarray,
                  progress: Optional[ProgressFn]) -> dict:
    from numpy.lib.format import open_memmap

    video_feats = open_memmap(tmp / "video_feats.npy", "w+", np.float16, (len(video_ids), N_FRAMES, VIDEO_DIM))
    video_masks = open_memmap(tmp / "video_masks.npy", "w+", np.uint8, (len(video_ids), N_FRAMES))
    worst = _fill(root, "video", video_ids, (N_FRAMES, VIDEO_DIM), video_feats, video_masks,
                  progress, "packing videos")
    music_feats = open_memmap(tmp / "music_feats.npy", "w+", np.float32, (len(track_ids), N_WINDOWS, MUSIC_DIM))
    music_masks = open_memmap(tmp / "music_masks.npy", "w+", np.uint8, (len(track_ids), N_WINDOWS))
    _fill(root, "music", track_ids, (N_WINDOWS, MUSIC_DIM), music_feats, music_masks,
          progress, "packing music")
    for array in (video_feats, video_masks, music_feats, music_masks):
        array.flush()
    del video_feats, video_masks, music_feats, music_masks
    return {"video_dtype": "float16", "music_dtype": "float32",
            "video_fp16_exact": worst == 0.0, "video_fp16_max_abs_error": worst}


def _fill(root: Path, kind: str, ids: np.ndarray, shape: tuple[int, int], feats: np.ndarray,
          masks: np.ndarray, progress: Optional[ProgressFn], stage: str) -> float:
    """Load each id's feature + mask into row i of the memmaps; returns the worst cast error."""
    worst = 0.0
    step = max(1, len(ids) // 200)
    loaded = _bounded_map(lambda item_id: _load_pair(root, kind, item_id, shape), ids, n_workers=_pack_workers())
    for row, (feature, mask) in enumerate(loaded):
        stored = feature.astype(feats.dtype)
        if not np.isfinite(stored).all():
            raise DataError(
                f"{feature_path(root, kind, ids[row])}: values outside the {feats.dtype} range or not finite"
            )
        if feats.dtype != feature.dtype:
            worst = max(worst, float(np.max(np.abs(stored.astype(np.float32) - feature), initial=0.0)))
        feats[row] = stored
        masks[row] = mask
        if progress and (row % step == 0 or row == len(ids) - 1):
            progress(stage, row + 1, len(ids))
    return worst


def _pack_workers() -> int:
    """Threads reading feature files while packing: 2 (the measured best on 2 cores), up to
    8 on bigger machines (the reads and unpickling overlap; more mostly contend for the GIL)."""
    return max(2, min(8, os.cpu_count() or 2))


def _bounded_map(fn: Callable, items, n_workers: int = 2, n_ahead: int = 32) -> Iterator:
    """``map(fn, items)`` on a thread pool, in order, with at most ``n_ahead`` results pending.

    Threads overlap file reads with unpickling; the bound keeps memory flat however many
    files there are (``Executor.map`` would queue them all).
    """
    source = iter(items)
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        pending = deque(pool.submit(fn, item) for item in itertools.islice(source, n_ahead))
        try:
            while pending:
                result = pending.popleft().result()
                for item in itertools.islice(source, 1):
                    pending.append(pool.submit(fn, item))
                yield result
        finally:
            for future in pending:
                future.cancel()


def _load_pair(root: Path, kind: str, item_id: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    feature = _load_tensor(feature_path(root, kind, item_id), shape)
    mask = _load_tensor(feature_path(root, f"{kind}_mask", item_id), (shape[0],))
    if not np.isin(mask, (0, 1)).all():
        raise DataError(f"{feature_path(root, f'{kind}_mask', item_id)}: mask values must be 0 or 1")
    return feature.astype(np.float32, copy=False), mask.astype(np.uint8)


def _load_tensor(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    import torch

    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"missing feature file {path}") from None
    except Exception as exc:  # torch raises many types for corrupt pickles
        raise DataError(f"cannot read feature file {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    if not isinstance(value, torch.Tensor):
        raise DataError(f"feature file {path} holds a {type(value).__name__}, expected a tensor")
    if tuple(value.shape) != shape:
        raise DataError(f"feature file {path} has shape {list(value.shape)}, expected {list(shape)}")
    if value.dtype == torch.bfloat16:
        value = value.float()
    return value.detach().numpy()


def _remove_stale_packs(parent: Path, keep: Path, meta: dict) -> None:
    """Delete older packs of the same root and split (their sources changed)."""
    for other in parent.iterdir():
        if other == keep or other.name.startswith("."):
            continue
        try:
            other_meta = json.loads((other / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        if other_meta.get("root") == meta["root"] and other_meta.get("split") == meta["split"]:
            shutil.rmtree(other, ignore_errors=True)


def _open_pack(folder: Path, labels: SplitLabels, video_ids: np.ndarray, track_ids: np.ndarray) -> SplitData:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        ids = json.loads((folder / "ids.json").read_text())
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r")
                  for name in ("video_feats", "video_masks", "music_feats", "music_masks")}
    except (OSError, ValueError) as exc:
        raise DataError(f"packed cache {folder} is unreadable ({exc}); delete it and retry") from None
    if ids["video_ids"] != video_ids.tolist() or ids["track_ids"] != track_ids.tolist():
        raise DataError(f"packed cache {folder} does not match {labels.path}; delete it and retry")
    video_pos = {vid: i for i, vid in enumerate(ids["video_ids"])}
    track_pos = {tid: i for i, tid in enumerate(ids["track_ids"])}
    track_index = np.fromiter((track_pos[t] for t in labels.music_id), dtype=np.int64, count=labels.n)
    durations = np.zeros(len(track_ids), dtype=np.float64)
    durations[track_index] = labels.music_total_duration
    return SplitData(
        labels=labels,
        video_feats=arrays["video_feats"],
        video_masks=arrays["video_masks"],
        video_index=np.fromiter((video_pos[v] for v in labels.video_id), dtype=np.int64, count=labels.n),
        track_ids=track_ids,
        track_feats=arrays["music_feats"],
        track_masks=arrays["music_masks"],
        track_durations=durations,
        track_index=track_index,
        cache_path=folder,
        meta=meta,
    )
