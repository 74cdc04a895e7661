"""Shell completion: the committed scripts are current, and mgsv answers what they ask."""
from __future__ import annotations

from pathlib import Path

import pytest

from mgsv_cli.completion import COMPLETE_VAR, SCRIPT_NAMES, completion_script, write_completions
from mgsv_cli.completion import main as completion_main

COMMITTED = Path(__file__).resolve().parent.parent / "completions"


def test_committed_scripts_are_current(tmp_path):
    written = write_completions(tmp_path)
    assert [p.name for p in written] == list(SCRIPT_NAMES.values())
    for path in written:
        committed = COMMITTED / path.name
        assert committed.is_file(), f"{committed} missing: run `make completions`"
        assert committed.read_text() == path.read_text(), f"{committed} is stale: run `make completions`"


@pytest.mark.parametrize("shell", list(SCRIPT_NAMES))
def test_scripts_call_mgsv_back(shell):
    script = completion_script(shell)
    assert COMPLETE_VAR in script and f"complete_{shell}" in script and "mgsv" in script
    assert "export" not in script  # nothing command-specific: mgsv answers at run time


def ask(monkeypatch, capsys, shell: str, line: str, cword: int | None = None) -> str:
    from mgsv_cli.cli import app

    monkeypatch.setenv(COMPLETE_VAR, f"complete_{shell}")
    if shell == "bash":
        monkeypatch.setenv("COMP_WORDS", line)
        monkeypatch.setenv("COMP_CWORD", str(cword))
    else:
        monkeypatch.setenv("_TYPER_COMPLETE_ARGS", line)
        monkeypatch.setenv("_TYPER_COMPLETE_FISH_ACTION", "get-args")
    with pytest.raises(SystemExit) as exit_info:
        app(prog_name="mgsv", args=[])
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


def test_bash_completes_commands_and_subcommands(monkeypatch, capsys):
    assert ask(monkeypatch, capsys, "bash", "mgsv ex", 1).split() == ["export"]
    assert set(ask(monkeypatch, capsys, "bash", "mgsv config ", 2).split()) == {"show", "path", "init"}
    assert "--snap" in ask(monkeypatch, capsys, "bash", "mgsv export clip.mp4 --sn", 3).split()


def test_zsh_and_fish_complete_commands(monkeypatch, capsys):
    assert '"doctor"' in ask(monkeypatch, capsys, "zsh", "mgsv doc")
    fish = ask(monkeypatch, capsys, "fish", "mgsv mod")
    assert fish.split("\t")[0] == "models"


def test_module_entry_point(tmp_path, capsys):
    assert completion_main([str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(SCRIPT_NAMES.values())
    assert completion_main([]) == 2


def every_command() -> list[list[str]]:
    """Every leaf command of the app, as argument lists (``["models", "download"]``)."""
    import typer

    from mgsv_cli.cli import app

    def walk(group, prefix):
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                yield from walk(command, [*prefix, name])
            else:
                yield [*prefix, name]

    return sorted(walk(typer.main.get_command(app), []))


def test_the_command_list_is_complete():
    names = {" ".join(c) for c in every_command()}
    assert {"train", "eval", "index", "suggest", "render", "export", "doctor", "data fetch"} <= names


@pytest.mark.parametrize("command", every_command(), ids=" ".join)
def test_every_command_shows_an_example(command, capsys):
    from mgsv_cli.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code in (0, None)
    assert "Example:" in capsys.readouterr().out
