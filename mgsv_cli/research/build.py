"""``mgsv data build PAIRS.csv ROOT``: your own (video, music, moment) files -> a training dataset.

The pairs CSV has one row per video: ``video, music, music_start, music_end`` (paths, relative
to the CSV's folder, or object-store URIs such as ``s3://bucket/key``; the moment in seconds of
the track), optionally ``split`` (train, val, test), ``video_id``, ``music_id`` and ``category``.
The result is the MGSV-EC release layout (``research/dataset.py``), which ``mgsv train`` and
``mgsv eval`` read unchanged, plus ``ROOT/mgsv_dataset.json`` saying which encoders made it.

Design decisions:

- **One recipe.** Music goes through ``Encoders.embed_tracks`` (what ``mgsv index`` runs: the
  same decoding, windows, filterbank, batching across tracks), videos through
  ``features.encoders.decode_video`` and ``Encoders.embed_decoded_many`` (``embed_decoded``,
  what ``mgsv suggest`` runs, with several videos' frames in one batch). Nothing here touches
  a sample or a pixel, so a model trained on the result sees what suggest will feed it.
- **Known by content.** Every file is identified by its BLAKE2b content hash
  (``media.files.content_hash``, as the index does): a track used by a thousand videos, or one
  file under two names, is decoded and embedded once. Ids the CSV leaves out are made from the
  hash (``m``/``v`` + 20 hex digits), so every rerun names everything the same way; ids it gives
  must name one content each (two files under one id is an error naming both rows).
- **Labels checked before anything is embedded.** The moment must lie inside the track (0.05 s
  of slack for codec padding) and inside the 240 s the features cover, and last as long as the
  video within ``tolerance`` seconds; the first bad row is named (CSV line, file), with how many
  more there are. A file ffmpeg cannot read is not a label error: its rows are left out and
  reported (``failed``), like ``mgsv index`` does with a broken track, and the rest is built.
- **Splits.** A ``split`` column is used as given. Without one, splits are made by track: each
  track's split is drawn from a hash of its id and the seed (``val_fraction``/``test_fraction``
  of the tracks), so no track is in two splits; with at least three tracks, a split the draw
  left empty gets one of the new tracks. Every draw is kept in the manifest, so adding rows
  never moves a track that is already placed (and a rerun must use the same draw settings).
  ``split_by="row"`` draws per video instead (tracks then shared, as in the release).
- **Resumable and incremental.** Each feature file is written atomically (temporary file and
  rename) and then recorded in ``ROOT/.mgsv-build/manifest.sqlite`` (kind, id, content hash,
  duration), one transaction per item; an item counts as done only when its row is there and
  its two files exist. A killed build therefore continues where it stopped, and a rerun with
  more rows embeds only the new files. File stats (location, size, mtime) are cached with
  their hashes and probe results with the hash, so unchanged files are not read again. The
  split CSVs and the record's counts are written last, atomically: a dataset that ``mgsv train``
  can read is always a complete one.
- **Never overwrites someone else's data.** ROOT must be empty of a dataset, or one this
  command made (its record says so); and the encoders of a rerun must be the ones the record
  names (features of two encoders never mix).
- **Engines.** The embedding of music is one replaceable function (:data:`MusicEmbedder`:
  jobs of (content hash, file) in, :class:`EmbeddedTrack` out). ``local``
  (:func:`embed_music_local`) runs here, batched on a GPU like the index (windows across
  tracks, frames across videos). ``ray`` (:func:`embed_music_ray`) is the index's Ray path
  without its store (``index.ray_engine.embed_files_with_ray``: CPU tasks decode, the AST actor
  pool embeds; an object-store file is downloaded by the task that reads it, not by the
  driver); its tokens come back as float16, as a track store keeps them (what suggest scores),
  and are written as float32. Videos are embedded here on either engine (CLIP is cheap next to
  AST, and one video is used by one row).
- **Options checked once.** :class:`BuildRequest` holds what ``mgsv data build`` was asked,
  checked (naming each option the caller's way); :func:`run_build` runs it.
"""
from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
import os
import sqlite3
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from mgsv_cli.errors import DataError, MgsvError, StorageError, UsageError, first_line, storage_error
from mgsv_cli.features import recipe
from mgsv_cli.research.dataset import (
    CSV_COLUMNS,
    CSV_DIR,
    FEATURE_DIRS,
    RECORD_FORMAT,
    SPLITS,
    DatasetEncoders,
    csv_path,
    feature_path,
    read_record,
    record_path,
)

MADE_BY = "mgsv data build"
STATE_DIR = ".mgsv-build"
MANIFEST_NAME = "manifest.sqlite"
MANIFEST_FORMAT = 1

REQUIRED_PAIR_COLUMNS = ("video", "music", "music_start", "music_end")
OPTIONAL_PAIR_COLUMNS = ("split", "video_id", "music_id", "category")
DEFAULT_TOLERANCE_S = 1.0  # |moment length - video duration| allowed (the release: a few ms)
MOMENT_SLACK_S = 0.05  # a moment may end this far past the probed end of its track (codec padding)
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_TEST_FRACTION = 0.1
SPLIT_BY = ("track", "row")
ENGINES = ("local", "ray")
ID_DIGITS = 20  # hex digits of the content hash in a derived id (80 bits)
# Frames per CLIP forward when several videos share one (on a GPU; a CPU embeds one video at a time).
GPU_VIDEO_BATCH_FRAMES = 512


# ---------------------------------------------------------------- progress


class BuildProgress:
    """What a build reports while it runs (the CLI draws bars from it; the library never prints).

    The same methods as ``mgsv index``'s progress: ``stage(name, total)`` opens a stage
    (``hashing files``, ``reading durations``, ``embedding music``, ``embedding videos``),
    ``advance(name, amount, detail)`` moves it, ``failed(location, reason)`` names a file that
    was left out, ``note(message)`` says what happens next.
    """

    def stage(self, name: str, total: float) -> None:
        pass

    def advance(self, name: str, amount: float = 1.0, detail: str = "") -> None:
        pass

    def failed(self, path: str, reason: str) -> None:
        pass

    def note(self, message: str) -> None:
        pass


