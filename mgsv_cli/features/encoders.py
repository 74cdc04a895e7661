"""The frozen feature extractors and the exact recipe that produced the MGSV-EC features.

Video: CLIP ViT-B/32 (OpenAI weights) on frames at t = 0, 1, 2, ... s -> ``[50, 512]`` + mask.
Music: AST (AudioSet, mAP 0.4593) on 10 s windows centred every 2.5 s -> ``[96, 768]`` + mask.
The recipe (spec section 3) must not drift, or a model trained on the released features
will not transfer; every constant below is pinned by the tests.

Everything heavy (torch, open_clip, transformers) is imported inside functions.
"""
from __future__ import annotations

import contextlib
import math
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from mgsv_cli.errors import MediaError, MgsvError, WeightsMissingError, first_line
from mgsv_cli.features.recipe import (
    AST_MEAN,
    AST_STD,
    CLIP_IMAGE_SIZE,
    CLIP_MEAN,
    CLIP_STD,
    ENCODER_IDS,
    MAX_MUSIC_SECONDS,
    N_FBANK_FRAMES,
    N_MEL_BINS,
    N_MUSIC_WINDOWS,
    N_VIDEO_FRAMES,
    SAMPLE_RATE,
    TINY_MUSIC_DIM,
    TrackSpectrogram,
)
from mgsv_cli.features.weights import (
    AST_HUB_REPO,
    AST_WEIGHTS_SUBDIR,
    CLIP_HUB_REPO,
    CLIP_MODEL_NAME,
    CLIP_PRETRAINED_TAG,
    CLIP_WEIGHTS_SUBDIR,
    cached_ast_weights,
    cached_clip_file,
    find_ast_weights,
    find_clip_weights,
    hub_unreachable_reason,
    offline_env,
)

# ---------------------------------------------------------------- encoder identities

PRETRAINED_ENCODER_ID = ENCODER_IDS["pretrained"]
TINY_ENCODER_ID = ENCODER_IDS["tiny"]
TINY_SEED = 20250601

# bench/bench_ast.py on the 2-core CPU: casting AST's weights to bf16 is as fast as
# autocast or faster (+0-10 %) and needs ~120 MB less; SDPA attention is 1.5x eager;
# past 4 windows a batch gains nothing (GEMMs are already large) but costs memory.
DEFAULT_BATCH_WINDOWS = 4

# On a CUDA GPU the batch is sized from free memory (auto_batch_windows): an AST-base
# window is 1,214 tokens of 768; in inference with SDPA attention its activations peak
# at well under 40 MB in 16 bits (the MLP's 1,214 x 3,072 plus a few hidden states), so
# budgeting 64 MB per window (128 MB in fp32) leaves room for the allocator's slack.
# Past ~128 windows (155k tokens per GEMM) a GPU gains nothing but latency.
GPU_WINDOW_BYTES_16BIT = 64 << 20
MAX_GPU_BATCH_WINDOWS = 128
GPU_MEMORY_FRACTION = 0.5


