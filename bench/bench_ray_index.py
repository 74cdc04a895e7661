"""Ray indexing throughput against the local engine on the same folder and machine (issue 10, item 4).

Generates ``--tracks`` songs of ``--seconds`` s (``media.synth``, a mix of wav/mp3/flac;
kept in ``--folder`` for reuse), then indexes that folder twice with the same encoders:

- ``--engine local``: ``index.pipeline.index_folder`` into a fresh SQLite index (the encoders
  load inside the timed call, as `mgsv index` does);
- ``--engine ray``: ``index.ray_engine.index_with_ray`` into a fresh Lance store on a local
  Ray of ``--num-cpus`` CPUs. Ray's start is timed apart (``ray_init_s``); the run itself
  includes the actors' start and their encoder loading.

Then each engine runs again on the unchanged folder (``*_rerun_s``): the plan alone (size and
mtime as stored: nothing read, nothing embedded; on Ray, the listing joined with the store).

Prints files/s and audio-seconds/s of each and the overhead ratio (Ray's seconds over
local's: above 1 means Ray is slower on this machine), then ONE JSON line
(``{"bench": "ray_index", ...}``, read by ``bench/bench_scale.py``). ``measure(...)``
returns the same dict. Tiny encoders (the default while the AST weights are missing) make
AST nearly free, so the ratio then shows Ray's overhead over decoding + filterbanks alone;
with ``--encoders pretrained`` AST dominates both engines.

    .venv/bin/python bench/bench_ray_index.py --tracks 24 --seconds 30
    .venv/bin/python bench/bench_ray_index.py --encoders pretrained --tracks 16 --seconds 60
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SUFFIXES = (".wav", ".mp3", ".flac")


def make_folder(folder: Path, n_tracks: int, seconds: float) -> Path:
    """``n_tracks`` generated songs under ``folder`` (reused when already there)."""
    from mgsv_cli.media import synth

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_tracks):
        target = folder / f"song-{i:05d}-{int(seconds)}s{SUFFIXES[i % len(SUFFIXES)]}"
        if not target.exists():
            synth.synth_track(target, seconds=seconds, bpm=90.0 + (i * 7) % 60, seed=i, title=f"Song {i}")
    return folder


def measure(folder, *, encoders: str = "tiny", num_cpus: int | None = None, detect_beats: bool = False,
            device: str = "cpu", work_dir=None) -> dict:
    """Index ``folder`` with both engines; returns seconds, files/s, audio-s/s and the overhead ratio.

    Starts (and shuts down) its own local Ray with ``num_cpus`` CPUs (all by default); a Ray
    already initialised in this process is used as it is (then ``ray_init_s`` is 0).
    """
    import ray

    from mgsv_cli.features.encoders import load_encoders
    from mgsv_cli.index.pipeline import index_folder
    from mgsv_cli.index.ray_engine import index_with_ray
    from mgsv_cli.media.ffmpeg import probe
    from mgsv_cli.media.files import scan_audio_files

    folder = Path(folder)
    files = scan_audio_files(folder)
    audio_seconds = sum(probe(p).duration for p in files)
    scratch = Path(tempfile.mkdtemp(prefix="mgsv-bench-ray-", dir=work_dir))
    try:
        t0 = time.perf_counter()
        local = index_folder(folder, scratch / "index.sqlite", detect_beats=detect_beats,
                             encoders=lambda: load_encoders(kind=encoders, device=device, parts=("music",)))
        local_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        local_again = index_folder(folder, scratch / "index.sqlite", detect_beats=detect_beats,
                                   encoders=lambda: load_encoders(kind=encoders, device=device, parts=("music",)))
        local_rerun_s = time.perf_counter() - t0
        started = not ray.is_initialized()
        t0 = time.perf_counter()
        if started:
            ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        init_s = time.perf_counter() - t0 if started else 0.0
        cpus = int(ray.cluster_resources().get("CPU", 0))
        try:
            t0 = time.perf_counter()
            remote = index_with_ray(folder, str(scratch / "catalog.lance"), encoder_kind=encoders, device=device,
                                    detect_beats=detect_beats)
            ray_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            remote_again = index_with_ray(folder, str(scratch / "catalog.lance"), encoder_kind=encoders,
                                          device=device, detect_beats=detect_beats)
            ray_rerun_s = time.perf_counter() - t0
        finally:
            if started:
                ray.shutdown()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if local.added != len(files) or remote.added != len(files):
        raise RuntimeError(f"not every file was indexed: local {local.added}, ray {remote.added} of {len(files)} "
                           f"(failed: {local.failed or remote.failed})")
    if local_again.unchanged != len(files) or remote_again.unchanged != len(files):
        raise RuntimeError(f"a rerun on the unchanged folder did work: local {local_again}, ray {remote_again}")
    return {
        "bench": "ray_index", "encoders": encoders, "files": len(files), "audio_s": round(audio_seconds, 1),
        "ray_cpus": cpus, "beats": detect_beats,
        "local_s": round(local_s, 2), "ray_init_s": round(init_s, 2), "ray_s": round(ray_s, 2),
        "local_files_per_s": round(len(files) / local_s, 3), "ray_files_per_s": round(len(files) / ray_s, 3),
        "local_audio_s_per_s": round(audio_seconds / local_s, 2), "ray_audio_s_per_s": round(audio_seconds / ray_s, 2),
        "overhead_ratio": round(ray_s / local_s, 3), "overhead_ratio_with_init": round((ray_s + init_s) / local_s, 3),
        "local_rerun_s": round(local_rerun_s, 2), "ray_rerun_s": round(ray_rerun_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each generated song")
    parser.add_argument("--encoders", default="tiny", choices=["tiny", "pretrained"])
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--beats", action="store_true", help="also find beat grids (both engines)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--folder", default=None, help="where the generated songs live (default: a temporary folder)")
    args = parser.parse_args()
    temporary = args.folder is None
    folder = Path(args.folder or tempfile.mkdtemp(prefix="mgsv-bench-music-"))
    try:
        make_folder(folder, args.tracks, args.seconds)
        result = measure(folder, encoders=args.encoders, num_cpus=args.num_cpus, detect_beats=args.beats,
                         device=args.device)
    finally:
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"{result['files']} files, {result['audio_s']:.0f} s of audio, {args.encoders} encoders, "
          f"Ray on {result['ray_cpus']} CPUs (os.cpu_count() = {os.cpu_count()})")
    print(f"  local: {result['local_s']:7.2f} s  {result['local_files_per_s']:7.3f} files/s  "
          f"{result['local_audio_s_per_s']:8.2f} audio-s/s")
    print(f"  ray:   {result['ray_s']:7.2f} s  {result['ray_files_per_s']:7.3f} files/s  "
          f"{result['ray_audio_s_per_s']:8.2f} audio-s/s  (+ {result['ray_init_s']:.2f} s ray.init)")
    print(f"  overhead ratio (ray / local): {result['overhead_ratio']:.3f}, "
          f"with ray.init: {result['overhead_ratio_with_init']:.3f}")
    print(f"  rerun, nothing changed: local {result['local_rerun_s']:.2f} s, ray {result['ray_rerun_s']:.2f} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