# ---------------------------------------------------------------- the pairs CSV


@dataclass(frozen=True)
class PairRow:
    """One row of the pairs CSV: ``line`` its line number, locations as written, the moment in seconds."""

    line: int
    video: str
    music: str
    music_start: float
    music_end: float
    split: str | None = None
    video_id: str | None = None
    music_id: str | None = None
    category: str = ""


def read_pairs(path: str | os.PathLike) -> list[PairRow]:
    """The rows of a pairs CSV; DataError naming the file (and line) for anything malformed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"pairs file {path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = [h.strip().lstrip("\ufeff").lower() for h in next(reader, [])]
            missing = [c for c in REQUIRED_PAIR_COLUMNS if c not in header]
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(missing)} (a pairs CSV needs "
                                f"{', '.join(REQUIRED_PAIR_COLUMNS)}; optional: {', '.join(OPTIONAL_PAIR_COLUMNS)})")
            positions = {name: header.index(name) for name in REQUIRED_PAIR_COLUMNS + OPTIONAL_PAIR_COLUMNS
                         if name in header}
            rows = [_pair_row(path, line, cells, positions) for line, cells in enumerate(reader, start=2)
                    if cells and any(cell.strip() for cell in cells)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path}: {first_line(exc)}") from None
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def _pair_row(path: Path, line: int, cells: list[str], positions: dict[str, int]) -> PairRow:
    where = f"{path} line {line}"
    if len(cells) <= max(positions.values()):
        raise DataError(f"{where}: {len(cells)} fields, expected {max(positions.values()) + 1}")
    value = {name: cells[pos].strip() for name, pos in positions.items()}
    for name in ("video", "music"):
        if not value[name]:
            raise DataError(f"{where}: the {name} column is empty")
    times = {}
    for name in ("music_start", "music_end"):
        try:
            times[name] = float(value[name])
        except ValueError:
            raise DataError(f"{where}: {name} is not a number of seconds: {value[name]!r}") from None
        if not math.isfinite(times[name]) or times[name] < 0:
            raise DataError(f"{where}: {name} must be a finite non-negative number of seconds, got {value[name]!r}")
    if times["music_end"] <= times["music_start"]:
        raise DataError(f"{where}: music_end ({times['music_end']:g} s) must be after music_start "
                        f"({times['music_start']:g} s)")
    split = value.get("split", "").lower() or None
    if "split" in positions and split not in SPLITS:
        raise DataError(f"{where}: split {value.get('split', '')!r}: expected {', '.join(SPLITS)}")
    ids = {}
    for name in ("video_id", "music_id"):
        given = value.get(name) or None
        if given is not None and ("/" in given or "\\" in given or given in (".", "..") or given.startswith(".")
                                  or any(ch in given for ch in "\0\n\r")):
            raise DataError(f"{where}: {name} {given!r} cannot name a file (no slashes, no leading dot)")
        ids[name] = given
    return PairRow(line=line, video=value["video"], music=value["music"], music_start=times["music_start"],
                   music_end=times["music_end"], split=split, video_id=ids["video_id"], music_id=ids["music_id"],
                   category=value.get("category", ""))


# ---------------------------------------------------------------- the embedding seam


@dataclass(frozen=True)
class MediaJob:
    """A file to embed: its content hash, where the user named it (``location``) and the local
    file to read (``path``: the same, or a downloaded copy of an object-store file)."""

    content_hash: str
    location: str
    path: str


@dataclass
class EmbeddedTrack:
    """Window features of one track (``feats`` float32 [96, music_dim], ``mask`` uint8 [96],
    ``duration`` s), or why it failed (``error``)."""

    content_hash: str
    feats: np.ndarray | None = None
    mask: np.ndarray | None = None
    duration: float | None = None
    error: str | None = None


@dataclass
class EmbeddedVideo:
    """Frame features of one video (``feats`` float32 [50, video_dim], ``mask`` uint8 [50]), or ``error``."""

    content_hash: str
    feats: np.ndarray | None = None
    mask: np.ndarray | None = None
    duration: float | None = None
    error: str | None = None


MusicEmbedder = Callable[[Sequence[MediaJob]], Iterator[EmbeddedTrack]]
"""Embeds music files: one :class:`EmbeddedTrack` per job, in any order, as each is done:
:func:`embed_music_local` or :func:`embed_music_ray`."""


def embed_music_local(jobs: Sequence[MediaJob], encoders) -> Iterator[EmbeddedTrack]:
    """Music features made here by ``encoders.embed_tracks`` (the index's code: windows batched
    across tracks, decoding on background threads), yielded in job order."""
    for job, result in zip(jobs, encoders.embed_tracks([job.path for job in jobs])):
        if result.ok:
            yield EmbeddedTrack(job.content_hash, result.feats, result.mask, float(result.duration))
        else:
            yield EmbeddedTrack(job.content_hash, error=result.error.replace(job.path, job.location))


def embed_music_ray(jobs: Sequence[MediaJob], *, encoder_kind: str = "pretrained", device: str = "auto",
                    offline: bool = False, weights_dir=None, batch_windows: int | None = None,
                    ray_address: str | None = None, num_cpus: int | None = None) -> Iterator[EmbeddedTrack]:
    """Music features made on Ray by the index's two stages (``ray_engine.embed_files_with_ray``:
    decoding and filterbanks in CPU tasks, AST in an actor pool), yielded as each track is done.
    Jobs are read from their ``location`` (an object-store URI by the task that embeds it)."""
    from mgsv_cli.index.ray_engine import NEW, embed_files_with_ray

    rows = embed_files_with_ray([(job.location, job.content_hash) for job in jobs], encoder_kind=encoder_kind,
                                device=device, offline=offline, weights_dir=weights_dir,
                                batch_windows=batch_windows, ray_address=ray_address, num_cpus=num_cpus)
    for row in rows:
        if row["status"] != NEW:
            yield EmbeddedTrack(row["content_hash"], error=row.get("error") or f"{row['location']}: failed")
            continue
        mask = np.frombuffer(row["mask"], dtype=bool)
        feats = np.frombuffer(row["tokens"], dtype=np.float16).reshape(mask.shape[0], int(row["dim"]))
        yield EmbeddedTrack(row["content_hash"], feats.astype(np.float32), mask.astype(np.uint8),
                            float(row["duration"]))


def embed_videos_local(jobs: Sequence[MediaJob], encoders, batch_frames: int | None = None) -> Iterator[EmbeddedVideo]:
    """Frame features of videos, in job order: decoded (``decode_video``) on background threads
    ahead of CLIP, which runs ``embed_decoded_many`` over up to ``batch_frames`` frames of
    several videos at once (default: one video per forward on a CPU, 512 frames on a GPU)."""
    from mgsv_cli.features.encoders import decode_video

    on_gpu = getattr(encoders.device, "type", None) == "cuda"
    limit = int(batch_frames or (GPU_VIDEO_BATCH_FRAMES if on_gpu else 1))
    workers = max(1, int(getattr(encoders, "workers", 1)))

    def decode(job: MediaJob):
        try:
            return job, decode_video(job.path), None
        except MgsvError as exc:
            return job, None, first_line(exc).replace(job.path, job.location)
        except (OSError, ValueError, RuntimeError) as exc:
            return job, None, f"{job.location}: {type(exc).__name__}: {first_line(exc)}"

    pending: list = []

    def flush() -> Iterator[EmbeddedVideo]:
        good = [(job, video) for job, video, _ in pending if video is not None]
        features = iter(encoders.embed_decoded_many([video for _, video in good]))
        for job, video, error in pending:
            if video is None:
                yield EmbeddedVideo(job.content_hash, error=error)
            else:
                made = next(features)
                yield EmbeddedVideo(job.content_hash, made.feats, made.mask, float(made.duration))
        pending.clear()

    for decoded in _ahead(decode, jobs, workers, ahead=2 * workers + 1):
        pending.append(decoded)
        if sum(len(video.pixels) for _, video, _ in pending if video is not None) >= limit:
            yield from flush()
    yield from flush()


def _ahead(fn: Callable, items: Iterable, workers: int, ahead: int) -> Iterator:
    """``map(fn, items)`` on ``workers`` threads, in order, at most ``ahead`` results pending."""
    source = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mgsv-build") as pool:
        pending = deque(pool.submit(fn, item) for item in itertools.islice(source, ahead))
        try:
            while pending:
                result = pending.popleft().result()
                pending.extend(pool.submit(fn, item) for item in itertools.islice(source, 1))
                yield result
        finally:
            for future in pending:
                future.cancel()


# ---------------------------------------------------------------- the manifest


class _Manifest:
    """``ROOT/.mgsv-build/manifest.sqlite``: what was hashed, probed and embedded, from which content."""

    def __init__(self, path: Path):
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(path, timeout=30.0)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            with self.conn:
                self.conn.executescript("""
                    CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
                    CREATE TABLE IF NOT EXISTS sources(location TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER,
                                                       hash TEXT);
                    CREATE TABLE IF NOT EXISTS media(hash TEXT, kind TEXT, duration REAL, width INTEGER,
                                                     height INTEGER, fps REAL, PRIMARY KEY (hash, kind));
                    CREATE TABLE IF NOT EXISTS features(kind TEXT, item_id TEXT, hash TEXT, duration REAL,
                                                        PRIMARY KEY (kind, item_id));
                    CREATE TABLE IF NOT EXISTS placed(key TEXT PRIMARY KEY, split TEXT);
                """)
                found = self.conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
                if found is None:
                    self.conn.execute("INSERT INTO meta VALUES ('format', ?)", (str(MANIFEST_FORMAT),))
                elif int(found[0]) > MANIFEST_FORMAT:
                    raise UsageError(f"{path} was written by a newer mgsv: upgrade mgsv to add to this dataset")
        except sqlite3.Error as exc:
            raise StorageError(f"build manifest {path}: {first_line(exc)} (delete {path.parent} to start over)") \
                from None

    def close(self) -> None:
        self.conn.close()

    def cached_hash(self, location: str, size: int, mtime_ns: int) -> str | None:
        row = self.conn.execute("SELECT hash FROM sources WHERE location = ? AND size = ? AND mtime_ns = ?",
                                (location, size, mtime_ns)).fetchone()
        return row[0] if row else None

    def put_hash(self, location: str, size: int, mtime_ns: int, digest: str) -> None:
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO sources VALUES (?, ?, ?, ?)", (location, size, mtime_ns, digest))

    def probed(self, digest: str, kind: str) -> dict | None:
        row = self.conn.execute("SELECT duration, width, height, fps FROM media WHERE hash = ? AND kind = ?",
                                (digest, kind)).fetchone()
        return None if row is None else {"duration": row[0], "width": row[1], "height": row[2], "fps": row[3]}

    def put_probe(self, digest: str, kind: str, info: dict) -> None:
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO media VALUES (?, ?, ?, ?, ?, ?)",
                              (digest, kind, info["duration"], info.get("width"), info.get("height"), info.get("fps")))

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put_meta(self, key: str, value: str) -> None:
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def placed(self) -> dict[str, str]:
        """``{track or video id: split}`` of every key a split was drawn for."""
        return dict(self.conn.execute("SELECT key, split FROM placed"))

    def put_placed(self, chosen: dict[str, str]) -> None:
        with self.conn:
            self.conn.executemany("INSERT OR REPLACE INTO placed VALUES (?, ?)", chosen.items())

    def done(self, kind: str) -> dict[str, tuple[str, float]]:
        """``{item id: (content hash, duration)}`` of the items of ``kind`` whose features are written."""
        return {item: (digest, duration) for item, digest, duration in
                self.conn.execute("SELECT item_id, hash, duration FROM features WHERE kind = ?", (kind,))}

    def put_done(self, kind: str, item_id: str, digest: str, duration: float) -> None:
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO features VALUES (?, ?, ?, ?)", (kind, item_id, digest, duration))


# ---------------------------------------------------------------- the report


@dataclass
class BuildReport:
    """What a build did. ``rows``: rows written per split; ``embedded_*``: files embedded in this run;
    ``reused_*``: items whose features were already there; ``failed``: ``(location, reason)`` of
    files left out (their rows are not in the dataset; ``skipped_rows`` of them)."""

    root: Path
    encoders: DatasetEncoders
    rows: dict[str, int] = field(default_factory=dict)
    n_tracks: int = 0
    n_videos: int = 0
    embedded_music: int = 0
    embedded_videos: int = 0
    reused_music: int = 0
    reused_videos: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped_rows: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def index_path(self) -> Path:  # what `mgsv index`'s interrupt message names
        return self.root


# ---------------------------------------------------------------- what `mgsv data build` is asked


@dataclass(frozen=True)
class BuildRequest:
    """One build as asked: the pairs CSV, the dataset folder and every option, checked.

    Options as :func:`build_dataset` takes them; :meth:`build` fills what was left out from the
    user's settings and checks what goes together, so a request once built is valid.
    """

    pairs: str
    root: str
    encoders: str = "pretrained"
    device: str = "auto"
    offline: bool = False
    weights_dir: str | None = None
    batch_windows: int | None = None
    split_by: str = "track"
    val_fraction: float = DEFAULT_VAL_FRACTION
    test_fraction: float = DEFAULT_TEST_FRACTION
    seed: int = 0
    tolerance: float = DEFAULT_TOLERANCE_S
    engine: str = "local"
    ray_address: str | None = None

    @classmethod
    def build(cls, defaults: Any, names: Callable[[str], str], *, pairs, root, encoders=None, device=None,
              offline: bool = False, weights_dir=None, batch_windows=None, split_by: str = "track",
              val_fraction: float = DEFAULT_VAL_FRACTION, test_fraction: float = DEFAULT_TEST_FRACTION,
              seed: int = 0, tolerance: float = DEFAULT_TOLERANCE_S, engine: str = "local",
              ray_address=None) -> "BuildRequest":
        """The request of ``mgsv data build``'s options (``names``: how the caller spells them);
        ``defaults``: the user's settings (``encoders``, ``device``, ``weights_dir``, ``offline``)."""
        encoders = encoders or defaults.encoders
        check_options(split_by, val_fraction, test_fraction, tolerance, engine, encoders, names)
        if ray_address is not None and engine != "ray":
            raise UsageError(f"{names('ray_address')} goes with {names('engine')} ray")
        if batch_windows is not None and int(batch_windows) < 1:
            raise UsageError(f"{names('batch_windows')} {batch_windows}: at least 1")
        weights_dir = weights_dir if weights_dir is not None else defaults.weights_dir
        return cls(pairs=str(pairs), root=str(root), encoders=encoders, device=device or defaults.device,
                   offline=bool(offline or defaults.offline),
                   weights_dir=None if weights_dir is None else str(weights_dir),
                   batch_windows=None if batch_windows is None else int(batch_windows), split_by=split_by,
                   val_fraction=float(val_fraction), test_fraction=float(test_fraction), seed=int(seed),
                   tolerance=float(tolerance), engine=engine, ray_address=ray_address)


