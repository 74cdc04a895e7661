"""Small synthetic datasets in the exact MGSV-EC release layout, with a planted signal.

``make_dataset(root)`` writes what ``mgsv data fetch`` would bring (spec section 2)::

    ROOT/dataset/MGSV-EC/{train,val,test}_data.csv          all 16 columns
    ROOT/features/Kuai_feature/.../<video_id|music_id>.pt    [50, 512]/[50] video, [96, 768]/[96] music

so ``mgsv train`` and ``mgsv eval`` can be tried end to end in seconds, without the
real download. Numbers measured on it say nothing about real music. Design decisions:

- **Layout.** Paths come from :mod:`mgsv_cli.research.dataset` (``csv_path``,
  ``feature_path``, ``CSV_COLUMNS``), so the generator and the reader cannot drift
  apart. Tensors are saved with ``torch.save`` and load with ``weights_only=True``.
  Video features are float32 holding float16-exact values (the release's CLIP ran
  in half precision, and the packed cache checks this); music features are float32.
- **Train split, as in the release.** Every track has ONE music id and ONE feature file
  shared by all its videos. Popularity is long-tailed: beyond one video each, videos
  are spread over the tracks by a Zipf law of exponent :data:`ZIPF_EXPONENT` (0.8 puts
  ~4% of the videos on the top track at the release's size, where one track serves
  1,941 of 49,194). At the default size the top track has ~100 of 640 videos and the
  median track ~10.
- **Val and test, as in the release.** Every video has its own track: the split's
  music ids are distinct, so its candidate set is as large as the split (the release:
  2,000 videos, 2,000 tracks). The release shares tracks across splits: 554 of its
  4,050 tracks are not in train, so 72-100% (~86% if val and test split those evenly)
  of a val/test split's tracks are train tracks. Here :data:`SHARED_FRACTION` of each
  split's videos get a train track (popular ones likelier, at most one video each,
  the train track's own id and feature file: no copy), capped by the number of train
  tracks; the others get a new track (new id, own feature file, own sections) in the
  style of a train track (its style plus noise).
- **Planted signal, video -> track.** Every track has a latent style (16-d); all its
  windows carry a fixed 768-d projection of it, its videos' frames a 512-d projection
  of the style plus per-video noise (``style_noise``).
- **Planted signal, video -> moment, from the music's content only.** A track has 1-3
  sections (6-50 s, gaps between them); each has a code, its type's from a codebook of
  :data:`N_SECTION_TYPES` (verse, chorus, drop, ...) plus variation, and every window
  whose centre lies in the section carries a projection of that code. Sections are
  drawn with the track, before any video: the track's file is written once and knows
  nothing about its videos (no per-video copy, no mark at a moment's end). A video is
  cut from the start of one section, taking 75-100% of it (moment = [section start,
  start + video duration]); ~3/4 take the first section (the hook), as a popular
  track's videos tend to. Its frames carry the section's code plus noise. So the
  start is where the windows matching the video begin (within one 2.5 s window
  stride), and the length is the number of valid frames. 15% of the tracks have
  their first section at 0 s (~11% of the moments; the release: 38% within 1 s), so
  the content-free prior [0, video duration] scores ~0.15-0.3 mIoU (the release:
  0.48) and a model that finds moments beats it clearly.
- **What a small model learns from it.** The tiny MaDe config, trained for a few
  epochs, ranks tracks well (new tracks too) and finds moments on tracks it has seen
  in training, but barely on new ones: it memorises where a known track's sections
  are rather than learning to match codes. An oracle that knows the projections finds
  the start on new tracks as well (tests/research/test_synthetic.py), so the signal
  is there for a model that generalises.
- **Regimes** (``bench/bench_quality.py`` compares the variants under each).
  ``per_pair_ids``: False is the above (one id per track, many videos each); True gives every
  train video a track of its own (its own id, style and sections), as val and test have,
  so no two training pairs share a track and nothing is popular. ``link_dims``: how many of
  the :data:`STYLE_DIM` dimensions of a video's code are its section's (the rest are drawn
  afresh per video and carry nothing), so the video -> moment and video -> track link
  can be made weak (4 of 16) without changing the features' scale. ``style_scale``: the
  track style's amplitude in the windows and in the videos (the videos' deviation from it,
  ``style_noise``, is not scaled): below 1 the style says less about the track. The
  defaults write the same bytes as before these options existed (extra draws happen only
  when an option is away from its default).
- **Realistic durations.** Tracks 30-240 s (window j valid iff 2.5 j <= duration),
  videos 5-50 s (frame i valid iff i <= duration, at most 50), GT moment length =
  ``video_segment_duration``; ``video_total_duration`` is sometimes longer.
- **Deterministic.** One ``numpy`` generator seeded by ``seed`` draws the labels and
  latents, a second one (seeded by ``seed`` too) the feature noise, in file order:
  the same seed and sizes give the same CSVs and tensors.
- **Never overwrites.** A ROOT that already holds ``dataset/MGSV-EC`` or any file under
  ``features/`` is refused (:class:`~mgsv_cli.errors.UsageError`) before anything is
  written. Everything is written into a hidden staging folder inside ROOT (same file
  system) and renamed into place at the end, so a failure (disk full, Ctrl-C) leaves
  ROOT as it was (:class:`~mgsv_cli.errors.StorageError` for OS errors).
- **Fast.** The default size (800 videos over 40 train tracks: 640 train, 80 val,
  80 test) writes ~1,850 small files (~120 MB): ~2 s, ~3.5 s for the whole
  ``mgsv data synth`` command with its imports, on two cores.
"""
from __future__ import annotations

