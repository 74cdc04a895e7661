"""``mgsv doctor``: what this installation has and lacks (``doctor``)."""
from __future__ import annotations

import typer

from mgsv_cli.cli.app import app
from mgsv_cli.cli.output import console, err_console


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
