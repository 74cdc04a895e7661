"""Packing, loading, batching and evaluation speed of the MGSV-EC data path.

Generates a synthetic dataset in the official layout (tests/_datagen.py), then times:
first load (stat + pack), cached load, batch gathering, and a full `evaluate_model`
of an untrained MaDe over the split's own candidate set.

    .venv/bin/python bench/bench_data.py --videos 2000 --tracks 2000 --config made
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=2000, help="videos in the benchmarked (val) split")
    parser.add_argument("--tracks", type=int, default=2000)
    parser.add_argument("--config", default="made", help="model config for the evaluation timing (made | tiny)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--train-batch", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-eval", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MGSV_HOME"] = str(Path(tmp) / "home")
        import torch
        from _datagen import make_dataset

        from mgsv_cli.models.checkpoint import build_untrained
        from mgsv_cli.research.dataset import load_split
        from mgsv_cli.research.evaluation import evaluate_model

        start = time.perf_counter()
        make_dataset(Path(tmp) / "root", n_tracks=args.tracks, n_train=args.train_batch, n_val=args.videos,
                     n_test=2, seed=0)
        print(f"generate {args.videos} videos + {args.tracks} tracks: {time.perf_counter() - start:.1f} s")

        start = time.perf_counter()
        split = load_split(Path(tmp) / "root", "val")
        packed = time.perf_counter() - start
        n_files = 2 * (split.n + split.n_tracks)
        print(f"first load (stat + pack {n_files} files): {packed:.2f} s = {1000 * packed / n_files:.3f} ms/file"
              f" -> full MGSV-EC train (~105k files) ~{105_000 * packed / n_files / 60:.1f} min")
        start = time.perf_counter()
        split = load_split(Path(tmp) / "root", "val")
        cached = time.perf_counter() - start
        print(f"cached load: {cached:.3f} s = {1e6 * cached / n_files:.1f} us/file (CSV + stat per file)")

        for dedupe in (False, True):
            start = time.perf_counter()
            n_rows = 0
            for batch in split.batches(args.train_batch, shuffle=True, seed=0, dedupe_tracks=dedupe):
                n_rows += len(batch)
            elapsed = time.perf_counter() - start
            print(f"batches of {args.train_batch} (shuffled, dedupe_tracks={dedupe}): "
                  f"{1000 * elapsed / max(1, split.n_batches(args.train_batch)):.1f} ms/batch, "
                  f"{n_rows / elapsed:.0f} rows/s")

        if args.skip_eval:
            return
        device = torch.device(args.device)
        model, _ = build_untrained(config=args.config)
        model.to(device)
        start = time.perf_counter()
        result = evaluate_model(model, split, device, batch_size=args.batch_size)
        elapsed = time.perf_counter() - start
        print(f"evaluate_model ({args.config}, {split.n} videos x {split.n_tracks} tracks, {device}, "
              f"torch threads {torch.get_num_threads()}): {elapsed:.1f} s; R@10 {result['r10']:.1f} (untrained)")


if __name__ == "__main__":
    main()
