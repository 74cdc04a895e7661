"""Indexing on Ray Data into a Lance track store: ``mgsv index SRC --engine ray --store URI``.

For catalogs of 10^5 to 10^7 tracks (GPU-days of AST). The pipeline, one Ray Data
dataset streamed end to end:

1. the driver lists the audio files: a local folder (``media.files.scan_audio_files``) or
   an object-store prefix (``s3://bucket/music``, through ``pyarrow.fs``, which gives each
   object's size and mtime);
2. the listing is joined (Ray Data, by location) with what the store knows of each file,
   read as a dataset from the store itself (``ray.data.read_lance``: location, size, mtime,
   content hash; and its failed files): no task ever carries the catalog's state as an
   argument;
3. CPU tasks (``map_batches`` of :func:`prepare_tracks`, one CPU each) run the plan of the
   local engine on each file (``pipeline.check_file``: unchanged, touched, failed before,
   failing now, or to embed, the content hashed only when size or mtime changed); files to
   embed are probed (tags), decoded and turned into normalised log-mel frames
   (``features.recipe.TrackSpectrogram``; windows overlap 4x, so the frames are a quarter
   of the windows' bytes), and get their beat grid;
4. an actor pool (``map_batches`` of :class:`AstEmbedder`: one AST per actor, loaded on
   the first track that needs it; ``num_gpus=1`` per actor where the cluster has GPUs)
   embeds the valid windows, batching windows across tracks;
5. the driver writes the results to the store in chunks
   (``iter_batches`` -> ``add_tracks``, ``touch``, ``remember_failures``, one atomic commit
   each), so a killed run keeps what it committed and a rerun skips it. Bad files become
   failure rows, never crashes: listed at the end and remembered, like the local engine's.
   Gone files are counted, and dropped with ``prune``.

The same two stages embed files outside any store for ``mgsv data build --engine ray``
(:func:`embed_files_with_ray`: the build chose the files and keeps its own manifest).

A renamed or copied file is embedded again here (the local engine copies the tokens of an
identical content instead): finding a content among 10^7 stored ones per file would need a
second pass over the catalog.

Ray restarts a killed actor and retries its batch (Ray Data's actor pools default to
``max_restarts=-1``, ``max_task_retries=-1``); the store upserts by location, so nothing is
lost or stored twice either way.

Ray's own console output is kept from a CLI user: its C++ core's log lines (started at
level FATAL unless ``RAY_BACKEND_LOG_LEVEL`` says otherwise), Ray Data's console logs
during the run (its session log files keep them), progress bars and the worker logs. A
failure arrives as an exception and becomes one ``IndexDatabaseError`` line naming the
remote cause (:func:`ray_failure`).

Ray, pyarrow and torch are imported inside functions (``mgsv --help`` stays instant).
Workers import mgsv like the driver: on a cluster, install mgsv on every node.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mgsv_cli.errors import IndexDatabaseError, MgsvError, StorageError, UsageError, first_line
from mgsv_cli.features.recipe import ENCODER_IDS
from mgsv_cli.index.plan import (
    EMBED,
    FAILED,
    SKIPPED,
    TOUCHED,
    UNCHANGED,
    IndexProgress,
    IndexReport,
    beats_and_structure,
    check_file,
    fill_missing_analysis,
    probe_audio,
)
from mgsv_cli.index.records import FileState, NewTrack

if TYPE_CHECKING:
    from mgsv_cli.features.encoders import Encoders

# The progress stage of a Ray run: files finished (stored, skipped or failed) of all listed.
STAGE = "indexing"
# Status of a row between the stages: the plan's kinds (``pipeline.check_file``), and FATAL (the
# encoders could not load: raised by the driver as the original error).
NEW, FATAL = "embed", "fatal"
PREPARE_MEMORY = 512 << 20  # bytes a CPU task reserves (Ray Data measured ~260 MB with beats)
# Ray's own output a CLI user should not see (see ``_quiet_start``): its C++ core's log lines
# below FATAL, and the usage-stats notice ray.init prints on nightly wheels.
QUIET_RAY_ENV = {"RAY_BACKEND_LOG_LEVEL": "fatal", "RAY_USAGE_STATS_PROMPT_ENABLED": "0"}
# A line of Ray's C++ logger: "[2026-01-02 03:04:05,678 E 123 456] core_worker.cc:2465: ..."
RAY_BACKEND_LINE = re.compile(rb"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [TDIWEF] \d+ \d+\] \S+:\d+: ")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# The first line of a Python exception in a Ray traceback ("ImportError: cannot import ...").
EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit)\b(?::.*)?$")


def _row_schema():
    import pyarrow as pa

    return pa.schema([
        ("location", pa.string()), ("content_hash", pa.string()), ("status", pa.string()),
        ("size", pa.int64()), ("mtime_ns", pa.int64()), ("forget", pa.bool_()), ("replacing", pa.bool_()),
        ("error", pa.string()), ("error_type", pa.string()), ("duration", pa.float64()), ("tags", pa.string()),
        ("beats", pa.string()), ("structure", pa.string()), ("frames", pa.large_binary()),
        ("tokens", pa.large_binary()),
        ("dim", pa.int32()), ("mask", pa.binary()), ("encoder_id", pa.string()),
    ])


def _rows_table(rows: list[dict]):
    import pyarrow as pa

    schema = _row_schema()
    return pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in rows], schema=schema)


# ---------------------------------------------------------------- listing


def is_remote(source: str) -> bool:
    """Is ``source`` an object-store (or any ``scheme://``) URI, read through pyarrow's file systems?"""
    return "://" in str(source)


def list_audio(source) -> list[dict]:
    """The audio files under ``source``, sorted: ``{"location", "size", "mtime_ns"}`` rows of resolved
    local paths (size and mtime read by the tasks) or ``scheme://bucket/key`` URIs (with the
    size and mtime the listing gives).

    Hidden files and folders are skipped, as ``scan_audio_files`` does. A missing folder
    or prefix is a ``UsageError``; an object store that cannot be listed a ``StorageError``.
    """
    from mgsv_cli.media.files import scan_audio_files

    if not is_remote(source):
        root = Path(source).expanduser()
        if not root.exists():
            raise UsageError(f"music folder {root} does not exist")
        return [{"location": str(p), "size": None, "mtime_ns": None} for p in scan_audio_files(root)]
    import pyarrow.fs as pafs

    from mgsv_cli.media.files import is_audio_file

    scheme = str(source).split("://", 1)[0]
    try:
        fs, prefix = pafs.FileSystem.from_uri(str(source))
        info = fs.get_file_info(prefix)
        if info.type == pafs.FileType.NotFound:
            raise UsageError(f"nothing at {source}: expected a folder (prefix) of audio files")
        if info.type == pafs.FileType.File:
            entries = [info]
        else:
            entries = fs.get_file_info(pafs.FileSelector(prefix, recursive=True))
    except (OSError, ValueError) as exc:  # pyarrow's errors subclass these: no credentials, no bucket...
        raise StorageError(f"cannot list {source}: {first_line(exc)}") from None
    found = []
    for entry in entries:
        relative = entry.path[len(prefix):] if entry.path.startswith(prefix) else entry.path
        if entry.type == pafs.FileType.File and is_audio_file(Path(entry.path)) \
                and not any(part.startswith(".") for part in relative.split("/")):
            mtime = entry.mtime_ns if entry.mtime_ns is not None else None
            found.append({"location": f"{scheme}://{entry.path}", "size": entry.size, "mtime_ns": mtime})
    return sorted(found, key=lambda row: row["location"])


# ---------------------------------------------------------------- stage 1: CPU tasks


def prepare_tracks(batch, *, detect_beats: bool = False, retry: bool = False, force: bool = False):
    """Ray Data stage (CPU task): the plan of each file, and the work of those to embed.

    ``batch`` a pyarrow table of the listing joined with the store's states: ``location``,
    ``size``/``mtime_ns`` (a remote file's, from the listing; None: read here),
    ``stored_size``/``stored_mtime_ns``/``stored_hash`` (what the store holds for the location;
    null: nothing) and ``failed_known``/``failed_size``/``failed_mtime_ns`` (a remembered failure;
    its size and mtime may be null, for a file that could not even be stat'ed). Returns one
    row per file in the row schema: its kind (``pipeline.check_file``), and for files to
    embed the tags, duration, beat grid (JSON) and normalised log-mel frames float32
    [n_frames, 128] as bytes. ``force``: every file is embedded again (one the store held is
    marked ``replacing``).
    """
    columns = batch.to_pydict()
    rows = []
    for k, location in enumerate(columns["location"]):
        def value(name):
            return columns[name][k] if name in columns else None

        stored = None if value("stored_hash") is None else \
            FileState(value("stored_size"), value("stored_mtime_ns"), value("stored_hash"))
        failed = (value("failed_size"), value("failed_mtime_ns")) if value("failed_known") else None
        row = _prepare_one(location, value("size"), value("mtime_ns"), None if force else stored, failed,
                           detect_beats, retry)
        row["replacing"] = row["replacing"] or stored is not None
        rows.append(row)
    return _rows_table(rows)


def _prepare_one(location: str, size, mtime_ns, stored, failed, detect_beats: bool, retry: bool) -> dict:
    if not is_remote(location):
        return _prepare_file(location, Path(location), stored, failed, detect_beats, retry)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mgsv-ray-") as folder:
        local = Path(folder) / ("track" + Path(location).suffix)

        def digest() -> str:  # downloads only when size and mtime do not settle it
            from mgsv_cli.media.files import content_hash

            download_object(location, local)
            return content_hash(local)

        checked = check_file(location, size, mtime_ns, stored, failed, digest, retry=retry)
        row = _row_of(checked, size, mtime_ns)
        if checked.kind != EMBED:
            return row
        try:
            return {**row, **_embed_work(location, local, detect_beats)}
        except OSError as exc:
            return {**row, "status": FAILED, "error": f"{location}: cannot read ({first_line(exc)})"}


def _row_of(checked, size, mtime_ns) -> dict:
    state = checked.state
    return {"location": checked.location, "status": checked.kind, "error": checked.reason or None,
            "content_hash": None if state is None else state.content_hash,
            "size": size if state is None else state.size, "mtime_ns": mtime_ns if state is None else state.mtime_ns,
            "forget": bool(checked.forget), "replacing": bool(checked.exists)}


def download_object(uri: str, target: Path, chunk: int = 8 << 20) -> None:
    """Copy an object-store file to ``target`` (ffmpeg reads local files; the bytes are read once anyway).
    Also ``mgsv data build``'s download (``research.build``)."""
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    with fs.open_input_stream(path) as source, open(target, "wb") as out:
        while data := source.read(chunk):
            out.write(data)


def _prepare_file(location: str, path: Path, stored, failed, detect_beats: bool, retry: bool) -> dict:
    from mgsv_cli.index.plan import check_local_file

    checked = check_local_file(path, stored, failed, retry)
    row = _row_of(checked, None, None)
    if checked.kind == FAILED and row["size"] is None:
        from mgsv_cli.index.plan import signature

        row["size"], row["mtime_ns"] = signature(path)
    if checked.kind != EMBED:
        return row
    return {**row, **_embed_work(location, path, detect_beats)}


def _embed_work(location: str, path: Path, detect_beats: bool) -> dict:
    """Probe, decode and make the filterbank frames of a file to embed (a failure row on bad media)."""
    from mgsv_cli.features.encoders import load_track_audio
    from mgsv_cli.features.recipe import TrackSpectrogram
    from mgsv_cli.index.records import clean_tags

    try:
        info = probe_audio(path)
        samples, duration = load_track_audio(path)
        spectrogram = TrackSpectrogram(samples, duration)
    except MgsvError as exc:
        return {"status": FAILED, "error": first_line(exc).replace(str(path), location)}
    except (OSError, ValueError) as exc:
        return {"status": FAILED, "error": f"{location}: {first_line(exc)}"}
    beats, structure = beats_and_structure(path) if detect_beats else (None, None)
    return {"status": NEW, "duration": float(spectrogram.duration), "tags": json.dumps(clean_tags(info.tags)),
            "beats": json.dumps(beats) if beats is not None else None,
            "structure": json.dumps(structure) if structure is not None else None,
            "frames": spectrogram.frames.astype("float32").tobytes()}


def _spectrogram(frames_bytes: bytes, duration: float):
    """A ``TrackSpectrogram`` from the frames a CPU task made (nothing recomputed)."""
    import numpy as np

    from mgsv_cli.features.recipe import TrackSpectrogram

    return TrackSpectrogram.from_frames(np.frombuffer(frames_bytes, dtype=np.float32), duration)


# ---------------------------------------------------------------- stage 2: the AST actors


class AstEmbedder:
    """Ray Data stage (actor): AST window features of the ``new`` rows, one model per actor.

    The encoders load on the first batch that needs them (a rerun that finds everything
    stored loads nothing). A loading failure (weights missing...) comes back as ``fatal``
    rows that the driver raises as the original error type. ``tokens`` are float16
    [96, dim] bytes, ``mask`` bool [96] bytes; the frames are dropped.
    """

    def __init__(self, kind: str = "pretrained", device: str = "auto", offline: bool = False,
                 weights_dir: str | None = None, batch_windows: int | None = None, threads: int | None = None):
        self.options = dict(kind=kind, device=device, offline=offline, weights_dir=weights_dir,
                            batch_windows=batch_windows)
        self.threads = threads
        self.encoders: Encoders | None = None
        self.fatal: tuple[str, str] | None = None

    def _load(self):
        if self.encoders is None and self.fatal is None:
            import torch

            from mgsv_cli.device import resolve_device
            from mgsv_cli.features.encoders import load_encoders

            if self.threads:
                torch.set_num_threads(int(self.threads))
            options = dict(self.options)
            weights_dir = options.pop("weights_dir")
            try:
                self.encoders = load_encoders(device=resolve_device(options.pop("device")), parts=("music",),
                                              weights_dir=Path(weights_dir) if weights_dir else None, **options)
            except MgsvError as exc:
                self.fatal = (type(exc).__name__, first_line(exc))
        return self.encoders

    def __call__(self, batch):
        rows = batch.to_pylist()
        new = [row for row in rows if row["status"] == NEW]
        if new and self._load() is None:
            for row in new:
                row.update(status=FATAL, error_type=self.fatal[0], error=self.fatal[1])
        elif new:
            self._embed(new)
        for row in rows:
            row["frames"] = None
        return _rows_table(rows)

    def _embed(self, rows: list[dict]) -> None:
        """Windows of all ``rows`` through AST, ``batch_windows`` at a time across tracks."""
        import numpy as np

        from mgsv_cli.features.recipe import N_MUSIC_WINDOWS

        encoders = self.encoders
        assert encoders is not None  # called after _load() gave them
        spectrograms = [_spectrogram(row["frames"], row["duration"]) for row in rows]
        feats = [np.zeros((N_MUSIC_WINDOWS, encoders.music_dim), np.float32) for _ in rows]
        todo = [(i, int(k)) for i, spec in enumerate(spectrograms) for k in np.flatnonzero(spec.valid)]
        step = max(1, int(encoders.batch_windows))
        for start in range(0, len(todo), step):
            chunk = todo[start:start + step]
            out = encoders.embed_windows(np.stack([spectrograms[i].window(k) for i, k in chunk]))
            for (i, k), vector in zip(chunk, out):
                feats[i][k] = vector
        for row, spec, tokens in zip(rows, spectrograms, feats):
            row.update(tokens=tokens.astype(np.float16).tobytes(), dim=int(encoders.music_dim),
                       mask=spec.valid.astype(bool).tobytes(), encoder_id=encoders.encoder_id)


# ---------------------------------------------------------------- files without a store (mgsv data build)


def prepare_files(batch):
    """Ray Data stage (CPU task) of :func:`embed_files_with_ray`: each row's file (``location``: a
    local path, or an object-store URI downloaded into a temporary folder) probed, decoded and
    turned into filterbank frames by the same code as :func:`prepare_tracks` (``_embed_work``);
    a file that cannot be read becomes a failure row. No plan: the caller chose the files."""
    columns = batch.to_pydict()
    rows = []
    for location, digest in zip(columns["location"], columns["content_hash"]):
        rows.append({"location": location, "content_hash": digest, "replacing": False, "forget": False,
                     **_work_of_file(location)})
    return _rows_table(rows)


def _work_of_file(location: str) -> dict:
    if not is_remote(location):
        return _embed_work(location, Path(location), detect_beats=False)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mgsv-ray-") as folder:
        local = Path(folder) / ("track" + Path(location).suffix)
        try:
            download_object(location, local)
        except OSError as exc:
            return {"status": FAILED, "error": f"{location}: cannot read ({first_line(exc)})"}
        return _embed_work(location, local, detect_beats=False)


def embed_files_with_ray(files, *, encoder_kind: str = "pretrained", device: str = "auto", offline: bool = False,
                         weights_dir=None, batch_windows: int | None = None, ray_address: str | None = None,
                         num_cpus: int | None = None, actors: int | None = None, tracks_per_batch: int = 4,
                         embedder: type = AstEmbedder):
    """AST window features of audio files on Ray, with the index's two stages and no store:
    ``mgsv data build --engine ray``.

    ``files``: ``(location, content_hash)`` pairs (a local path or an object-store URI; the
    hash is passed through). Yields one row per file as it is done, in any order: ``location``,
    ``content_hash``, ``status`` (``embed`` when it worked, else ``failed`` with ``error``),
    ``duration``, ``tokens`` (float16 [96, ``dim``] bytes, as a track store keeps them) and
    ``mask`` (bool [96] bytes). Ray, the encoder options, ``actors`` and ``tracks_per_batch`` as
    for :func:`index_with_ray`; a Ray failure is an ``IndexDatabaseError``, encoders that cannot
    load raise their own error.
    """
    files = list(files)
    if encoder_kind not in ENCODER_IDS:
        raise UsageError(f"encoders {encoder_kind!r}: expected pretrained or tiny")
    _check_address(ray_address)
    if not files:
        return
    started = _connect(ray_address, num_cpus)
    try:
        import ray

        _quiet_data_context()
        listing = [{"location": location, "content_hash": digest} for location, digest in files]
        dataset = ray.data.from_items(listing, override_num_blocks=_blocks(len(listing)))
        dataset = _stages(dataset, prepare_files, {}, embedder, dict(
            kind=encoder_kind, device=device, offline=offline, weights_dir=str(weights_dir) if weights_dir else None,
            batch_windows=batch_windows), actors, tracks_per_batch)
        with _quiet("ray.data"):
            for batch in _batches(dataset, tracks_per_batch, kept="the features written so far stay"):
                for row in batch.to_pylist():
                    if row["status"] == FATAL:
                        raise _fatal_error(row)
                    yield row
    finally:
        if started:
            _shutdown()


# ---------------------------------------------------------------- the driver


def index_with_ray(source, store_uri: str, *, encoder_kind: str = "pretrained", device: str = "auto",
                   offline: bool = False, weights_dir=None, batch_windows: int | None = None,
                   detect_beats: bool = True, ray_address: str | None = None, num_cpus: int | None = None,
                   actors: int | None = None, tracks_per_batch: int = 4, commit_every: int = 32,
                   progress: IndexProgress | None = None, embedder: type = AstEmbedder,
                   key_encoding: str | None = None, prune: bool = False, force: bool = False,
                   retry_failed: bool = False) -> IndexReport:
    """Bring the Lance store at ``store_uri`` up to date with the audio under ``source``, on Ray.

    ``source``: a local folder (single machine or a shared file system) or an object-store
    prefix (``s3://bucket/music``; credentials from the usual ``AWS_*`` variables).
    ``ray_address``: a running cluster (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``); None
    starts a local instance with ``num_cpus`` CPUs (all by default); an already
    initialised Ray is used as it is. ``actors``: AST actors (default: one per GPU, else
    one per two CPUs), ``tracks_per_batch`` tracks per actor call, ``commit_every`` tracks
    per store commit. ``embedder``: the actor class (tests pass one that dies).
    ``key_encoding``, ``prune``, ``force``, ``retry_failed``: as for ``pipeline.index_folder``.
    Returns an ``IndexReport``. On KeyboardInterrupt the committed tracks stay; the report
    goes to ``progress.interrupted`` and the interrupt goes on.
    """
    from mgsv_cli.index.backend import is_lance_uri, open_store
    from mgsv_cli.index.plan import check_encoder_kind

    if not is_lance_uri(str(store_uri)):
        raise UsageError(f"--engine ray writes a Lance track store, not an SQLite index: pass --store DIR.lance "
                         f"or an object-store URI such as s3://bucket/mgsv-store (got {store_uri})")
    _check_address(ray_address)
    if encoder_kind not in ENCODER_IDS:
        raise UsageError(f"encoders {encoder_kind!r}: expected pretrained or tiny")
    listing = list_audio(source)  # before creating any store
    if not listing and not prune:
        from mgsv_cli.media.files import no_audio_message

        raise UsageError(no_audio_message(Path(source)) if not is_remote(source) else
                         f"no audio files under {source}: nothing to index")
    progress = progress or IndexProgress()
    with open_store(str(store_uri), create=True, key_encoding=key_encoding) as store, store.writing():
        if not force:
            check_encoder_kind(store, encoder_kind)
        report = IndexReport(index_path=store.uri, n_scanned=len(listing))
        try:
            if listing:
                _run(listing, store, progress, report, embedder, dict(
                    kind=encoder_kind, device=device, offline=offline,
                    weights_dir=str(weights_dir) if weights_dir else None, batch_windows=batch_windows),
                    detect_beats, ray_address, num_cpus, actors, tracks_per_batch, commit_every, force,
                    retry_failed or force)
            _prune_or_count_missing(store, {row["location"] for row in listing}, prune, report)
            if detect_beats:  # local tracks stored before their structure: theirs, without re-embedding
                fill_missing_analysis(store, progress, report)
        except KeyboardInterrupt:
            report.interrupted = True
            with contextlib.suppress(MgsvError, OSError):
                report.n_tracks = len(store)
            progress.interrupted(report)
            raise
        if report.added:
            store.compact()
        report.n_tracks = len(store)
    return report


def _run(listing, store, progress, report, embedder, encoder_options, detect_beats, ray_address, num_cpus, actors,
         tracks_per_batch, commit_every, force, retry) -> None:
    progress.note("starting Ray")
    started = _connect(ray_address, num_cpus)
    try:
        if force:
            store.set_encoders(ENCODER_IDS[encoder_options["kind"]], replace=True)
        dataset = _pipeline(listing, store, embedder, encoder_options, detect_beats, actors, tracks_per_batch,
                            force, retry)
        with _quiet("ray.data"):
            _consume(dataset, store, progress, report, len(listing), commit_every)
    finally:
        if started:
            _shutdown()


def _prune_or_count_missing(store, listed: set[str], prune: bool, report: IndexReport) -> None:
    """Stored files the listing no longer has (a local one: no longer on disk): counted, or removed
    with ``prune`` (and the remembered failures of files that are gone forgotten)."""
    def gone(location: str) -> bool:
        return location not in listed and (is_remote(location) or not os.path.exists(location))

    if prune:
        forgotten = [p for p in store.failed_states() if gone(p)]
        store.forget_failures(forgotten)
        report.forgotten_failed = len(forgotten)
    vanished = [location for location in store.file_states() if gone(location)]
    if prune:
        store.remove(vanished)
        report.pruned = len(vanished)
    else:
        report.missing = len(vanished)


def _check_address(address: str | None) -> None:
    """Refuse an address that cannot work in seconds: Ray itself retries an unreachable one for minutes."""
    import socket

    if address in (None, "", "auto", "local"):
        return
    target = str(address).split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--ray-address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=3.0).close()
    except OSError as exc:
        raise UsageError(f"--ray-address {address}: no Ray cluster answers there ({exc.strerror or exc}); "
                         "start one with `ray start --head` (see Ray's cluster docs)") from None