def auto_batch_windows(device, dtype=None) -> int:
    """Windows per AST forward: sized to the free memory on a CUDA GPU, else DEFAULT_BATCH_WINDOWS."""
    import torch

    from mgsv_cli.device import free_memory

    free = free_memory(device) if getattr(device, "type", None) == "cuda" else None
    if free is None:
        return DEFAULT_BATCH_WINDOWS
    per_window = GPU_WINDOW_BYTES_16BIT * (2 if dtype in (None, torch.float32) else 1)
    return int(max(1, min(MAX_GPU_BATCH_WINDOWS, GPU_MEMORY_FRACTION * free // per_window)))


def audio_workers(device) -> int:
    """Threads decoding audio and computing filterbanks for embed_tracks.

    One on a CPU (the cores are busy with AST itself; this is what always ran). On a GPU
    the CPU side is the bottleneck: one decode + filterbank per core, leaving one core to
    feed the GPU (ffmpeg runs in its own process and numpy's FFT, matrix products and
    element-wise work release the GIL, so threads scale).
    """
    if getattr(device, "type", None) != "cuda":
        return 1
    return max(2, min(32, (os.cpu_count() or 2) - 1))




# ---------------------------------------------------------------- results


@dataclass
class DecodedVideo:
    """A video ready for CLIP: ``pixels`` float32 [F, 3, 224, 224] (preprocessed frames at
    t = 0, 1, ... s), ``duration`` in seconds. Made without any model, so it can be
    prepared while the encoders load."""

    pixels: Any
    duration: float


def decode_video(path: str | os.PathLike, max_frames: int = N_VIDEO_FRAMES) -> DecodedVideo:
    """Decode a video at 1 fps and apply CLIP's preprocessing (no network involved).

    Raises MediaError when the video cannot be decoded.
    """
    import torch
    from PIL import Image

    from mgsv_cli.media.ffmpeg import read_frames_1fps

    # Decoding straight to a 224 short side is the same PIL bicubic resize CLIP's
    # preprocess would do first; it just avoids holding 50 full-size frames.
    frames, duration = read_frames_1fps(path, max_frames=max_frames, short_side=CLIP_IMAGE_SIZE)
    transform = clip_preprocess()
    if len(frames) == 0:
        return DecodedVideo(torch.zeros(0, 3, CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE), duration)
    pixels = torch.stack([transform(Image.fromarray(np.ascontiguousarray(f))) for f in frames])
    return DecodedVideo(pixels, duration)


@dataclass
class VideoFeatures:
    """CLIP frame features of one video.

    feats: float32 [50, video_dim], zero rows past ``n_frames``; mask: uint8 [50], 1 = frame.
    """

    feats: np.ndarray
    mask: np.ndarray
    duration: float
    n_frames: int


@dataclass
class TrackFeatures:
    """AST window features of one track, or why it failed.

    feats: float32 [96, music_dim], zero rows where ``mask`` is 0; mask: uint8 [96].
    On failure ``error`` holds a one-line message and feats/mask/duration are None.
    """

    path: str
    feats: np.ndarray | None = None
    mask: np.ndarray | None = None
    duration: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class _TrackJob:
    """A track moving through embed_tracks: its spectrogram and the windows still to compute."""

    def __init__(self, path: str, music_dim: int, spectrogram: TrackSpectrogram | None = None,
                 error: str | None = None):
        self.path = path
        self.spectrogram = spectrogram
        self.error = error
        self.todo: list[int] = [] if spectrogram is None else [int(k) for k in np.flatnonzero(spectrogram.valid)]
        self.n_remaining = len(self.todo)
        self.feats = None if spectrogram is None else np.zeros((N_MUSIC_WINDOWS, music_dim), np.float32)

    def window(self, k: int):
        """The spectrogram of window ``k`` (a job is batched only while it has one)."""
        assert self.spectrogram is not None
        return self.spectrogram.window(k)

    def store(self, k: int, row) -> None:
        """Window ``k``'s embedding computed."""
        assert self.feats is not None  # set with the spectrogram
        self.feats[k] = row
        self.n_remaining -= 1

    def result(self) -> TrackFeatures:
        if self.error is not None:
            return TrackFeatures(self.path, error=self.error)
        spectrogram, self.spectrogram = self.spectrogram, None
        assert spectrogram is not None  # a job has a spectrogram or an error; result() runs once
        return TrackFeatures(self.path, feats=self.feats, mask=spectrogram.valid.astype(np.uint8),
                             duration=spectrogram.duration)


# ---------------------------------------------------------------- encoders


class Encoders:
    """The two frozen encoders on one device, with the recipe around them.

    Build with :func:`load_encoders`. ``video_dim``/``music_dim`` are the feature sizes
    (512/768 pretrained), ``encoder_id`` names the weights (stored in indexes so features
    from different encoders are never mixed), ``is_tiny`` marks the random test networks.
    """

    def __init__(self, *, encoder_id: str, is_tiny: bool, device, clip_model=None,
                 clip_preprocess=None, clip_dtype=None, ast_model=None, ast_dtype=None,
                 video_dim: int, music_dim: int, batch_windows: int | None = DEFAULT_BATCH_WINDOWS,
                 workers: int | None = None):
        self.encoder_id = encoder_id
        self.is_tiny = is_tiny
        self.device = device
        self.video_dim = video_dim
        self.music_dim = music_dim
        # None: sized to the device (auto_batch_windows / audio_workers).
        self.batch_windows = auto_batch_windows(device, ast_dtype) if batch_windows is None else int(batch_windows)
        self.workers = audio_workers(device) if workers is None else max(1, int(workers))
        # Overlap the GPU's work on one batch with the CPU preparing the next (results of a
        # batch are read back one batch later, through page-locked memory). On a CPU the
        # forward is synchronous anyway, so results are read at once, as always.
        self.overlap = getattr(device, "type", None) == "cuda"
        self._clip = clip_model
        self._clip_preprocess = clip_preprocess
        self._clip_dtype = clip_dtype
        self._ast = ast_model
        self._ast_dtype = ast_dtype

    def __repr__(self) -> str:
        return (f"Encoders({self.encoder_id!r}, device={self.device}, video_dim={self.video_dim}, "
                f"music_dim={self.music_dim}, clip={self._clip_dtype}, ast={self._ast_dtype})")

    @property
    def has_video(self) -> bool:
        return self._clip is not None

    @property
    def has_music(self) -> bool:
        return self._ast is not None

    # ------------------------------------------------------------ video

    def embed_frames(self, frames: np.ndarray) -> np.ndarray:
        """CLIP image embeddings (projected, not normalised) of RGB frames.

        frames: uint8 [F, H, W, 3] (any size; CLIP's resize + centre crop applies).
        Returns float32 [F, video_dim]; all frames go through the network in one batch.
        """
        import torch
        from PIL import Image

        if len(frames) == 0:
            return np.zeros((0, self.video_dim), np.float32)
        transform = clip_preprocess()
        return self.embed_pixels(torch.stack([transform(Image.fromarray(np.ascontiguousarray(f))) for f in frames]))

    def embed_pixels(self, pixels) -> np.ndarray:
        """CLIP image embeddings of preprocessed frames [F, 3, 224, 224] -> float32 [F, video_dim]."""
        import torch

        if self._clip is None:
            raise MgsvError("these encoders were loaded without the video encoder")
        if len(pixels) == 0:
            return np.zeros((0, self.video_dim), np.float32)
        pixels = pixels.to(self.device)
        with torch.inference_mode():
            out = self._clip.encode_image(pixels.to(self._clip_dtype))
        return out.float().cpu().numpy()

    def embed_video(self, path: str | os.PathLike, max_frames: int = N_VIDEO_FRAMES) -> VideoFeatures:
        """Frame features of a video: frames at t = 0, 1, ... s (<= 50), padded to 50 rows.

        Raises MediaError when the video cannot be decoded.
        """
        return self.embed_decoded(decode_video(path, max_frames))

    def embed_decoded(self, video: DecodedVideo) -> VideoFeatures:
        """Frame features of a :func:`decode_video` result, padded to 50 rows."""
        embedded = self.embed_pixels(video.pixels)
        feats = np.zeros((N_VIDEO_FRAMES, self.video_dim), np.float32)
        mask = np.zeros(N_VIDEO_FRAMES, np.uint8)
        feats[: len(embedded)] = embedded
        mask[: len(embedded)] = 1
        return VideoFeatures(feats=feats, mask=mask, duration=video.duration, n_frames=len(embedded))

    # ------------------------------------------------------------ music

    def embed_windows(self, windows: np.ndarray) -> np.ndarray:
        """AST pooled outputs (mean of CLS and distillation tokens) of prepared windows.

        windows: float32 [n, 1024, 128] normalised filterbanks. Returns float32 [n, music_dim].
        """
        import torch

        if self._ast is None:
            raise MgsvError("these encoders were loaded without the music encoder")
        inputs = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)).to(self.device)
        with torch.inference_mode(), self._memory_hint(len(windows)):
            out = self._ast(input_values=inputs.to(self._ast_dtype)).pooler_output
        return out.float().cpu().numpy()

    def _memory_hint(self, n_windows: int):
        from mgsv_cli.device import out_of_memory_hint

        return out_of_memory_hint("embedding music", "--batch-windows", n_windows, self.device)

    def embed_tracks(self, items: Iterable[Any], batch_windows: int | None = None,
                     prefetch: int = 2) -> Iterator[TrackFeatures]:
        """Window features of many tracks, batching valid windows across tracks.

        items: audio file paths, or ``(name, samples)`` pairs of float32 mono 16 kHz audio.
        Yields one :class:`TrackFeatures` per item, in input order, as soon as all of its
        windows are done (so a caller can commit per track). A track that cannot be read
        is yielded with ``.error`` set and the others go on; invalid windows are never
        computed (zero rows, mask 0). Audio decoding and filterbanks run on
        ``self.workers`` background threads, ``prefetch`` tracks ahead (at least two per
        worker); ``prefetch=0`` prepares each track when it is needed, in this thread.
        With ``self.overlap`` (on a GPU) a batch's results are read back while the next
        batch runs. Running out of GPU memory raises a one-line error naming
        ``--batch-windows``.
        """
        batch_size = max(1, int(batch_windows or self.batch_windows))
        finished: deque[_TrackJob] = deque()
        queue: deque[tuple[_TrackJob, int]] = deque()
        running: deque[_Launched] = deque()  # at most one batch in flight (overlap) or none

        def run(batch: list[tuple[_TrackJob, int]]) -> None:
            running.append(self._launch_batch(batch))
            while len(running) > (1 if self.overlap else 0):
                running.popleft().finish()

        for job in self._prepared_jobs(items, prefetch):
            finished.append(job)
            queue.extend((job, k) for k in job.todo)
            while len(queue) >= batch_size:
                run([queue.popleft() for _ in range(batch_size)])
                yield from _pop_done(finished)
            yield from _pop_done(finished)
        while queue:
            run([queue.popleft() for _ in range(min(batch_size, len(queue)))])
        while running:
            running.popleft().finish()
        yield from _pop_done(finished)

    def _run_batch(self, batch: list[tuple[_TrackJob, int]]) -> None:
        self._launch_batch(batch).finish()

    def _launch_batch(self, batch: list[tuple[_TrackJob, int]]) -> "_Launched":
        """Start AST on a batch of windows; ``.finish()`` stores the rows into their tracks.

        On CUDA the windows are stacked straight into page-locked memory and copied without
        blocking, and the pooled outputs come back the same way behind an event, so the
        CPU can prepare the next batch meanwhile.
        """
        import torch

        if not self.overlap:
            return _Launched(batch, self.embed_windows(np.stack([job.window(k) for job, k in batch])))
        on_gpu = getattr(self.device, "type", None) == "cuda"
        staged = torch.empty((len(batch), N_FBANK_FRAMES, N_MEL_BINS), dtype=torch.float32, pin_memory=on_gpu)
        np.stack([job.window(k) for job, k in batch], out=staged.numpy())
        with torch.inference_mode(), self._memory_hint(len(batch)):
            inputs = staged.to(self.device, non_blocking=True)
            out = self._ast(input_values=inputs.to(self._ast_dtype)).pooler_output.float()
            result = torch.empty(out.shape, dtype=torch.float32, pin_memory=on_gpu)
            result.copy_(out, non_blocking=True)
            done = None
            if on_gpu:
                done = torch.cuda.Event()
                done.record()
        return _Launched(batch, result, done)

    def _prepared_jobs(self, items: Iterable[Any], prefetch: int) -> Iterator[_TrackJob]:
        if self._ast is None:
            raise MgsvError("these encoders were loaded without the music encoder")
        indexed = enumerate(items)
        if prefetch <= 0:
            for index, item in indexed:
                yield self._prepare(index, item)
            return
        workers = max(1, self.workers)
        ahead_limit = max(prefetch, 2 * workers) if workers > 1 else prefetch
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mgsv-audio") as pool, \
                _single_threaded_blas(workers > 1):
            ahead: deque = deque()
            try:
                for index, item in indexed:
                    ahead.append(pool.submit(self._prepare, index, item))
                    if len(ahead) > ahead_limit:
                        yield ahead.popleft().result()
                while ahead:
                    yield ahead.popleft().result()
            finally:
                for future in ahead:  # stopped early (an error, Ctrl-C): do not decode the rest
                    future.cancel()

    def _prepare(self, index: int, item: Any) -> _TrackJob:
        name = _item_name(index, item)
        try:
            samples, duration = load_track_audio(item)
            return _TrackJob(name, self.music_dim, TrackSpectrogram(samples, duration))
        except MgsvError as exc:
            return _TrackJob(name, self.music_dim, error=str(exc))
        except (OSError, ValueError) as exc:
            return _TrackJob(name, self.music_dim, error=f"{name}: {exc}")


class _Launched:
    """A batch of windows sent through AST: its rows land in their tracks on :meth:`finish`."""

    def __init__(self, batch: list[tuple[_TrackJob, int]], outputs, done=None):
        self.batch, self.outputs, self.done = batch, outputs, done

    def finish(self) -> None:
        if self.done is not None:
            self.done.synchronize()
        outputs = self.outputs.numpy() if hasattr(self.outputs, "numpy") else self.outputs
        for (job, k), row in zip(self.batch, outputs):
            job.store(k, row)


@contextlib.contextmanager
def _single_threaded_blas(enabled: bool):
    """With many audio threads, one BLAS thread each (else every filterbank matrix product
    would start a thread per core, times the number of workers). Needs threadpoolctl
    (installed with librosa's scikit-learn); without it, nothing changes."""
    if not enabled:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _pop_done(jobs: deque) -> Iterator[TrackFeatures]:
    while jobs and (jobs[0].error is not None or jobs[0].n_remaining == 0):
        yield jobs.popleft().result()


def _item_name(index: int, item: Any) -> str:
    if isinstance(item, tuple):
        return str(item[0])
    if isinstance(item, np.ndarray):
        return f"#{index}"
    return str(item)


def load_track_audio(item: Any) -> tuple[np.ndarray, float]:
    """(samples 16 kHz float32, true duration s) of a path or a (name, samples) pair."""
    if isinstance(item, (tuple, np.ndarray)):
        samples = np.asarray(item[1] if isinstance(item, tuple) else item, dtype=np.float32).reshape(-1)
        if samples.size == 0:
            raise MediaError(f"{_item_name(0, item)}: no audio samples")
        return samples, samples.size / SAMPLE_RATE
    from mgsv_cli.media.ffmpeg import probe, read_audio_mono

    # Only the first 240 s are ever used; past that the validity rule needs no more
    # precision, but the reported duration should still be the real one.
    samples = read_audio_mono(item, max_seconds=MAX_MUSIC_SECONDS + 1.0, sample_rate=SAMPLE_RATE)
    duration = samples.size / SAMPLE_RATE
    if duration >= MAX_MUSIC_SECONDS:
        duration = max(duration, probe(item).duration)
    return samples, duration


# ---------------------------------------------------------------- loading


def _missing_message(missing: list[str], offline: bool, unreachable: str | None = None) -> str:
    if offline:
        why = "not found offline"
    elif unreachable:
        why = f"are not here and the hub cannot be reached ({unreachable})"
    else:
        why = "could not be loaded"
    return (
        f"pretrained encoder weights {why}: {'; '.join(missing)}. "
        "Run `mgsv models download` (needs internet once), or pass --weights-dir DIR holding "
        f"{CLIP_WEIGHTS_SUBDIR}/<checkpoint> and {AST_WEIGHTS_SUBDIR}/ (a save_pretrained folder); "
        "`--encoders tiny` runs without weights (random networks, for tests only)"
    )


def _clip_dtype(device, precision: str):
    """CLIP runs in float16 on CUDA like the reference (OpenAI's package on a GPU). On a CPU
    with native bf16 its weights are cast to bf16 (2.2x faster than fp32 here, cosine to
    fp32 >= 0.9999 per frame); elsewhere fp32."""
    import torch

    from mgsv_cli.device import cpu_has_fast_bf16

    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_fast_bf16() else torch.float32


def _ast_dtype(device, precision: str):
    from mgsv_cli.device import compute_dtype

    return compute_dtype(device, precision)


def load_encoders(kind: str = "pretrained", device: Any = "auto", offline: bool = False,
                  weights_dir: Path | None = None, precision: str = "auto",
                  parts: Sequence[str] = ("video", "music"), batch_windows: int | None = None) -> Encoders:
    """Build the frozen encoders: the ONE entry point for features.

    kind: ``pretrained`` (CLIP ViT-B/32 OpenAI + AST AudioSet 0.4593, from ``weights_dir``,
    the env vars MGSV_CLIP_WEIGHTS / MGSV_AST_WEIGHTS, the default weights dir, or the
    Hugging Face hub/cache) or ``tiny`` (small random networks of the same classes and the
    same recipe, fixed seed: for tests and demos, never for real suggestions).
    device: ``auto | cpu | cuda[:N] | mps`` or a torch.device. precision: ``auto | fp32 | bf16``.
    offline (or HF_HUB_OFFLINE=1): never touch the network. parts: load only
    ``video`` and/or ``music``. batch_windows: AST windows per forward (None: sized to the
    GPU's free memory on CUDA, DEFAULT_BATCH_WINDOWS elsewhere).
    On CUDA, CLIP runs in float16 and AST in bfloat16 with SDPA attention.
    Raises WeightsMissingError naming what is missing.
    """
    from mgsv_cli.device import resolve_device
    from mgsv_cli.errors import UsageError

    torch_device = device if hasattr(device, "type") else resolve_device(device)
    unknown = set(parts) - {"video", "music"}
    if unknown:
        raise UsageError(f"unknown encoder part(s) {sorted(unknown)}: expected video, music")
    if batch_windows is not None and int(batch_windows) < 1:
        raise UsageError(f"--batch-windows {batch_windows}: expected at least 1")
    if kind == "tiny":
        encoders = _load_tiny(torch_device, precision, parts)
    elif kind != "pretrained":
        raise UsageError(f"encoders {kind!r}: expected pretrained or tiny")
    else:
        encoders = _load_pretrained(torch_device, (offline or offline_env()), weights_dir, precision, parts)
    if batch_windows is not None:
        encoders.batch_windows = int(batch_windows)
    return encoders


def _load_pretrained(device, offline: bool, weights_dir, precision: str, parts) -> Encoders:
    clip_name = f"CLIP {CLIP_MODEL_NAME} '{CLIP_PRETRAINED_TAG}' (hub {CLIP_HUB_REPO})"
    ast_name = f"AST {AST_HUB_REPO}"
    clip_source = find_clip_weights(weights_dir) if "video" in parts else None
    ast_source: Path | str | None = find_ast_weights(weights_dir) if "music" in parts else None
    # Say everything that is missing at once, before spending time loading anything: offline,
    # or when the hub cannot be reached (its client would retry for ~30 s before failing).
    clip_source = clip_source or ("video" in parts and cached_clip_file()) or None
    ast_source = ast_source or (AST_HUB_REPO if "music" in parts and cached_ast_weights() else None)
    missing = [name for part, name, source in (("video", clip_name, clip_source), ("music", ast_name, ast_source))
               if part in parts and source is None]
    if missing:
        unreachable = "offline" if offline else hub_unreachable_reason()
        if unreachable is not None:
            raise WeightsMissingError(_missing_message(missing, offline, unreachable))
    clip_dtype, ast_dtype = _clip_dtype(device, precision), _ast_dtype(device, precision)
    ast_model = clip_model = preprocess = None
    if "music" in parts:
        try:
            ast_model = _build_pretrained_ast(ast_source or AST_HUB_REPO, offline, device, ast_dtype)
        except OSError as exc:
            raise WeightsMissingError(_missing_message([f"{ast_name} ({first_line(exc, 200)})"], offline)) from exc
    if "video" in parts:
        try:
            clip_model, preprocess = _build_pretrained_clip(clip_source or CLIP_PRETRAINED_TAG, device, clip_dtype)
        except (OSError, RuntimeError) as exc:
            raise WeightsMissingError(_missing_message([f"{clip_name} ({first_line(exc, 200)})"], offline)) from exc
    return Encoders(
        encoder_id=PRETRAINED_ENCODER_ID, is_tiny=False, device=device,
        clip_model=clip_model, clip_preprocess=preprocess, clip_dtype=clip_dtype,
        ast_model=ast_model, ast_dtype=ast_dtype,
        video_dim=clip_model.visual.output_dim if clip_model is not None else 512,
        music_dim=ast_model.config.hidden_size if ast_model is not None else 768,
        batch_windows=None,
    )


def clip_preprocess():
    """CLIP's evaluation transform (resize shorter side 224 bicubic, centre crop, normalise)."""
    import open_clip

    return open_clip.image_transform(CLIP_IMAGE_SIZE, is_train=False, mean=CLIP_MEAN, std=CLIP_STD,
                                     interpolation="bicubic", resize_mode="shortest")


@contextlib.contextmanager
def skip_weight_init():
    """Make ``torch.nn.init``'s in-place initialisers no-ops while a model is built.

    Randomly initialising ViT-B/32 takes about half of its build time on a CPU, and a
    pretrained build overwrites every parameter right after (open_clip loads strictly).
    """
    import torch

    names = [name for name in dir(torch.nn.init) if name.endswith("_") and not name.startswith("_")]
    saved = {name: getattr(torch.nn.init, name) for name in names}
    try:
        for name in names:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)


