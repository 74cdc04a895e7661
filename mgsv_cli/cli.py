"""The ``mgsv`` command line: parses options, calls the library, prints with rich.

No torch code lives here and heavy modules are imported inside each command, so
``mgsv --help`` stays instant. Library errors (:mod:`mgsv_cli.errors`) become a
one-line message and their exit code; nothing here prints a traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from mgsv_cli.errors import MgsvError

app = typer.Typer(
    name="mgsv",
    help="Background music for short videos: index a music folder, get ranked tracks with the moment to cut, render.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
data_app = typer.Typer(help="The MGSV-EC benchmark dataset.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)

DEVICE_HELP = "auto | cpu | cuda[:N] | mps (auto picks the GPU when there is one)"


def _print_version(value: bool) -> None:
    if value:
        from mgsv_cli import __version__

        typer.echo(f"mgsv {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="print mgsv's version and exit"),
) -> None:
    """Background music for short videos: index a music folder, get ranked tracks with the moment to cut, render."""


# ---------------------------------------------------------------- research: train / eval / data

# -- train (mgsv_cli/research/train.py)


@app.command("train", epilog="Example: mgsv train --data ~/datasets/mgsv-ec --device cuda   (then: mgsv eval --data ~/datasets/mgsv-ec --split test)")
def train_command(
    data: Path = typer.Option(..., "--data", help="MGSV-EC root in the official layout (dataset/ and features/)"),
    config: Optional[str] = typer.Option(None, "--config", help="model variant: a shipped name (made, tiny) or a .toml path (default made; a resumed run keeps its own)"),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="default: the config's (100 for made); with --resume, continue to this many epochs"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=2, help="default: the config's (512 for made)"),
    lr: Optional[float] = typer.Option(None, "--lr", min=0.0, help="peak learning rate (default: the config's, 3e-4)"),
    precision: Optional[str] = typer.Option(None, "--precision", help="auto | fp32 | bf16 (default: the config's)"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
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
    from mgsv_cli.settings import default
    from mgsv_cli.research.train import train

    device = default("device", device)
    chosen = load_config(config or "made")
    variant = replace_train(chosen, epochs=epochs, batch_size=batch_size, lr=lr, precision=precision, seed=seed)
    asked = dict(epochs=epochs, batch_size=batch_size, lr=lr, precision=precision, seed=seed,
                 model=chosen.model if config is not None else None)
    reporter = _TrainProgress()
    try:
        with reporter:
            result = train(data, variant, out_dir=out, device=device, resume=resume, reporter=reporter, asked=asked,
                           compile=compile_model, stage=stage)
    except KeyboardInterrupt as exc:
        run_dir = getattr(exc, "run_dir", None)
        if run_dir is None:
            raise
        err_console.print(f"[yellow]interrupted[/] after {exc.epochs_done} finished epoch(s); continue with "
                          f"`mgsv train --data {data} --resume --out {run_dir}`", highlight=False, soft_wrap=True)
        raise typer.Exit(130)
    best = result.best_metrics
    if best:
        console.print(f"best epoch {best['epoch']}: mIoU {best['miou']:.3f}, R@1 {best['r1']:.1f}, "
                      f"MoR@1 {best['mor1']:.1f}")
    console.print(f"checkpoint: {result.run_dir / 'model.safetensors'}  (log: {result.run_dir / 'train.log'})")


class _TrainProgress:
    """Draws the training loop's callbacks: a bar per epoch (loss, lr, ETA) and a validation table."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}"),
                             TimeRemainingColumn(), console=err_console)
        self.task = None
        self.rows: list[tuple] = []

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

# -- eval (mgsv_cli/research/evaluation.py)

EVAL_ROWS = (
    ("mIoU", "miou", "{:.3f}"), ("R@1", "r1", "{:.1f}"), ("R@5", "r5", "{:.1f}"), ("R@10", "r10", "{:.1f}"),
    ("MoR@1", "mor1", "{:.1f}"), ("MoR@10", "mor10", "{:.1f}"), ("MoR@100", "mor100", "{:.1f}"),
)


@app.command("eval", epilog="Example: mgsv eval --data ~/datasets/mgsv-ec --split test --json")
def eval_command(
    data: Path = typer.Option(..., "--data", help="MGSV-EC root in the official layout (dataset/ and features/)"),
    split: str = typer.Option("test", "--split", help="val | test"),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="run folder or .safetensors file (default: the latest run)"),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="prior: the content-free moment [0, video duration] (labels only)"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="videos (and tracks) per forward pass; lower it if the GPU runs out of memory"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of a table"),
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
        from mgsv_cli.research.evaluation import evaluate_prior

        result = evaluate_prior(data, split)
    else:
        from mgsv_cli.research.evaluation import evaluate

        with _stage_progress(enabled=not as_json) as progress:
            result = evaluate(data, split, checkpoint=checkpoint, device=device, batch_size=batch_size,
                              progress=progress)
    if as_json:
        typer.echo(json.dumps({key: result.get(key) for key in RESULT_KEYS}))
    else:
        _print_eval_table(result)


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


def _stage_progress(enabled: bool):
    """A context giving a ``progress(stage, done, total)`` callback drawn as rich bars on stderr."""
    import contextlib

    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err_console, transient=True)
    tasks: dict[str, int] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bars.add_task(stage, total=total)
        bars.update(tasks[stage], completed=done, total=total)

    @contextlib.contextmanager
    def running():
        with bars:
            yield progress

    return running()



# ---------------------------------------------------------------- editor: index / suggest / render

# -- index / suggest (mgsv_cli/index/store.py, mgsv_cli/editor/suggest.py)

ENCODER_KINDS = ("pretrained", "tiny")
ENCODERS_HELP = "pretrained (CLIP ViT-B/32 + AST, what MaDe was trained on) | tiny (small random networks: tests, demos)"
FIT_HELP = ("cut (the moment, faded out) | ending (the moment, then the track's own ending on the last frame, "
            "joined on bars) | loop (bars repeat to fill a clip longer than the track)")
INDEX_HELP = "music index database (default: index.sqlite in mgsv's data folder; MGSV_HOME moves it)"


def _check_encoders(kind: Optional[str]) -> None:
    from mgsv_cli.errors import UsageError

    if kind is not None and kind not in ENCODER_KINDS:
        raise UsageError(f"--encoders {kind!r}: expected {' or '.join(ENCODER_KINDS)}")


