"""Beat detection cost per track (it runs once per track at index time) and accuracy on
synthetic songs of known tempo. Prints numbers; asserts nothing.

    python bench/bench_beats.py
"""
from __future__ import annotations

import time

import numpy as np


def main() -> None:
    import librosa

    from mgsv_cli.media.beats import detect_beats
    from mgsv_cli.media.synth import SAMPLE_RATE, music_samples

    def mono_16k(stereo):
        return librosa.resample(stereo.mean(axis=1), orig_sr=SAMPLE_RATE, target_sr=16000)

    warm = mono_16k(music_samples(10, bpm=100, seed=0))
    t0 = time.perf_counter()
    detect_beats(warm, 16000)  # the first call pays librosa's lazy imports and numba compilation
    print(f"first call (imports, JIT): {time.perf_counter() - t0:.2f} s")
    print(f"{'seconds':>8} {'bpm':>6} {'found bpm':>9} {'beats':>6} {'max err ms':>10} {'downbeats':>9} {'time s':>7}")
    for seconds, bpm in ((30, 92), (120, 118), (240, 128)):
        audio = mono_16k(music_samples(seconds, bpm=bpm, seed=1))
        t0 = time.perf_counter()
        grid = detect_beats(audio, 16000)
        elapsed = time.perf_counter() - t0
        truth = np.arange(0.0, seconds, 60.0 / bpm)
        errors = [np.min(np.abs(truth - b)) for b in grid.beats]
        worst = 1000 * max(errors) if errors else float("nan")
        n_down = "none" if grid.downbeats is None else str(len(grid.downbeats))
        print(f"{seconds:>8} {bpm:>6} {grid.tempo_bpm:>9.2f} {len(grid.beats):>6} {worst:>10.1f} {n_down:>9} "
              f"{elapsed:>7.2f}")


if __name__ == "__main__":
    main()
