"""``mgsv data fetch|build|synth``: the MGSV-EC dataset, real, built from your own media, or
synthetic (``research``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from mgsv_cli.cli.app import data_app
from mgsv_cli.cli.options import DEVICE_HELP, ENCODERS_HELP, Device, Offline, WeightsDir
from mgsv_cli.cli.output import console, err_console, settings


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


@data_app.command("build", epilog="Example: mgsv data build pairs.csv ~/datasets/mine --encoders pretrained   (then: mgsv train --data ~/datasets/mine)")
def data_build_command(
    pairs: Path = typer.Argument(..., help="CSV of video, music, music_start, music_end (optional: split, video_id, music_id, category); paths relative to the CSV or s3://... URIs"),
    root: Path = typer.Argument(..., help="dataset folder to write (new, or one `mgsv data build` made: only new files are embedded)"),
    encoders: Optional[str] = typer.Option(None, "--encoders", help=ENCODERS_HELP + " (default: pretrained); the dataset records them"),
    device: Device = None,
    offline: Offline = False,
    weights_dir: WeightsDir = None,
    batch_windows: Optional[int] = typer.Option(None, "--batch-windows", min=1, help="AST windows per forward pass (default: sized to the GPU's free memory; 4 on a CPU)"),
    split_by: str = typer.Option("track", "--split-by", help="without a split column: track (each track in one split) or row (tracks shared across splits)"),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="without a split column: share of the tracks (or rows) for val"),
    test_fraction: float = typer.Option(0.1, "--test-fraction", help="without a split column: share of the tracks (or rows) for test"),
    seed: int = typer.Option(0, "--seed", help="draws the splits (the same seed keeps every track in its split)"),
    tolerance: float = typer.Option(1.0, "--tolerance", help="seconds a moment's length may differ from its video's"),
    engine: str = typer.Option("local", "--engine", help="local: this process (batched on a GPU, like `mgsv index`); ray: the music through `mgsv index --engine ray`'s Ray Data stages (decoding in CPU tasks, AST in an actor pool, one per GPU), for a catalog"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="with --engine ray: the cluster (auto, HOST:PORT, ray://HOST:PORT); default: a local Ray on this machine"),
) -> None:
    """Make a training dataset in the MGSV-EC layout from your own (video, music, moment) files.

    Features come from the same code as `mgsv index` and `mgsv suggest`; each track is embedded once however
    many videos use it. Safe to interrupt and re-run: only what is missing is embedded. Files that cannot be
    read are listed and their rows left out (exit code 1).
    """
    from mgsv_cli.cli.output import interruptible
    from mgsv_cli.editor.requests import cli_flag
    from mgsv_cli.research.build import BuildRequest, run_build

    request = BuildRequest.build(settings(), cli_flag, pairs=pairs, root=root, encoders=encoders, device=device,
                                 offline=offline, weights_dir=weights_dir, batch_windows=batch_windows,
                                 split_by=split_by, val_fraction=val_fraction, test_fraction=test_fraction,
                                 seed=seed, tolerance=tolerance, engine=engine, ray_address=ray_address)
    report = interruptible(lambda progress: run_build(request, progress), "dataset")
    _print_build_summary(report)


def _print_build_summary(report) -> None:
    from rich.markup import escape

    from mgsv_cli.cli.output import print_failures_at_end

    sizes = ", ".join(f"{split} {n}" for split, n in report.rows.items())
    style = "bold red" if report.failed else "bold green"
    console.print(f"[{style}]{escape(str(report.root))}[/]: {sizes} rows, {report.n_tracks} tracks "
                  f"({report.embedded_music} embedded now, {report.reused_music} already there), {report.n_videos} "
                  f"videos ({report.embedded_videos} embedded now, {report.reused_videos} already there); features of "
                  f"{escape(report.encoders.describe())}", highlight=False, soft_wrap=True)
    if report.failed:
        print_failures_at_end(report.failed, "could not be read (their rows are left out; tried again on the next run)")
        console.print(f"{report.skipped_rows} row(s) left out", style="yellow")
    console.print(f"next: mgsv train --data {escape(str(report.root))}" + (" --config tiny" if report.encoders.kind == "tiny" else ""),
                  highlight=False, soft_wrap=True)
    if report.failed:
        raise typer.Exit(1)


@data_app.command("synth", epilog="Example: mgsv data synth /tmp/mgsv-synth   (then: mgsv train --data /tmp/mgsv-synth --config tiny --epochs 5)")
def data_synth_command(
    root: Path = typer.Argument(..., help="folder to write into (new, or without a dataset/ or feature files)"),
    videos: int = typer.Option(800, "--videos", help="videos in all: 10% to val, 10% to test, the rest to train (not with --media)"),
    tracks: Optional[int] = typer.Option(None, "--tracks", help="train tracks, shared by their videos (long-tailed; default 40); each val/test video gets a track of its own. With --media: the music tracks (default 12)"),
    seed: int = typer.Option(0, "--seed", help="the same seed and sizes write the same dataset"),
    style_noise: Optional[float] = typer.Option(None, "--style-noise", help="how far each video strays from its track's style (default 0.3: easy to rank; bench_quality's hard data: see bench/README.md)"),
    noise: Optional[float] = typer.Option(None, "--noise", help="std of the random part of every frame and window (default 0.5)"),
    media: bool = typer.Option(False, "--media", help="write real music and video files with a planted link (ROOT/media, with pairs.csv), then build the dataset from them as `mgsv data build` does"),
    clips: int = typer.Option(3, "--clips", min=1, help="with --media: training clips per section of a track (plus one val and one held-out test clip)"),
    encoders: str = typer.Option("tiny", "--encoders", help="with --media: the encoders that make the features (default tiny: offline)"),
    device: Optional[str] = typer.Option(None, "--device", help="with --media: " + DEVICE_HELP),
) -> None:
    """Write a small synthetic dataset in the MGSV-EC layout, with a planted signal to learn.

    For trying train/eval end to end in seconds, without the real download; numbers
    measured on it say nothing about real music. With --media: real files (tracks whose
    sections differ in key and lead instrument, clips whose picture shows one section's key
    and instrument) and the dataset built from them, for the whole loop train -> index -> suggest.
    """
    from mgsv_cli.research.synthetic import make_dataset, make_media_dataset

    if media:
        from mgsv_cli.cli.output import interruptible

        info = interruptible(lambda progress: make_media_dataset(
            root, n_tracks=tracks or 12, seed=seed, clips={"train": clips}, encoders=encoders,
            device=device or "auto", progress=progress), "dataset")
        console.print(f"[green]✓[/] wrote {len(info.tracks)} planted tracks and {len(info.clips)} clips to "
                      f"{info.root / 'media'} (pairs: {info.pairs_csv}; seed {info.seed})", highlight=False)
        _print_build_summary(info.report)
        console.print(f"then: mgsv index {info.music_dir} --encoders {encoders} --index INDEX\n"
                      f"      mgsv suggest {info.clips_dir('test')} --index INDEX --checkpoint RUN   (held-out clips)",
                      highlight=False)
        return
    tracks = 40 if tracks is None else tracks
    levels: dict[str, Any] = {name: value for name, value in (("noise", noise), ("style_noise", style_noise))
                              if value is not None}
    info = make_dataset(root, n_videos=videos, n_tracks=tracks, seed=seed, **levels)
    sizes = ", ".join(f"{split} {n}" for split, n in info.sizes.items())
    console.print(f"[green]✓[/] wrote a synthetic MGSV-EC dataset to {info.root}: {sizes} videos, "
                  f"{len(info.tracks)} tracks, {len(info.split_track_ids('train'))} of them in train "
                  f"(seed {info.seed})", highlight=False)
    console.print(f"next: mgsv train --data {info.root} --config tiny --epochs 5\n"
                  f"      mgsv eval --data {info.root} --split test   (or --baseline prior)", highlight=False)