def run_build(request: BuildRequest, progress: BuildProgress | None = None) -> BuildReport:
    """Run ``request`` (:func:`build_dataset`); the encoders load only when a file needs embedding."""
    return build_dataset(request.pairs, request.root, encoder_kind=request.encoders, device=request.device,
                         offline=request.offline,
                         weights_dir=Path(request.weights_dir) if request.weights_dir else None,
                         batch_windows=request.batch_windows, split_by=request.split_by,
                         val_fraction=request.val_fraction, test_fraction=request.test_fraction, seed=request.seed,
                         tolerance=request.tolerance, engine=request.engine, ray_address=request.ray_address,
                         progress=progress)


# ---------------------------------------------------------------- the build


@dataclass
class _Source:
    """One distinct file named by the CSV: where, its local copy, its hash and probe (or why not)."""

    location: str
    kind: str  # "video" or "music"
    path: str = ""
    content_hash: str = ""  # known once hashed (a file that could not be read keeps none: ``error``)
    info: dict = field(default_factory=dict)  # the probe: duration (and a video's width, height, fps)
    error: str | None = None
    download: Path | None = None  # a temporary copy of an object-store file, removed at the end


def build_dataset(
    pairs_csv: str | os.PathLike,
    root: str | os.PathLike,
    *,
    encoders: Any = None,
    encoder_kind: str = "pretrained",
    device: Any = "auto",
    offline: bool = False,
    weights_dir: Path | None = None,
    batch_windows: int | None = None,
    split_by: str = "track",
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
    tolerance: float = DEFAULT_TOLERANCE_S,
    engine: str = "local",
    ray_address: str | None = None,
    num_cpus: int | None = None,
    progress: BuildProgress | None = None,
    embed_music: MusicEmbedder | None = None,
) -> BuildReport:
    """Build (or add to) the dataset at ``root`` from the pairs CSV; see the module docstring.

    ``encoders``: loaded encoders to use, or a function returning them (called only when
    something needs embedding); None loads ``encoder_kind`` on ``device`` (``offline``,
    ``weights_dir``, ``batch_windows`` as for ``mgsv index``). ``engine``: ``local`` (music by
    :func:`embed_music_local` on those encoders) or ``ray`` (:func:`embed_music_ray`, on the Ray
    at ``ray_address``, else a local one of ``num_cpus`` CPUs); ``embed_music`` replaces either.

    Raises DataError for a malformed CSV, a missing file or a bad label (naming the row),
    UsageError for bad options or a ROOT holding another dataset or other encoders' features,
    StorageError when ROOT cannot be written. Files ffmpeg cannot read are reported in
    ``BuildReport.failed`` and their rows left out.
    """
    started = time.monotonic()
    progress = progress or BuildProgress()
    check_options(split_by, val_fraction, test_fraction, tolerance, engine, encoder_kind)
    if ray_address is not None and engine != "ray":
        raise UsageError("--ray-address goes with --engine ray")
    kind, encoder_id, widths = _encoder_identity(encoders, encoder_kind)
    pairs_csv = Path(pairs_csv).expanduser().resolve()
    root = Path(root).expanduser()
    rows = read_pairs(pairs_csv)
    _check_root(root, encoder_id)
    dataset_encoders = DatasetEncoders(encoder_id, kind, *widths, recorded=True)
    report = BuildReport(root=root, encoders=dataset_encoders)
    manifest = _Manifest(root / STATE_DIR / MANIFEST_NAME)
    fetch_dir = root / STATE_DIR / "fetch"
    sources: dict[tuple[str, str], _Source] = {}
    try:
        for row in rows:
            for kind_of, location in (("video", row.video), ("music", row.music)):
                key = (kind_of, _location(pairs_csv, location))
                if key not in sources:
                    sources[key] = _Source(location=key[1], kind=kind_of)
        _check_files_exist(pairs_csv, rows)
        _hash_sources(list(sources.values()), manifest, fetch_dir, progress)
        _probe_sources(list(sources.values()), manifest, fetch_dir, progress)
        pairs = [_Pair(row, sources[("video", _location(pairs_csv, row.video))],
                       sources[("music", _location(pairs_csv, row.music))]) for row in rows]
        pairs = _usable_pairs(pairs, report, progress)
        _check_labels(pairs_csv, pairs, tolerance)
        _assign_ids(pairs_csv, pairs)
        _assign_splits(pairs_csv, pairs, manifest, split_by, val_fraction, test_fraction, seed)
        _write_record(root, dataset_encoders, pairs_csv, split_by, seed)
        on_ray = embed_music is None and engine == "ray"
        loaded = _EncoderLoader(encoders, kind, device, offline, weights_dir, batch_windows, widths,
                                parts=("video",) if on_ray else ("video", "music"))
        if embed_music is None:
            if on_ray:
                def embed_music(jobs):
                    return _of_width(embed_music_ray(
                        jobs, encoder_kind=kind, device=str(device), offline=offline, weights_dir=weights_dir,
                        batch_windows=batch_windows, ray_address=ray_address, num_cpus=num_cpus), widths[1])
            else:
                def embed_music(jobs):
                    return embed_music_local(jobs, loaded.get())
        music_done = _embed_items(root, "music", pairs, manifest, fetch_dir, report, progress, embed_music,
                                  local_copies=not on_ray)
        video_done = _embed_items(root, "video", pairs, manifest, fetch_dir, report, progress,
                                  lambda jobs: embed_videos_local(jobs, loaded.get()))
        _write_splits(root, pairs, music_done, video_done, report)
        _write_record(root, dataset_encoders, pairs_csv, split_by, seed, report=report)
    finally:
        manifest.close()
        for source in sources.values():
            if source.download is not None:
                source.download.unlink(missing_ok=True)
    report.seconds = time.monotonic() - started
    return report


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def check_options(split_by: str, val_fraction: float, test_fraction: float, tolerance: float, engine: str,
                  encoder_kind: str = "pretrained", names: Callable[[str], str] = _flag) -> None:
    """UsageError for options that cannot build a dataset, naming each the caller's way (``names``)."""
    if encoder_kind not in recipe.ENCODER_IDS:
        raise UsageError(f"{names('encoders')} {encoder_kind!r}: expected {' or '.join(recipe.ENCODER_IDS)}")
    if engine not in ENGINES:
        raise UsageError(f"{names('engine')} {engine!r}: expected {' or '.join(ENGINES)}")
    if split_by not in SPLIT_BY:
        raise UsageError(f"{names('split_by')} {split_by!r}: expected {' or '.join(SPLIT_BY)}")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not (math.isfinite(value) and 0.0 <= value < 1.0):
            raise UsageError(f"{names(name)} {value!r}: expected a number from 0 to below 1")
    if val_fraction + test_fraction >= 1.0:
        raise UsageError(f"{names('val_fraction')} {val_fraction:g} and {names('test_fraction')} {test_fraction:g} "
                         "leave nothing for train")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise UsageError(f"{names('tolerance')} {tolerance!r}: expected a non-negative number of seconds")


