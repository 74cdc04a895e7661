"""The consoles every command prints to, and the small printing helpers several share."""
from __future__ import annotations

import contextlib

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def mmss(seconds: float) -> str:
    """``75.4`` -> ``01:15``."""
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes:02d}:{secs:02d}"


def stage_progress(enabled: bool):
    """A context giving a ``progress(stage, done, total)`` callback drawn as rich bars on stderr."""
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err_console, transient=True)
    tasks: dict[str, TaskID] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bars.add_task(stage, total=total)
        bars.update(tasks[stage], completed=done, total=total)

    @contextlib.contextmanager
    def running():
        with bars:
            yield progress

    return running()


def settings():
    """The user's settings in force (defaults, config file, ``MGSV_*``): what requests default to."""
    from mgsv_cli import settings as user_settings

    return user_settings.load_settings()