import csv
import io
import os
import shutil
import string
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mgsv_cli.errors import UsageError, storage_error
from mgsv_cli.research.dataset import CSV_COLUMNS, CSV_DIR, FEATURE_DIRS, SPLITS, csv_path, feature_path

DEFAULT_VIDEOS = 800
DEFAULT_TRACKS = 40
EVAL_FRACTION = 0.1  # of the videos, for each of val and test (when not given)
MIN_VIDEOS = 10
MIN_EVAL_VIDEOS = 2  # per val/test split: a ranking needs two candidates
MIN_TRACKS = 2
MAX_VIDEOS = 100_000  # ~100 KB each: 10 GB; the release has 53,194
MAX_TRACKS = 20_000

STYLE_DIM = 16  # size of every latent (track style, section code)
N_FRAMES, VIDEO_DIM, N_WINDOWS, MUSIC_DIM = 50, 512, 96, 768
WINDOW_HOP = 2.5
MIN_VIDEO_SECONDS, MAX_VIDEO_SECONDS = 5.0, 50.0

# Shape of the splits.
ZIPF_EXPONENT = 0.8  # train videos per track ~ 1 / rank ** 0.8 (the release: ~4% on the top track)
SHARED_FRACTION = 0.85  # of val/test videos whose track is a train track (the release: 72-100%, ~86%)
PARENT_STYLE_NOISE = 0.5  # a new val/test track's style = a train track's + this much noise

# Sections of a track, and the videos cut from them.
MAX_SECTIONS = 3
MIN_SECTION_SECONDS = 6.0  # >= 2 window centres, >= the shortest video
SECTION_AT_ZERO = 0.15  # share of tracks whose first section starts at 0 s
SECTION_SKEW = 0.25  # section p is used with weight SECTION_SKEW ** p: most videos take the first (the hook)
SECTION_FILL = 0.75  # a video uses at least this share of its section, from the section's start
N_SECTION_TYPES = 8  # section codes come from a codebook of this many types (0: every code its own)
SECTION_VARIATION = 0.3  # std of a section's code around its type's
VIDEO_CODE_NOISE = 0.3  # std of a video's code around its section's
CATEGORIES = ("Beauty", "Fashion", "Games", "Food", "Pets", "Sports")
_ID_ALPHABET = np.array(list(string.ascii_lowercase + string.digits))