def _of_width(tracks: Iterator[EmbeddedTrack], music_dim: int) -> Iterator[EmbeddedTrack]:
    """The tracks of an engine that loads its own encoders, checked against the record's width."""
    for made in tracks:
        if made.feats is not None and made.feats.shape[-1] != music_dim:
            raise MgsvError(f"the music encoders gave {made.feats.shape[-1]}-d features, not the expected {music_dim}")
        yield made


def _encoder_identity(encoders: Any, kind: str) -> tuple[str, str, tuple[int, int]]:
    """(kind, encoder id, (video_dim, music_dim)) of the encoders that will make the features."""
    if encoders is not None and not callable(encoders):
        kind = "tiny" if getattr(encoders, "is_tiny", False) else "pretrained"
        return kind, str(encoders.encoder_id), (int(encoders.video_dim), int(encoders.music_dim))
    return kind, recipe.ENCODER_IDS[kind], recipe.ENCODER_WIDTHS[kind]


class _EncoderLoader:
    """The encoders, loaded on first use (a rerun with nothing new loads none) and checked
    against the identity the record was written with."""

    def __init__(self, given, kind, device, offline, weights_dir, batch_windows, widths,
                 parts: tuple[str, ...] = ("video", "music")):
        self.given, self.kind, self.device, self.parts = given, kind, device, parts
        self.offline, self.weights_dir, self.batch_windows, self.widths = offline, weights_dir, batch_windows, widths
        self.encoders = None if given is None or callable(given) else given

    def get(self):
        if self.encoders is None:
            if callable(self.given):
                self.encoders = self.given()
            else:
                from mgsv_cli.features.encoders import load_encoders

                self.encoders = load_encoders(kind=self.kind, device=self.device, offline=self.offline,
                                              weights_dir=self.weights_dir, batch_windows=self.batch_windows,
                                              parts=self.parts)
            widths = (int(self.encoders.video_dim), int(self.encoders.music_dim))
            if widths != tuple(self.widths):
                raise MgsvError(f"the {self.kind} encoders give {widths[0]}/{widths[1]}-d features, "
                                f"not the expected {self.widths[0]}/{self.widths[1]}")
        return self.encoders


