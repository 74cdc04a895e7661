"""``mgsv eval``: the benchmark protocol on an MGSV-EC split (``research.evaluation``)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mgsv_cli.cli.app import app
from mgsv_cli.cli.options import Checkpoint, Device
from mgsv_cli.cli.output import console, stage_progress

EVAL_ROWS = (
    ("mIoU", "miou", "{:.3f}"), ("R@1", "r1", "{:.1f}"), ("R@5", "r5", "{:.1f}"), ("R@10", "r10", "{:.1f}"),
    ("MoR@1", "mor1", "{:.1f}"), ("MoR@10", "mor10", "{:.1f}"), ("MoR@100", "mor100", "{:.1f}"),
)


@app.command("eval", epilog="Example: mgsv eval --data ~/datasets/mgsv-ec --split test --json")
def eval_command(
    data: Path = typer.Option(..., "--data", help="MGSV-EC root in the official layout (dataset/ and features/)"),
    split: str = typer.Option("test", "--split", help="val | test"),
    checkpoint: Checkpoint = None,
    baseline: Optional[str] = typer.Option(None, "--baseline", help="prior: the content-free moment [0, video duration] (labels only)"),
    device: Device = None,
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="videos (and tracks) per forward pass; lower it if the GPU runs out of memory"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of a table"),
    plots: Optional[Path] = typer.Option(None, "--plots", help="folder to write plots into: IoU histogram, recall@k curve, per-category table"),
) -> None:
    """Benchmark a trained model (or a baseline) on an MGSV-EC split: mIoU, R@k, MoR@k."""
    import json

    from mgsv_cli.errors import UsageError
    from mgsv_cli.research.evaluation import RESULT_KEYS
    from mgsv_cli.settings import default

    device = default("device", device)
    if split not in ("train", "val", "test"):
        raise UsageError(f"--split {split!r}: expected val or test")
    if baseline is not None:
        if baseline != "prior":
            raise UsageError(f"--baseline {baseline!r}: the only baseline is 'prior'")
        if checkpoint is not None:
            raise UsageError("--baseline prior uses no checkpoint; drop --checkpoint")
        if plots is not None:
            raise UsageError("--plots draws a model's rankings and moments; --baseline prior has none")
        from mgsv_cli.research.evaluation import evaluate_prior

        result = evaluate_prior(data, split)
    else:
        from mgsv_cli.research.evaluation import evaluate

        with stage_progress(enabled=not as_json) as progress:
            result = evaluate(data, split, checkpoint=checkpoint, device=device, batch_size=batch_size,
                              progress=progress, plots=plots)
    if as_json:
        typer.echo(json.dumps({key: result.get(key) for key in RESULT_KEYS}))
    else:
        _print_eval_table(result)
        if result.get("plots"):
            console.print(f"plots: {Path(result['plots'][0]).parent}", style="dim")


def _print_eval_table(result: dict) -> None:
    from rich.table import Table

    from mgsv_cli.research.evaluation import PUBLISHED_MADE_TEST

    def show(fmt: str, value) -> str:
        return "—" if value is None else fmt.format(value)

    title = f"{result['split']}: {result['n']} videos"
    if result.get("n_tracks"):
        title += f", {result['n_tracks']} candidate tracks"
    if result.get("baseline"):
        title += f" — baseline: {result['baseline']}"
    table = Table(title=title)
    for header in ("metric", "paper protocol", "exact-length cut", "MaDe (paper, test)"):
        table.add_column(header, justify="left" if header == "metric" else "right")
    for label, key, fmt in EVAL_ROWS:
        # Ranking does not depend on the cut: R@k is the same in both columns.
        cut = result.get(f"{key}_cut", result.get(key)) if not key.startswith("r") else result.get(key)
        table.add_row(label, show(fmt, result.get(key)), show(fmt, cut), show(fmt, PUBLISHED_MADE_TEST[key]))
    console.print(table)
    console.print("mIoU is a fraction; the rest are % of videos. Exact-length cut: the predicted centre, "
                  "as long as the video, kept inside the track.", style="dim")
    if result.get("params"):
        console.print("parameters: " + ", ".join(f"{k} {v:,}" for k, v in result["params"].items()), style="dim")
    if result.get("checkpoint"):
        console.print(f"checkpoint: {result['checkpoint']}", style="dim")
