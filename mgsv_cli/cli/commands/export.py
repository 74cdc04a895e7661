"""``mgsv export``: a remembered suggestion as a timeline for editing software (``api.export_suggestion``)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mgsv_cli.cli.app import app
from mgsv_cli.cli.options import NoServer, Refit, Snap, Store
from mgsv_cli.cli.output import console, err_console, settings

EXPORT_FORMATS_HELP = "fcpxml (Final Cut Pro X) | fcp7 (FCP 7 / Premiere / Resolve XML) | edl (CMX 3600, the music) | otio"


@app.command("export", epilog="Example: mgsv export clip.mp4 --format fcpxml   (then import clip.mgsv.fcpxml)")
def export_command(
    video: Path = typer.Argument(..., help="a video `mgsv suggest` has run on"),
    pick: int = typer.Option(1, "--pick", min=1, help="which remembered suggestion (1 = best)"),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help=EXPORT_FORMATS_HELP + " (default: from -o's extension, else the settings' export_format)"),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="timeline file to write, or a folder (made if missing) to write it in (default <video>.mgsv.<ext> beside the video)"),
    force: bool = typer.Option(False, "--force", help="replace an existing output file"),
    snap: Snap = None,
    fit: Refit = None,
    frame_rate: Optional[float] = typer.Option(None, "--frame-rate", help="timeline frame rate (default: the video's, else 25)"),
    index: Store = None,
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    no_server: NoServer = False,
) -> None:
    """Write the suggested music cut as a timeline for your editing software (video on V1, music on A1)."""
    from mgsv_cli.api import ExportRequest, export_suggestion
    from mgsv_cli.editor.requests import cli_flag

    request = ExportRequest.build(settings(), cli_flag, pick=pick, fmt=fmt, out=out, frame_rate=frame_rate, snap=snap,
                                  index=index, force=force, fit=fit)  # before anything is read or snapped
    if not no_server:
        from mgsv_cli.serve import client as serve_client

        if (served := serve_client.try_export(video, pick=pick, fmt=request.fmt, out=out, force=force,
                                              snap=request.snap, frame_rate=frame_rate,
                                              index=request.index, fit=request.fit)) is not None:
            _print_export(*served, fmt=request.fmt, pick=pick, as_json=as_json)  # a running `mgsv serve` did it
            return
    with err_console.status("writing the timeline"):
        exported, record, snap_info = export_suggestion(video, request)
    _print_export(exported, record, snap_info, fmt=request.fmt, pick=pick, as_json=as_json)


def _print_export(exported, record, snap_info, *, fmt: str, pick: int, as_json: bool) -> None:
    import json

    from rich.markup import escape

    from mgsv_cli.api import ExportedTimeline

    written = exported.out
    entry = record.pick(pick)
    if as_json:
        typer.echo(json.dumps({"ok": True, **ExportedTimeline.of(exported, record, snap_info, fmt, pick).to_json()}))
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