def _connect(address: str | None, num_cpus: int | None) -> bool:
    """Initialise Ray unless it is already; returns whether this call started it."""
    import logging
    import warnings

    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    if address:
        kwargs["address"] = address
    elif num_cpus:
        kwargs["num_cpus"] = int(num_cpus)
    try:
        with warnings.catch_warnings(), _quiet_start():
            # Ray starts its processes by fork + exec: lance's fork-safety warning does not apply.
            warnings.filterwarnings("ignore", message="lance is not fork-safe")
            ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise UsageError(f"cannot connect to Ray{f' at {address}' if address else ''}: {first_line(exc)}") from None
    return True


@contextlib.contextmanager
def _quiet_start():
    """Start Ray without its C++ core's log lines on this process's stderr.

    The core writes its ERROR lines to the driver's fd 2, such as every Ray Data actor pool's
    "constructor arguments in the object store" (ray#57733, ``core_worker.cc``): noise to a CLI
    user, since a real failure reaches mgsv as an exception. The only switch is the level the
    core reads from ``RAY_BACKEND_LOG_LEVEL`` when ``ray.init`` starts it (and the processes of
    a local instance), so it is set only around that call, and a value the user exported wins
    (``RAY_BACKEND_LOG_LEVEL=info`` brings the lines back, and keeps them in Ray's session
    logs). Setting it makes the core announce the level, one more such line, so fd 2 goes to a
    temporary file for the call: Ray's lines are dropped, anything else is passed on after.
    """
    added = {name: value for name, value in QUIET_RAY_ENV.items() if name not in os.environ}
    os.environ.update(added)
    try:
        with _held_stderr():
            yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@contextlib.contextmanager
