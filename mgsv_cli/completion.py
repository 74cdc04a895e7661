"""Shell completion scripts for ``mgsv`` (bash, zsh, fish), written into ``completions/``.

The scripts hold no command names: each one calls ``mgsv`` back with ``_MGSV_COMPLETE``
set, and the running program answers from its own command tree. They come from the
completion classes typer registers in its bundled click (the ones ``mgsv`` answers
with at run time), so script and answer always speak the same protocol.

Regenerate after upgrading typer: ``python -m mgsv_cli.completion completions``
(``make completions``); a test fails while the committed scripts are stale.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from mgsv_cli.paths import atomic_write_text

PROG_NAME = "mgsv"
COMPLETE_VAR = "_MGSV_COMPLETE"
SCRIPT_NAMES = {"bash": "mgsv.bash", "zsh": "mgsv.zsh", "fish": "mgsv.fish"}


def completion_script(shell: str) -> str:
    """The completion script for ``shell`` (``bash``, ``zsh`` or ``fish``)."""
    import typer.main
    from typer._click import shell_completion
    from typer._completion_classes import completion_init

    from mgsv_cli.cli import app
    from mgsv_cli.errors import UsageError

    if shell not in SCRIPT_NAMES:
        raise UsageError(f"shell {shell!r}: expected one of {', '.join(SCRIPT_NAMES)}")
    completion_init()  # typer's classes replace click's defaults, as when mgsv runs
    complete_class = shell_completion.get_completion_class(shell)
    if complete_class is None:
        raise UsageError(f"no completion support for {shell} in this typer version")
    script = complete_class(typer.main.get_command(app), {}, PROG_NAME, COMPLETE_VAR).source()
    return script if script.endswith("\n") else script + "\n"


def write_completions(folder: str | os.PathLike) -> list[Path]:
    """Write ``mgsv.bash``, ``mgsv.zsh`` and ``mgsv.fish`` into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for shell, name in SCRIPT_NAMES.items():
        path = folder / name
        atomic_write_text(path, completion_script(shell))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m mgsv_cli.completion FOLDER   (writes mgsv.bash, mgsv.zsh, mgsv.fish)",
              file=sys.stderr)
        return 2
    for path in write_completions(args[0]):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