def _check_root(root: Path, encoder_id: str) -> None:
    """ROOT is new or empty of a dataset, or one this command made with the same encoders."""
    if root.exists() and not root.is_dir():
        raise UsageError(f"{root} exists and is not a folder")
    record = read_record(root) if root.is_dir() else None
    if record is None:
        labels, features = root / CSV_DIR, root / "features"
        if labels.exists() or _has_files(features):
            raise UsageError(f"{root} already holds a dataset that `mgsv data build` did not make "
                             f"({labels if labels.exists() else features} exists): choose another folder")
        return
    if record.get("made_by") != MADE_BY:
        raise UsageError(f"{root} holds a dataset made by {record.get('made_by') or 'something else'}, "
                         "not `mgsv data build`: choose another folder")
    recorded = record["encoders"].get("id")
    if recorded != encoder_id:
        kind = record["encoders"].get("kind") or "its"
        raise UsageError(f"{root} holds features of the encoders '{recorded}'; this build would add '{encoder_id}' "
                         f"ones: pass --encoders {kind} to add to it, or build into another folder")


def _has_files(folder: Path) -> bool:
    if not folder.is_dir():
        return folder.exists()
    return any(files for _, _, files in os.walk(folder))


def _location(pairs_csv: Path, location: str) -> str:
    """A CSV cell as a location: URIs as written, paths absolute (relative ones from the CSV's folder)."""
    if "://" in location and not location.startswith("file://"):
        return location
    if location.startswith("file://"):
        location = location[len("file://"):]
    path = Path(location).expanduser()
    return str(path if path.is_absolute() else (pairs_csv.parent / path).absolute())


