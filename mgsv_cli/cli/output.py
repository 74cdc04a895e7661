"""The consoles every command prints to, and the small printing helpers several share
(stage bars, the index's bars and its interruption, the list of failed files)."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import typer
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


def interruptible(run, where: str):
    """``run(progress)`` under the index progress bars; Ctrl-C keeps what was written and says how to resume."""
    progress = IndexBars()
    try:
        with progress:
            return run(progress)
    except KeyboardInterrupt:
        report = progress.interrupted_report
        saved = f"; {report.n_tracks} track(s) in the {where}" if report is not None else ""
        err_console.print(f"[yellow]interrupted[/]{saved}: run the same command again to resume", highlight=False,
                          soft_wrap=True)
        raise typer.Exit(130)


def print_failures_at_end(failed, what: str = "could not be indexed (skipped; tried again on the next run)") -> None:
    """The files a run skipped, listed once more after the summary (a Ray run's lines scroll past its
    bars); ``what`` says what became of them."""
    from rich.markup import escape

    console.print(f"{len(failed)} file(s) {what}:", highlight=False, soft_wrap=True)
    for path, reason in failed:
        line = reason if path in reason else f"{path}: {reason}"  # as IndexBars.failed shows it
        console.print(f"  {escape(line)}", highlight=False, soft_wrap=True)


class IndexBars:
    """Rich progress bars (stderr) for ``index_music``'s stages; failures printed above them."""

    LABELS = {"checking": "checking files", "probing": "reading tags", "embedding": "embedding audio",
              "beats": "finding beats and bars", "indexing": "indexing on Ray (files)"}

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TaskID,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        self.bars = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                             TimeRemainingColumn(), TextColumn("[dim]{task.fields[detail]}"), console=err_console,
                             transient=True,
                             # Bars only on a terminal: in a log they leave a stray blank line before
                             # the one-line error (failures are still printed, above the bars).
                             disable=not err_console.is_terminal)
        self.tasks: dict[str, TaskID] = {}
        self.note_task: Optional[TaskID] = None
        self.interrupted_report = None  # what an interrupted run kept

    def __enter__(self) -> "IndexBars":
        self.bars.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.__exit__(*exc)

    def stage(self, name: str, total: float) -> None:
        self._clear_note()
        self.tasks[name] = self.bars.add_task(self.LABELS.get(name, name), total=total, detail="")

    def advance(self, name: str, amount: float = 1.0, detail: str = "") -> None:
        if name in self.tasks:
            self.bars.update(self.tasks[name], advance=amount, detail=Path(detail).name if detail else "")

    def failed(self, path: str, reason: str) -> None:
        from rich.markup import escape

        message = reason if path in reason else f"{path}: {reason}"  # most reasons name the file already
        self.bars.console.print(f"[red]✗[/] {escape(message)}", highlight=False, soft_wrap=True)

    def note(self, message: str) -> None:
        self._clear_note()
        self.note_task = self.bars.add_task(message, total=None, detail="")

    def interrupted(self, report) -> None:
        self.interrupted_report = report

    def _clear_note(self) -> None:
        if self.note_task is not None:
            self.bars.remove_task(self.note_task)
            self.note_task = None