@app.command("index", epilog="Example: mgsv index ~/Music   (again later: only new or changed files are embedded; mgsv index --failed lists the files it could not take)")
def index_command(
    music_dir: Optional[str] = typer.Argument(None, show_default=False, metavar="MUSIC_DIR", help="music folder, searched recursively (mp3 wav flac m4a aac ogg opus); with --failed, only failures under it; with --engine ray also an object-store prefix (s3://bucket/music)",
                                              callback=lambda value: value if value is None or "://" in value else Path(value)),
    index: Optional[Path] = typer.Option(None, "--index", help=INDEX_HELP),
    prune: bool = typer.Option(False, "--prune", help="drop indexed tracks (and remembered failures) whose files are gone"),
    force: bool = typer.Option(False, "--force", help="re-embed every track and retry failed files (also: rebuild with other encoders; a damaged index is moved aside and rebuilt)"),
    failed: bool = typer.Option(False, "--failed", help="list the files the index could not take, and why (needs no MUSIC_DIR)"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="try again the files that failed before (unchanged ones are skipped otherwise)"),
    as_json: bool = typer.Option(False, "--json", help="with --failed: print one JSON object"),
    encoders: Optional[str] = typer.Option(None, "--encoders", help=ENCODERS_HELP + " (default: pretrained)"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    offline: bool = typer.Option(False, "--offline", help="never download encoder weights"),
    weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", help="folder holding downloaded encoder weights"),
    beats: bool = typer.Option(True, "--beats/--no-beats", help="find each track's beat grid (for cuts that start on a beat)"),
    batch_windows: Optional[int] = typer.Option(None, "--batch-windows", min=1, help="AST windows per forward pass (default: sized to the GPU's free memory; 4 on a CPU); lower it if the GPU runs out of memory"),
    engine: str = typer.Option("local", "--engine", help="local: this process (default); ray: Ray Data (decoding in CPU tasks, AST in an actor pool, one per GPU), for catalogs beyond one machine; needs --store"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="with --engine ray: the cluster (auto, HOST:PORT, ray://HOST:PORT); default: a local Ray on this machine"),
    store: Optional[str] = typer.Option(None, "--store", help="a Lance track store to write instead of the SQLite index: DIR.lance or s3://bucket/store (AWS_* credentials)"),
    keys: Optional[str] = typer.Option(None, "--keys", help="with --store, when it creates the store: how it keeps the rerank's keys, float16 (default) or int8 (half the bytes, so a million tracks' rows fit in memory; scores within ~0.3%)"),
) -> None:
    """Embed a music folder into the index: new and changed files only; safe to interrupt and re-run.

    Files that cannot be read or decoded are remembered and skipped on later runs while unchanged (`--failed` lists them, `--retry-failed` tries again); the exit code is 1 only when a file failed in this run.

    Tracks longer than 240 s are embedded from their first 4 minutes, the model's window.

    Defaults for --index, --encoders, --device, --weights-dir and --offline come from `mgsv config` when set there.
    """
    from mgsv_cli.errors import UsageError
    from mgsv_cli.index.store import index_music
    from mgsv_cli.settings import default

    index_given = index
    index, encoders, device = default("index", index), default("encoders", encoders), default("device", device)
    weights_dir, offline = default("weights_dir", weights_dir), offline or default("offline")
    if failed:
        clashing = [flag for flag, on in (("--force", force), ("--prune", prune), ("--retry-failed", retry_failed)) if on]
        if clashing:
            raise UsageError(f"--failed only lists; it does not go with {', '.join(clashing)}")
        _print_failed_files(index, music_dir, as_json)
        return
    if as_json:
        raise UsageError("--json goes with --failed (`mgsv index --failed --json`)")
    if music_dir is None:
        raise UsageError("missing MUSIC_DIR, the music folder to index: `mgsv index ~/Music` "
                         "(`mgsv index --failed` lists the files that could not be indexed)")
    _check_encoders(encoders)
    if engine != "local" or store is not None or ray_address is not None or "://" in str(music_dir):
        _index_into_store(music_dir, engine, store, ray_address, index_given, prune, force, retry_failed,
                          encoders or "pretrained", device, offline, weights_dir, beats, batch_windows, keys)
        return
    if keys is not None:
        raise UsageError("--keys goes with --store (a Lance track store); the SQLite index keeps float16 keys")

    def load_encoders():
        from mgsv_cli.device import resolve_device
        from mgsv_cli.features.encoders import load_encoders as load

        return load(kind=encoders, device=resolve_device(device), offline=offline, weights_dir=weights_dir,
                    parts=("music",), batch_windows=batch_windows)

    report = _interruptible(lambda progress: index_music(
        music_dir, index, encoders=load_encoders, prune=prune, force=force, progress=progress, detect_beats=beats,
        encoder_kind=encoders, retry_failed=retry_failed), "index")
    _print_index_summary(report, encoders, index_given)
    if report.failed:
        raise typer.Exit(1)


def _interruptible(run, where: str):
    """``run(progress)`` under the index progress bars; Ctrl-C keeps what was written and says how to resume."""
    progress = _IndexBars()
    try:
        with progress:
            return run(progress)
    except KeyboardInterrupt as exc:
        report = getattr(exc, "report", None)
        saved = f"; {report.n_tracks} track(s) in the {where}" if report is not None else ""
        err_console.print(f"[yellow]interrupted[/]{saved}: run the same command again to resume", highlight=False,
                          soft_wrap=True)
        raise typer.Exit(130)


def _index_into_store(music_dir, engine: str, store: Optional[str], ray_address: Optional[str], index_given,
                      prune: bool, force: bool, retry_failed: bool, encoders: str, device: Optional[str],
                      offline: bool, weights_dir: Optional[Path], beats: bool, batch_windows: Optional[int],
                      keys: Optional[str] = None) -> None:
    """`mgsv index --engine ray` / `--store`: a Lance track store (see `index.ray_engine`)."""
    from mgsv_cli.errors import UsageError

    if engine not in ("local", "ray"):
        raise UsageError(f"--engine {engine!r}: expected local or ray")
    if engine == "local" and "://" in str(music_dir):
        raise UsageError(f"{music_dir}: an object-store source needs --engine ray (and --store)")
    if store is None:
        raise UsageError(f"--engine {engine} writes a Lance track store: pass --store DIR.lance or --store s3://bucket/store")
    if ray_address is not None and engine != "ray":
        raise UsageError("--ray-address goes with --engine ray")
    clashing = [flag for flag, on in (("--index", index_given is not None), ("--prune", prune), ("--force", force),
                                      ("--retry-failed", retry_failed)) if on]
    if clashing:
        raise UsageError(f"--store does not go with {', '.join(clashing)}")
    from mgsv_cli.index.records import KEY_ENCODINGS

    if keys is not None and keys not in KEY_ENCODINGS:
        raise UsageError(f"--keys {keys!r}: expected {' or '.join(KEY_ENCODINGS)}")

    def run(progress):
        if engine == "ray":
            from mgsv_cli.index.ray_engine import index_with_ray

            return index_with_ray(music_dir, store, encoder_kind=encoders, device=device or "auto", offline=offline,
                                  weights_dir=weights_dir, batch_windows=batch_windows, detect_beats=beats,
                                  ray_address=ray_address, progress=progress, key_encoding=keys)
        return _index_locally_into_store(music_dir, store, encoders, device, offline, weights_dir, beats,
                                         batch_windows, progress, keys)

    report = _interruptible(run, "store")
    _print_index_summary(report, encoders, None)
    if report.failed:
        _print_failures_at_end(report.failed)
        raise typer.Exit(1)


def _index_locally_into_store(music_dir, store: str, encoders: str, device, offline, weights_dir, beats,
                              batch_windows, progress, keys: Optional[str] = None):
    from mgsv_cli.errors import UsageError
    from mgsv_cli.index import backend

    if not hasattr(backend, "index_to_store"):
        raise UsageError("only --engine ray writes track stores in this version")

    def load_encoders():
        from mgsv_cli.device import resolve_device
        from mgsv_cli.features.encoders import load_encoders as load

        return load(kind=encoders, device=resolve_device(device), offline=offline, weights_dir=weights_dir,
                    parts=("music",), batch_windows=batch_windows)

    return backend.index_to_store(music_dir, store, load_encoders, progress, detect_beats=beats,
                                  encoder_kind=encoders, key_encoding=keys)


def _print_failures_at_end(failed) -> None:
    """The files a store run skipped, listed once more after the summary (stores keep no failure table)."""
    from rich.markup import escape

    console.print(f"{len(failed)} file(s) could not be indexed (skipped; tried again on the next run):",
                  highlight=False, soft_wrap=True)
    for path, reason in failed:
        line = reason if path in reason else f"{path}: {reason}"  # as _IndexBars.failed shows it
        console.print(f"  {escape(line)}", highlight=False, soft_wrap=True)


def _print_failed_files(index: Optional[Path], music_dir: Optional[Path], as_json: bool) -> None:
    """`mgsv index --failed`: the remembered failures, one per line (or one JSON object)."""
    import json

    from rich.markup import escape

    from mgsv_cli.index.store import failed_files

    path, found = failed_files(index, under=music_dir)
    if as_json:
        typer.echo(json.dumps({"index": str(path), "failed": [f.to_dict() for f in found]}))
        return
    where = f" under {music_dir}" if music_dir is not None else ""
    if not found:
        console.print(f"no failed files{escape(where)} in {escape(str(path))}", highlight=False, soft_wrap=True)
        return
    console.print(f"{len(found)} file(s){escape(where)} could not be indexed into {escape(str(path))} "
                  "(skipped while unchanged; `--retry-failed` tries them again):", highlight=False, soft_wrap=True)
    for f in found:
        line = f.reason if f.path in f.reason else f"{f.path}: {f.reason}"  # as _IndexBars.failed shows it
        gone = "" if f.exists else " [dim](gone: `--prune` forgets it)[/]"
        console.print(f"  {escape(line)}{gone}", highlight=False, soft_wrap=True)


class _IndexBars:
    """Rich progress bars (stderr) for ``index_music``'s stages; failures printed above them."""

    LABELS = {"checking": "checking files", "probing": "reading tags", "embedding": "embedding audio",
              "beats": "finding beats", "indexing": "indexing on Ray (files)"}

    def __init__(self) -> None:
        from rich.progress import (BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn,
                                   TimeRemainingColumn)

        self.bars = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                             TimeRemainingColumn(), TextColumn("[dim]{task.fields[detail]}"), console=err_console,
                             transient=True,
                             # Bars only on a terminal: in a log they leave a stray blank line before
                             # the one-line error (failures are still printed, above the bars).
                             disable=not err_console.is_terminal)
        self.tasks: dict[str, int] = {}
        self.note_task: Optional[int] = None

    def __enter__(self) -> "_IndexBars":
        self.bars.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.__exit__(*exc)

    def stage(self, name: str, total: float) -> None:
        self._clear_note()
        self.tasks[name] = self.bars.add_task(self.LABELS.get(name, name), total=total, detail="")

    def advance(self, name: str, amount: float = 1.0, detail: str = "") -> None:
        if name in self.tasks:
            self.bars.update(self.tasks[name], advance=amount, detail=Path(detail).name if detail else "")

    def failed(self, path: str, reason: str) -> None:
        from rich.markup import escape

        message = reason if path in reason else f"{path}: {reason}"  # most reasons name the file already
        self.bars.console.print(f"[red]✗[/] {escape(message)}", highlight=False, soft_wrap=True)

    def note(self, message: str) -> None:
        self._clear_note()
        self.note_task = self.bars.add_task(message, total=None, detail="")

    def _clear_note(self) -> None:
        if self.note_task is not None:
            self.bars.remove_task(self.note_task)
            self.note_task = None


