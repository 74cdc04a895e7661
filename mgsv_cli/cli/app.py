"""The Typer applications of ``mgsv``: the root and its groups (``data``, ``models``, ``config``).

The commands register themselves on them when their modules are imported (the package's
``__init__`` imports them all, in the order ``mgsv --help`` lists them).
"""
from __future__ import annotations

import typer

app = typer.Typer(
    name="mgsv",
    help="Background music for short videos: index a music folder, get ranked tracks with the moment to cut, render.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
data_app = typer.Typer(help="The MGSV-EC benchmark dataset.", no_args_is_help=True)
models_app = typer.Typer(help="Pretrained encoder weights (CLIP, AST): download once, then run offline.",
                         no_args_is_help=True)
config_app = typer.Typer(help="Your settings file: defaults for the options of every command.", no_args_is_help=True)


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
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(config_app, name="config")