@dataclass
class Track:
    """One generated track: its id, the split it was made for, duration (s), style and sections.

    ``split`` is ``"train"`` for train tracks (val/test videos may use them too) and
    ``"val"``/``"test"`` for a new track made for one video of that split.

    Section ``p`` spans ``[section_starts[p], section_ends[p]]`` seconds; the windows
    whose centres lie in it carry ``section_codes[p]``. ``parent`` is the index (in
    :attr:`SyntheticDataset.tracks`) of the train track whose style a val/test track
    borrows, None for train tracks.
    """

    music_id: str
    split: str
    duration: float
    style: np.ndarray  # [STYLE_DIM]
    section_starts: list[float]
    section_ends: list[float]
    section_codes: np.ndarray  # [n_sections, STYLE_DIM]
    parent: int | None = None


@dataclass
class SyntheticDataset:
    """What :func:`make_dataset` wrote.

    ``rows[split]`` are the CSV rows as dicts (numbers as numbers), in file order;
    ``tracks`` every track (train tracks first, most popular first, then val's, then
    test's); ``projections`` the planted linear maps from the 16-d latents to feature
    space (``video_style``, ``video_code`` [512, 16], ``music_style``, ``music_code``
    [768, 16]), for tests that check the signal.
    """

    root: Path
    tracks: list[Track]
    rows: dict[str, list[dict]]
    seed: int
    projections: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    per_pair_ids: bool = False  # the regime (make_dataset's options of the same names)
    link_dims: int = STYLE_DIM
    style_scale: float = 1.0

    @property
    def track_ids(self) -> list[str]:
        return [t.music_id for t in self.tracks]

    @property
    def sizes(self) -> dict[str, int]:
        """Videos (rows) per split."""
        return {split: len(rows) for split, rows in self.rows.items()}

    def n(self, split: str) -> int:
        return len(self.rows[split])

    def video_ids(self, split: str) -> list[str]:
        return [r["video_id"] for r in self.rows[split]]

    def split_track_ids(self, split: str) -> list[str]:
        """Distinct music ids of a split, in order of first appearance."""
        return list(dict.fromkeys(r["music_id"] for r in self.rows[split]))

    def track(self, music_id: str) -> Track:
        for candidate in self.tracks:
            if candidate.music_id == music_id:
                return candidate
        raise KeyError(music_id)


def split_sizes(n_videos: int, n_val: int | None = None, n_test: int | None = None) -> dict[str, int]:
    """Videos per split: val and test default to 10% of ``n_videos`` each (at least 2), train the rest."""
    default = max(MIN_EVAL_VIDEOS, int(round(EVAL_FRACTION * n_videos)))
    n_val = default if n_val is None else n_val
    n_test = default if n_test is None else n_test
    return {"train": n_videos - n_val - n_test, "val": n_val, "test": n_test}