def _print_index_summary(report, encoders: str, index_given: Optional[Path] = None) -> None:
    import shlex

    from mgsv_cli.features.recipe import MAX_MUSIC_SECONDS

    if report.moved_aside is not None:
        console.print(f"the damaged index was moved aside to {report.moved_aside} and rebuilt", style="yellow",
                      highlight=False, soft_wrap=True)
    parts = [f"{report.added} added", f"{report.updated} updated",
             f"{report.unchanged} unchanged" + (f" ({report.touched} touched)" if report.touched else ""),
             f"{report.pruned} pruned", f"{len(report.failed)} failed"]
    style = "bold red" if report.failed else "bold green"
    console.print(f"[{style}]{', '.join(parts)}[/] — {report.n_tracks} tracks in {report.index_path}",
                  highlight=False, soft_wrap=True)
    if report.reused:
        console.print(f"{report.reused} file(s) had the content of an indexed track: tokens reused", style="dim")
    if report.missing:
        console.print(f"{report.missing} indexed file(s) no longer exist: `--prune` drops them", style="yellow")
    if report.skipped_failed:
        again = f" --index {shlex.quote(str(index_given))}" if index_given is not None else ""
        console.print(f"{report.skipped_failed} file(s) that failed before are unchanged: skipped "
                      f"(`mgsv index --failed{again}` lists them, `--retry-failed` tries them again)",
                      style="yellow", highlight=False, soft_wrap=True)
    if report.forgotten_failed:
        console.print(f"{report.forgotten_failed} failed file(s) no longer exist: forgotten", style="dim")
    if report.long_tracks:
        console.print(f"{report.long_tracks} track(s) longer than {MAX_MUSIC_SECONDS:g} s: embedded from their "
                      f"first {MAX_MUSIC_SECONDS / 60:g} minutes, the model's window (cuts stay inside it)",
                      style="yellow", highlight=False, soft_wrap=True)
    if encoders == "tiny" and (report.added or report.updated):
        console.print("tiny random encoders: this index is for tests and demos only", style="yellow")


