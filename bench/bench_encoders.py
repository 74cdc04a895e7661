"""Video side of feature extraction on this CPU: imports, CLIP ViT-B/32 build, decoding, per-frame cost.

CLIP is real size with random weights (the OpenAI weights are unreachable here); the
cost does not depend on the weight values.

    .venv/bin/python bench/bench_encoders.py [--seconds 24] [--size 1280x720]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mgsv_cli.features import recipe as R  # noqa: E402

IMPORT_PROBE = """
import time
t = time.perf_counter(); import torch; a = time.perf_counter() - t
t = time.perf_counter(); import open_clip; b = time.perf_counter() - t
t = time.perf_counter()
import transformers.models.audio_spectrogram_transformer.modeling_audio_spectrogram_transformer
c = time.perf_counter() - t
print(a, b, c)
"""


def import_times() -> tuple[float, float, float]:
    """Cold-process import seconds of torch, then open_clip, then transformers' AST."""
    out = subprocess.run([sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True, check=True)
    return tuple(float(v) for v in out.stdout.split())


def make_clip(path: Path, seconds: float, size: str) -> None:
    from mgsv_cli.media.ffmpeg import ffmpeg_exe

    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=s={size}:r=30:d={seconds}", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    str(path)], check=True)


def timed(fn, repeat: int = 1):
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=24.0)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    torch_s, open_clip_s, ast_s = import_times()
    print(f"import (cold process): torch {torch_s:.2f} s, open_clip {open_clip_s:.2f} s, "
          f"transformers AST {ast_s:.2f} s")

    import open_clip
    import torch

    from mgsv_cli.features import encoders as F
    from mgsv_cli.media.ffmpeg import read_frames_1fps

    build_s, model = timed(lambda: open_clip.create_model(F.CLIP_MODEL_NAME, pretrained=None,
                                                          force_quick_gelu=True).eval())
    n_params = sum(p.numel() for p in model.visual.parameters()) / 1e6
    print(f"CLIP ViT-B/32 build (random init, both towers): {build_s:.2f} s; vision tower {n_params:.1f} M params")

    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        make_clip(clip, args.seconds, args.size)
        full_s, (full, _) = timed(lambda: read_frames_1fps(clip), args.repeat)
        small_s, (small, _) = timed(lambda: read_frames_1fps(clip, short_side=R.CLIP_IMAGE_SIZE), args.repeat)
        n_frames = len(small)
        print(f"decode {args.seconds:g} s {args.size} H.264 at 1 fps -> {n_frames} frames: "
              f"full size {full_s:.2f} s, resized to short side 224 on the fly {small_s:.2f} s")

        device = torch.device("cpu")
        results = {}
        for label, dtype in (("fp32", torch.float32), ("bf16 autocast", torch.bfloat16)):
            encoders = F.Encoders(encoder_id="bench", is_tiny=False, device=device, clip_model=model,
                                  clip_preprocess=F.clip_preprocess(), clip_dtype=dtype, video_dim=512, music_dim=768)
            encoders.embed_frames(small[:2])  # warm-up
            seconds, feats = timed(lambda: encoders.embed_frames(small), args.repeat)
            results[label] = feats
            print(f"CLIP {label}: {n_frames} frames in one batch {seconds:.2f} s = "
                  f"{seconds / n_frames * 1000:.1f} ms/frame")
            if label == "fp32":
                video_s, _ = timed(lambda: encoders.embed_video(clip), 1)
                print(f"embed_video end to end (decode + preprocess + CLIP fp32): {video_s:.2f} s")
        a, b = results["fp32"], results["bf16 autocast"]
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        print(f"cosine(bf16, fp32) per frame: min {cos.min():.5f} mean {cos.mean():.5f}")

        preprocess = F.clip_preprocess()
        from PIL import Image

        pre_s, _ = timed(lambda: [preprocess(Image.fromarray(f)) for f in small], args.repeat)
        print(f"CLIP preprocess of {n_frames} pre-resized frames: {pre_s * 1000:.0f} ms")


if __name__ == "__main__":
    main()
