"""One command that checks mgsv on a CUDA GPU end to end and prints ONE JSON line of figures.

    python bench/gpu_check.py                      # full size, --device auto (the GPU)
    python bench/gpu_check.py --smoke --device cpu # tiny sizes on the CPU, seconds (tests run this)

Everything it needs is generated here (no network, no downloads):

1. **data**: MGSV-EC-shaped features in the release layout (49,194 train / 2,000 val /
   2,000 test videos over 4,050 tracks; random tokens with a planted style and moment
   signal), written by a pool of processes, then packed by ``load_split`` as
   ``mgsv train`` would on first use (``data_write_s``, ``data_pack_s``);
2. **train**: ``made`` at batch 512 for a few epochs through ``research.train.train``
   (features on the device, bf16, fused Adam); step and whole-epoch times, validation
   included (``train_epoch_s``; the first epoch also pays for warm-up);
3. **eval**: the test split, 2,000 videos x 2,000 tracks (``eval_test_s``: the protocol
   itself, warm; ``eval_test_total_s``: the whole ``evaluate`` call);
4. **index**: ~200 generated songs of 30-240 s (FLAC files) through ``mgsv index``'s
   ``index_folder`` with a real-size AST (random weights saved with ``save_pretrained``,
   loaded by the real loader through ``MGSV_AST_WEIGHTS``): windows per second end to
   end from the files (``ast_windows_per_s``), beside the model alone
   (``ast_model_windows_per_s``) and the CPU side alone (decoding + filterbanks on the
   worker threads, ``ast_cpu_prep_windows_per_s``), so the bottleneck is visible;
5. **clip**: a real-size CLIP ViT-B/32 (random weights in a local file, loaded by the real
   open_clip loader through ``MGSV_CLIP_WEIGHTS``) on preprocessed frames (frames/s);
6. **suggest**: a warm ``Suggester`` on a generated 24 s 1080p clip against a 4,000-track
   index (tokens written with ``import_tokens``): decode + CLIP + scoring + moments.

Targets on one H100 are printed beside the figures (``targets``, ``meets``). A section
that fails records its one-line error under ``errors`` and the others still run; the JSON
line is always printed (stdout; progress goes to stderr). ``--smoke`` runs the same code
at tiny sizes (the ``tiny`` MaDe, a tiny AST, a few files) so the script cannot rot.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _find_models_package() -> None:
    """Make ``mgsv_cli.models`` (the top-level ``models/`` folder, mapped by the install) importable
    from a plain checkout too, so this script runs where mgsv itself is not installed."""
    import importlib.util

    try:
        found = importlib.util.find_spec("mgsv_cli.models") is not None
    except ModuleNotFoundError:
        found = False
    if found:
        return
    import mgsv_cli

    spec = importlib.util.spec_from_file_location("mgsv_cli.models", REPO / "models" / "__init__.py",
                                                  submodule_search_locations=[str(REPO / "models")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["mgsv_cli.models"] = module
    spec.loader.exec_module(module)
    mgsv_cli.models = module


_find_models_package()

TARGETS = {  # one H100; (comparison, value)
    "train_epoch_s": ("<=", 6.0),
    "ast_windows_per_s": (">=", 1200.0),
    "clip_frames_per_s": (">=", 3000.0),
    "eval_test_s": ("<=", 5.0),
    "suggest_warm_s": ("<=", 0.5),
}

FULL = dict(
    n_train=49_194, n_val=2_000, n_test=2_000, n_tracks=4_050, n_train_tracks=3_496,
    variant="made", epochs=3, batch_size=512, eval_batch_size=256,
    ast_tracks=200, ast_seconds=(30.0, 240.0), ast_tiny=False,
    clip_frames=2_048, clip_batch=256,
    suggest_tracks=4_000, clip_seconds=24.0, clip_size=(1920, 1080), clip_fps=30, suggest_repeats=5,
)
SMOKE = dict(
    n_train=96, n_val=24, n_test=24, n_tracks=40, n_train_tracks=30,
    variant="tiny", epochs=1, batch_size=32, eval_batch_size=16,
    ast_tracks=3, ast_seconds=(6.0, 12.0), ast_tiny=True,
    clip_frames=8, clip_batch=8,
    suggest_tracks=50, clip_seconds=3.0, clip_size=(320, 240), clip_fps=25, suggest_repeats=2,
)

# Every key of the JSON line (the smoke test checks them all).
KEYS = (
    "check", "smoke", "ok", "errors", "device", "torch", "cuda", "python", "cpu_count", "peak_gpu_memory_gb",
    "peak_gpu_memory_gb_by_section", "setup_s", "total_s",
    "data_videos", "data_tracks", "data_write_s", "data_pack_s",
    "train_variant", "train_batch_size", "train_epochs", "train_steps_per_epoch", "train_features", "train_dtype",
    "train_compile", "train_step_s_median", "train_epoch_s", "train_epoch_s_steady", "train_val_s",
    "train_val_r1", "train_val_miou",
    "eval_test_n", "eval_test_tracks", "eval_test_s", "eval_test_total_s", "eval_test_r1", "eval_test_miou",
    "ast_tracks", "ast_audio_format", "ast_windows", "ast_batch_windows", "ast_workers", "ast_dtype",
    "ast_write_s", "ast_probe_s", "ast_index_s", "ast_windows_per_s", "ast_model_windows_per_s",
    "ast_cpu_prep_windows_per_s",
    "clip_dtype", "clip_frames", "clip_frames_per_s",
    "suggest_tracks", "suggest_clip", "suggest_open_cold_s", "suggest_warm_s", "suggest_warm_s_min",
    "suggest_decode_s", "suggest_embed_s", "suggest_score_s",
    "targets", "meets",
)

N_FRAMES, VIDEO_DIM, N_WINDOWS, MUSIC_DIM, STYLE_DIM = 50, 512, 96, 768, 16
WINDOW_HOP = 2.5
NOISE = 0.5


def log(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def pool_size() -> int:
    return max(1, min(32, (os.cpu_count() or 2)))


# ----------------------------------------------------------------------------- 1. data


class _Plan:
    """Everything the writer processes need (inherited through fork)."""

    tracks: dict = {}
    rows: list = []
    projections: dict = {}
    root: Path = Path(".")


def plan_dataset(root: Path, cfg: dict, seed: int = 0) -> dict[str, list[dict]]:
    """Tracks (style, hook) and CSV rows of every split, drawn in the main process."""
    rng = np.random.default_rng(seed)
    n_tracks, n_train_tracks = cfg["n_tracks"], cfg["n_train_tracks"]
    durations = np.round(rng.uniform(30.0, 240.0, n_tracks), 3)
    hooks = np.where(rng.random(n_tracks) < 0.25, 0.0, np.round(rng.uniform(2.0, 0.4 * durations), 3))
    _Plan.tracks = {
        "id": [f"4+5x{k:013d}" for k in range(n_tracks)],
        "duration": durations, "hook": hooks,
        "style": rng.normal(size=(n_tracks, STYLE_DIM)).astype(np.float32),
        "code": rng.normal(size=(n_tracks, STYLE_DIM)).astype(np.float32),
    }
    _Plan.projections = {name: rng.normal(0.0, STYLE_DIM ** -0.5, (dim, STYLE_DIM)).astype(np.float32)
                         for name, dim in (("video_style", VIDEO_DIM), ("video_code", VIDEO_DIM),
                                           ("music_style", MUSIC_DIM), ("music_code", MUSIC_DIM))}
    _Plan.projections["onset"] = rng.normal(size=MUSIC_DIM).astype(np.float32)
    popularity = 1.0 / np.arange(1, n_train_tracks + 1) ** 0.8  # long-tailed, like the release
    repeats = rng.choice(n_train_tracks, cfg["n_train"] - n_train_tracks, p=popularity / popularity.sum())
    train = np.concatenate([np.arange(n_train_tracks), repeats])
    assignment = {"train": rng.permutation(train),
                  "val": rng.choice(n_tracks, cfg["n_val"], replace=False),  # one video per track, as released
                  "test": rng.choice(n_tracks, cfg["n_test"], replace=False)}
    rows: dict[str, list[dict]] = {}
    video_number = 100_000_000_000
    for split, tracks in assignment.items():
        rows[split] = []
        for t in tracks.tolist():
            video_number += 1
            start, length = float(hooks[t]), float(durations[t] - hooks[t])
            duration = round(float(rng.uniform(5.0, max(5.0, min(50.0, length)))), 3)
            duration = min(duration, round(length, 3))
            rows[split].append({
                "video_id": str(video_number), "music_id": _Plan.tracks["id"][t], "track": t,
                "video_start": 0.0, "video_end": duration, "music_start": start,
                "music_end": round(start + duration, 3), "music_total_duration": float(durations[t]),
                "video_segment_duration": duration, "music_segment_duration": duration,
                "music_path": f"/Data/music/{_Plan.tracks['id'][t]}.mp3", "video_total_duration": duration,
                "video_width": 1080, "video_height": 1920, "video_total_frames": int(duration * 30),
                "video_frame_rate": 30, "video_category": "Beauty",
            })
    return rows


def _write_tracks(chunk: tuple[int, list[int]]) -> int:
    import torch

    from mgsv_cli.research.dataset import feature_path

    seed, tracks = chunk
    rng = np.random.default_rng([seed, 1])
    p, info = _Plan.projections, _Plan.tracks
    centres = WINDOW_HOP * np.arange(N_WINDOWS)
    for t in tracks:
        valid = centres <= info["duration"][t]
        windows = p["music_style"] @ info["style"][t] + NOISE * rng.standard_normal((N_WINDOWS, MUSIC_DIM), np.float32)
        hook = (centres >= info["hook"][t]) & (centres <= info["hook"][t] + 50.0) & valid
        windows[hook] += p["music_code"] @ info["code"][t]
        if hook.any():
            windows[np.argmax(hook)] += p["onset"]
        windows[~valid] = 0.0
        torch.save(torch.from_numpy(windows.astype(np.float32)), feature_path(_Plan.root, "music", info["id"][t]))
        torch.save(torch.from_numpy(valid.astype(np.int64)), feature_path(_Plan.root, "music_mask", info["id"][t]))
    return len(tracks)


def _write_videos(chunk: tuple[int, list[int]]) -> int:
    import torch

    from mgsv_cli.research.dataset import feature_path

    seed, rows = chunk
    rng = np.random.default_rng([seed, 2])
    p, info = _Plan.projections, _Plan.tracks
    for r in rows:
        row = _Plan.rows[r]
        t = row["track"]
        n_valid = min(N_FRAMES, int(np.floor(row["video_segment_duration"])) + 1)
        style = info["style"][t] + 0.3 * rng.standard_normal(STYLE_DIM, np.float32)
        signal = p["video_style"] @ style + p["video_code"] @ info["code"][t]
        frames = np.zeros((N_FRAMES, VIDEO_DIM), np.float32)
        frames[:n_valid] = signal + NOISE * rng.standard_normal((n_valid, VIDEO_DIM), np.float32)
        mask = (np.arange(N_FRAMES) < n_valid).astype(np.float32)
        # float32 files holding float16 values, like the release's CLIP features
        torch.save(torch.from_numpy(frames.astype(np.float16).astype(np.float32)),
                   feature_path(_Plan.root, "video", row["video_id"]))
        torch.save(torch.from_numpy(mask), feature_path(_Plan.root, "video_mask", row["video_id"]))
    return len(rows)


def _parallel(fn, chunks: list, workers: int) -> None:
    import multiprocessing

    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        for chunk in chunks:
            fn(chunk)
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for _ in pool.imap_unordered(fn, chunks):
            pass


def write_dataset(root: Path, cfg: dict, workers: int) -> dict[str, list[dict]]:
    """The release layout under ``root``: CSVs plus one .pt per feature and mask."""
    from mgsv_cli.research.dataset import CSV_COLUMNS, FEATURE_DIRS, csv_path

    rows = plan_dataset(root, cfg)
    _Plan.root = root
    for folder in FEATURE_DIRS.values():
        (root / folder).mkdir(parents=True, exist_ok=True)
    for split, split_rows in rows.items():
        path = csv_path(root, split)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(split_rows)
    _Plan.rows = [row for split in ("train", "val", "test") for row in rows[split]]  # video ids are unique
    chunk = 256
    n_rows = len(_Plan.rows)
    track_chunks = [(k, list(range(b, min(cfg["n_tracks"], b + chunk)))) for k, b in
                    enumerate(range(0, cfg["n_tracks"], chunk))]
    video_chunks = [(k, list(range(b, min(n_rows, b + chunk)))) for k, b in enumerate(range(0, n_rows, chunk))]
    import torch  # noqa: F401  (imported once here, inherited by the forked writers; no GPU is touched)

    _parallel(_write_tracks, track_chunks, workers)
    _parallel(_write_videos, video_chunks, workers)
    return rows


def section_data(work: Path, cfg: dict, out: dict) -> Path:
    from mgsv_cli.research.dataset import load_split

    root = work / "mgsv-ec"
    t0 = time.perf_counter()
    rows = write_dataset(root, cfg, pool_size())
    out["data_write_s"] = time.perf_counter() - t0
    out["data_videos"] = {split: len(split_rows) for split, split_rows in rows.items()}
    out["data_tracks"] = cfg["n_tracks"]
    log(f"data written in {out['data_write_s']:.1f} s: {out['data_videos']}")
    t0 = time.perf_counter()
    for split in ("train", "val", "test"):
        load_split(root, split)
    out["data_pack_s"] = time.perf_counter() - t0
    log(f"packed in {out['data_pack_s']:.1f} s")
    return root


# ----------------------------------------------------------------------------- 2. train, 3. eval


class _TimingReporter:
    """research.train.Reporter that records when steps and epochs end."""

    def __init__(self):
        self.info: dict = {}
        self.epochs: list[dict] = []

    def start(self, info):
        self.info = info

    def start_epoch(self, epoch, n_epochs, n_steps):
        self.epochs.append({"start": time.perf_counter(), "steps": []})

    def step(self, loss, lr):
        self.epochs[-1]["steps"].append(time.perf_counter())

    def end_epoch(self, epoch, train_loss, metrics, is_best):
        record = self.epochs[-1]
        record["end"] = time.perf_counter()
        record["metrics"] = metrics
        log(f"epoch {epoch + 1}: {record['end'] - record['start']:.2f} s, loss {train_loss:.3f}, "
            f"val R@1 {metrics['r1']:.1f}, mIoU {metrics['miou']:.3f}")


def section_train(root: Path, work: Path, cfg: dict, device: str, compile_model: bool, out: dict) -> Path:
    from mgsv_cli.models.variants import load_config, replace_train
    from mgsv_cli.research.train import train

    variant = replace_train(load_config(cfg["variant"]), epochs=cfg["epochs"], batch_size=cfg["batch_size"])
    reporter = _TimingReporter()
    run_dir = work / "run"
    train(root, variant, out_dir=run_dir, device=device, reporter=reporter, compile=compile_model)
    info = reporter.info
    out.update(train_variant=variant.name, train_batch_size=cfg["batch_size"], train_epochs=cfg["epochs"],
               train_steps_per_epoch=info.get("steps_per_epoch"), train_features=info.get("features"),
               train_dtype=info.get("dtype"), train_compile=bool(compile_model))
    epochs, steps, vals = [], [], []
    for record in reporter.epochs:
        epochs.append(record["end"] - record["start"])
        marks = [record["start"]] + record["steps"]
        steps.extend(b - a for a, b in zip(marks[1:-1], marks[2:]))  # the first step of an epoch is not timed
        vals.append(record["end"] - marks[-1])
    out["train_epoch_s"] = epochs
    out["train_epoch_s_steady"] = min(epochs[1:]) if len(epochs) > 1 else (epochs[0] if epochs else None)
    out["train_step_s_median"] = statistics.median(steps) if steps else None
    out["train_val_s"] = vals
    last = reporter.epochs[-1]["metrics"] if reporter.epochs else {}
    out["train_val_r1"], out["train_val_miou"] = last.get("r1"), last.get("miou")
    return run_dir


def section_eval(root: Path, run_dir: Path, cfg: dict, device: str, out: dict) -> None:
    from mgsv_cli.device import resolve_device
    from mgsv_cli.models.checkpoint import load_model
    from mgsv_cli.research.dataset import load_split, place_split
    from mgsv_cli.research.evaluation import evaluate, evaluate_model

    t0 = time.perf_counter()
    result = evaluate(root, "test", checkpoint=run_dir, device=device, batch_size=cfg["eval_batch_size"])
    out["eval_test_total_s"] = time.perf_counter() - t0
    torch_device = resolve_device(device)
    model, _, _ = load_model(run_dir, device=torch_device)
    split = place_split(load_split(root, "test"), torch_device)
    _sync(torch_device)
    t0 = time.perf_counter()
    evaluate_model(model, split, torch_device, batch_size=cfg["eval_batch_size"])
    _sync(torch_device)
    out["eval_test_s"] = time.perf_counter() - t0
    out.update(eval_test_n=result["n"], eval_test_tracks=result["n_tracks"], eval_test_r1=result["r1"],
               eval_test_miou=result["miou"])
    log(f"eval: {result['n']} videos x {result['n_tracks']} tracks in {out['eval_test_s']:.2f} s "
        f"(whole evaluate call {out['eval_test_total_s']:.2f} s), R@1 {result['r1']:.1f}")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- 4. index (AST)


def _write_song(job: tuple[int, float, str]) -> str:
    from mgsv_cli.media import synth

    number, seconds, path = job
    synth.write_audio(path, synth.music_samples(seconds, bpm=float(90 + number % 60), seed=number))
    return path


def save_random_ast(folder: Path, tiny: bool) -> None:
    """An AST with random weights (real size unless ``tiny``), as ``save_pretrained`` writes it."""
    import torch
    from transformers import ASTConfig, ASTModel

    torch.manual_seed(0)
    config = ASTConfig(attn_implementation="sdpa")
    if tiny:
        config = ASTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                           attn_implementation="sdpa")
    ASTModel(config).save_pretrained(str(folder))


class _StageTimes:
    """index_folder's progress: when each stage starts (and when the run ends)."""

    def __init__(self):
        self.starts: dict[str, float] = {}
        self.failures: list[str] = []

    def stage(self, name, total):
        self.starts[name] = time.perf_counter()

    def advance(self, name, amount=1.0, detail=""):
        pass

    def failed(self, path, reason):
        self.failures.append(f"{path}: {reason}")

    def note(self, message):
        pass

    def interrupted(self, report):
        pass


