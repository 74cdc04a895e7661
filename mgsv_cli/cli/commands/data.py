"""``mgsv data fetch|synth``: the MGSV-EC dataset, real or synthetic (``research``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from mgsv_cli.cli.app import data_app
from mgsv_cli.cli.output import console, err_console


@data_app.command("fetch", epilog="Example: mgsv data fetch ~/datasets/mgsv-ec   (then: mgsv train --data ~/datasets/mgsv-ec)")
def data_fetch_command(
    root: Path = typer.Argument(..., help="folder to download the dataset into (resumes a partial download)"),
    repo: str = typer.Option("xxayt/MGSV-EC", "--repo", help="Hugging Face dataset repository"),
) -> None:
    """Download MGSV-EC (CSV labels and precomputed CLIP/AST features) from the Hugging Face hub.

    Needs internet; set HF_TOKEN if the repository asks for a login.
    """
    from mgsv_cli.research import download

    with err_console.status(f"downloading {repo} into {root}"):
        written = download.fetch_dataset(root, repo_id=repo)
    console.print(f"[green]✓[/] {written} is in the official layout: `mgsv train --data {written}`", highlight=False)


@data_app.command("synth", epilog="Example: mgsv data synth /tmp/mgsv-synth   (then: mgsv train --data /tmp/mgsv-synth --config tiny --epochs 5)")
def data_synth_command(
    root: Path = typer.Argument(..., help="folder to write into (new, or without a dataset/ or feature files)"),
    videos: int = typer.Option(800, "--videos", help="videos in all: 10% to val, 10% to test, the rest to train"),
    tracks: int = typer.Option(40, "--tracks", help="train tracks, shared by their videos (long-tailed); each val/test video gets a track of its own"),
    seed: int = typer.Option(0, "--seed", help="the same seed and sizes write the same dataset"),
    style_noise: Optional[float] = typer.Option(None, "--style-noise", help="how far each video strays from its track's style (default 0.3: easy to rank; bench_quality's hard data: see bench/README.md)"),
    noise: Optional[float] = typer.Option(None, "--noise", help="std of the random part of every frame and window (default 0.5)"),
) -> None:
    """Write a small synthetic dataset in the MGSV-EC layout, with a planted signal to learn.

    For trying train/eval end to end in seconds, without the real download; numbers
    measured on it say nothing about real music.
    """
    from mgsv_cli.research.synthetic import make_dataset

    levels: dict[str, Any] = {name: value for name, value in (("noise", noise), ("style_noise", style_noise))
                              if value is not None}
    info = make_dataset(root, n_videos=videos, n_tracks=tracks, seed=seed, **levels)
    sizes = ", ".join(f"{split} {n}" for split, n in info.sizes.items())
    console.print(f"[green]✓[/] wrote a synthetic MGSV-EC dataset to {info.root}: {sizes} videos, "
                  f"{len(info.tracks)} tracks, {len(info.split_track_ids('train'))} of them in train "
                  f"(seed {info.seed})", highlight=False)
    console.print(f"next: mgsv train --data {info.root} --config tiny --epochs 5\n"
                  f"      mgsv eval --data {info.root} --split test   (or --baseline prior)", highlight=False)
