"""``mgsv render``: the music mixed under clips (``api.render_videos``)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from mgsv_cli.cli.app import app
from mgsv_cli.cli.options import NoServer, OverwriteOutputs, Refit, Snap, Store
from mgsv_cli.cli.output import console, err_console, settings


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
    snap: Snap = None,
    fit: Refit = None,
    index: Store = None,
    force: OverwriteOutputs = False,
    as_json: bool = typer.Option(False, "--json", help="one JSON object per video on stdout"),
    no_server: NoServer = False,
) -> None:
    """Put the suggested music moment under each video: cut to length, faded, loudness-normalised; video copied.

    Defaults for --mix, --fade-in, --fade-out, --loudness, --snap (and --fit with --track) come from `mgsv config` when set there.
    """
    from mgsv_cli.api import RenderRequest, render_videos
    from mgsv_cli.editor.outputs import single_clip
    from mgsv_cli.editor.requests import cli_flag

    request = RenderRequest.build(settings(), cli_flag, pick=pick, track=track, start=start, out=out, mix=mix,
                                  fade_in=fade_in, fade_out=fade_out, loudness=loudness, snap=snap, index=index,
                                  force=force, fit=fit)
    single = single_clip(videos)
    if single and not no_server:
        from mgsv_cli.serve import client as serve_client

        if (served := serve_client.try_render(videos[0], pick=pick, track=request.track, start=request.start,
                                              out=request.out, snap=request.snap, index=request.index,
                                              mix=request.mix, fade_in=request.fade_in, fade_out=request.fade_out,
                                              loudness=request.loudness, force=force, fit=request.fit)) is not None:
            _print_render(served, as_json)  # a running `mgsv serve` did it
            return
    n_done = n_failed = 0
    for outcome in render_videos(videos, request):
        if single:  # one clip: its error (and exit code) is raised, never here
            _print_render(outcome.result, as_json)
            return
        if outcome.error is None:
            n_done += 1
            _print_render(outcome.result, as_json)
        else:
            n_failed += 1
            _print_render_failure(outcome.video, outcome.error, outcome.exit_code, as_json)
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
