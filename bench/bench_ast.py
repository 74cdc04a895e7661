"""AST-base (real size, random weights) music-window throughput on this CPU.

Each setting runs in a fresh subprocess (clean peak RSS), on windows of several
synthetic tracks (the batches mix tracks, as ``Encoders.embed_tracks`` does), and is
compared with the float32 eager reference by cosine per window.

    .venv/bin/python bench/bench_ast.py                    # the default grid
    .venv/bin/python bench/bench_ast.py --settings cast-bf16/sdpa/4 fp32/sdpa/2
    .venv/bin/python bench/bench_ast.py --e2e              # + features.py defaults end to end
    .venv/bin/python bench/bench_ast.py --settings --e2e   # only features.py's own path

A setting is ``precision/attention/batch[/compile][/medium]``: precision fp32 | autocast-bf16 |
cast-bf16; attention sdpa | eager; ``compile`` = torch.compile; ``medium`` =
torch.set_float32_matmul_precision("medium"). Timings under other load are noisy: the
load average and process CPU time are printed beside the wall-clock numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mgsv_cli.features import recipe as R  # noqa: E402

DEFAULT_SETTINGS = [
    "fp32/eager/2", "fp32/sdpa/2", "autocast-bf16/sdpa/2", "cast-bf16/eager/2",
    "cast-bf16/sdpa/1", "cast-bf16/sdpa/2", "cast-bf16/sdpa/4", "cast-bf16/sdpa/8",
]
MODEL_SEED = 1234


def synthetic_windows(n_windows: int) -> np.ndarray:
    """Normalised filterbanks of valid windows from a few tracks of different lengths."""
    from mgsv_cli.features.encoders import TrackSpectrogram

    rng = np.random.default_rng(0)
    windows = []
    for k, seconds in enumerate((9.0, 21.0, 14.0, 40.0)):
        t = np.arange(int(seconds * 16000)) / 16000
        pitch = 110 * (k + 2) * 2 ** (np.floor(t / 0.8) % 12 / 12)
        audio = 0.3 * np.sin(2 * np.pi * np.cumsum(pitch) / 16000) + 0.03 * rng.standard_normal(t.size)
        windows.append(TrackSpectrogram(audio.astype(np.float32)).windows())
    return np.concatenate(windows)[:n_windows]


def build_model(attention: str):
    import torch
    from transformers import ASTConfig, ASTModel

    torch.manual_seed(MODEL_SEED)
    return ASTModel(ASTConfig(attn_implementation=attention)).eval()


def run_one(setting: str, windows_path: str, out_path: str, threads: int) -> dict:
    """Time one setting in this process; save its features to ``out_path``."""
    import torch

    torch.set_num_threads(threads)
    parts = setting.split("/")
    precision, attention, batch = parts[0], parts[1], int(parts[2])
    if "medium" in parts:
        torch.set_float32_matmul_precision("medium")
    windows = np.load(windows_path)
    started = time.perf_counter()
    model = build_model(attention)
    if precision == "cast-bf16":
        model = model.to(torch.bfloat16)
    input_dtype = torch.bfloat16 if precision == "cast-bf16" else torch.float32
    forward = torch.compile(model) if "compile" in parts else model
    build_s = time.perf_counter() - started

    def embed(chunk: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(chunk).to(input_dtype)
        with torch.inference_mode():
            if precision == "autocast-bf16":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return forward(input_values=x).pooler_output.float().numpy()
            return forward(input_values=x).pooler_output.float().numpy()

    started = time.perf_counter()
    embed(windows[:batch])  # warm-up (and compilation)
    warmup_s = time.perf_counter() - started
    outputs = []
    wall, cpu = time.perf_counter(), time.process_time()
    for first in range(0, len(windows), batch):
        outputs.append(embed(windows[first:first + batch]))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    np.save(out_path, np.concatenate(outputs))
    return dict(
        setting=setting, windows=len(windows), windows_per_s=len(windows) / wall,
        windows_per_cpu_s=len(windows) / cpu, threads=torch.get_num_threads(),
        build_s=build_s, warmup_s=warmup_s,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, load=os.getloadavg()[0],
    )


def run_e2e(n_tracks: int) -> dict:
    """features.py's own path (defaults) on a real-size random AST: fbank + batching + model."""
    import torch

    from mgsv_cli.device import resolve_device
    from mgsv_cli.features import encoders as F

    device = resolve_device("cpu")
    dtype = F._ast_dtype(device, "auto")
    encoders = F.Encoders(encoder_id="bench", is_tiny=False, device=device, ast_model=F._place_ast(
        build_model("sdpa"), device, dtype), ast_dtype=dtype, video_dim=512, music_dim=768)
    rng = np.random.default_rng(1)
    tracks = [(f"t{k}", (0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32))
              for k, s in enumerate(rng.uniform(6, 16, n_tracks))]
    n_windows = sum(int(R.window_valid(len(a) / 16000).sum()) for _, a in tracks)
    wall, cpu = time.perf_counter(), time.process_time()
    for result in encoders.embed_tracks(tracks):
        assert result.ok
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return dict(setting=f"e2e features.py defaults ({dtype}, batch {encoders.batch_windows})",
                windows=n_windows, windows_per_s=n_windows / wall, windows_per_cpu_s=n_windows / cpu,
                threads=torch.get_num_threads(),
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, load=os.getloadavg()[0])


