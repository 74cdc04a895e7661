"""The ``mgsv`` command line: parses options, calls one library function, prints with rich.

``app`` holds the Typer application and :func:`~mgsv_cli.cli.app.main`, the one place where
library errors (:mod:`mgsv_cli.errors`) and bad command lines become a one-line message and
an exit code; ``options`` declares the options several commands share, once; ``output``
holds the consoles and the printing commands share; ``commands/`` has one module per
command (or command group). A command builds the library's request object from what it was
given and the user's settings (``editor.requests``: the rules of which options go together
live there, so ``mgsv serve`` applies the same ones), calls the library and prints.

No torch code lives here and heavy modules are imported inside each command, so
``mgsv --help`` stays instant; nothing here prints a traceback.

May import: anything of mgsv (the app layer).
"""
from __future__ import annotations

import sys
from typing import List, Optional, Protocol, TypeGuard

import typer

from mgsv_cli.cli.app import app
from mgsv_cli.cli.output import console, err_console
from mgsv_cli.errors import MgsvError

# The commands, in the order `mgsv --help` lists them: importing a module registers its commands.
# isort: off
from mgsv_cli.cli.commands import train, evaluate, index, suggest, render, serve, export, doctor  # noqa: F401
from mgsv_cli.cli.commands import data, models, config  # noqa: F401
# isort: on

__all__ = ["app", "console", "err_console", "main"]


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


class _UsageError(Protocol):
    """What main() uses of click's UsageError, matched by duck typing (typer may vendor click)."""

    exit_code: int

    def format_message(self) -> str: ...

    def show(self) -> None: ...


def _is_usage_error(exc: BaseException) -> TypeGuard[_UsageError]:
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
