"""Small synthetic MGSV-EC datasets in the exact official layout, with a planted signal.

``make_dataset(root)`` writes ``dataset/MGSV-EC/{train,val,test}_data.csv`` (all 16
columns) and one ``.pt`` per video / track feature and mask, like the release. The
features are random except for two learnable signals:

- video -> track: every track has a latent style ``z`` (16-d); its windows carry a
  768-d projection of ``z`` and its videos' frames a (noisy) 512-d projection of ``z``,
  so a model that learns the two projections ranks the right track first;
- video -> moment: every track has 1-4 non-overlapping "sections" with their own code;
  a video is cut to one section (moment = [section start, section start + video
  duration]), its frames carry a 512-d projection of the section code, and the track's
  windows whose centres lie inside the section's used span carry a 768-d projection of
  the same code. The moment is therefore findable from content: the onset of the
  windows matching the video gives the start, the number of valid frames the length.
  Section starts are spread over the track, so the content-free prior
  [0, video duration] scores poorly.

Durations are realistic: tracks 30-240 s (window j is valid iff 2.5 j <= duration),
videos 5-50 s (frame i valid iff i <= duration, at most 50), GT moment length = video
duration. Tracks are shared across splits; every track has several videos.
Helpers at the end break things for error tests.
"""
from __future__ import annotations

import csv
import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mgsv_cli.research.dataset import CSV_COLUMNS, csv_path, feature_path

STYLE_DIM = 16
N_FRAMES, VIDEO_DIM, N_WINDOWS, MUSIC_DIM = 50, 512, 96, 768
WINDOW_HOP = 2.5
CATEGORIES = ("Beauty", "Fashion", "Games", "Food", "Pets", "Sports")


@dataclass
class Track:
    music_id: str
    duration: float
    style: np.ndarray  # [STYLE_DIM]
    section_starts: list[float]
    section_limits: list[float]  # a moment in section p must end by section_limits[p]
    section_codes: np.ndarray  # [n_sections, STYLE_DIM]
    section_used_end: list[float] = field(default_factory=list)


@dataclass
class DatasetInfo:
    """What was generated: the root, the tracks and each split's rows (dicts of CSV values)."""

    root: Path
    tracks: list[Track]
    rows: dict[str, list[dict]]
    seed: int

    @property
    def track_ids(self) -> list[str]:
        return [t.music_id for t in self.tracks]

    def n(self, split: str) -> int:
        return len(self.rows[split])

    def video_ids(self, split: str) -> list[str]:
        return [r["video_id"] for r in self.rows[split]]


