"""User settings: file < environment < command line, with provenance and clear errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomllib
from _workflow_helpers import clear_settings_env

from mgsv_cli import settings
from mgsv_cli.cli import main
from mgsv_cli.errors import ConfigError, OutputExistsError


@pytest.fixture(autouse=True)
def no_settings_from_the_shell(monkeypatch):
    clear_settings_env(monkeypatch)


def write_config(text: str):
    path = settings.settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_without_a_file(isolated_home):
    values, sources = settings.effective(environ={})
    assert values.top_k == 5 and values.mix == "replace" and values.snap == "off"
    assert values.index == str(isolated_home / "data" / "index.sqlite")
    assert set(sources.values()) == {settings.SOURCE_DEFAULT}
    assert settings.settings_path() == isolated_home / "config" / "config.toml"


def test_file_then_environment_then_command_line():
    write_config('top_k = 8\nmix = "duck"\nfade_in = 0.25\noffline = true\n')
    values, sources = settings.effective(environ={"MGSV_MIX": "original", "MGSV_LOUDNESS": "-14"})
    assert (values.top_k, sources["top_k"]) == (8, settings.SOURCE_FILE)
    assert (values.mix, sources["mix"]) == ("original", settings.SOURCE_ENV)
    assert (values.loudness, sources["loudness"]) == (-14.0, settings.SOURCE_ENV)
    assert (values.fade_in, values.offline) == (0.25, True)
    assert (values.fade_out, sources["fade_out"]) == (1.0, settings.SOURCE_DEFAULT)
    values, sources = settings.effective({"top_k": 3, "mix": None}, environ={"MGSV_MIX": "original"})
    assert (values.top_k, sources["top_k"]) == (3, settings.SOURCE_CLI)
    assert (values.mix, sources["mix"]) == ("original", settings.SOURCE_ENV)  # None = not given


def test_default_helper_for_commands(monkeypatch):
    write_config("top_k = 12\n")
    assert settings.default("top_k", None) == 12
    assert settings.default("top_k", 2) == 2
    monkeypatch.setenv("MGSV_TOP_K", "7")
    assert settings.default("top_k") == 7
    with pytest.raises(ConfigError):
        settings.default("no_such_key")


def test_relative_paths_are_read_from_the_file_folder():
    path = write_config('index = "lib/index.sqlite"\nweights_dir = "~/w"\n')
    values = settings.load_settings()
    assert values.index == str(path.parent / "lib" / "index.sqlite")
    assert not values.weights_dir.startswith("~")


@pytest.mark.parametrize("text,needle", [
    ("top_k = 5\ncolour = 'red'\n", "colour"),
    ("top_k = 'many'\n", "top_k"),
    ("top_k = 0\n", "top_k"),
    ("mix = 'loud'\n", "mix"),
    ("device = 'gpu'\n", "device"),
    ("loudness = 3\n", "loudness"),
    ("offline = 'maybe'\n", "offline"),
    ("[render]\nmix = 'duck'\n", "render"),
    ("top_k = = 5\n", "not valid TOML"),
])
def test_bad_file_names_file_and_key(text, needle):
    path = write_config(text)
    with pytest.raises(ConfigError) as error:
        settings.load_settings()
    assert str(path) in str(error.value) and needle in str(error.value)


def test_bad_environment_value_names_the_variable():
    with pytest.raises(ConfigError, match="MGSV_FADE_OUT"):
        settings.effective(environ={"MGSV_FADE_OUT": "long"})


def test_init_writes_a_loadable_commented_file_and_never_overwrites():
    path = settings.init_settings_file()
    text = path.read_text()
    assert tomllib.loads(text) == {}  # every key commented out: the defaults stay in force
    for key in settings.FIELDS:
        assert f"# {key} = " in text
    # Uncommenting any line gives a valid file holding that default.
    for line in text.splitlines():
        if line.startswith("# ") and " = " in line and line[2:].split(" = ")[0] in settings.FIELDS:
            key = line[2:].split(" = ")[0]
            if key == "weights_dir":
                continue  # its default is "not set"
            path.write_text(line[2:] + "\n")
            assert getattr(settings.load_settings(), key) == getattr(settings.effective(environ={})[0], key)
    path.write_text("top_k = 9\n")
    with pytest.raises(OutputExistsError):
        settings.init_settings_file()
    assert path.read_text() == "top_k = 9\n"


def test_choices_match_the_modules_that_use_them():
    from mgsv_cli.editor import export as writers
    from mgsv_cli.editor import render

    assert settings.MIX_MODES == tuple(render.MIX_MODES)
    assert settings.EXPORT_FORMATS == tuple(writers.FORMATS)
    assert set(settings.FIELDS) == set(settings.Settings.__dataclass_fields__)


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def test_cli_config_show_path_init(capsys, monkeypatch):
    code, out, _ = run_cli(["config", "path"], capsys)
    assert code == 0 and out.strip() == str(settings.settings_path())
    code, out, _ = run_cli(["config", "init"], capsys)
    assert code == 0 and settings.settings_path().is_file()
    code, _, err = run_cli(["config", "init"], capsys)
    assert code == OutputExistsError.exit_code and "exists" in err
    settings.settings_path().write_text("top_k = 4\n")
    monkeypatch.setenv("MGSV_SNAP", "beat")
    code, out, _ = run_cli(["config", "show", "--json"], capsys)
    shown = json.loads(out)["settings"]
    assert shown["top_k"] == {"value": 4, "source": "config file"}
    assert shown["snap"] == {"value": "beat", "source": "environment"}
    assert shown["mix"]["source"] == "default"
    code, out, _ = run_cli(["config", "show"], capsys)
    assert code == 0 and "MGSV_SNAP" in out


def test_cli_bad_config_is_one_line_exit_2(capsys):
    write_config("top_k = 'x'\n")
    code, _, err = run_cli(["config", "show"], capsys)
    assert code == ConfigError.exit_code == 2
    assert "top_k" in err and "Traceback" not in err


@pytest.mark.parametrize("command", [["config", "show"], ["suggest", "clip.mp4"], ["render", "clip.mp4"], ["doctor"]])
def test_cli_config_that_is_not_utf8_is_one_line_exit_2(capsys, command):
    path = settings.settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"top_k = 5\nmix = \"d\xe9\xe9p\"\n")  # Latin-1 bytes from an old editor
    code, out, err = run_cli(command, capsys)
    if command == ["doctor"]:
        assert code == 1 and "not UTF-8" in out + err  # doctor reports it as a failed check
    else:
        assert code == ConfigError.exit_code == 2
        assert len(err.strip().splitlines()) == 1 and "not UTF-8" in err and "Traceback" not in err
    assert path.read_bytes().startswith(b"top_k = 5")  # the user's file is left as it was


def test_config_init_on_a_read_only_folder_is_a_storage_error(capsys, monkeypatch):
    import errno

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "mkdir", read_only)
    code, _, err = run_cli(["config", "init"], capsys)
    assert code == 5 and "read-only" in err and "Traceback" not in err