@app.command("suggest", epilog="Example: mgsv suggest clip.mp4 --top 10 --snap beat   (then: mgsv render clip.mp4)")
def suggest_command(
    videos: List[Path] = typer.Argument(..., help="video files or folders of videos (mp4 mov mkv webm avi m4v)"),
    index: Optional[str] = typer.Option(None, "--index", help=INDEX_HELP + "; or a Lance track store: a folder, DIR.lance or s3://... URI",
                                        callback=lambda value: value if value is None or "://" in value else Path(value)),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="run folder or .safetensors file (default: the latest run)"),
    top: Optional[int] = typer.Option(None, "--top", "-k", min=1, help="how many tracks to suggest (moments are found for these); default 5"),
    snap: Optional[str] = typer.Option(None, "--snap", help="beat: start each cut on the nearest downbeat/beat (beats found at index time)"),
    include_short: bool = typer.Option(False, "--include-short", help="rank tracks shorter than the clip too (marked; render fills the rest with silence)"),
    fit: Optional[str] = typer.Option(None, "--fit", help=FIT_HELP),
    explain: bool = typer.Option(False, "--explain", help="draw each track's relevance per 2.5 s window, with the cut in \\[brackets]"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per video on stdout (\"ok\": false for a video that failed)"),
    untrained: bool = typer.Option(False, "--untrained", help="random MaDe weights instead of a checkpoint (demo; results are meaningless)"),
    encoders: Optional[str] = typer.Option(None, "--encoders", help=ENCODERS_HELP + " (default: those of the index)"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    offline: bool = typer.Option(False, "--offline", help="never download encoder weights"),
    weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", help="folder holding downloaded encoder weights"),
    no_server: bool = typer.Option(False, "--no-server", help="do the work in this process even when `mgsv serve` runs"),
    rerank: Optional[int] = typer.Option(None, "--rerank", min=1, help="catalogs: how many first-stage candidates the full model rescores (default 1000; a library of at most that many is scored whole)"),
    first_stage: str = typer.Option("auto", "--first-stage", help="catalogs: auto | exact (pooled-vector product) | ivf_pq (Lance vector index; auto from 4M tracks)"),
) -> None:
    """Rank the indexed tracks for each video and find the moment to cut (remembered for `mgsv render`).

    A library of up to 1,000 tracks is scored whole; a larger one, or a Lance store, is searched in
    two stages: the pooled track vectors pick --rerank candidates, which the full model rescores.

    Defaults for --index, --top, --snap, --fit, --device, --weights-dir and --offline come from `mgsv config` when set there.
    """
    from rich.markup import escape

    from mgsv_cli.editor.editlist import check_fit
    from mgsv_cli.errors import MediaError, UsageError, first_line
    from mgsv_cli.settings import default
    from mgsv_cli.editor.outputs import expand_video_inputs, is_folder
    from mgsv_cli.editor.record import remember_suggestion
    from mgsv_cli.editor.suggest import Suggester, probe_named_videos, suggest_many
    from mgsv_cli.serve import client as serve_client

    index, top, device = default("index", index), default("top_k", top), default("device", device)
    weights_dir, offline = default("weights_dir", weights_dir), offline or default("offline")
    snap = default("snap", snap)
    snap = None if snap == "off" else snap
    if snap not in (None, "beat"):
        raise UsageError(f"--snap {snap!r}: the only snap is 'beat'")
    fit = default("fit", fit)
    check_fit(fit)
    _check_encoders(encoders)
    from mgsv_cli.index.search import first_stage_kinds

    if first_stage not in first_stage_kinds():
        raise UsageError(f"--first-stage {first_stage!r}: expected one of {', '.join(first_stage_kinds())}")
    no_server = no_server or rerank is not None or first_stage != "auto"  # search options the server doesn't take
    found, problems = expand_video_inputs(videos)
    for name, reason in problems:
        _print_suggest_failure(name, reason, as_json)
    if not found:
        raise UsageError("; ".join(f"{name}: {reason}" for name, reason in problems) or "no video given")
    found, refused = probe_named_videos(videos, found)  # before any model loads
    for name, reason, _ in refused:
        _print_suggest_failure(name, reason, as_json)
    if not found:
        if len(refused) == 1 and not problems:
            raise MediaError(refused[0][1])
        raise UsageError("; ".join([f"{name}: {reason}" for name, reason in problems]
                                   + [reason for _, reason, _ in refused]))
    problems += [(name, reason) for name, reason, _ in refused]
    for name, reason in problems:
        err_console.print(f"[red]✗[/] {escape(name)}: {escape(reason)}", highlight=False, soft_wrap=True)
    if not no_server and len(videos) == 1 and not is_folder(videos[0]) and (served := serve_client.try_suggest(
            found[0], top=top, snap=snap, include_short=include_short, fit=fit, index=index, checkpoint=checkpoint,
            untrained=untrained, encoders=encoders, device=device, weights_dir=weights_dir,
            failed=lambda exc: _print_suggest_failure(str(found[0]), first_line(exc), as_json))) is not None:
        _print_suggestions(served, as_json, explain)  # a running `mgsv serve` did it, with the same options
        return
    with err_console.status("loading the index and models") as status:
        suggester = Suggester.open(index_path=index, checkpoint=checkpoint, untrained=untrained, encoders=encoders,
                                   device=device, offline=offline, weights_dir=weights_dir,
                                   status=lambda message: status.update(message), prefetch=found[0],
                                   rerank=rerank, first_stage=first_stage)
    if len(videos) == 1 and not is_folder(videos[0]):
        with suggester:  # one clip: its error (and exit code) is the command's
            try:
                try:
                    result = suggester.suggest_video(found[0], top, snap=snap, include_short=include_short, fit=fit)
                except (OSError, ValueError, RuntimeError) as exc:  # a decoder error on an odd file, as in a batch
                    raise MediaError(f"{found[0]}: {type(exc).__name__}: {first_line(exc)}") from None
                remember_suggestion(result)
            except MgsvError as exc:
                _print_suggest_failure(str(found[0]), first_line(exc), as_json)
                raise
        _print_suggestions(result, as_json, explain)
        return
    n_done, n_failed = 0, len(problems)
    with suggester:
        for video, result, error in suggest_many(suggester, found, top_k=top, snap=snap, include_short=include_short,
                                                 fit=fit):
            if error is not None:
                n_failed += 1
                _print_suggest_failure(str(video), error, as_json)
                err_console.print(f"[red]✗[/] {escape(error if str(video) in error else f'{video}: {error}')}",
                                  highlight=False, soft_wrap=True)
                continue
            n_done += 1
            _print_suggestions(result, as_json, explain)
    summary = f"suggested music for {n_done} of {n_done + n_failed} video(s)" + (
        f", {n_failed} failed" if n_failed else "")
    err_console.print(summary, style="bold red" if n_failed else "bold", highlight=False, soft_wrap=True)
    if n_failed:
        raise typer.Exit(1)


def _mmss(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes:02d}:{secs:02d}"


def _print_suggest_failure(video: str, reason: str, as_json: bool) -> None:
    """A failed video's line on stdout for ``--json`` (the message itself goes to stderr)."""
    import json

    if as_json:
        typer.echo(json.dumps({"video": video, "ok": False, "error": reason}))


def _shorten_middle(text: str, width: int) -> str:
    """``text`` cut to ``width`` terminal cells by dropping its middle: a track's name keeps its
    start and its end (the file's number, its extension), which is what tells tracks apart."""
    from rich.cells import cell_len

    if cell_len(text) <= width:
        return text
    if width <= 1:
        return "…"[:max(width, 0)]
    keep = width - 1  # one cell for the ellipsis
    head, tail = text[:(keep + 1) // 2], text[len(text) - keep // 2:] if keep // 2 else ""
    while cell_len(head) + 1 + cell_len(tail) > width:  # wide characters take two cells
        if cell_len(head) >= cell_len(tail) and head:
            head = head[:-1]
        else:
            tail = tail[1:]
    return f"{head}…{tail}"


# The suggestion table keeps what an editor needs (rank, name, score, cut, start) on one line at 80
# columns; the model's own moment and the file's name are shown when there is room for them.
_TABLE_MIN_NAME = 40


def _suggestion_rows(result) -> list[dict[str, str]]:
    rows = []
    for s in result.suggestions:
        cut = f"{_mmss(s.start)}–{_mmss(s.end)}" + ("" if s.fits else " short")
        rows.append({"#": str(s.rank), "track": s.name, "score": f"{s.score:.3f}", "cut": cut,
                     "start s": f"{s.start:.2f}", "file": Path(s.track).name,
                     "predicted": f"{_mmss(s.predicted_start)}–{_mmss(s.predicted_end)}",
                     "fit": s.edit.summary() if s.edit is not None else ""})
    return rows


def _print_suggestions(result, as_json: bool, explain: bool = False) -> None:
    import json

    from rich.cells import cell_len
    from rich.markup import escape
    from rich.table import Table

    if as_json:
        typer.echo(json.dumps({"ok": True, **result.to_json()}))
        return
    rows = _suggestion_rows(result)
    fixed = ["#", "score", "cut", "start s"]
    if any(r["fit"] for r in rows):  # --fit ending/loop: what was made, or why it fell back
        fixed.append("fit")
    optional = ["predicted", "file"]  # added while the name keeps its room
    if not any(r["file"] != r["track"] for r in rows):
        optional.remove("file")  # untagged tracks: the name is the file's

    def width_of(column: str) -> int:
        return max([cell_len(column), *(cell_len(r[column]) for r in rows)])

    def room_for_name(columns: list[str]) -> int:
        # A table of n columns spends 3 cells on each (padding, rule) and 1 on its left edge.
        return console.width - sum(width_of(c) for c in columns) - 3 * (len(columns) + 1) - 1

    shown = list(fixed)
    longest = max([cell_len(r["track"]) for r in rows] + [len("track")])
    for column in optional:
        # Never cut a name that fits whole for an extra column; one that is cut anyway may give way to the
        # model's own moment down to a readable length, but not to the file (a second long name).
        whole = room_for_name(shown) >= longest
        needed = longest if whole or column == "file" else _TABLE_MIN_NAME
        if room_for_name(shown + [column]) >= needed:
            shown.append(column)
    name_width = max(5, min(longest, room_for_name(shown)))
    table = Table(title=f"{escape(Path(result.video).name)} ({result.duration:.1f} s)", title_justify="left")
    order = ["#", "track", "score", "cut", "start s", "fit", "predicted", "file"]
    columns = [c for c in order if c == "track" or c in shown]
    for column in columns:
        table.add_column(column, justify="right" if column in ("#", "score", "start s") else "left", no_wrap=True,
                         overflow="ellipsis", max_width=name_width if column == "track" else None)
    for row in rows:
        cells = []
        for column in columns:
            text = _shorten_middle(row[column], name_width) if column == "track" else row[column]
            text = escape(text)
            if column == "cut" and text.endswith(" short"):  # --include-short: the music ends before the clip
                text = text[:-len(" short")] + " [yellow]short[/]"
            cells.append(text)
        table.add_row(*cells)
    console.print(table)
    if explain:
        from mgsv_cli.editor.explain import relevance_strip

        console.print("relevance along each track (the first 240 s; the cut in [ ]):", highlight=False)
        for s in result.suggestions:
            strip = relevance_strip(s.relevance or [], s.start, s.end)
            console.print(f"{s.rank:>3} {escape(strip)}  {escape(Path(s.track).name)}", highlight=False)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)

# -- render / export (mgsv_cli/editor/render.py, export.py)


@app.command("render", epilog="Example: mgsv render clip.mp4 --mix duck --snap beat   (after `mgsv suggest clip.mp4`)")
def render_command(
    videos: List[Path] = typer.Argument(..., help="video files or folders of videos"),
    pick: Optional[int] = typer.Option(None, "--pick", help="use remembered suggestion N (1 = best, the default)"),
    track: Optional[Path] = typer.Option(None, "--track", help="music file to use instead of the remembered suggestion"),
    start: Optional[float] = typer.Option(None, "--start", help="where the music starts in --track, in seconds"),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="output file (a folder with several videos); default <video>.mgsv.<ext>"),
    mix: Optional[str] = typer.Option(None, "--mix", help="replace | original | duck (music lowered under the video's own sound); default replace"),
    fade_in: Optional[float] = typer.Option(None, "--fade-in", help="seconds of fade-in (default 0.5)"),
    fade_out: Optional[float] = typer.Option(None, "--fade-out", help="seconds of fade-out, ending with the video (default 1.0)"),
    loudness: Optional[float] = typer.Option(None, "--loudness", help="target integrated loudness, LUFS, EBU R128 (default -16)"),
    snap: Optional[str] = typer.Option(None, "--snap", help="beat: start the music on the nearest downbeat/beat"),
    fit: Optional[str] = typer.Option(None, "--fit", help=FIT_HELP + " (default: as suggested)"),
    index: Optional[Path] = typer.Option(None, "--index", help="music index holding the tracks' beats (for --snap)"),
    force: bool = typer.Option(False, "--force", help="overwrite existing outputs (never the inputs)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per video on stdout"),
    no_server: bool = typer.Option(False, "--no-server", help="do the work in this process even when `mgsv serve` runs"),
) -> None:
    """Put the suggested music moment under each video: cut to length, faded, loudness-normalised; video copied.

    Defaults for --mix, --fade-in, --fade-out, --loudness and --snap come from `mgsv config` when set there.
    """
    from mgsv_cli.editor import render as rendering
    from mgsv_cli.editor.outputs import expand_video_inputs, is_folder
    from mgsv_cli.errors import UsageError
    from mgsv_cli.settings import default

    mix, fade_in, fade_out = default("mix", mix), default("fade_in", fade_in), default("fade_out", fade_out)
    loudness, snap, index = default("loudness", loudness), default("snap", snap), default("index", index)
    snap = None if snap == "off" else snap

    if (track is None) != (start is None):
        raise UsageError("--track and --start go together (or give neither to use `mgsv suggest`'s pick)")
    if track is not None and pick is not None:
        raise UsageError("--pick chooses among remembered suggestions; it cannot be combined with --track")
    if pick is not None and pick < 1:
        raise UsageError(f"--pick {pick}: ranks start at 1")
    if mix not in rendering.MIX_MODES:
        raise UsageError(f"--mix {mix!r}: expected one of {', '.join(rendering.MIX_MODES)}")
    from mgsv_cli.editor.editlist import check_fit

    check_fit(fit)
    if fit is None and track is not None:  # no suggestion to follow: the settings' fit
        fit = default("fit")
    options = dict(mix=mix, fade_in=fade_in, fade_out=fade_out, loudness=loudness, force=force)
    single = len(videos) == 1 and not is_folder(videos[0])
    if single and not no_server:
        from mgsv_cli.serve import client as serve_client

        if (served := serve_client.try_render(videos[0], pick=pick, track=track, start=start, out=out, snap=snap,
                                              index=index, fit=fit, **options)) is not None:
            _print_render(served, as_json)  # a running `mgsv serve` did it
            return
    if single:
        music, begin, edit = rendering.resolve_music(videos[0], pick or 1, track, start, snap, index, fit)
        result = rendering.render(videos[0], music, begin, out=out, edit=edit, **options)
        _print_render(result, as_json)
        return
    found, problems = expand_video_inputs(videos)
    n_done = n_failed = 0
    for name, reason in problems:
        n_failed += 1
        _print_render_failure(name, reason, UsageError.exit_code, as_json)
    for video, result, error in rendering.render_many(found, out=out, pick=pick or 1, track=track, start=start,
                                                     snap=snap, index_path=index, fit=fit, **options):
        if error is None:
            n_done += 1
            _print_render(result, as_json)
        else:
            n_failed += 1
            _print_render_failure(str(video), str(error), error.exit_code, as_json)
    summary = f"rendered {n_done} of {n_done + n_failed} video(s)" + (f", {n_failed} failed" if n_failed else "")
    (err_console if as_json else console).print(summary, style="bold red" if n_failed else "bold", highlight=False)
    if n_failed:
        raise typer.Exit(1)


