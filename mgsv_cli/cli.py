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

from .errors import MgsvError

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


# ---------------------------------------------------------------- research: train / eval / data


# ---------------------------------------------------------------- editor: index / suggest / render


# ---------------------------------------------------------------- workflow: export / models / doctor / config


# ---------------------------------------------------------------- entry point


def main(argv: Optional[List[str]] = None) -> None:
    """Run the CLI; library errors become one line on stderr and their exit code."""
    try:
        app(args=argv, standalone_mode=True)
    except MgsvError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