def make_dataset(root: str | os.PathLike, n_videos: int = DEFAULT_VIDEOS, n_tracks: int = DEFAULT_TRACKS,
                 seed: int = 0, *, n_val: int | None = None, n_test: int | None = None,
                 noise: float = 0.5, style_noise: float = 0.3,
                 shared_fraction: float = SHARED_FRACTION, per_pair_ids: bool = False,
                 link_dims: int = STYLE_DIM, style_scale: float = 1.0) -> SyntheticDataset:
    """Write a synthetic MGSV-EC dataset under ``root`` and describe it.

    ``n_videos`` in all, ``n_val``/``n_test`` of them in val/test (default 10% each),
    the rest in train, spread over ``n_tracks`` train tracks (long-tailed). Each val/test
    video gets a track of its own: a train track for ``shared_fraction`` of them (at
    most ``n_tracks``), a new track for the others. ``noise`` is the per-dimension std
    of the random part of every
    frame/window (the planted signals have about unit std per dimension);
    ``style_noise`` the std of each video's deviation from its track's style (0.3: the
    right track is easy to rank, ~1.0: hard; the moment signal is unaffected).
    ``per_pair_ids``: every train video its own track (``n_tracks`` is then
    the number of train videos, whatever is passed); ``link_dims`` (1 to 16) of a video's
    code dimensions are its section's; ``style_scale`` (0 to 10) scales the track style
    (module docstring, "Regimes").

    Raises UsageError for impossible sizes or a ROOT that already holds a dataset
    (nothing is written then), StorageError when the disk refuses a write (nothing
    is left behind).
    """
    sizes = split_sizes(int(n_videos), n_val, n_test)
    if per_pair_ids:
        n_tracks = max(sizes["train"], MIN_TRACKS)
    _check_sizes(int(n_videos), int(n_tracks), sizes)
    _check_noise(noise, style_noise)
    if not 0.0 <= shared_fraction <= 1.0:
        raise UsageError(f"shared_fraction {shared_fraction!r}: expected a number from 0 to 1")
    if not (isinstance(link_dims, (int, np.integer)) and 1 <= link_dims <= STYLE_DIM):
        raise UsageError(f"link_dims {link_dims!r}: expected a whole number from 1 to {STYLE_DIM}")
    if not (np.isfinite(style_scale) and 0.0 <= style_scale <= 10.0):
        raise UsageError(f"style_scale {style_scale!r}: expected a number from 0 to 10")
    root = Path(root).expanduser()
    check_target(root)
    info = _plan(root, sizes, int(n_tracks), int(seed), float(shared_fraction), bool(per_pair_ids))
    info.per_pair_ids, info.link_dims, info.style_scale = bool(per_pair_ids), int(link_dims), float(style_scale)
    _write(info, float(noise), float(style_noise), int(seed))
    return info


# ------------------------------------------------------------------ checks


def _check_sizes(n_videos: int, n_tracks: int, sizes: dict[str, int]) -> None:
    if not MIN_VIDEOS <= n_videos <= MAX_VIDEOS:
        raise UsageError(f"--videos {n_videos}: expected {MIN_VIDEOS} to {MAX_VIDEOS:,}")
    if not MIN_TRACKS <= n_tracks <= MAX_TRACKS:
        raise UsageError(f"--tracks {n_tracks}: expected {MIN_TRACKS} to {MAX_TRACKS:,}")
    for split in ("val", "test"):
        if sizes[split] < MIN_EVAL_VIDEOS:
            raise UsageError(f"{split} videos {sizes[split]}: expected at least {MIN_EVAL_VIDEOS}")
    if sizes["train"] < n_tracks:
        raise UsageError(f"{n_videos} videos leave {sizes['train']} for train, fewer than the {n_tracks} "
                         f"train tracks (every track needs a video): use more videos or fewer tracks")


def _check_noise(noise: float, style_noise: float) -> None:
    for name, value in (("noise", noise), ("style_noise", style_noise)):
        if not (np.isfinite(value) and 0.0 <= value <= 10.0):
            raise UsageError(f"{name} {value!r}: expected a number from 0 to 10")


def check_target(root: Path) -> None:
    """Refuse (UsageError) a ROOT where writing a dataset could touch existing data."""
    if root.exists() and not root.is_dir():
        raise UsageError(f"{root} exists and is not a folder")
    labels = root / CSV_DIR
    if labels.exists() or labels.is_symlink():
        raise UsageError(f"{root} already holds a dataset ({labels} exists): choose an empty folder")
    features = root / "features"
    if features.exists() and not features.is_dir():
        raise UsageError(f"{features} exists and is not a folder: choose an empty folder")
    if features.is_dir():
        for _dirpath, _dirnames, filenames in os.walk(features):
            if filenames:
                raise UsageError(f"{root} already holds feature files under {features}: choose an empty folder")