def section_index(work: Path, cfg: dict, device: str, out: dict) -> None:
    import torch

    from mgsv_cli.device import resolve_device
    from mgsv_cli.features import recipe
    from mgsv_cli.features.encoders import load_encoders
    from mgsv_cli.index.pipeline import index_folder

    torch_device = resolve_device(device)
    music = work / "music"
    music.mkdir(exist_ok=True)
    rng = np.random.default_rng(5)
    low, high = cfg["ast_seconds"]
    seconds = np.round(rng.uniform(low, high, cfg["ast_tracks"]), 2)
    jobs = [(k, float(s), str(music / f"song_{k:04d}.flac")) for k, s in enumerate(seconds)]
    t0 = time.perf_counter()
    _parallel(_write_song, jobs, pool_size())
    out["ast_write_s"] = time.perf_counter() - t0
    n_windows = int(sum(recipe.window_valid(float(s)).sum() for s in seconds))
    out.update(ast_tracks=len(jobs), ast_audio_format="flac 44.1 kHz stereo", ast_windows=n_windows)
    log(f"{len(jobs)} songs ({n_windows} windows) written in {out['ast_write_s']:.1f} s")

    weights = work / "ast-random"
    save_random_ast(weights, cfg["ast_tiny"])
    os.environ["MGSV_AST_WEIGHTS"] = str(weights)
    encoders = load_encoders("pretrained", device=torch_device, offline=True, parts=("music",))
    out.update(ast_batch_windows=encoders.batch_windows, ast_workers=encoders.workers,
               ast_dtype=str(encoders._ast_dtype).replace("torch.", ""))

    # the model alone, on random inputs already in memory
    batch = encoders.batch_windows
    windows = np.random.default_rng(1).standard_normal((batch, recipe.N_FBANK_FRAMES, recipe.N_MEL_BINS),
                                                       np.float32) * 0.5
    encoders.embed_windows(windows)  # warm-up
    repeats = max(2, min(20, 2048 // batch)) if not cfg["ast_tiny"] else 2
    _sync(torch_device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        encoders.embed_windows(windows)
    out["ast_model_windows_per_s"] = repeats * batch / (time.perf_counter() - t0)

    # the CPU side alone: decoding + filterbanks on the worker threads
    t0 = time.perf_counter()
    prepared = sum(len(job.todo) for job in encoders._prepared_jobs([j[2] for j in jobs], prefetch=2))
    out["ast_cpu_prep_windows_per_s"] = prepared / (time.perf_counter() - t0)

    # end to end: `mgsv index` (no beat grids: that is librosa's, not the GPU's, work)
    stages = _StageTimes()
    t0 = time.perf_counter()
    report = index_folder(music, work / "index-ast.sqlite", encoders=encoders, progress=stages, detect_beats=False)
    end = time.perf_counter()
    if stages.failures or report.failed:
        raise RuntimeError(f"indexing failed for some files: {(stages.failures or report.failed)[:1]}")
    embed_start = stages.starts.get("embedding", t0)
    out["ast_probe_s"] = embed_start - stages.starts.get("probing", t0)
    out["ast_index_s"] = end - t0
    out["ast_windows_per_s"] = n_windows / (end - embed_start)
    log(f"index: {n_windows} windows, {out['ast_windows_per_s']:.0f} windows/s end to end from the files "
        f"(model alone {out['ast_model_windows_per_s']:.0f}/s, "
        f"CPU side alone {out['ast_cpu_prep_windows_per_s']:.0f}/s; batch {batch}, {encoders.workers} audio workers); "
        f"probing {out['ast_probe_s']:.1f} s")
    del encoders
    _free(torch)


def _free(torch) -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- 5. clip, 6. suggest


def save_random_clip(path: Path) -> None:
    """Real-size ViT-B/32 CLIP with random weights, as a local checkpoint file."""
    import open_clip
    from safetensors.torch import save_file

    model = open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def section_clip(work: Path, cfg: dict, device: str, out: dict):
    import torch

    from mgsv_cli.device import resolve_device
    from mgsv_cli.features.encoders import load_encoders

    torch_device = resolve_device(device)
    weights = work / "clip-random.safetensors"
    save_random_clip(weights)
    os.environ["MGSV_CLIP_WEIGHTS"] = str(weights)
    encoders = load_encoders("pretrained", device=torch_device, offline=True, parts=("video",))
    out["clip_dtype"] = str(encoders._clip_dtype).replace("torch.", "")
    batch = cfg["clip_batch"]
    pixels = torch.randn(batch, 3, 224, 224)  # what decode_video hands over: preprocessed frames on the host
    encoders.embed_pixels(pixels)  # warm-up
    n_batches = max(1, cfg["clip_frames"] // batch)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        encoders.embed_pixels(pixels)
    out["clip_frames"] = n_batches * batch
    out["clip_frames_per_s"] = n_batches * batch / (time.perf_counter() - t0)
    log(f"CLIP ({out['clip_dtype']}): {out['clip_frames_per_s']:.0f} frames/s")
    return encoders


def section_suggest(work: Path, cfg: dict, device: str, clip_encoders, out: dict) -> None:
    from mgsv_cli.editor.suggest import Suggester
    from mgsv_cli.features.encoders import PRETRAINED_ENCODER_ID, decode_video
    from mgsv_cli.index.pipeline import import_tokens
    from mgsv_cli.index.records import NewTrack
    from mgsv_cli.media import synth
    from mgsv_cli.models.checkpoint import build_untrained, save_checkpoint

    run_dir = work / "suggest-run"
    model, variant = build_untrained(video_dim=VIDEO_DIM, music_dim=MUSIC_DIM, config=cfg["variant"], seed=0)
    save_checkpoint(run_dir, model, variant, {"note": "random weights, gpu_check only"})
    index_path = work / "index-suggest.sqlite"
    library = work / "library"  # suggest passes over tracks whose file is gone: give each a (stand-in) file
    library.mkdir(exist_ok=True)
    rng = np.random.default_rng(7)
    centres = WINDOW_HOP * np.arange(N_WINDOWS)

    def tracks():
        for k in range(cfg["suggest_tracks"]):
            duration = float(rng.uniform(30.0, 240.0))
            mask = centres <= duration
            feats = rng.standard_normal((N_WINDOWS, MUSIC_DIM), dtype=np.float32) * mask[:, None]
            path = library / f"track_{k:05d}.mp3"
            path.write_bytes(b"stand-in %d" % k)
            # No content hash: the store hashes the (distinct) stand-in file.
            yield NewTrack(str(path), "", duration, feats, mask, PRETRAINED_ENCODER_ID, {"title": f"Track {k}"})

    import_tokens(index_path, tracks())
    width, height = cfg["clip_size"]
    clip = synth.synth_clip(work / "clip.mp4", seconds=cfg["clip_seconds"], with_audio=True,
                            size=(width, height), fps=cfg["clip_fps"])
    out.update(suggest_tracks=cfg["suggest_tracks"], suggest_clip=f"{cfg['clip_seconds']:g} s {width}x{height} "
               f"{cfg['clip_fps']} fps H.264")
    t0 = time.perf_counter()
    suggester = Suggester.open(index_path=index_path, checkpoint=run_dir, device=device, encoders_obj=clip_encoders,
                               offline=True)
    try:
        out["suggest_open_cold_s"] = time.perf_counter() - t0
        suggester.suggest_video(clip, top_k=5)  # warm-up (first kernels, allocator)
        times, embeds, scores = [], [], []
        for _ in range(cfg["suggest_repeats"]):
            t0 = time.perf_counter()
            result = suggester.suggest_video(clip, top_k=5)
            times.append(time.perf_counter() - t0)
            embeds.append(result.timings.get("embed_video", float("nan")))
            scores.append(result.timings.get("score_and_detect", float("nan")))
        if len(result.suggestions) != 5:
            raise RuntimeError(f"suggest returned {len(result.suggestions)} suggestions, expected 5")
    finally:
        suggester.close()
    decodes = []
    for _ in range(cfg["suggest_repeats"]):  # the breakdown: decoding at 1 fps + CLIP preprocessing alone
        t0 = time.perf_counter()
        decode_video(clip)
        decodes.append(time.perf_counter() - t0)
    out["suggest_warm_s"], out["suggest_warm_s_min"] = statistics.median(times), min(times)
    out["suggest_decode_s"] = statistics.median(decodes)
    out["suggest_embed_s"], out["suggest_score_s"] = statistics.median(embeds), statistics.median(scores)
    log(f"suggest (warm): median {out['suggest_warm_s']:.3f} s, best {out['suggest_warm_s_min']:.3f} s "
        f"(decode + preprocess {out['suggest_decode_s']:.3f} s, decode + CLIP {out['suggest_embed_s']:.3f} s, "
        f"scoring + moments {out['suggest_score_s']:.3f} s)")


# ----------------------------------------------------------------------------- main


def judge(out: dict) -> dict:
    """Target met? (None: not measured, or a smoke run, whose sizes and hardware are not the targets')."""
    meets = {}
    for key, (op, target) in TARGETS.items():
        value = out.get("train_epoch_s_steady" if key == "train_epoch_s" else key)
        meets[key] = None if value is None or out.get("smoke") else (value <= target if op == "<=" else value >= target)
    return meets


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (seconds on a CPU): checks the script runs")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 3; smoke 1)")
    parser.add_argument("--compile", action="store_true", help="train with torch.compile (mgsv train --compile)")
    parser.add_argument("--sections", default="data,train,eval,index,clip,suggest",
                        help="comma-separated subset to run (train and eval need data)")
    args = parser.parse_args(argv)
    cfg = dict(SMOKE if args.smoke else FULL)
    if args.epochs:
        cfg["epochs"] = args.epochs
    sections = set(args.sections.split(","))
    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="mgsv_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["MGSV_HOME"] = str(work / "home")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out: dict = {key: None for key in KEYS}
    out.update(check="mgsv gpu_check", smoke=args.smoke, errors={}, python=platform.python_version(),
               cpu_count=os.cpu_count(), targets={k: f"{op} {v:g}" for k, (op, v) in TARGETS.items()},
               peak_gpu_memory_gb_by_section={})
    torch = None
    try:
        root = None
        if "data" in sections:  # first: its writer processes fork before any GPU work
            root = _run("data", out, lambda: section_data(work, cfg, out))
        out["setup_s"] = time.perf_counter() - started
        import torch

        from mgsv_cli.device import device_name, resolve_device

        torch_device = resolve_device(args.device)
        out.update(device=device_name(torch_device), torch=torch.__version__, cuda=torch.version.cuda)
        log(f"device {out['device']}, torch {out['torch']}")
        gpu = torch_device.type == "cuda"
        device = str(torch_device)
        run_dir = None
        if root is not None and "train" in sections:
            run_dir = _run("train", out, lambda: section_train(root, work, cfg, device, args.compile, out), gpu)
        if run_dir is not None and "eval" in sections:
            _run("eval", out, lambda: section_eval(root, run_dir, cfg, device, out), gpu)
        if "index" in sections:
            _run("index", out, lambda: section_index(work, cfg, device, out), gpu)
        clip_encoders = None
        if "clip" in sections or "suggest" in sections:
            clip_encoders = _run("clip", out, lambda: section_clip(work, cfg, device, out), gpu)
        if clip_encoders is not None and "suggest" in sections:
            _run("suggest", out, lambda: section_suggest(work, cfg, device, clip_encoders, out), gpu)
        if gpu:
            out["peak_gpu_memory_gb"] = max(out["peak_gpu_memory_gb_by_section"].values(), default=None)
    except BaseException as exc:  # even Ctrl-C or a crash: print what was measured
        out["errors"]["main"] = one_line(exc)
    finally:
        out["meets"] = judge(out)
        out["ok"] = not out["errors"]
        out["total_s"] = time.perf_counter() - started
        if not (args.keep or args.work):
            shutil.rmtree(work, ignore_errors=True)
        print(json.dumps(out, default=_jsonable), flush=True)
    return 0 if out["ok"] else 1


def _run(name: str, out: dict, fn, gpu: bool = False):
    """Run one section; its error (one line) goes to ``errors`` and the check goes on."""
    log(f"{name} ...")
    if gpu:
        import torch

        torch.cuda.reset_peak_memory_stats()
    try:
        return fn()
    except Exception as exc:
        out["errors"][name] = one_line(exc)
        log(f"{name} failed: {out['errors'][name]}")
        if os.environ.get("MGSV_DEBUG"):
            traceback.print_exc()
        return None
    finally:
        if gpu:
            import torch

            out["peak_gpu_memory_gb_by_section"][name] = torch.cuda.max_memory_allocated() / 2**30


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
