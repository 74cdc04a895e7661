"""What a new user meets first: one-line messages that point somewhere, checks made before
seconds of loading, help that reads whole, and a suggestion table that fits 80 columns."""
from __future__ import annotations

import json
import re
import shutil

import pytest

pytest.register_assert_rewrite("_library_helpers")
from _library_helpers import TRACKS, run_cli  # noqa: E402

pytest_plugins = ["_library_helpers"]


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if any encoder or network starts loading."""
    from mgsv_cli.features import encoders
    from mgsv_cli.models import checkpoint

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(encoders, "load_encoders", refuse)
    monkeypatch.setattr(checkpoint, "load_model", refuse)
    monkeypatch.setattr(checkpoint, "build_untrained", refuse)


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------- inputs before models


@pytest.mark.parametrize("name, write, code, words", [
    ("missing.mp4", None, 2, "no such file"),
    ("empty.mp4", b"", 5, "empty"),
    ("notes.mp4", b"not a video, just notes\n" * 10, 5, "not a readable media file"),
])
def test_suggest_refuses_a_bad_clip_before_loading_any_model(capsys, tmp_path, built, no_model_loading,
                                                             name, write, code, words):
    clip = tmp_path / name
    if write is not None:
        clip.write_bytes(write)
    result = run_cli(capsys, "suggest", clip, "--index", built[1], "--untrained", "--no-server")
    assert result.code == code
    assert words in one_error_line(result.err)


def test_suggest_refuses_an_audio_file_given_as_the_clip(capsys, built, no_model_loading):
    track = built[0] / TRACKS[0][0]
    result = run_cli(capsys, "suggest", track, "--index", built[1], "--untrained", "--no-server", "--json")
    assert result.code == 5 and "has no video stream" in one_error_line(result.err)
    [line] = result.out.splitlines()
    assert json.loads(line) == {"video": str(track), "ok": False, "error": json.loads(line)["error"]}


def test_a_bad_clip_among_good_ones_is_reported_and_the_rest_suggested(capsys, tmp_path, media_src, built):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    result = run_cli(capsys, "suggest", media_src / "clips" / "clip0.mp4", bad, "--index", built[1],
                     "--untrained", "--json", "--top", "1", "--device", "cpu", "--no-server")
    assert result.code == 1
    objects = [json.loads(line) for line in result.out.splitlines()]
    assert [o["ok"] for o in objects] == [False, True] and objects[0]["video"] == str(bad)


def test_a_checkpoint_for_other_encoders_is_refused_at_once_saying_which(capsys, tmp_path, built, monkeypatch):
    """A checkpoint trained on MGSV-EC-shaped features (`mgsv data synth`: 512/768-d) cannot rank
    an index of the tiny encoders (64-d music): said before any model loads, with the way out."""
    from mgsv_cli.models.checkpoint import build_untrained, save_checkpoint

    model, variant = build_untrained(video_dim=512, music_dim=768, config="tiny")
    save_checkpoint(tmp_path / "run", model, variant, {})
    from mgsv_cli.features import encoders
    from mgsv_cli.models import checkpoint

    monkeypatch.setattr(encoders, "load_encoders", lambda *a, **k: pytest.fail("encoders loaded"))
    monkeypatch.setattr(checkpoint, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    clip = tmp_path / "clip.mp4"
    from mgsv_cli.media import synth

    synth.synth_clip(clip, seconds=3.0)
    result = run_cli(capsys, "suggest", clip, "--index", built[1], "--checkpoint", tmp_path / "run", "--no-server")
    line = one_error_line(result.err)
    assert result.code == 6
    assert "the pretrained encoders" in line and "holds tiny tokens" in line
    assert "mgsv models download" in line and "--encoders pretrained" in line and "--untrained" in line


def test_reading_a_checkpoints_config_agrees_with_safetensors(tmp_path):
    """``read_metadata`` parses the header by hand (no torch import): the library must agree."""
    from safetensors import safe_open

    from mgsv_cli.errors import CheckpointError
    from mgsv_cli.models.checkpoint import build_untrained, read_metadata, save_checkpoint

    model, variant = build_untrained(video_dim=512, music_dim=64, config="tiny")
    save_checkpoint(tmp_path, model, variant, {})
    path = tmp_path / "model.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        assert read_metadata(path) == handle.metadata()
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match="not a readable safetensors checkpoint"):
        read_metadata(path)


# ---------------------------------------------------------------- index: nothing found


def test_index_of_a_folder_without_audio_says_so_and_writes_nothing(capsys, tmp_path):
    folder = tmp_path / "not-music"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("hello")
    (folder / ".hidden.mp3").write_bytes(b"hidden")
    index = tmp_path / "index.sqlite"
    result = run_cli(capsys, "index", folder, "--index", index, "--encoders", "tiny")
    assert result.code == 2 and "no audio files under" in one_error_line(result.err)
    assert "mp3" in result.err and not index.exists()
    store = tmp_path / "catalog.lance"
    result = run_cli(capsys, "index", folder, "--store", store, "--encoders", "tiny")
    assert result.code == 2 and "no audio files under" in one_error_line(result.err)
    assert not store.exists()


# ---------------------------------------------------------------- the command line itself


def test_a_bad_option_value_is_one_line_naming_the_help(capsys, tmp_path):
    result = run_cli(capsys, "suggest", tmp_path / "clip.mp4", "--top", "0")
    assert result.code == 2
    line = one_error_line(result.err)
    assert "--top" in line and "mgsv suggest --help" in line and "╭" not in result.err
    result = run_cli(capsys, "no-such-command")
    assert result.code == 2 and "no-such-command" in one_error_line(result.err)


def help_text(capsys, *command: str, width: int = 80) -> str:
    from mgsv_cli import cli

    saved = cli.console.width
    cli.console.width = width
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*command, "--help"])
    finally:
        cli.console.width = saved
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


def every_command():
    import typer

    from mgsv_cli import cli

    def walk(command, path):
        subcommands = getattr(command, "commands", {})
        if not subcommands:
            yield path, command
        for name, sub in subcommands.items():
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(cli.app), []))


def test_help_shows_every_option_whole_with_plain_metavars(capsys):
    """Every option's help text reaches the screen (rich markup once ate "[brackets]"); flags show
    no ``<bool>`` and arguments read ``VIDEOS...``, not ``{videos}...``."""
    for path, command in every_command():
        shown = help_text(capsys, *path)
        flat = " ".join(re.sub(r"[│╭╮╰╯─]", " ", shown).split())
        assert "<bool>" not in shown and "{" not in shown.split("\n\n")[0] + shown[:400], path
        for param in command.params:
            words = " ".join((param.help or "").split())
            if not words:
                continue
            # rich reflows the text inside the box: compare with all white space collapsed
            assert words.replace("\\[", "[") in flat, (path, param.name, words)
    usage = help_text(capsys, "suggest")
    assert "Usage: mgsv suggest [OPTIONS] VIDEOS..." in usage


# ---------------------------------------------------------------- the table at 80 columns


LONG_NAME = "01 - The Extraordinarily Long Title of a Wonderful Summer Anthem (Extended Club Remix).wav"


@pytest.fixture(scope="module")
def long_named_library(tmp_path_factory, media_src, tiny_encoders):
    from mgsv_cli.index.pipeline import index_folder

    root = tmp_path_factory.mktemp("long_names")
    music = root / "music"
    music.mkdir()
    shutil.copy2(media_src / "music" / TRACKS[1][0], music / "02-tagged.mp3")  # tagged: "Synth B - Beta"
    shutil.copy2(media_src / "music" / TRACKS[2][0], music / LONG_NAME.replace(".wav", ".flac"))
    assert index_folder(music, root / "index.sqlite", encoders=tiny_encoders, detect_beats=False).ok
    return root / "index.sqlite"


def suggestion_table(capsys, media_src, index, width: int) -> list[str]:
    from mgsv_cli import cli

    saved = cli.console.width
    cli.console.width = width
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["suggest", str(media_src / "clips" / "clip0.mp4"), "--index", str(index), "--untrained",
                      "--device", "cpu", "--no-server"])
    finally:
        cli.console.width = saved
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    return [line for line in out.splitlines() if line.startswith("│")]


def test_the_suggestion_table_keeps_one_line_per_track_at_80_columns(capsys, media_src, long_named_library):
    rows = suggestion_table(capsys, media_src, long_named_library, 80)
    assert len(rows) == 2  # two tracks, one line each: names shortened, never wrapped
    for row in rows:
        assert len(row) <= 80
        cells = [c.strip() for c in row.strip("│").split("│")]
        assert re.fullmatch(r"-?\d\.\d{3}", cells[2]) and re.fullmatch(r"\d\d:\d\d–\d\d:\d\d", cells[3])
        assert re.fullmatch(r"\d+\.\d\d", cells[4])
    long_row = next(r for r in rows if "01 - The" in r)
    assert "…" in long_row and "Remix).flac" in long_row  # shortened in the middle: start and end kept


def test_the_suggestion_table_uses_the_width_it_has(capsys, media_src, long_named_library):
    rows = suggestion_table(capsys, media_src, long_named_library, 140)
    assert any(LONG_NAME.replace(".wav", ".flac") in row for row in rows)  # whole names when they fit
    assert not any("02-tagged.mp3" in row for row in rows)  # no room for the file column beside them
    rows = suggestion_table(capsys, media_src, long_named_library, 300)
    assert any("Synth B - Beta" in row and "02-tagged.mp3" in row for row in rows)  # room for the file too