# ------------------------------------------------------------------ planning (labels and latents)


def _plan(root: Path, sizes: dict[str, int], n_tracks: int, seed: int, shared_fraction: float,
          per_pair_ids: bool = False) -> SyntheticDataset:
    """Draw every track and CSV row (no features yet)."""
    rng = np.random.default_rng(seed)
    projections = {name: rng.normal(0.0, 1.0 / np.sqrt(STYLE_DIM), (dim, STYLE_DIM)).astype(np.float32)
                   for name, dim in (("video_style", VIDEO_DIM), ("video_code", VIDEO_DIM),
                                     ("music_style", MUSIC_DIM), ("music_code", MUSIC_DIM))}
    codebook = rng.normal(size=(max(N_SECTION_TYPES, 1), STYLE_DIM))
    ids = _IdMaker(rng)
    tracks = [_make_track(rng, codebook, ids.music(), "train", rng.normal(size=STYLE_DIM)) for _ in range(n_tracks)]
    # Per-pair ids: one track per train video, none more popular than another.
    popularity = (np.ones(n_tracks) if per_pair_ids
                  else 1.0 / np.arange(1, n_tracks + 1) ** ZIPF_EXPONENT)
    assignment = {"train": _zipf_assignment(rng, sizes["train"], popularity)}
    for split in ("val", "test"):
        n = sizes[split]
        n_shared = min(n_tracks, int(round(shared_fraction * n)))
        # Train tracks reused as they are (popular ones likelier), each by one video of the split ...
        shared = rng.choice(n_tracks, size=n_shared, replace=False, p=popularity / popularity.sum())
        # ... and new tracks in the style of a train track, for the others.
        new = []
        for _ in range(n - n_shared):
            parent = int(rng.integers(n_tracks))
            style = tracks[parent].style + PARENT_STYLE_NOISE * rng.normal(size=STYLE_DIM)
            new.append(len(tracks))
            tracks.append(_make_track(rng, codebook, ids.music(), split, style, parent=parent))
        assignment[split] = rng.permutation(np.concatenate([shared, np.asarray(new, dtype=np.int64)]))
    rows = {split: [_make_row(rng, tracks[t], ids.video()) for t in assignment[split]] for split in SPLITS}
    return SyntheticDataset(root=root, tracks=tracks, rows=rows, seed=seed, projections=projections)


