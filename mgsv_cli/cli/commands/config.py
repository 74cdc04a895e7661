"""``mgsv config show|path|init``: the settings file (``settings``)."""
from __future__ import annotations

import typer

from mgsv_cli.cli.app import config_app
from mgsv_cli.cli.output import console


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
