"""``mgsv models download|list``: the pretrained encoders' weights (``features.weights``)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mgsv_cli.cli.app import models_app
from mgsv_cli.cli.output import console, err_console


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

    from mgsv_cli import settings
    from mgsv_cli.features import weights as hub

    chosen = weights_dir or settings.default("weights_dir")
    from mgsv_cli.doctor import checkpoint_status

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