class _IdMaker:
    """Unique ids shaped like the release's: 12-digit video ids, ``4+5x`` + 13 characters for music."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.next_video = 100_000_000_000
        self.music_ids: set[str] = set()

    def video(self) -> str:
        self.next_video += int(self.rng.integers(1, 1000))
        return str(self.next_video)

    def music(self) -> str:
        while True:
            music_id = "4+5x" + "".join(self.rng.choice(_ID_ALPHABET, 13))
            if music_id not in self.music_ids:
                self.music_ids.add(music_id)
                return music_id


def _make_track(rng: np.random.Generator, codebook: np.ndarray, music_id: str, split: str, style: np.ndarray,
                parent: int | None = None) -> Track:
    duration = round(float(rng.uniform(30.0, 240.0)), 3)
    starts: list[float] = []
    ends: list[float] = []
    cursor = 0.0 if rng.random() < SECTION_AT_ZERO else round(float(rng.uniform(2.0, 0.4 * duration)), 3)
    while len(starts) < MAX_SECTIONS:
        end = round(min(cursor + float(rng.uniform(MIN_SECTION_SECONDS, MAX_VIDEO_SECONDS)), duration), 3)
        if end - cursor < MIN_SECTION_SECONDS:
            break
        starts.append(cursor)
        ends.append(end)
        cursor = round(end + float(rng.uniform(2.0, 30.0)), 3)
    if N_SECTION_TYPES:
        types = rng.choice(N_SECTION_TYPES, size=len(starts), replace=len(starts) > N_SECTION_TYPES)
        codes = codebook[types] + SECTION_VARIATION * rng.normal(size=(len(starts), STYLE_DIM))
    else:
        codes = rng.normal(size=(len(starts), STYLE_DIM))
    return Track(music_id=music_id, split=split, duration=duration, style=np.asarray(style, dtype=np.float64),
                 section_starts=starts, section_ends=ends, section_codes=codes, parent=parent)


def _zipf_assignment(rng: np.random.Generator, n_rows: int, popularity: np.ndarray) -> np.ndarray:
    """Track index of each train row: every track once, the rest drawn by ``popularity`` (Zipf)."""
    n_tracks = popularity.size
    extra = rng.choice(n_tracks, size=n_rows - n_tracks, p=popularity / popularity.sum())
    return rng.permutation(np.concatenate([np.arange(n_tracks), extra]))


def _make_row(rng: np.random.Generator, track: Track, video_id: str) -> dict:
    n_sections = len(track.section_starts)
    weights = SECTION_SKEW ** np.arange(n_sections)
    section = int(rng.choice(n_sections, p=weights / weights.sum()))
    start, limit = track.section_starts[section], track.section_ends[section]
    length = round(limit - start, 3)
    duration = min(round(float(rng.uniform(max(MIN_VIDEO_SECONDS, SECTION_FILL * length), length)), 3), length)
    total = duration if rng.random() < 0.7 else round(duration + float(rng.uniform(0.1, 20.0)), 3)
    frame_rate = int(rng.choice([24, 25, 30]))
    return {
        "video_id": video_id, "music_id": track.music_id,
        "video_start": 0.0, "video_end": duration,
        "music_start": start, "music_end": round(start + duration, 3),
        "music_total_duration": track.duration,
        "video_segment_duration": duration, "music_segment_duration": duration,
        "music_path": f"/Data/music/source_music/1/{track.music_id}+synthetic.mp3",
        "video_total_duration": total, "video_width": 1080, "video_height": 1920,
        "video_total_frames": int(round(total * frame_rate)), "video_frame_rate": frame_rate,
        "video_category": CATEGORIES[int(rng.integers(len(CATEGORIES)))],
    }


# ------------------------------------------------------------------ writing


def _write(info: SyntheticDataset, noise: float, style_noise: float, seed: int) -> None:
    """Write CSVs and features into a staging folder inside ROOT, then move them into place."""
    root = info.root
    created_root = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".mgsv-synth-", suffix=".tmp", dir=root))
    except OSError as exc:
        raise storage_error("write", root, exc) from None
    try:
        _write_all(staging, info, noise, style_noise, seed)
        check_target(root)  # nothing appeared meanwhile
        _move_into_place(staging, root)
    except OSError as exc:
        raise storage_error("write", root, exc) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created_root:
            try:
                root.rmdir()  # only when empty: the dataset did not make it
            except OSError:
                pass


def _write_all(staging: Path, info: SyntheticDataset, noise: float, style_noise: float, seed: int) -> None:
    rng = np.random.default_rng([seed, 1])  # features: a stream of their own, drawn in file order
    proj = info.projections
    for kind in FEATURE_DIRS:
        (staging / FEATURE_DIRS[kind]).mkdir(parents=True, exist_ok=True)
    for track in info.tracks:
        windows, mask = _track_windows(rng, track, proj, noise, info.style_scale)
        _save(windows, feature_path(staging, "music", track.music_id))
        _save(mask, feature_path(staging, "music_mask", track.music_id))
    by_id = {t.music_id: t for t in info.tracks}
    for split in SPLITS:
        for row in info.rows[split]:
            frames, mask = _video_frames(rng, by_id[row["music_id"]], row, proj, noise, style_noise,
                                         info.link_dims, info.style_scale)
            _save(frames, feature_path(staging, "video", row["video_id"]))
            _save(mask, feature_path(staging, "video_mask", row["video_id"]))
        _write_csv(csv_path(staging, split), info.rows[split])


def _save(array: np.ndarray, path: Path) -> None:
    """``torch.save`` of the array as a tensor, through memory: a full disk is then an
    OSError from a plain write (torch's zip writer reports it as a RuntimeError)."""
    import torch

    buffer = io.BytesIO()
    torch.save(torch.from_numpy(array), buffer)
    path.write_bytes(buffer.getvalue())


def _track_windows(rng: np.random.Generator, track: Track, proj: dict, noise: float, style_scale: float = 1.0):
    """[96, 768] float32 windows and [96] int64 mask: style everywhere, a code in each section."""
    centres = WINDOW_HOP * np.arange(N_WINDOWS)
    valid = centres <= track.duration
    windows = proj["music_style"] @ (style_scale * track.style).astype(np.float32) \
        + np.float32(noise) * rng.standard_normal((N_WINDOWS, MUSIC_DIM), dtype=np.float32)
    for code, start, end in zip(track.section_codes, track.section_starts, track.section_ends):
        inside = (centres >= start) & (centres <= end)
        windows[inside] += proj["music_code"] @ code.astype(np.float32)
    windows[~valid] = 0.0
    return windows.astype(np.float32), valid.astype(np.int64)


def _video_frames(rng: np.random.Generator, track: Track, row: dict, proj: dict, noise: float, style_noise: float,
                  link_dims: int = STYLE_DIM, style_scale: float = 1.0):
    """[50, 512] float32 (float16-exact) frames and [50] float32 mask of one video."""
    section = track.section_starts.index(row["music_start"])
    duration = row["video_segment_duration"]
    n_valid = min(N_FRAMES, int(np.floor(duration)) + 1)
    latent_style = style_scale * track.style + style_noise * rng.normal(size=STYLE_DIM)
    latent_code = track.section_codes[section] + VIDEO_CODE_NOISE * rng.normal(size=STYLE_DIM)
    if link_dims < STYLE_DIM:  # a weak link: these dimensions are the video's own, as large as a code's
        latent_code[link_dims:] = rng.normal(size=STYLE_DIM - link_dims)
    signal = proj["video_style"] @ latent_style.astype(np.float32) + proj["video_code"] @ latent_code.astype(np.float32)
    frames = np.zeros((N_FRAMES, VIDEO_DIM), dtype=np.float32)
    frames[:n_valid] = signal + np.float32(noise) * rng.standard_normal((n_valid, VIDEO_DIM), dtype=np.float32)
    mask = np.zeros(N_FRAMES, dtype=np.float32)
    mask[:n_valid] = 1.0
    return frames.astype(np.float16).astype(np.float32), mask


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _move_into_place(staging: Path, root: Path) -> None:
    """Rename the staged label folder and the four feature folders into ROOT.

    On failure the moved folders go back to the staging folder and the folders made
    for them are removed again, so ROOT is left as it was.
    """
    pieces = [CSV_DIR, *(Path(folder) for folder in FEATURE_DIRS.values())]
    made = sorted({parent for piece in pieces for parent in (root / piece).parents
                   if root in parent.parents and not parent.exists()}, key=lambda p: len(p.parts))
    moved: list[Path] = []
    try:
        for folder in made:
            folder.mkdir(exist_ok=True)
        for piece in pieces:
            target = root / piece
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_dir() and not any(target.iterdir()):
                target.rmdir()  # an empty folder of the layout (made by hand, or a failed attempt)
            os.rename(staging / piece, target)  # never replaces a non-empty folder
            moved.append(piece)
    except BaseException:
        for piece in reversed(moved):
            try:
                os.rename(root / piece, staging / piece)
            except OSError:
                pass
        for folder in reversed(made):
            try:
                folder.rmdir()
            except OSError:
                pass
        raise
