"""`mgsv data build` on this CPU, and the whole loop's held-out rates over seeds.

Part 1 (``--sections build``): a planted media set (``make_media_dataset(build=False)``: real
FLAC tracks and H.264 clips) built twice with ``research.build.build_dataset``, with the tiny
encoders and with real-size encoders with random weights (open_clip ViT-B/32 and transformers'
AST-base from their configs, no weights: the pretrained ones are unreachable here, and the cost
does not depend on the weights). Files per second for the whole build, then where the time
goes, measured apart on the same files: decoding (music: ffmpeg to 16 kHz + filterbanks;
video: 1-fps frames + CLIP preprocessing) against the encoders' forward passes.

Part 2 (``--sections loop``): the loop of tests/research/test_media_loop.py (synth --media,
train tiny-plus, index, suggest on the held-out clips, and ``--untrained`` on the same) for each
seed, through the real CLI in a subprocess; the top-3 and hit rates with their chance levels.

Prints one line per figure and ONE JSON line at the end. Numbers on a shared machine are noisy:
the load average is printed beside them.

    .venv/bin/python bench/bench_data_build.py                       # both parts (~4.5 min on 2 cores at load 2)
    .venv/bin/python bench/bench_data_build.py --sections build --tracks 4 --clips 1
    .venv/bin/python bench/bench_data_build.py --sections loop --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def load_note() -> str:
    return f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"


def real_size_random_encoders():
    """CLIP ViT-B/32 and AST-base at their real sizes, random weights, on the CPU, with the
    dtypes and placement ``load_encoders`` gives the pretrained ones."""
    import open_clip
    import torch
    from transformers import ASTConfig, ASTModel

    from mgsv_cli.features import encoders as F

    device = torch.device("cpu")
    clip_dtype, ast_dtype = F._clip_dtype(device, "auto"), F._ast_dtype(device, "auto")
    with F.skip_weight_init():  # random values are all a cost measurement needs
        clip = open_clip.create_model(F.CLIP_MODEL_NAME, pretrained=None, force_quick_gelu=True).eval()
        ast = ASTModel(ASTConfig(attn_implementation="sdpa"))
    with torch.no_grad():
        for module in (clip, ast):
            for parameter in module.parameters():
                parameter.normal_(0.0, 0.02)
    return F.Encoders(encoder_id="bench-real-size-random", is_tiny=False, device=device,
                      clip_model=clip.to(clip_dtype), clip_preprocess=F.clip_preprocess(), clip_dtype=clip_dtype,
                      ast_model=F._place_ast(ast, device, ast_dtype), ast_dtype=ast_dtype,
                      video_dim=512, music_dim=768, batch_windows=None)


def time_build(media, encoders, label: str) -> dict:
    from mgsv_cli.research.build import build_dataset

    with tempfile.TemporaryDirectory(prefix="mgsv-bench-build-") as tmp:
        started = time.perf_counter()
        report = build_dataset(media.pairs_csv, Path(tmp) / "ds", encoders=encoders)
        seconds = time.perf_counter() - started
    n_files = report.n_tracks + report.n_videos
    print(f"{label}: build of {report.n_tracks} tracks + {report.n_videos} clips in {seconds:.1f} s = "
          f"{n_files / seconds:.2f} files/s ({load_note()})", flush=True)
    return {"seconds": seconds, "files": n_files, "files_per_s": n_files / seconds, "tracks": report.n_tracks,
            "videos": report.n_videos}


def time_parts(media, encoders, label: str, n_music: int, n_clips: int) -> dict:
    """Decoding and the encoders timed apart on the same files (inside a build they overlap)."""
    from mgsv_cli.features.encoders import decode_video, load_track_audio
    from mgsv_cli.features.recipe import TrackSpectrogram

    music = sorted(media.music_dir.glob("*.flac"))[:n_music]
    clips = sorted(media.clips_dir("train").glob("*.mp4"))[:n_clips]
    t0 = time.perf_counter()
    windows = []
    for path in music:
        samples, duration = load_track_audio(str(path))
        spectrogram = TrackSpectrogram(samples, duration)
        windows += [spectrogram.window(k) for k in np.flatnonzero(spectrogram.valid)]
    music_decode = time.perf_counter() - t0
    t0 = time.perf_counter()
    for begin in range(0, len(windows), encoders.batch_windows):
        encoders.embed_windows(np.stack(windows[begin:begin + encoders.batch_windows]))
    music_model = time.perf_counter() - t0
    t0 = time.perf_counter()
    decoded = [decode_video(str(path)) for path in clips]
    video_decode = time.perf_counter() - t0
    t0 = time.perf_counter()
    for video in decoded:
        encoders.embed_decoded(video)
    video_model = time.perf_counter() - t0
    n_frames = sum(len(v.pixels) for v in decoded)
    total = music_decode + music_model + video_decode + video_model
    result = {
        "music_decode_s_per_track": music_decode / len(music), "music_encoder_s_per_track": music_model / len(music),
        "video_decode_s_per_clip": video_decode / len(clips), "video_encoder_s_per_clip": video_model / len(clips),
        "windows": len(windows), "frames": n_frames,
        "decode_share": (music_decode + video_decode) / total, "encoder_share": (music_model + video_model) / total,
    }
    print(f"{label}: music {music_decode / len(music):.2f} s decode + {music_model / len(music):.2f} s AST per track "
          f"({len(windows) / len(music):.0f} windows); video {video_decode / len(clips):.3f} s decode + "
          f"{video_model / len(clips):.3f} s CLIP per clip ({n_frames / len(clips):.1f} frames); time in decoding "
          f"{100 * result['decode_share']:.0f}%, in the encoders {100 * result['encoder_share']:.0f}% ({load_note()})",
          flush=True)
    return result


def section_build(args) -> dict:
    from mgsv_cli.features.encoders import load_encoders
    from mgsv_cli.research.synthetic import make_media_dataset

    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="mgsv-bench-media-") as tmp:
        media = make_media_dataset(Path(tmp) / "planted", n_tracks=args.tracks, seed=0,
                                   clips={"train": args.clips, "val": 1, "test": 1}, build=False)
        print(f"media: {len(media.tracks)} tracks of {np.mean([t.duration for t in media.tracks]):.0f} s, "
              f"{len(media.clips)} clips of 5-9 s at 2 fps", flush=True)
        for label, make in (("tiny", lambda: load_encoders("tiny", device="cpu")),
                            ("real-size random", real_size_random_encoders)):
            encoders = make()
            out[label] = time_build(media, encoders, label)
            out[label].update(time_parts(media, encoders, label, n_music=min(3, args.tracks), n_clips=12))
    return out


def run_cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "mgsv_cli", *map(str, args)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"mgsv {' '.join(map(str, args))} failed: {done.stderr[-800:]}")
    return done


def section_loop(args) -> dict:
    """The loop test's steps for each seed; rates of the trained and of an untrained model."""
    from mgsv_cli.research.synthetic import read_planted, score_held_out

    runs = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix=f"mgsv-bench-loop-{seed}-") as tmp:
            tmp = Path(tmp)
            env = {**os.environ, "MGSV_HOME": str(tmp / "home"), "HF_HUB_OFFLINE": "1"}
            root, index = tmp / "planted", tmp / "library.sqlite"
            started = time.perf_counter()
            run_cli("data", "synth", root, "--media", "--tracks", args.loop_tracks, "--clips", args.loop_clips,
                    "--seed", seed, "--device", "cpu", env=env)
            synth_s = time.perf_counter() - started
            run_cli("train", "--data", root, "--config", "tiny-plus", "--epochs", args.epochs, "--batch-size", "16",
                    "--out", tmp / "run", "--device", "cpu", env=env)
            run_cli("index", root / "media" / "music", "--index", index, "--encoders", "tiny", "--no-beats",
                    "--device", "cpu", env=env)
            planted = read_planted(root)
            rates = {}
            for name, model in (("trained", ["--checkpoint", tmp / "run"]), ("untrained", ["--untrained"])):
                done = run_cli("suggest", root / "media" / "clips" / "test", "--index", index, *model, "--top", "3",
                               "--json", "--device", "cpu", "--no-server", env=env)
                rates[name] = score_held_out(planted, [json.loads(line) for line in done.stdout.splitlines() if line])
            seconds = time.perf_counter() - started
            if seed == args.seeds[0]:  # what a user sees: one held-out clip, as `mgsv suggest` prints it
                clip = next(c for c in planted["clips"] if c["split"] == "test")
                track_file = {t["music_id"]: t["file"] for t in planted["tracks"]}
                shown = run_cli("suggest", root / "media" / clip["file"], "--index", index, "--checkpoint",
                                tmp / "run", "--top", "3", "--device", "cpu", "--no-server", env=env)
                print(f"$ mgsv suggest {clip['file']} --index library.sqlite --checkpoint run --top 3   "
                      f"(planted: {track_file[clip['music_id']]} from {clip['music_start']:.1f} s)\n{shown.stdout}",
                      flush=True)
        runs.append({"seed": seed, "seconds": seconds, "synth_and_build_s": synth_s, **rates})
        t, u = rates["trained"], rates["untrained"]
        print(f"seed {seed}: trained top-3 {100 * t['top']:.0f}% (top-1 {100 * t['top1']:.0f}%), hit "
              f"{100 * t['hit']:.0f}%; untrained top-3 {100 * u['top']:.0f}%, hit {100 * u['hit']:.0f}%; chance "
              f"top-3 {100 * t['chance_top']:.1f}%, hit {100 * t['chance_hit']:.1f}% ({t['n']} held-out clips; "
              f"loop {seconds:.0f} s, {load_note()})", flush=True)
    summary = {}
    for model in ("trained", "untrained"):
        for key in ("top", "top1", "hit"):
            values = np.array([run[model][key] for run in runs])
            summary[f"{model}_{key}"] = [float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0]
    print("over seeds (mean, sample std): " + ", ".join(f"{k} {100 * v[0]:.0f} ± {100 * v[1]:.0f}%"
                                                        for k, v in summary.items()), flush=True)
    return {"runs": runs, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", default=["build", "loop"], choices=["build", "loop"])
    parser.add_argument("--tracks", type=int, default=6, help="build: planted tracks")
    parser.add_argument("--clips", type=int, default=2, help="build: training clips per section")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="loop: seeds")
    parser.add_argument("--loop-tracks", type=int, default=8)
    parser.add_argument("--loop-clips", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    result = {"cpus": os.cpu_count(), "load_start": os.getloadavg()[0]}
    if "build" in args.sections:
        result["build"] = section_build(args)
    if "loop" in args.sections:
        result["loop"] = section_loop(args)
    result["load_end"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
