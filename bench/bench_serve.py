"""Benchmark of `mgsv suggest` while `mgsv serve` runs: the whole command, as a user times it.

Fixtures as in bench_suggest.py (not timed): a 4,000-track index of random AST tokens
(`import_tokens`, each track named after an empty file, since suggest passes over tracks
whose file is gone), a randomly initialised `made` MaDe saved as a checkpoint, a real-size
ViT-B/32 CLIP with random weights loaded through the real open_clip loader from a local
file (MGSV_CLIP_WEIGHTS), and 24 s 720x1280 30 fps clips with sound.

Then `mgsv serve` is started (time until its URL line: loading CLIP, MaDe, the index and
encoding every track's derived rows) and `mgsv suggest CLIP --json` is run as a fresh process each
time (python start, imports, HTTP round trip, the server's work, printing):
  - a clip the server has not seen (decode at 1 fps + CLIP + scoring + moments);
  - the same clip again, and with other options (--top 10 --snap beat): the server keeps
    each clip's CLIP features, so only scoring and moments run;
  - the same command with --no-server (everything in-process), for comparison, and a
    check that both print the same JSON.
Target: at most 1.5 s for the whole command while a server runs.

Usage: python bench/bench_serve.py [--tracks 4000] [--repeats 5]
Prints numbers; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import bench_suggest as fixtures  # noqa: E402  (build_index, save_made_checkpoint, save_random_clip)

CLIP_SECONDS = 24.0


def mgsv(args: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mgsv_cli", *args], capture_output=True, text=True, env=env)
    return time.perf_counter() - t0, done


def start_server(args: list[str], env: dict, timeout: float = 900.0) -> tuple[subprocess.Popen, float, str]:
    t0 = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "mgsv_cli", "serve", "--port", "0", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in process.stdout:
            lines.put(line)
        lines.put(None)  # the server's stdout closed: it exited

    threading.Thread(target=read, daemon=True).start()
    try:
        url = lines.get(timeout=timeout)
    except queue.Empty:
        url = None
    if url is None:  # a server that dies at start says why at once, not after the timeout
        process.kill()
        raise SystemExit(f"mgsv serve did not start: {process.stderr.read()[-2000:]}")
    url = url.strip()
    return process, time.perf_counter() - t0, url


def server_timings(clip: Path, index: Path, run_dir: Path) -> dict[str, float]:
    """The server's own timings of one suggestion (the API's unrounded answer carries them)."""
    import http.client

    from mgsv_cli import paths
    from mgsv_cli.serve import state

    st = state.read_state()
    body = {"video": str(clip), "top": 5, "exact": True, "options": {
        "index": str(index), "checkpoint": str(run_dir), "device": "cpu", "data_dir": str(paths.data_dir())}}
    conn = http.client.HTTPConnection(st.connect_host, st.port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/api/suggest", body=json.dumps(body),
                 headers={"Authorization": f"Bearer {st.token}", "Content-Type": "application/json"})
    reply = json.loads(conn.getresponse().read())
    total = time.perf_counter() - t0
    conn.close()
    timings = reply["exact"]["timings"]
    return {"decode + CLIP": timings.get("embed_video", 0.0), "score + moments": timings.get("score_and_detect", 0.0),
            "HTTP request in all": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from mgsv_cli.features.encoders import PRETRAINED_ENCODER_ID
    from mgsv_cli.media import synth

    with tempfile.TemporaryDirectory(prefix="mgsv_bench_serve_") as tmp_name:
        tmp = Path(tmp_name)
        home = tmp / "home"
        os.environ["MGSV_HOME"] = str(home)
        index = tmp / "index.sqlite"
        run_dir = home / "data" / "runs" / "bench"
        fixtures.save_made_checkpoint(run_dir)
        fixtures.build_index(index, args.tracks, PRETRAINED_ENCODER_ID)  # tracks named after empty files
        clip_weights = tmp / "random_clip.safetensors"
        fixtures.save_random_clip(clip_weights)
        clips = [synth.synth_clip(tmp / f"clip{i}.mp4", seconds=CLIP_SECONDS, with_audio=True, size=(720, 1280),
                                  fps=30, seed=i) for i in range(4)]
        env = {**os.environ, "MGSV_HOME": str(home), "MGSV_CLIP_WEIGHTS": str(clip_weights), "HF_HUB_OFFLINE": "1"}
        options = ["--index", str(index), "--checkpoint", str(run_dir), "--device", "cpu", "--offline"]
        print(f"{args.tracks} tracks, 24 s 720x1280 30 fps clips, real-size random CLIP ViT-B/32 and MaDe 'made', "
              f"{os.cpu_count()} CPUs")

        server, ready_s, url = start_server(options, env)
        print(f"mgsv serve ready in {ready_s:.1f} s (no derived rows yet: CLIP, MaDe, index, {args.tracks} tracks "
              f"encoded by MaDe)")
        try:
            suggest = ["suggest", "--json", *options]
            first, done = mgsv([*suggest, str(clips[0])], env)
            if done.returncode != 0:
                raise SystemExit(f"mgsv suggest failed: {done.stderr[-2000:]}")
            served_json = done.stdout
            repeat = [mgsv([*suggest, str(clips[0])], env)[0] for _ in range(args.repeats)]
            other = [mgsv([*suggest, "--top", "10", "--snap", "beat", str(clips[0])], env)[0]
                     for _ in range(args.repeats)]
            fresh = [mgsv([*suggest, str(clip)], env)[0] for clip in clips[1:-1]]
            breakdown = server_timings(clips[-1], index, run_dir)
            health_t0 = time.perf_counter()
            mgsv(["--version"], env)
            bare = time.perf_counter() - health_t0
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
        state_left = (home / "data" / "run" / "serve.json").exists()
        in_process, done = mgsv([*suggest, "--no-server", str(clips[0])], env)
        same = json.loads(done.stdout) == json.loads(served_json) if done.returncode == 0 else False

        def show(name: str, values: list[float]) -> None:
            print(f"  {name:<58} min {min(values):5.2f} s, median {statistics.median(values):5.2f} s")

        print("whole `mgsv suggest CLIP --json` command, wall time, fresh process each (target <= 1.5 s):")
        show("a clip the server has not seen (decode + CLIP + ranking)", [first, *fresh])
        show("the same clip again (CLIP features kept by the server)", repeat)
        show("the same clip, --top 10 --snap beat", other)
        print(f"  {'for scale: `mgsv --version` (python start + CLI import)':<58} {bare:5.2f} s")
        print("  inside the server, for another unseen clip: " + ", ".join(
            f"{name} {seconds:.2f} s" for name, seconds in breakdown.items()))
        print(f"  {'--no-server (in-process, derived rows kept)':<58} {in_process:5.2f} s")
        print(f"server and in-process print the same JSON: {same}; state file removed on stop: {not state_left}")


if __name__ == "__main__":
    main()