def _is_remote(location: str) -> bool:
    return "://" in location


def _check_files_exist(pairs_csv: Path, rows: list[PairRow]) -> None:
    """A local file the CSV names that is not there is a CSV error: the first is named, and the count."""
    missing = []
    for row in rows:
        for kind, cell in (("video", row.video), ("music", row.music)):
            location = _location(pairs_csv, cell)
            if not _is_remote(location) and not os.path.isfile(location):
                missing.append((row.line, kind, cell, location))
    if missing:
        line, kind, cell, location = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        what = "is not a file" if os.path.exists(location) else "does not exist"
        raise DataError(f"{pairs_csv} line {line}: {kind} {cell} {what} ({location}){more}")


def _hash_sources(sources: list[_Source], manifest: _Manifest, fetch_dir: Path, progress: BuildProgress) -> None:
    """Content hash of every file, cached by location, size and mtime: an unchanged file is not
    read again (an object-store file not even downloaded; see :func:`_local_copy`)."""
    from mgsv_cli.media.files import content_hash

    progress.stage("hashing files", len(sources))
    for source in sources:
        try:
            size, mtime_ns = _stat(source.location)
            digest = manifest.cached_hash(source.location, size, mtime_ns)
            if digest is None:
                digest = content_hash(Path(_local_copy(source, fetch_dir)))
                manifest.put_hash(source.location, size, mtime_ns, digest)
            source.content_hash = digest
        except (OSError, MgsvError) as exc:
            source.error = f"{source.location}: cannot read ({first_line(exc)})"
        progress.advance("hashing files", 1, source.location)


def _local_copy(source: _Source, fetch_dir: Path) -> str:
    """The local file to read for ``source``: the file itself, or an object-store file downloaded
    once, when first needed (hashing, probing or embedding), and removed at the end of the build."""
    if not source.path:
        if _is_remote(source.location):
            source.download = _download(source.location, fetch_dir)
            source.path = str(source.download)
        else:
            source.path = source.location
    return source.path


def _stat(location: str) -> tuple[int, int]:
    if not _is_remote(location):
        info = os.stat(location)
        return int(info.st_size), int(info.st_mtime_ns)
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(location)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise OSError(f"no file at {location}")
    mtime = info.mtime_ns if info.mtime_ns is not None else 0
    return int(info.size or 0), int(mtime)


def _download(uri: str, folder: Path) -> Path:
    """A local copy of an object-store file (ffmpeg reads local files), under ``folder``."""
    import importlib.util

    if importlib.util.find_spec("pyarrow") is None:
        raise UsageError(f"{uri}: reading object stores needs pyarrow (pip install 'mgsv[scale]')")
    from mgsv_cli.index.ray_engine import download_object  # the index's download (pyarrow's file systems)

    folder.mkdir(parents=True, exist_ok=True)
    name = hashlib.blake2b(uri.encode(), digest_size=8).hexdigest() + Path(uri).suffix
    target = folder / name
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=".part-")
    os.close(handle)
    try:
        download_object(uri, Path(tmp))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _probe_sources(sources: list[_Source], manifest: _Manifest, fetch_dir: Path, progress: BuildProgress) -> None:
    """Duration (and a video's size and rate) of every file, cached by content hash; ffprobe
    runs in its own process, so a few threads overlap them."""
    from mgsv_cli.media.ffmpeg import probe

    todo = []
    for source in sources:
        if source.error is None:
            probed = manifest.probed(source.content_hash, source.kind)
            if probed is None:
                todo.append(source)
            else:
                source.info = probed
    progress.stage("reading durations", len(todo))

    def run(source: _Source):
        try:
            info = probe(_local_copy(source, fetch_dir))
        except (OSError, MgsvError) as exc:
            return source, None, first_line(exc).replace(source.path or source.location, source.location)
        if source.kind == "video" and not info.has_video:
            return source, None, f"{source.location}: has no video stream"
        if source.kind == "music" and not info.has_audio:
            return source, None, f"{source.location}: has no audio stream"
        return source, {"duration": float(info.duration), "width": info.width, "height": info.height,
                        "fps": info.fps}, None

    for source, info, error in _ahead(run, todo, workers=min(8, os.cpu_count() or 2), ahead=16):
        if error is not None:
            source.error = error
        else:
            source.info = info
            manifest.put_probe(source.content_hash, source.kind, info)
        progress.advance("reading durations", 1, source.location)


@dataclass
class _Pair:
    """A row with its two files, then its ids and split once they are chosen."""

    row: PairRow
    video: _Source
    music: _Source
    video_id: str = ""
    music_id: str = ""
    split: str = ""