def _held_stderr():
    """fd 2 into a temporary file for the block; then what was written, less Ray's C++ log lines."""
    import sys
    import tempfile

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable stderr: nothing to keep clean
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = memoryview(b"".join(line for line in held if not RAY_BACKEND_LINE.match(line)))
            while kept:
                kept = kept[os.write(2, kept):]


@contextlib.contextmanager
def _quiet(logger_name: str):
    """Ray Data logs each execution (INFO), its tuning hints (WARNING) and a failing task
    (ERROR, before the driver gets the exception) to the console; the caller shows progress
    itself, and a failure arrives as an exception that mgsv reports in one line. So the
    logger's console handlers drop everything for the run; its session log files keep it all."""
    import logging

    logger = logging.getLogger(logger_name)
    consoles = [h for h in logger.handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]

    def drop(record: logging.LogRecord) -> bool:
        return False

    for handler in consoles:
        handler.addFilter(drop)
    try:
        yield
    finally:
        for handler in consoles:
            handler.removeFilter(drop)


def _shutdown() -> None:
    import ray

    ray.shutdown()


def _pipeline(listing: list[dict], store, embedder: type, encoder_options: dict, detect_beats: bool,
              actors: int | None, tracks_per_batch: int, force: bool, retry: bool):
    """The lazy Ray dataset: listing joined with the store's states -> CPU prepare tasks -> AST actors."""
    import ray

    _quiet_data_context()
    blocks = _blocks(len(listing))
    dataset = _joined(ray.data.from_items(listing, override_num_blocks=blocks), store, blocks)
    return _stages(dataset, prepare_tracks, {"detect_beats": detect_beats, "retry": retry, "force": force}, embedder,
                   encoder_options, actors, tracks_per_batch)


