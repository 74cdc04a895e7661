"""``mgsv suggest``: ranked tracks and the moment to cut for clips (``api.suggest_videos``), and the table."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from mgsv_cli.cli.app import app
from mgsv_cli.cli.options import Checkpoint, Device, Fit, NoServer, Offline, Store, StoreEncoders, Untrained, WeightsDir
from mgsv_cli.cli.output import console, err_console, mmss, settings
from mgsv_cli.errors import MgsvError


@app.command("suggest", epilog="Example: mgsv suggest clip.mp4 --top 10 --snap beat   (then: mgsv render clip.mp4)")
def suggest_command(
    videos: List[Path] = typer.Argument(..., help="video files or folders of videos (mp4 mov mkv webm avi m4v)"),
    index: Store = None,
    checkpoint: Checkpoint = None,
    top: Optional[int] = typer.Option(None, "--top", "-k", min=1, help="how many tracks to suggest (moments are found for these); default 5"),
    snap: Optional[str] = typer.Option(None, "--snap", help="beat: start each cut on the nearest downbeat/beat (beats found at index time)"),
    include_short: bool = typer.Option(False, "--include-short", help="rank tracks shorter than the clip too (marked; render fills the rest with silence)"),
    fit: Fit = None,
    explain: bool = typer.Option(False, "--explain", help="draw each track's relevance per 2.5 s window, with the cut in \\[brackets]"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per video on stdout (\"ok\": false for a video that failed)"),
    untrained: Untrained = False,
    encoders: StoreEncoders = None,
    device: Device = None,
    offline: Offline = False,
    weights_dir: WeightsDir = None,
    no_server: NoServer = False,
    rerank: Optional[int] = typer.Option(None, "--rerank", min=1, help="catalogs: how many first-stage candidates the full model rescores (default 1000; a library of at most that many is scored whole)"),
    first_stage: str = typer.Option("auto", "--first-stage", help="catalogs: auto | exact (pooled-vector product) | ivf_pq (Lance vector index; auto from 4M tracks)"),
) -> None:
    """Rank the indexed tracks for each video and find the moment to cut (remembered for `mgsv render`).

    A library of up to 1,000 tracks is scored whole; a larger one, or a Lance store, is searched in
    two stages: the pooled track vectors pick --rerank candidates, which the full model rescores.

    Defaults for --index, --top, --snap, --fit, --device, --weights-dir and --offline come from `mgsv config` when set there.
    """
    from rich.markup import escape

    from mgsv_cli.api import SuggestRequest, suggest_videos
    from mgsv_cli.editor.outputs import single_clip
    from mgsv_cli.editor.requests import cli_flag
    from mgsv_cli.errors import first_line
    from mgsv_cli.serve import client as serve_client

    request = SuggestRequest.build(settings(), cli_flag, top=top, snap=snap, include_short=include_short, index=index,
                                   checkpoint=checkpoint, untrained=untrained, encoders=encoders, device=device,
                                   offline=offline, weights_dir=weights_dir, rerank=rerank, first_stage=first_stage,
                                   fit=fit)
    # Search options the server does not take run here; so does anything but one clip.
    served_here = no_server or rerank is not None or first_stage != "auto" or not single_clip(videos)
    if not served_here and (served := serve_client.try_suggest(
            videos[0], top=request.top, snap=request.snap, include_short=include_short, fit=request.fit,
            index=request.index,
            checkpoint=checkpoint, untrained=untrained, encoders=encoders, device=request.device,
            weights_dir=request.weights_dir,
            failed=lambda exc: _print_suggest_failure(str(videos[0]), first_line(exc), as_json))) is not None:
        _print_suggestions(served, as_json, explain)  # a running `mgsv serve` did it, with the same options
        return
    single = single_clip(videos)
    n_done = n_failed = 0
    reported = False  # the single clip's failure line is printed
    with err_console.status("loading the index and models") as status:
        try:
            for outcome in suggest_videos(videos, request, status=lambda message: status.update(message)):
                status.stop()
                if outcome.result is None:
                    assert outcome.error is not None  # an outcome without a result says why
                    n_failed += 1
                    _print_suggest_failure(outcome.video, outcome.error, as_json)
                    reported = True
                    if not single:  # a batch goes on; one clip's failure is the command's error line
                        message = outcome.error if outcome.video in outcome.error else \
                            f"{outcome.video}: {outcome.error}"
                        err_console.print(f"[red]✗[/] {escape(message)}", highlight=False, soft_wrap=True)
                    continue
                n_done += 1
                _print_suggestions(outcome.result, as_json, explain)
        except MgsvError as exc:
            if single and not reported:
                _print_suggest_failure(_clip_name(videos[0]), first_line(exc), as_json)
            raise
    if single_clip(videos):
        return
    summary = f"suggested music for {n_done} of {n_done + n_failed} video(s)" + (
        f", {n_failed} failed" if n_failed else "")
    err_console.print(summary, style="bold red" if n_failed else "bold", highlight=False, soft_wrap=True)
    if n_failed:
        raise typer.Exit(1)


def _clip_name(video) -> str:
    """A clip as its failure line names it: resolved when it exists, as given otherwise."""
    path = Path(video).expanduser()
    try:
        return str(path.resolve()) if path.exists() else str(video)
    except OSError:
        return str(video)


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
        cut = f"{mmss(s.start)}–{mmss(s.end)}" + ("" if s.fits else " short")
        rows.append({"#": str(s.rank), "track": s.name, "score": f"{s.score:.3f}", "cut": cut,
                     "start s": f"{s.start:.2f}", "file": Path(s.track).name,
                     "predicted": f"{mmss(s.predicted_start)}–{mmss(s.predicted_end)}",
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