def _print_render(result, as_json: bool) -> None:
    import json

    from rich.markup import escape

    if as_json:
        typer.echo(json.dumps({"ok": True, **result.to_dict()}))
        return
    loud = f"{result.loudness:.1f} LUFS" if result.loudness is not None else "silent"
    console.print(
        f"[green]✓[/] {escape(str(result.video))} → [bold]{escape(str(result.out_path))}[/]  "
        f"♪ {escape(result.track.name)} {result.start:.2f}–{result.end:.2f} s, {result.mix}, {loud}",
        highlight=False,
    )
    if result.edit is not None:
        joins = result.edit["joins"]
        console.print(f"  ♪ {result.edit['mode']}: " + ", ".join(
            f"join at {j['at']:.2f} s ({j['out']:.2f} → {j['into']:.2f} s in the track)" for j in joins)
            + ("; " if joins else "") + "the track's ending finishes the clip", highlight=False)
    for warning in result.warnings:
        console.print(f"  [yellow]![/] {escape(warning)}", highlight=False)


def _print_render_failure(video: str, reason: str, exit_code: int, as_json: bool) -> None:
    import json

    from rich.markup import escape

    if as_json:
        typer.echo(json.dumps({"ok": False, "video": video, "error": reason, "exit_code": exit_code}))
    else:
        # Most reasons already start with the file's path; do not print it twice.
        message = reason if video in reason else f"{video}: {reason}"
        err_console.print(f"[red]✗[/] {escape(message)}", highlight=False)