def _build_pretrained_clip(source, device, dtype):
    import open_clip
    import torch

    precision = {torch.float16: "fp16", torch.bfloat16: "fp32", torch.float32: "fp32"}[dtype]
    with skip_weight_init():
        model = open_clip.create_model(
            CLIP_MODEL_NAME, pretrained=str(source), precision=precision, device=device,
            force_quick_gelu=True,  # OpenAI weights were trained with QuickGELU; a file path does not say so
        )
    return model.to(dtype).eval(), clip_preprocess()


def _build_pretrained_ast(source, offline: bool, device, dtype):
    from transformers import ASTModel

    model = ASTModel.from_pretrained(str(source), local_files_only=offline, attn_implementation="sdpa")
    _check_ast_preprocessor(source, offline)
    return _place_ast(model, device, dtype)


def _check_ast_preprocessor(source, offline: bool) -> None:
    """Refuse a checkpoint whose feature-extractor settings differ from the recipe."""
    from transformers import ASTFeatureExtractor

    try:
        extractor = ASTFeatureExtractor.from_pretrained(str(source), local_files_only=offline)
    except OSError:
        return  # no preprocessor_config.json: the recipe's constants apply
    expected = dict(sampling_rate=SAMPLE_RATE, num_mel_bins=N_MEL_BINS, max_length=N_FBANK_FRAMES,
                    do_normalize=True)
    for key, value in expected.items():
        if getattr(extractor, key) != value:
            raise MgsvError(f"AST weights at {source}: feature extractor {key}={getattr(extractor, key)}, "
                            f"the recipe needs {value}")
    if not (math.isclose(extractor.mean, AST_MEAN) and math.isclose(extractor.std, AST_STD)):
        raise MgsvError(f"AST weights at {source}: normalisation mean/std {extractor.mean}/{extractor.std} "
                        f"differ from the recipe's {AST_MEAN}/{AST_STD}")


