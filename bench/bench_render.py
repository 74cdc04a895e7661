"""Speed of ``mgsv render`` and of the media synthesiser on this machine.

Synthesises a 120 s song and 1280x720 clips of several lengths (with a voice track),
then times each mix mode (replace / original / duck) and reports seconds per render,
how many ffmpeg runs it took, the real-time factor, and the loudness reached.

    .venv/bin/python bench/bench_render.py --lengths 5 20 50 --repeat 2
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=float, nargs="+", default=[5.0, 20.0, 50.0], help="clip lengths (s)")
    parser.add_argument("--repeat", type=int, default=2, help="renders per setting (the best is kept)")
    parser.add_argument("--size", default="1280x720", help="clip frame size")
    args = parser.parse_args()

    from mgsv_cli.editor import render
    from mgsv_cli.media import ffmpeg as media
    from mgsv_cli.media import synth

    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        song = synth.synth_track(root / "song.mp3", seconds=120.0, bpm=118, seed=1)
        print(f"synth_track 120 s -> mp3: {time.perf_counter() - t0:.2f} s")
        t0 = time.perf_counter()
        synth.make_demo_library(root / "lib", n_tracks=8, seed=0)
        print(f"make_demo_library (8 tracks of 40-75 s): {time.perf_counter() - t0:.2f} s")

        calls = {"n": 0}
        real_run = media.run_ffmpeg

        def counting_run(*a, **k):
            calls["n"] += 1
            return real_run(*a, **k)

        media.run_ffmpeg = counting_run
        print(f"\n{'clip':>6} {'mix':>9} {'render s':>9} {'x realtime':>10} {'ffmpeg runs':>11} {'LUFS':>6}")
        for length in args.lengths:
            t0 = time.perf_counter()
            clip = synth.synth_clip(root / f"clip{length:g}.mp4", seconds=length, speech_like=True,
                                    size=(width, height), seed=2)
            synth_s = time.perf_counter() - t0
            for mix in render.MIX_MODES:
                best, result = float("inf"), None
                for _ in range(args.repeat):
                    calls["n"] = 0
                    t0 = time.perf_counter()
                    result = render.render(clip, song, start=30.0, out=root / "out.mp4", mix=mix, force=True)
                    best = min(best, time.perf_counter() - t0)
                print(f"{length:>5g}s {mix:>9} {best:>9.2f} {length / best:>10.1f} {calls['n']:>11d} "
                      f"{result.loudness:>6.1f}")
            print(f"        (synthesising the {width}x{height} clip took {synth_s:.2f} s)")


if __name__ == "__main__":
    main()