# -- serve (mgsv_cli/serve/)


@app.command("serve", epilog="Example: mgsv serve --index ~/music/index.sqlite   (open the printed address; suggest, render and export use the server while it runs)")
def serve_command(
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on; 0.0.0.0 opens it to other machines (a warning says so)"),
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="port to listen on (0: any free port)"),
    index: Optional[Path] = typer.Option(None, "--index", help=INDEX_HELP),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="run folder or .safetensors file (default: the latest run)"),
    untrained: bool = typer.Option(False, "--untrained", help="random MaDe weights instead of a checkpoint (demo; results are meaningless)"),
    encoders: Optional[str] = typer.Option(None, "--encoders", help=ENCODERS_HELP + " (default: those of the index)"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    offline: bool = typer.Option(False, "--offline", help="never download encoder weights"),
    weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", help="folder holding downloaded encoder weights"),
) -> None:
    """Keep the models warm and serve a page to hear each suggested cut under the clip and see why it was chosen.

    The first line on stdout is the page's address with its access token. While it runs, `mgsv suggest`, `render`
    and `export` hand it their work when their options match its own (`--no-server` to never). Ctrl-C stops it.
    """
    from rich.markup import escape

    from mgsv_cli.serve.server import exposure_warning, run_server
    from mgsv_cli.settings import default

    index, device = default("index", index), default("device", device)
    weights_dir, offline = default("weights_dir", weights_dir), offline or default("offline")
    _check_encoders(encoders)
    warning = exposure_warning(host)
    if warning:
        err_console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    spinner = err_console.status("loading the index and models")
    spinner.start()

    def ready(state) -> None:
        spinner.stop()
        typer.echo(state.url)
        sys.stdout.flush()
        err_console.print(f"serving {escape(state.options['index'])} on {escape(state.url.split('#')[0])} "
                          f"(pid {state.pid}); open the address above; Ctrl-C stops it", style="dim", highlight=False,
                          soft_wrap=True)

    try:
        run_server(host=host, port=port, index_path=index, checkpoint=checkpoint, untrained=untrained,
                   encoders=encoders, device=device, offline=offline, weights_dir=weights_dir,
                   status=lambda message: spinner.update(message), on_ready=ready)
    finally:
        spinner.stop()
    err_console.print("mgsv serve stopped", style="dim")