def gemm_calibration(threads: int) -> str:
    """Best-of-5 GFLOP/s of one AST-sized linear layer in fp32 and bf16: how much CPU we really got."""
    import torch

    torch.set_num_threads(threads)
    rates = []
    for dtype in (torch.float32, torch.bfloat16):
        x, w = torch.randn(4 * 1214, 768).to(dtype), torch.randn(3072, 768).to(dtype)
        torch.nn.functional.linear(x, w)
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            torch.nn.functional.linear(x, w)
            best = min(best, time.perf_counter() - started)
        rates.append(f"{str(dtype).split('.')[-1]} {2 * x.shape[0] * 768 * 3072 / best / 1e9:.0f} GFLOP/s")
    return ", ".join(rates)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="*", default=DEFAULT_SETTINGS)
    parser.add_argument("--windows", type=int, default=16, help="windows timed per setting")
    parser.add_argument("--e2e", action="store_true", help="also time features.py's embed_tracks")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per setting")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--windows-file", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one == "e2e":
        print(json.dumps(run_e2e(4)))
        return
    if args.one:
        print(json.dumps(run_one(args.one, args.windows_file, args.out, args.threads)))
        return

    work = Path(tempfile.mkdtemp(prefix="bench_ast_"))
    windows_file = work / "windows.npy"
    np.save(windows_file, synthetic_windows(args.windows))
    print(f"{os.cpu_count()} CPUs, {args.threads} torch threads per setting; load average now "
          f"{os.getloadavg()[0]:.1f}; GEMM calibration (AST MLP shape): {gemm_calibration(args.threads)}")
    print(f"{'setting':34s} {'win/s':>7s} {'win/cpu-s':>9s} {'cos min':>8s} {'cos mean':>8s} "
          f"{'RSS MB':>7s} {'build s':>7s} {'warm s':>7s} {'load':>5s}")
    settings = list(args.settings)
    if settings and "fp32/eager/2" not in settings:
        settings.insert(0, "fp32/eager/2")  # the reference every cosine is taken against
    reference = None
    for setting in settings:
        out = work / f"{setting.replace('/', '_')}.npy"
        proc = subprocess.run([sys.executable, __file__, "--one", setting, "--windows-file", str(windows_file),
                               "--out", str(out), "--threads", str(args.threads)], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{setting:34s} failed: {proc.stderr.strip().splitlines()[-1:]}")
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        feats = np.load(out)
        if reference is None:
            reference = feats
        cos = cosine_rows(reference, feats)
        print(f"{setting:34s} {row['windows_per_s']:7.3f} {row['windows_per_cpu_s']:9.3f} {cos.min():8.5f} "
              f"{cos.mean():8.5f} {row['peak_rss_mb']:7.0f} {row['build_s']:7.1f} {row['warmup_s']:7.1f} "
              f"{row['load']:5.1f}")
    if args.e2e:
        proc = subprocess.run([sys.executable, __file__, "--one", "e2e"], capture_output=True, text=True)
        if proc.returncode != 0:
            print("e2e failed:", proc.stderr.strip().splitlines()[-1:])
        else:
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{row['setting']}: {row['windows']} windows, {row['windows_per_s']:.3f} win/s, "
                  f"{row['windows_per_cpu_s']:.3f} win/cpu-s, peak RSS {row['peak_rss_mb']:.0f} MB, "
                  f"load {row['load']:.1f}")


if __name__ == "__main__":
    main()