def _usable_pairs(pairs: list[_Pair], report: BuildReport, progress: BuildProgress) -> list[_Pair]:
    """The rows whose two files could be read; the others are reported and left out."""
    reported: set[str] = set()
    usable = []
    for pair in pairs:
        bad = [s for s in (pair.video, pair.music) if s.error is not None]
        if not bad:
            usable.append(pair)
            continue
        report.skipped_rows += 1
        for source in bad:
            if source.location not in reported:
                reported.add(source.location)
                report.failed.append((source.location, source.error or "cannot read"))
                progress.failed(*report.failed[-1])
    return usable


def _check_labels(pairs_csv: Path, pairs: list[_Pair], tolerance: float) -> None:
    """Every moment inside its track and the features' 240 s, and as long as its video (within
    ``tolerance``); else a DataError naming the first bad row and how many more there are."""
    problems = []
    for pair in pairs:
        row, music, video = pair.row, pair.music.info["duration"], pair.video.info["duration"]
        length = row.music_end - row.music_start
        if row.music_end > music + MOMENT_SLACK_S:
            problems.append((row, f"the moment [{row.music_start:g}, {row.music_end:g}] s ends after the track "
                                  f"{row.music} ({music:.2f} s long)"))
        elif row.music_end > recipe.MAX_MUSIC_SECONDS + MOMENT_SLACK_S:
            problems.append((row, f"the moment [{row.music_start:g}, {row.music_end:g}] s ends after "
                                  f"{recipe.MAX_MUSIC_SECONDS:g} s, the part of a track the features cover"))
        elif abs(length - video) > tolerance:
            problems.append((row, f"the moment lasts {length:.2f} s but the video {row.video} lasts {video:.2f} s "
                                  f"(more than the {tolerance:g} s tolerance apart; --tolerance changes it)"))
    if problems:
        row, why = problems[0]
        more = f" (and {len(problems) - 1} more row(s))" if len(problems) > 1 else ""
        raise DataError(f"{pairs_csv} line {row.line}: {why}{more}")


def _derived_id(prefix: str, digest: str) -> str:
    return prefix + digest[:ID_DIGITS]


def _assign_ids(pairs_csv: Path, pairs: list[_Pair]) -> None:
    """The video and music id of every row: given, or made from the content hash; one id, one content."""
    owners: dict[tuple[str, str], _Pair] = {}
    for pair in pairs:
        for kind, given, prefix in (("video", pair.row.video_id, "v"), ("music", pair.row.music_id, "m")):
            source = getattr(pair, kind)
            item_id = given or _derived_id(prefix, source.content_hash)
            known = owners.setdefault((kind, item_id), pair)
            if getattr(known, kind).content_hash != source.content_hash:
                raise DataError(f"{pairs_csv} line {pair.row.line}: {kind}_id {item_id} names "
                                f"{getattr(pair.row, kind)}, but line {known.row.line} gave it to another file "
                                f"({getattr(known.row, kind)}): one id per file content")
            setattr(pair, f"{kind}_id", item_id)