def _place_ast(model, device, dtype):
    """Eval mode on ``device``; in bf16 the weights themselves are cast (measured faster
    on CPU than autocast, which re-casts every weight on each forward)."""
    model = model.eval().to(device)
    return model.to(dtype) if dtype != model.dtype else model


def _load_tiny(device, precision: str, parts) -> Encoders:
    """Small random CLIP/AST of the real classes, seeded, on the real recipe."""
    import torch
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    from transformers import ASTConfig, ASTModel

    clip_model = preprocess = ast_model = None
    # Each network gets its own seed, so loading one part alone gives the same weights.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        if "video" in parts:
            clip_model = CLIP(
                embed_dim=512,
                vision_cfg=CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=32, image_size=CLIP_IMAGE_SIZE),
                text_cfg=CLIPTextCfg(context_length=16, vocab_size=256, width=32, heads=2, layers=1),
                quick_gelu=True,
            ).eval().to(device)
            preprocess = clip_preprocess()
        torch.manual_seed(TINY_SEED + 1)
        if "music" in parts:
            config = ASTConfig(
                hidden_size=TINY_MUSIC_DIM, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                patch_size=16, frequency_stride=10, time_stride=10, max_length=N_FBANK_FRAMES,
                # attn_implementation: a PretrainedConfig keyword, taken through **kwargs (not in ASTConfig's signature)
                num_mel_bins=N_MEL_BINS, attn_implementation="sdpa",  # type: ignore[call-arg]
            )
            ast_model = _place_ast(ASTModel(config), device, _ast_dtype(device, precision))
    clip_dtype = _clip_dtype(device, precision)
    if clip_model is not None:
        clip_model = clip_model.to(clip_dtype)
    return Encoders(
        encoder_id=TINY_ENCODER_ID, is_tiny=True, device=device, clip_model=clip_model,
        clip_preprocess=preprocess, clip_dtype=clip_dtype, ast_model=ast_model,
        ast_dtype=_ast_dtype(device, precision), video_dim=512, music_dim=TINY_MUSIC_DIM,
        batch_windows=None,
    )
