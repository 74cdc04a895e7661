"""``mgsv train``: MaDe or ReAL on MGSV-EC-layout features (``research.train``)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mgsv_cli.cli.app import app
from mgsv_cli.cli.options import Device
from mgsv_cli.cli.output import console, err_console


@app.command("train", epilog="Example: mgsv train --data ~/datasets/mgsv-ec --device cuda   (then: mgsv eval --data ~/datasets/mgsv-ec --split test)")
def train_command(
    data: Path = typer.Option(..., "--data", help="MGSV-EC root in the official layout (dataset/ and features/)"),
    config: Optional[str] = typer.Option(None, "--config", help="model variant: a shipped name (made, tiny) or a .toml path (default made; a resumed run keeps its own)"),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="default: the config's (100 for made); with --resume, continue to this many epochs"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=2, help="default: the config's (512 for made)"),
    lr: Optional[float] = typer.Option(None, "--lr", min=0.0, help="peak learning rate (default: the config's, 3e-4)"),
    precision: Optional[str] = typer.Option(None, "--precision", help="auto | fp32 | bf16 (default: the config's)"),
    device: Device = None,
    out: Optional[Path] = typer.Option(None, "--out", help="run folder (default: a new one under the mgsv data dir)"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run (--out's, or the latest)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="random seed (default: the config's)"),
    compile_model: bool = typer.Option(False, "--compile", help="run the training forward through torch.compile (opt-in: the first steps pay for compiling; off by default)"),
    stage: str = typer.Option("both", "--stage", help="ReAL configs (real, real-tiny): both | retrieval | localisation; one stage on an existing ReAL --out continues that run"),
) -> None:
    """Train MaDe (or ReAL: --config real) on MGSV-EC features; keeps the best-on-val weights in the run folder.

    On a CUDA GPU the features are kept on the GPU, the network runs in bf16 and Adam is fused.
    """
    from mgsv_cli.models.variants import load_config, replace_train
    from mgsv_cli.research.train import train
    from mgsv_cli.settings import default

    device = default("device", device)
    chosen = load_config(config or "made")
    variant = replace_train(chosen, epochs=epochs, batch_size=batch_size, lr=lr, precision=precision, seed=seed)
    asked = dict(epochs=epochs, batch_size=batch_size, lr=lr, precision=precision, seed=seed,
                 model=chosen.model if config is not None else None)
    reporter = _TrainProgress()
    try:
        with reporter:
            # reporter: a Reporter by duck typing (research.runs is not imported when the CLI starts)
            result = train(data, variant, out_dir=out, device=device, resume=resume,
                           reporter=reporter,  # type: ignore[arg-type]
                           asked=asked, compile=compile_model, stage=stage)
    except KeyboardInterrupt:
        if reporter.stopped is None:
            raise
        run_dir, epochs_done = reporter.stopped
        err_console.print(f"[yellow]interrupted[/] after {epochs_done} finished epoch(s); continue with "
                          f"`mgsv train --data {data} --resume --out {run_dir}`", highlight=False, soft_wrap=True)
        raise typer.Exit(130)
    best = result.best_metrics
    if best:
        console.print(f"best epoch {best['epoch']}: mIoU {best['miou']:.3f}, R@1 {best['r1']:.1f}, "
                      f"MoR@1 {best['mor1']:.1f}")
    console.print(f"checkpoint: {result.run_dir / 'model.safetensors'}  (log: {result.run_dir / 'train.log'}; "
                  f"curves: the PNGs there, or tensorboard --logdir {result.run_dir})")


class _TrainProgress:
    """Draws the training loop's callbacks: a bar per epoch (loss, lr, ETA) and a validation table."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}"),
                             TimeRemainingColumn(), console=err_console)
        self.task: Optional[TaskID] = None
        self.rows: list[tuple] = []
        self.stopped: Optional[tuple[Path, int]] = None  # (run folder, epochs saved) of an interrupted run

    def __enter__(self):
        self.bars.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.__exit__(*exc)

    def start(self, info: dict) -> None:
        self.rows = []  # a ReAL run starts once per stage; each stage gets its own table
        params = info["params"]
        console.print(f"[bold]training[/] {info['variant']} on {info['device']} ({info['dtype']}): "
                      f"{info['n_train']:,} train / {info['n_val']:,} val videos, {info['steps_per_epoch']} steps "
                      f"per epoch, {info['epochs']} epochs" + (f", resuming after epoch {info['start_epoch']}"
                                                              if info["start_epoch"] else ""))
        console.print("parameters: " + ", ".join(f"{k} {v:,}" for k, v in params.items()), style="dim")
        console.print(f"run folder: {info['run_dir']}", style="dim")
        if info.get("encoders"):
            console.print(f"the checkpoint will rank music indexed with {info['encoders']}", style="dim",
                          highlight=False)

    def start_epoch(self, epoch: int, n_epochs: int, n_steps: int) -> None:
        if self.task is not None:
            self.bars.remove_task(self.task)
        self.task = self.bars.add_task(f"epoch {epoch + 1}/{n_epochs}", total=n_steps, loss=0.0, lr=0.0)

    def step(self, loss: float, lr: float) -> None:
        assert self.task is not None  # start_epoch made it
        self.bars.update(self.task, advance=1, loss=loss, lr=lr)

    def end_epoch(self, epoch: int, train_loss: float, metrics: dict, is_best: bool) -> None:
        from rich.table import Table

        self.rows.append((epoch + 1, train_loss, metrics, is_best))
        table = Table(title="validation", title_justify="left")
        for header in ("epoch", "train loss", "mIoU", "R@1", "R@5", "R@10", "MoR@1", "MoR@10", "MoR@100", "mIoU cut", ""):
            table.add_column(header, justify="right")
        for number, loss, m, best in self.rows[-5:]:
            table.add_row(str(number), f"{loss:.4f}", f"{m['miou']:.3f}", *(f"{m[k]:.1f}" for k in
                          ("r1", "r5", "r10", "mor1", "mor10", "mor100")), f"{m['miou_cut']:.3f}",
                          "best" if best else "")
        self.bars.console.print(table)

    def interrupted(self, run_dir: Path, epochs_done: int) -> None:
        self.stopped = (run_dir, epochs_done)