# ---------------------------------------------------------------- workflow: export / models / doctor / config

models_app = typer.Typer(help="Pretrained encoder weights (CLIP, AST): download once, then run offline.",
                         no_args_is_help=True)
app.add_typer(models_app, name="models")
config_app = typer.Typer(help="Your settings file: defaults for the options of every command.", no_args_is_help=True)
app.add_typer(config_app, name="config")

EXPORT_FORMATS_HELP = "fcpxml (Final Cut Pro X) | fcp7 (FCP 7 / Premiere / Resolve XML) | edl (CMX 3600, the music) | otio"


@app.command("export", epilog="Example: mgsv export clip.mp4 --format fcpxml   (then import clip.mgsv.fcpxml)")
def export_command(
    video: Path = typer.Argument(..., help="a video `mgsv suggest` has run on"),
    pick: int = typer.Option(1, "--pick", min=1, help="which remembered suggestion (1 = best)"),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help=EXPORT_FORMATS_HELP + " (default: from -o's extension, else the settings' export_format)"),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="timeline file to write, or a folder (made if missing) to write it in (default <video>.mgsv.<ext> beside the video)"),
    force: bool = typer.Option(False, "--force", help="replace an existing output file"),
    snap: Optional[str] = typer.Option(None, "--snap", help="beat: start the music on the nearest downbeat/beat | off (default: settings)"),
    fit: Optional[str] = typer.Option(None, "--fit", help=FIT_HELP + " (default: as suggested)"),
    frame_rate: Optional[float] = typer.Option(None, "--frame-rate", help="timeline frame rate (default: the video's, else 25)"),
    index: Optional[Path] = typer.Option(None, "--index", help="music index holding the tracks' beats (for --snap beat)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    no_server: bool = typer.Option(False, "--no-server", help="do the work in this process even when `mgsv serve` runs"),
) -> None:
    """Write the suggested music cut as a timeline for your editing software (video on V1, music on A1)."""
    from mgsv_cli import settings
    from mgsv_cli.editor import export as writers
    from mgsv_cli.editor.record import load_last_suggestion

    fmt = fmt or (writers.format_from_path(out) if out is not None else None) or settings.default("export_format")
    writers.check_frame_rate(frame_rate)  # before anything is read or snapped
    snap = settings.effective({"snap": snap})[0].snap
    from mgsv_cli.editor.editlist import check_fit

    check_fit(fit)
    if not no_server:
        from mgsv_cli.serve import client as serve_client

        if (served := serve_client.try_export(video, pick=pick, fmt=fmt, out=out, force=force, snap=snap,
                                              frame_rate=frame_rate, index=settings.default("index", index),
                                              fit=fit)) is not None:
            _print_export(*served, fmt=fmt, pick=pick, as_json=as_json)  # a running `mgsv serve` did it
            return
    record = load_last_suggestion(video)
    snap_info = None
    if snap == "beat":
        from mgsv_cli.editor.snapping import snap_suggestion

        with err_console.status("finding the beats of the track"):
            record, snap_info = snap_suggestion(record, pick, index_path=settings.default("index", index))
    if fit is not None or (snap_info is not None and record.pick(pick).edit is not None):
        from mgsv_cli.editor.fitting import refit_suggestion

        with err_console.status("finding the bars of the track"):
            record = refit_suggestion(record, pick, fit, index_path=settings.default("index", index))
    exported = writers.write_timeline(record, video, fmt, out, pick=pick, frame_rate=frame_rate, force=force)
    _print_export(exported, record, snap_info, fmt=fmt, pick=pick, as_json=as_json)


def _print_export(exported, record, snap_info, *, fmt: str, pick: int, as_json: bool) -> None:
    import json

    from rich.markup import escape

    written = exported.out
    entry = record.pick(pick)
    if as_json:
        typer.echo(json.dumps({
            "ok": True, "out": str(written.absolute()), "format": fmt, "video": record.video, "rank": pick,
            "track": entry.track, "start": round(entry.start, 6), "end": round(entry.end, 6),
            "snapped_to": snap_info.snapped_to if snap_info else None, "warnings": exported.warnings,
            **({"edit": entry.edit.to_dict()} if entry.edit is not None else {}),
        }))
        return
    console.print(f"[green]✓[/] {escape(str(written))} ({fmt}): ♪ {escape(Path(entry.track).name)} "
                  f"{entry.start:.2f}–{entry.end:.2f} s" + (f", {entry.edit.summary()}" if entry.edit else ""),
                  highlight=False)
    for warning in exported.warnings:
        console.print(f"  [yellow]![/] {escape(warning)}", highlight=False)
    if snap_info is not None:
        if snap_info.snapped_to:
            console.print(f"  start moved {snap_info.moved_by:+.3f} s onto a {snap_info.snapped_to} "
                          f"({snap_info.tempo_bpm:.1f} BPM, beats from the {snap_info.grid_source})", highlight=False)
        else:
            console.print("  [yellow]![/] no beat within half a beat of the start: left where it was", highlight=False)