def _quiet_data_context() -> None:
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False  # progress goes through the caller's progress object
    context.print_on_execution_start = False


def _blocks(n_files: int) -> int:
    """A few files per block: enough blocks for every CPU, few enough to keep Ray's overhead small."""
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, min(n_files, max(2 * cpus, math.ceil(n_files / 16))))


def _stages(dataset, prepare, prepare_kwargs: dict, embedder: type, encoder_options: dict, actors: int | None,
            tracks_per_batch: int):
    """``dataset`` through the CPU stage (``prepare``: one file per task) and the AST actor pool."""
    import ray
    from ray.data import ActorPoolStrategy

    resources = ray.cluster_resources()
    cpus, gpus = int(resources.get("CPU", 1)), int(resources.get("GPU", 0))
    # The memory hint (samples + frames of a 240 s track are ~30 MB, plus the libraries and
    # beat detection's buffers) also keeps Ray Data from fusing this stage into the actors: operators with
    # different resources stay apart, so decoding scales with the CPUs, not the actors.
    dataset = dataset.map_batches(prepare, batch_size=1, batch_format="pyarrow", num_cpus=1,
                                  memory=PREPARE_MEMORY, fn_kwargs=prepare_kwargs)
    if gpus:
        n_actors, placement = actors or gpus, {"num_gpus": 1, "num_cpus": 1}
        threads = None
    else:
        # CPU AST: half the cores to the actors (each with its torch threads), half to decoding.
        threads = 1 if cpus <= 4 else 2
        n_actors = actors or max(1, cpus // (2 * threads))
        placement = {"num_cpus": threads}
    # Ray Data's actor pools restart a dead actor and retry its batch (max_restarts and
    # max_task_retries default to -1 there).
    return dataset.map_batches(embedder, batch_size=max(1, int(tracks_per_batch)), batch_format="pyarrow",
                               compute=ActorPoolStrategy(size=int(n_actors)),
                               fn_constructor_kwargs={**encoder_options, "threads": threads}, **placement)


def _renamed(batch, names: dict):
    return batch.rename_columns([names.get(c, c) for c in batch.column_names])


def _marked_failures(batch):
    """The remembered failures as the join's right side: ``failed_*`` columns and ``failed_known``
    true on every row. The join keeps only the left key (``location``): a matched failure is told
    by this column, since its size and mtime may be null."""
    import pyarrow as pa

    batch = _renamed(batch, {"path": "failed_path", "size": "failed_size", "mtime_ns": "failed_mtime_ns"})
    return batch.append_column("failed_known", pa.array([True] * batch.num_rows, pa.bool_()))


def _joined(listing, store, blocks: int):
    """The listing joined (left, by location) with the store's file states and remembered failures,
    both read by Ray Data from the store's own datasets: no task carries them as an argument."""
    import ray

    if len(store):
        columns = [c for c in ("location", "size", "mtime_ns", "content_hash") if c in store.tracks_columns()]
        stored = ray.data.read_lance(store.dataset_uri("tracks"), columns=columns).map_batches(
            _renamed, batch_format="pyarrow",  # type: ignore[arg-type]  # Ray passes ``names`` (fn_kwargs)
            fn_kwargs={"names": {"size": "stored_size", "mtime_ns": "stored_mtime_ns", "content_hash": "stored_hash"}})
        listing = listing.join(stored, "left_outer", num_partitions=blocks, on=("location",))
    failed = store.dataset_uri("failed")
    if failed is not None:
        remembered = ray.data.read_lance(failed, columns=["path", "size", "mtime_ns"]).map_batches(
            _marked_failures, batch_format="pyarrow")
        listing = listing.join(remembered, "left_outer", num_partitions=blocks, on=("location",),
                               right_on=("failed_path",))
    return listing


def _consume(dataset, store, progress: IndexProgress, report: IndexReport, n_files: int, commit_every: int) -> None:
    """Stream the results into the store: ``commit_every`` new tracks per commit, and the touched
    files' new mtimes and the failures in the same batches."""
    import numpy as np

    from mgsv_cli.features.recipe import MAX_MUSIC_SECONDS

    progress.stage(STAGE, n_files)
    pending: list[NewTrack] = []
    replacing: set[str] = set()  # of the pending tracks, those whose location the store held
    touched: list[tuple[str, FileState]] = []
    failures: list[tuple[str, int | None, int | None, str]] = []
    forget: list[str] = []

    def flush() -> None:
        if pending:
            store.add_tracks(pending)
            report.updated += len(replacing)
            report.added += len(pending) - len(replacing)
            pending.clear()
            replacing.clear()
        store.touch(touched)
        store.remember_failures(failures)
        store.forget_failures(forget)
        touched.clear()
        failures.clear()
        forget.clear()

    for batch in _batches(dataset, commit_every):
        for row in batch.to_pylist():
            location, status = row["location"], row["status"]
            if status == FATAL:
                raise _fatal_error(row)
            if status == FAILED:
                report.failed.append((location, row["error"] or "failed"))
                progress.failed(*report.failed[-1])
                failures.append((location, row.get("size"), row.get("mtime_ns"), row["error"] or "failed"))
            elif status == SKIPPED:
                report.skipped_failed += 1
            elif status in (UNCHANGED, TOUCHED):
                report.unchanged += 1
                if status == TOUCHED:
                    report.touched += 1
                    touched.append((location, FileState(row["size"], row["mtime_ns"], row["content_hash"])))
                elif row.get("forget"):
                    forget.append(location)
            else:
                if row.get("replacing"):
                    replacing.add(location)
                mask = np.frombuffer(row["mask"], dtype=bool)
                tokens = np.frombuffer(row["tokens"], dtype=np.float16).reshape(mask.shape[0], row["dim"])
                beats = json.loads(row["beats"]) if row["beats"] else None
                structure = json.loads(row["structure"]) if row.get("structure") else None
                pending.append(NewTrack(location, row["content_hash"], float(row["duration"]), tokens, mask,
                                        row.get("encoder_id") or store.encoder_id, json.loads(row["tags"] or "{}"),
                                        beats, row.get("size"), row.get("mtime_ns"), structure=structure))
                report.beats_added += beats is not None
                report.structures_added += structure is not None
                report.long_tracks += float(row["duration"]) > MAX_MUSIC_SECONDS
            progress.advance(STAGE, 1, location)
            if len(pending) >= commit_every:
                flush()
    flush()


def _batches(dataset, size: int, kept: str = "the tracks stored so far stay"):
    """``iter_batches`` with Ray's failures as one-line errors (``kept``: what a rerun keeps)."""
    from ray.exceptions import RayError

    iterator = iter(dataset.iter_batches(batch_size=max(1, int(size)), batch_format="pyarrow", prefetch_batches=1))
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except RayError as exc:
            raise IndexDatabaseError(f"the Ray run failed: {ray_failure(exc)}; {kept}, "
                                     "run the same command again to resume") from None
        yield batch


def ray_failure(exc: BaseException) -> str:
    """What went wrong in a Ray error, in one line: the first exception line of the remote
    traceback it carries (the root cause: "ImportError: cannot import name ..."), else its
    first line, without Ray's colour codes and ``ray::Actor.method()`` header."""
    lines = [ANSI.sub("", line).rstrip() for line in str(exc).splitlines()]
    for line in lines:
        if EXCEPTION_LINE.match(line):
            return line
    useful = [line.strip() for line in lines if line.strip() and not line.startswith("ray::")]
    return useful[0] if useful else type(exc).__name__


def _fatal_error(row: dict) -> MgsvError:
    from mgsv_cli import errors

    kind = getattr(errors, row.get("error_type") or "", None)
    kind = kind if isinstance(kind, type) and issubclass(kind, MgsvError) else MgsvError
    return kind(row["error"])