def make_dataset(root: str | Path, n_tracks: int = 40, n_train: int = 600, n_val: int = 100,
                 n_test: int = 100, seed: int = 0, noise: float = 0.5, style_noise: float = 0.3) -> DatasetInfo:
    """Write a synthetic dataset under ``root`` in the official layout and describe it.

    ``noise`` is the per-dimension std of the random part of every frame/window
    (the planted signals have about unit std per dimension); ``style_noise`` the std of
    each video's deviation from its track's style (0.3: the right track is easy to rank,
    ~1.0: hard; both leave the moment signal as it is).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    proj = {name: rng.normal(0.0, 1.0 / np.sqrt(STYLE_DIM), (dim, STYLE_DIM))
            for name, dim in (("video_style", VIDEO_DIM), ("video_code", VIDEO_DIM),
                              ("music_style", MUSIC_DIM), ("music_code", MUSIC_DIM))}
    tracks = [_make_track(rng, i) for i in range(n_tracks)]
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    rows: dict[str, list[dict]] = {}
    next_video = 0
    for split, n_rows in sizes.items():
        rows[split] = []
        for track_no in _assign_tracks(rng, n_rows, n_tracks):
            row, frames, mask = _make_video(rng, tracks[track_no], 100_000_000_000 + next_video, proj, noise,
                                            style_noise)
            next_video += 1
            rows[split].append(row)
            _save(feature_path(root, "video", row["video_id"]), torch.from_numpy(frames).half().float())
            _save(feature_path(root, "video_mask", row["video_id"]), torch.from_numpy(mask))
        _write_csv(csv_path(root, split), rows[split])
    for track in tracks:
        windows, mask = _track_windows(rng, track, proj, noise)
        _save(feature_path(root, "music", track.music_id), torch.from_numpy(windows))
        _save(feature_path(root, "music_mask", track.music_id), torch.from_numpy(mask).long())
    return DatasetInfo(root=root, tracks=tracks, rows=rows, seed=seed)


def _make_track(rng: np.random.Generator, number: int) -> Track:
    alphabet = np.array(list(string.ascii_lowercase + string.digits))
    music_id = "4+5x" + "".join(rng.choice(alphabet, 12)) + f"{number:02d}"
    duration = round(float(rng.uniform(30.0, 240.0)), 3)
    starts: list[float] = []
    cursor = float(rng.choice([0.0, rng.uniform(2.0, 0.4 * duration)], p=[0.25, 0.75]))
    while cursor + 8.0 <= duration and len(starts) < 4:
        starts.append(round(cursor, 3))
        cursor += float(rng.uniform(12.0, 60.0))
    limits = [min(s + 50.0, nxt) for s, nxt in zip(starts, starts[1:] + [duration])]
    return Track(music_id=music_id, duration=duration, style=rng.normal(size=STYLE_DIM),
                 section_starts=starts, section_limits=limits,
                 section_codes=rng.normal(size=(len(starts), STYLE_DIM)),
                 section_used_end=list(starts))


def _assign_tracks(rng: np.random.Generator, n_rows: int, n_tracks: int) -> np.ndarray:
    """Every track at least once when there are enough rows, then a mildly long-tailed draw."""
    base = np.arange(min(n_rows, n_tracks))
    weights = 1.0 / np.arange(1, n_tracks + 1) ** 0.5
    extra = rng.choice(n_tracks, size=n_rows - base.size, p=weights / weights.sum())
    return rng.permutation(np.concatenate([base, extra]))


def _make_video(rng: np.random.Generator, track: Track, number: int, proj: dict, noise: float,
                style_noise: float):
    section = int(rng.integers(len(track.section_starts)))
    start, limit = track.section_starts[section], track.section_limits[section]
    duration = round(float(rng.uniform(5.0, max(5.0, limit - start))), 3)
    duration = min(duration, round(limit - start, 3))
    end = round(start + duration, 3)
    track.section_used_end[section] = max(track.section_used_end[section], end)
    n_valid = min(N_FRAMES, int(np.floor(duration)) + 1)
    latent_style = track.style + style_noise * rng.normal(size=STYLE_DIM)
    latent_code = track.section_codes[section] + 0.3 * rng.normal(size=STYLE_DIM)
    signal = proj["video_style"] @ latent_style + proj["video_code"] @ latent_code
    frames = np.zeros((N_FRAMES, VIDEO_DIM), dtype=np.float32)
    frames[:n_valid] = signal + noise * rng.normal(size=(n_valid, VIDEO_DIM))
    mask = np.zeros(N_FRAMES, dtype=np.float32)
    mask[:n_valid] = 1.0
    total = duration if rng.random() < 0.7 else round(duration + float(rng.uniform(0.1, 20.0)), 3)
    row = {
        "video_id": str(number), "music_id": track.music_id,
        "video_start": 0.0, "video_end": duration,
        "music_start": start, "music_end": end,
        "music_total_duration": track.duration,
        "video_segment_duration": duration, "music_segment_duration": duration,
        "music_path": f"/Data/music/source_music/1/{track.music_id}+song.mp3",
        "video_total_duration": total, "video_width": 1080, "video_height": 1920,
        "video_total_frames": int(round(total * 30)), "video_frame_rate": 30,
        "video_category": CATEGORIES[number % len(CATEGORIES)],
    }
    return row, frames, mask


def _track_windows(rng: np.random.Generator, track: Track, proj: dict, noise: float):
    centres = WINDOW_HOP * np.arange(N_WINDOWS)
    valid = centres <= track.duration
    windows = proj["music_style"] @ track.style + noise * rng.normal(size=(N_WINDOWS, MUSIC_DIM))
    for code, start, used_end in zip(track.section_codes, track.section_starts, track.section_used_end):
        inside = (centres >= start) & (centres <= used_end)
        windows[inside] += proj["music_code"] @ code
    windows[~valid] = 0.0
    return windows.astype(np.float32), valid.astype(np.int64)


def _save(path: Path, tensor: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tensor.contiguous(), path)


def _write_csv(path: Path, rows: list[dict], columns=CSV_COLUMNS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


# ------------------------------------------------------------------ breaking things


def read_csv_rows(root: str | Path, split: str) -> tuple[list[str], list[dict]]:
    """Header and rows (dicts of strings) of a split CSV."""
    with open(csv_path(root, split), newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def drop_csv_columns(root: str | Path, split: str, *columns: str) -> Path:
    """Rewrite a split CSV without the given columns."""
    header, rows = read_csv_rows(root, split)
    path = csv_path(root, split)
    _write_csv(path, rows, [c for c in header if c not in columns])
    return path


def set_csv_cell(root: str | Path, split: str, row: int, column: str, value: str) -> Path:
    """Overwrite one cell (data row ``row``, 0-based; it sits on file line row + 2)."""
    header, rows = read_csv_rows(root, split)
    rows[row][column] = value
    path = csv_path(root, split)
    _write_csv(path, rows, header)
    return path


def remove_feature(root: str | Path, kind: str, item_id: str) -> Path:
    """Delete one feature file (kind: video, video_mask, music, music_mask)."""
    path = feature_path(root, kind, item_id)
    path.unlink()
    return path


def write_feature(root: str | Path, kind: str, item_id: str, value) -> Path:
    """Replace one feature file with ``value`` (any torch-saveable object)."""
    path = feature_path(root, kind, item_id)
    torch.save(value, path)
    return path