def _unit(seed: int, key: str, salt: str = "") -> float:
    """A number in [0, 1) drawn from ``key`` and ``seed``: the same on every run."""
    digest = hashlib.blake2b(f"{seed}:{salt}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64


def _assign_splits(pairs_csv: Path, pairs: list[_Pair], manifest: _Manifest, split_by: str, val_fraction: float,
                   test_fraction: float, seed: int) -> None:
    """The split of every row: the CSV's, else drawn per track (or per video with ``split_by="row"``).

    Drawn splits are kept in the manifest: a rerun keeps every placed key where it is and draws
    only for new ones (so the draw settings of a dataset cannot change afterwards)."""
    if pairs and pairs[0].row.split is not None:
        for pair in pairs:
            pair.split = pair.row.split or ""
        return
    settings = json.dumps({"split_by": split_by, "val_fraction": val_fraction, "test_fraction": test_fraction,
                           "seed": seed}, sort_keys=True)
    before = manifest.meta("split_settings")
    if before is not None and before != settings:
        was = json.loads(before)
        raise UsageError(f"the splits of this dataset were drawn with --split-by {was['split_by']} --val-fraction "
                         f"{was['val_fraction']:g} --test-fraction {was['test_fraction']:g} --seed {was['seed']}: "
                         "give the same to add rows, or build into another folder")
    keys = [pair.music_id if split_by == "track" else pair.video_id for pair in pairs]

    def draw(u: float) -> str:
        return "val" if u < val_fraction else "test" if u < val_fraction + test_fraction else "train"

    placed = manifest.placed()
    new = {key: draw(_unit(seed, key)) for key in dict.fromkeys(keys) if key not in placed}
    chosen = {**{key: placed[key] for key in dict.fromkeys(keys) if key in placed}, **new}
    what = "tracks" if split_by == "track" else "videos"
    if len(chosen) < 3:
        raise DataError(f"{pairs_csv}: {len(chosen)} distinct {what}: splitting by {split_by} needs at least 3 "
                        "(train, val, test); add a split column or more rows")
    for split, fraction in (("val", val_fraction), ("test", test_fraction), ("train", 1.0)):
        if fraction > 0 and split not in chosen.values():
            # The draw left this split empty (few keys): it gets a new key of the fullest split, the
            # one that draws lowest on a second, independent number. Keys placed before never move.
            counts = {s: sum(1 for k in new if chosen[k] == s) for s in SPLITS}
            donor = max(counts, key=lambda s: counts[s])
            if counts[donor] and list(chosen.values()).count(donor) > 1:  # never empties the donor
                key = min((k for k in new if chosen[k] == donor), key=lambda k: _unit(seed, k, "fill"))
                chosen[key] = split
    manifest.put_placed({key: chosen[key] for key in new})
    manifest.put_meta("split_settings", settings)
    for pair, key in zip(pairs, keys):
        pair.split = chosen[key]


# ---------------------------------------------------------------- embedding and writing


def _save_tensor(path: Path, array: np.ndarray) -> None:
    """``torch.save`` of a plain tensor (what the release holds; read back with weights_only=True),
    written atomically."""
    import torch

    from mgsv_cli.paths import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save(torch.from_numpy(np.ascontiguousarray(array)), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _feature_kinds(kind: str) -> tuple[str, str]:
    return (kind, f"{kind}_mask")


def _embed_items(root: Path, kind: str, pairs: list[_Pair], manifest: _Manifest, fetch_dir: Path,
                 report: BuildReport, progress: BuildProgress, embed: Callable,
                 local_copies: bool = True) -> dict[str, float]:
    """Embed the items of ``kind`` (``video``, ``music``) whose features are not written yet, each
    content once, and write them; returns ``{item id: duration}`` of every item that has features.
    Files that fail are reported (their rows are left out when the CSVs are written).
    ``local_copies``: the jobs name local files (an object-store file downloaded here); without,
    the engine reads each job's ``location`` itself (Ray's tasks)."""
    by_id: dict[str, _Source] = {}
    for pair in pairs:
        by_id.setdefault(getattr(pair, f"{kind}_id"), getattr(pair, kind))
    done = manifest.done(kind)
    ready: dict[str, float] = {}
    todo: dict[str, list[str]] = {}  # content hash -> the ids that need its features
    jobs: dict[str, MediaJob] = {}
    for item_id, source in by_id.items():
        have = done.get(item_id)
        if have is not None and have[0] == source.content_hash and all(
                feature_path(root, k, item_id).is_file() for k in (kind, f"{kind}_mask")):
            ready[item_id] = have[1]
            continue
        todo.setdefault(source.content_hash, []).append(item_id)
        if source.content_hash not in jobs and not local_copies:
            jobs[source.content_hash] = MediaJob(source.content_hash, source.location, source.location)
        elif source.content_hash not in jobs:
            try:
                jobs[source.content_hash] = MediaJob(source.content_hash, source.location,
                                                     _local_copy(source, fetch_dir))
            except (OSError, MgsvError) as exc:  # an object store that failed since it was hashed
                report.failed.append((source.location, f"{source.location}: cannot read ({first_line(exc)})"))
                progress.failed(source.location, report.failed[-1][1])
    counter = "music" if kind == "music" else "videos"
    setattr(report, f"reused_{counter}", len(ready))
    stage = f"embedding {counter}"
    progress.stage(stage, len(jobs))
    if not jobs:
        return ready
    for folder in (kind, f"{kind}_mask"):
        (root / FEATURE_DIRS[folder]).mkdir(parents=True, exist_ok=True)
    mask_dtype = np.int64 if kind == "music" else np.float32  # the mask dtypes `mgsv data synth` writes
    for made in embed(list(jobs.values())):
        job = jobs[made.content_hash]
        if made.error is not None:
            report.failed.append((job.location, made.error))
            progress.failed(job.location, made.error)
        else:
            for item_id in todo[made.content_hash]:
                _save_tensor(feature_path(root, kind, item_id), np.asarray(made.feats, dtype=np.float32))
                _save_tensor(feature_path(root, f"{kind}_mask", item_id), np.asarray(made.mask).astype(mask_dtype))
                manifest.put_done(kind, item_id, made.content_hash, float(made.duration))
                ready[item_id] = float(made.duration)
            setattr(report, f"embedded_{counter}", getattr(report, f"embedded_{counter}") + 1)
        progress.advance(stage, 1, job.location)
    return ready


def _write_splits(root: Path, pairs: list[_Pair], music_done: dict[str, float], video_done: dict[str, float],
                  report: BuildReport) -> None:
    """The three split CSVs (all 16 release columns), written atomically; rows whose features
    could not be made are left out (and counted)."""
    from mgsv_cli.paths import atomic_write_text

    written: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for pair in pairs:
        if pair.music_id not in music_done or pair.video_id not in video_done:
            report.skipped_rows += 1
            continue
        written[pair.split].append(_csv_row(pair, music_done[pair.music_id]))
    for split, rows in written.items():
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(csv_path(root, split), buffer.getvalue())
    report.rows = {split: len(rows) for split, rows in written.items()}
    report.n_tracks = len({row["music_id"] for rows in written.values() for row in rows})
    report.n_videos = len({row["video_id"] for rows in written.values() for row in rows})


def _csv_row(pair: _Pair, music_duration: float) -> dict:
    """A release CSV row. In the release ``video_segment_duration`` is the moment's length (the
    length the cut must have), so it is here; the video's own length is ``video_total_duration``."""
    row, video = pair.row, pair.video.info
    length = round(row.music_end - row.music_start, 6)
    fps = video.get("fps") or 0.0
    return {
        "video_id": pair.video_id, "music_id": pair.music_id,
        "video_start": 0.0, "video_end": length,
        "music_start": row.music_start, "music_end": row.music_end,
        "music_total_duration": round(music_duration, 6),
        "video_segment_duration": length, "music_segment_duration": length,
        "music_path": pair.music.location,
        "video_total_duration": round(float(video["duration"]), 6),
        "video_width": video.get("width") or "", "video_height": video.get("height") or "",
        "video_total_frames": int(round(float(video["duration"]) * fps)) if fps else "",
        "video_frame_rate": round(float(fps), 3) if fps else "",
        "video_category": row.category,
    }


def _write_record(root: Path, encoders: DatasetEncoders, pairs_csv: Path, split_by: str, seed: int,
                  report: BuildReport | None = None) -> None:
    """``ROOT/mgsv_dataset.json``: written before the first feature (so a rerun with other encoders
    is refused even after a killed build) and again, with the counts, when the build is complete."""
    from mgsv_cli import __version__
    from mgsv_cli.paths import atomic_write_text

    record: dict[str, Any] = {
        "format": RECORD_FORMAT, "made_by": MADE_BY, "mgsv_version": __version__,
        "encoders": encoders.to_json(), "pairs": str(pairs_csv), "split_by": split_by, "seed": seed,
        "complete": report is not None,
    }
    if report is not None:
        record.update(rows=report.rows, tracks=report.n_tracks, videos=report.n_videos,
                      failed=len({location for location, _ in report.failed}))
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error("create", root, exc) from None
    atomic_write_text(record_path(root), json.dumps(record, indent=1) + "\n")
