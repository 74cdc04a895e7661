"""``mgsv index``: a music folder into a track store (``api.run_index``), and ``--failed``."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mgsv_cli.cli.app import app
from mgsv_cli.cli.options import ENCODERS_HELP, INDEX_HELP, Device, Offline, WeightsDir
from mgsv_cli.cli.output import console, interruptible, print_failures_at_end, settings


@app.command("index", epilog="Example: mgsv index ~/Music   (again later: only new or changed files are embedded; mgsv index --failed lists the files it could not take)")
def index_command(
    music_dir: Optional[str] = typer.Argument(None, show_default=False, metavar="MUSIC_DIR", help="music folder, searched recursively (mp3 wav flac m4a aac ogg opus); with --failed, only failures under it; with --engine ray also an object-store prefix (s3://bucket/music)"),
    index: Optional[str] = typer.Option(None, "--index", help=INDEX_HELP),
    prune: bool = typer.Option(False, "--prune", help="drop indexed tracks (and remembered failures) whose files are gone"),
    force: bool = typer.Option(False, "--force", help="re-embed every track and retry failed files (also: rebuild with other encoders; a damaged index is moved aside and rebuilt)"),
    failed: bool = typer.Option(False, "--failed", help="list the files the index could not take, and why (needs no MUSIC_DIR)"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="try again the files that failed before (unchanged ones are skipped otherwise)"),
    as_json: bool = typer.Option(False, "--json", help="with --failed: print one JSON object"),
    encoders: Optional[str] = typer.Option(None, "--encoders", help=ENCODERS_HELP + " (default: pretrained)"),
    device: Device = None,
    offline: Offline = False,
    weights_dir: WeightsDir = None,
    beats: bool = typer.Option(True, "--beats/--no-beats", help="find each track's beat grid, bars and sections (for cuts on a beat and --fit)"),
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
    import shlex

    from mgsv_cli.api import IndexRequest, run_index
    from mgsv_cli.editor.requests import cli_flag
    from mgsv_cli.errors import UsageError

    if failed:
        clashing = [flag for flag, on in (("--force", force), ("--prune", prune), ("--retry-failed", retry_failed)) if on]
        if clashing:
            raise UsageError(f"--failed only lists; it does not go with {', '.join(clashing)}")
        _print_failed_files(store or index, music_dir, as_json)
        return
    if as_json:
        raise UsageError("--json goes with --failed (`mgsv index --failed --json`)")
    request = IndexRequest.build(settings(), cli_flag, source=None if music_dir is None else _path_or_uri(music_dir),
                                 index=index, store=store, engine=engine, encoders=encoders, device=device,
                                 offline=offline, weights_dir=weights_dir, batch_windows=batch_windows,
                                 detect_beats=beats, prune=prune, force=force, retry_failed=retry_failed, keys=keys,
                                 ray_address=ray_address)
    report = interruptible(lambda progress: run_index(request, progress), "store" if store else "index")
    target = f"--store {shlex.quote(store)}" if store else f"--index {shlex.quote(index)}" if index else ""
    _print_index_summary(report, request.encoders, target)
    if report.failed:
        if request.engine == "ray":  # a Ray run's lines scroll past its bars: said once more at the end
            print_failures_at_end(report.failed)
        raise typer.Exit(1)


def _path_or_uri(value: str) -> str:
    return value if "://" in value else str(Path(value).expanduser())


def _print_failed_files(index: Optional[str], music_dir: Optional[str], as_json: bool) -> None:
    """`mgsv index --failed`: the remembered failures of ``index`` (None: the settings'), one per
    line (or one JSON object)."""
    import json

    from rich.markup import escape

    from mgsv_cli.api import open_library

    library = open_library(index)
    path, found = library.uri, library.failed(under=music_dir)
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
        line = f.reason if f.path in f.reason else f"{f.path}: {f.reason}"  # as IndexBars.failed shows it
        gone = "" if f.exists else " [dim](gone: `--prune` forgets it)[/]"
        console.print(f"  {escape(line)}{gone}", highlight=False, soft_wrap=True)


def _print_index_summary(report, encoders: str, target_flag: str = "") -> None:
    """The run's counts and what to do next; ``target_flag`` repeats the store the user named
    (``--index X`` or ``--store X``) in the commands it suggests."""
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
    filled = report.structures_added - report.added - report.updated
    if filled > 0:  # an index from before structures: its tracks got theirs without embedding again
        console.print(f"{filled} stored track(s) got their bars and sections (nothing re-embedded)", style="dim")
    if report.missing:
        console.print(f"{report.missing} indexed file(s) no longer exist: `--prune` drops them", style="yellow")
    if report.skipped_failed:
        again = f" {target_flag}" if target_flag else ""
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