@models_app.command("download", epilog="Example: mgsv models download --weights-dir /mnt/usb/mgsv-weights")
def models_download_command(
    weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", help="put the weights here (default: mgsv's data folder); carry it to offline machines"),
) -> None:
    """Fetch CLIP ViT-B/32 (OpenAI) and AST (AudioSet) so that index/suggest work offline afterwards."""
    from mgsv_cli.features import weights as hub

    with err_console.status("downloading encoder weights from the Hugging Face hub"):
        written = hub.download_models(weights_dir)
    for path in written:
        console.print(f"[green]✓[/] {path}", highlight=False)
    if weights_dir is not None:
        console.print(f"use them with --weights-dir {weights_dir} (or weights_dir in `mgsv config`)", highlight=False)
    from mgsv_cli.models.checkpoint import MADE_CHECKPOINT_NOTE

    console.print(f"[dim]{MADE_CHECKPOINT_NOTE}[/]", highlight=False)


@models_app.command("list", epilog="Example: mgsv models list --json")
def models_list_command(
    weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", help="also look here (default: settings' weights_dir)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Which pretrained weights are here: CLIP, AST and a trained MaDe checkpoint."""
    import json
    from dataclasses import asdict

    from rich.markup import escape
    from rich.table import Table

    from mgsv_cli.features import weights as hub
    from mgsv_cli import settings

    chosen = weights_dir or settings.default("weights_dir")
    from mgsv_cli.models.checkpoint import checkpoint_status

    statuses = [*hub.models_status(chosen), checkpoint_status()]
    if as_json:
        typer.echo(json.dumps({"models": [asdict(s) for s in statuses]}))
        return
    table = Table(title="pretrained weights", title_justify="left")
    for header in ("", "model", "where", "from"):
        table.add_column(header)
    for s in statuses:
        mark = "[green]✓[/]" if s.present else "[red]✗[/]"
        table.add_row(mark, escape(s.name), escape(s.location or s.detail), escape(s.source))
    console.print(table)


@app.command("doctor", epilog="Example: mgsv doctor --json")
def doctor_command(
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Check this installation: ffmpeg, torch and devices, folders, weights, index, checkpoints.

    Exits 1 when something required is missing or broken (ffmpeg, torch, the settings file, a damaged index).
    """
    import json

    from rich.markup import escape
    from rich.table import Table

    from mgsv_cli.doctor import missing_required, run_checks

    with err_console.status("checking"):
        checks = run_checks()
    missing = missing_required(checks)
    if as_json:
        typer.echo(json.dumps({"ok": not missing, "checks": [c.to_dict() for c in checks]}))
    else:
        table = Table(title="mgsv doctor", title_justify="left")
        for header in ("", "check", "detail"):
            table.add_column(header)
        for c in checks:
            mark = "[green]✓[/]" if c.ok else ("[bold red]✗[/]" if c.required else "[yellow]–[/]")
            table.add_row(mark, escape(c.name) + (" [dim](required)[/]" if c.required else ""), escape(c.detail))
        console.print(table)
        if missing:
            err_console.print(f"[bold red]missing or broken:[/] {', '.join(c.name for c in missing)}", highlight=False)
    if missing:
        raise typer.Exit(1)


@config_app.command("show", epilog="Example: MGSV_TOP_K=10 mgsv config show")
def config_show_command(
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Print the settings in force and where each comes from (default, config file, environment)."""
    import json

    from rich.markup import escape
    from rich.table import Table

    from mgsv_cli import settings

    values, sources = settings.effective()
    if as_json:
        typer.echo(json.dumps({"file": str(settings.settings_path()), "settings": {
            key: {"value": value, "source": sources[key]} for key, value in values.as_dict().items()}}))
        return
    table = Table(title=f"settings ({escape(str(settings.settings_path()))})", title_justify="left")
    for header in ("key", "value", "from"):
        table.add_column(header)
    for key, value in values.as_dict().items():
        style = "" if sources[key] == settings.SOURCE_DEFAULT else "bold"
        table.add_row(key, escape(json.dumps(value)), escape(settings.source_label(key, sources[key])), style=style)
    console.print(table)


@config_app.command("path", epilog="Example: $EDITOR \"$(mgsv config path)\"")
def config_path_command() -> None:
    """Print where the settings file is (it may not exist yet: `mgsv config init`)."""
    from mgsv_cli import settings

    typer.echo(str(settings.settings_path()))


@config_app.command("init", epilog="Example: mgsv config init && mgsv config show")
def config_init_command() -> None:
    """Write a settings file listing every key at its default, commented out (never overwrites)."""
    from mgsv_cli import settings

    path = settings.init_settings_file()
    console.print(f"[green]✓[/] wrote {path}: uncomment a line to change a default", highlight=False)


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

    levels = {name: value for name, value in (("noise", noise), ("style_noise", style_noise)) if value is not None}
    info = make_dataset(root, n_videos=videos, n_tracks=tracks, seed=seed, **levels)
    sizes = ", ".join(f"{split} {n}" for split, n in info.sizes.items())
    console.print(f"[green]✓[/] wrote a synthetic MGSV-EC dataset to {info.root}: {sizes} videos, "
                  f"{len(info.tracks)} tracks, {len(info.split_track_ids('train'))} of them in train "
                  f"(seed {info.seed})", highlight=False)
    console.print(f"next: mgsv train --data {info.root} --config tiny --epochs 5\n"
                  f"      mgsv eval --data {info.root} --split test   (or --baseline prior)", highlight=False)


# ---------------------------------------------------------------- entry point


def _plain_metavars(command) -> None:
    """Help that reads the same whatever typer's version: a flag shows no ``<bool>`` type, and an
    argument its name in capitals (``VIDEOS...``, not ``{videos}...``, typer 0.29's usage line)."""
    params = list(getattr(command, "params", ()))
    if hasattr(command, "get_help_option") and hasattr(command, "context_class"):
        params.append(command.get_help_option(command.context_class(command)))  # made on demand, then kept
    for param in filter(None, params):
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
        elif getattr(param, "param_type_name", "") == "argument" and param.metavar is None:
            shown = param.name.upper() + ("..." if param.nargs != 1 else "")
            param.metavar = shown
            if hasattr(param, "_usage_display_name"):
                param._usage_display_name = lambda shown=shown: shown
    for sub in getattr(command, "commands", {}).values():
        _plain_metavars(sub)


def _is_usage_error(exc: BaseException) -> bool:
    """A bad command line, as click reports it (``exit_code`` 2 and a message; typer may vendor click)."""
    return hasattr(exc, "format_message") and getattr(exc, "exit_code", None) == 2


def _usage_error_line(exc) -> str:
    """``click``'s usage error in one line, naming the command's --help."""
    ctx = getattr(exc, "ctx", None)
    where = f" (see `{ctx.command_path} --help`)" if ctx is not None and ctx.command_path else ""
    return " ".join(exc.format_message().split()) + where


def main(argv: Optional[List[str]] = None) -> None:
    """Run the CLI; library errors and bad command lines become one line on stderr and their exit code."""
    command = typer.main.get_command(app)
    _plain_metavars(command)
    try:
        code = command.main(args=argv, prog_name="mgsv", standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except MgsvError as exc:
        from rich.markup import escape

        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except Exception as exc:  # a bug, not bad input: still one line, the traceback on request
        if _is_usage_error(exc):
            if not exc.format_message():  # no arguments at all: the help is the answer
                exc.show()
                sys.exit(exc.exit_code)
            from rich.markup import escape

            err_console.print(f"[bold red]error:[/] {escape(_usage_error_line(exc))}", highlight=False,
                              soft_wrap=True)
            sys.exit(exc.exit_code)
        if type(exc).__name__ == "Abort":  # click's end of input / Ctrl-C at a prompt
            err_console.print("[yellow]interrupted[/]")
            sys.exit(130)
        import os

        if os.environ.get("MGSV_DEBUG"):
            raise
        from rich.markup import escape

        err_console.print(f"[bold red]internal error:[/] {escape(type(exc).__name__)}: {escape(str(exc))} "
                          "(set MGSV_DEBUG=1 for the traceback, and please report it)", highlight=False, soft_wrap=True)
        sys.exit(70)


if __name__ == "__main__":
    main()
