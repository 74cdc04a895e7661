"""The edges a new user hits in suggest, render and export: full or read-only disks, tracks
shorter than the clip or gone from the disk, hints, odd option values, leftovers of killed
renders. Every test drives the real CLI and checks the exit code, that an error is one line
without a traceback, and that the user's files are untouched."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from mgsv_cli.editor import render as rendering
from mgsv_cli.editor.record import Suggestion, SuggestionResult, remember_suggestion
from mgsv_cli.errors import IndexDatabaseError, MediaError, StorageError, UsageError
from mgsv_cli.media import synth

pytest.register_assert_rewrite("_library_helpers")

from _library_helpers import run_cli  # noqa: E402
from _media_helpers import mounted_tmpfs  # noqa: E402
from _workflow_helpers import clear_settings_env  # noqa: E402

pytest_plugins = ["_library_helpers"]  # media_src, built, indexed_music, tiny_encoders


@pytest.fixture(autouse=True)
def no_settings_from_the_shell(monkeypatch):
    clear_settings_env(monkeypatch)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A 3 s clip, an 8 s song and a 1.5 s jingle (tests copy the clip: outputs go beside it)."""
    root = tmp_path_factory.mktemp("edges")
    return SimpleNamespace(
        clip=synth.synth_clip(root / "clip.mp4", seconds=3.0, with_audio=False, size=(64, 48), seed=1),
        song=synth.synth_track(root / "song.wav", seconds=8.0, bpm=120, seed=2),
        jingle=synth.synth_track(root / "jingle.wav", seconds=1.5, bpm=120, seed=3),
    )


@pytest.fixture(scope="module")
def long_clips(tmp_path_factory):
    """Clips longer than some (13 s: the 11 s track) or all (25 s) of the indexed tracks (11, 16, 21 s)."""
    root = tmp_path_factory.mktemp("long_clips")
    return SimpleNamespace(
        thirteen=synth.synth_clip(root / "thirteen.mp4", seconds=13.0, with_audio=False, size=(64, 48), seed=4),
        long=synth.synth_clip(root / "long.mp4", seconds=25.0, with_audio=False, size=(64, 48), seed=5),
    )


@pytest.fixture
def clip(media, tmp_path) -> Path:
    return Path(shutil.copy2(media.clip, tmp_path / "clip.mp4"))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_error_line(err: str) -> str:
    """The single line a failing command printed on stderr (and nothing else there)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "internal error" not in err, err
    return lines[0]


def remember(video: Path, track: Path, start: float = 1.0, duration: float = 3.0, track_duration: float = 8.0,
             fits: bool = True) -> None:
    entry = Suggestion(rank=1, track=str(track.resolve()), score=1.0, start=start, end=start + duration,
                       predicted_start=start, predicted_end=start + duration, track_duration=track_duration, fits=fits)
    remember_suggestion(SuggestionResult(video=str(video.resolve()), duration=duration, suggestions=[entry],
                                         checkpoint="test", encoders="tiny"))


def user_files(folder: Path) -> list[str]:
    """What is in a test's folder, but the per-test MGSV_HOME."""
    return sorted(p.name for p in folder.iterdir() if p.name != "mgsv_home")


def hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def os_error(code: int, path) -> OSError:
    return OSError(code, os.strerror(code), str(path))


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# ---------------------------------------------------------------- 1. a full disk during render


def test_full_disk_during_render_names_the_cause(media, clip, tmp_path, isolated_home):
    """A real render in a subprocess under a 20 kB file size limit: ffmpeg gets EFBIG and prints
    statistics after its error; the one line shown is the error, exit 5, nothing left behind."""
    import resource
    import signal

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # ignored signals survive exec: EFBIG, not death

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = sha(clip)
    env = {**os.environ, "MGSV_HOME": str(isolated_home), "PYTHONPATH": str(Path.cwd()),
           "PYTHONDONTWRITEBYTECODE": "1", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "mgsv_cli", "render", str(clip), "--track", str(media.song),
                           "--start", "0", "-o", str(out_dir / "clip.mp4")],
                          preexec_fn=limited, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == StorageError.exit_code, proc.stderr
    line = one_error_line(proc.stderr)
    assert "File too large" in line and str(out_dir / "clip.mp4") in line, line
    assert "Qavg" not in line and "frame=" not in line and ".part" not in line
    assert list(out_dir.iterdir()) == []  # neither the output nor a half-written temporary file
    assert sha(clip) == before


def test_render_into_a_full_file_system_says_no_space(media, clip, tmp_path, capsys):
    with mounted_tmpfs(tmp_path / "full", "size=64k") as full:
        result = run_cli(capsys, "render", clip, "--track", media.song, "--start", "0", "-o", full / "clip.mp4")
        assert result.code == StorageError.exit_code, result.err
        line = one_error_line(result.err)
        assert "No space left on device" in line and str(full / "clip.mp4") in line
        assert list(full.iterdir()) == []


# ---------------------------------------------------------------- 2. read-only and other OS errors on outputs


@pytest.mark.parametrize("code,cause", [(errno.EROFS, "read-only"), (errno.EIO, "input/output error"),
                                        (errno.ENOSPC, "no space left")])
def test_render_unwritable_output_folder_fails_at_once(media, clip, tmp_path, capsys, monkeypatch, code, cause):
    real_open = os.open
    ffmpeg_runs = []

    def failing_open(path, *args, **kwargs):
        if str(path).endswith(".part"):
            raise os_error(code, path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", failing_open)
    real_ffmpeg = rendering._ffmpeg
    monkeypatch.setattr(rendering, "_ffmpeg", lambda args, what: ffmpeg_runs.append(what) or real_ffmpeg(args, what))
    before = sha(clip)
    result = run_cli(capsys, "render", clip, "--track", media.song, "--start", "0")
    assert result.code == StorageError.exit_code
    line = one_error_line(result.err)
    assert str(tmp_path / "clip.mgsv.mp4") in line and cause in line
    assert ffmpeg_runs == []  # refused before minutes of loudness passes
    assert user_files(tmp_path) == ["clip.mp4"] and sha(clip) == before


def test_render_cannot_make_the_output_folder(media, clip, tmp_path, capsys, monkeypatch):
    blocked = tmp_path / "exports"
    real_mkdir = Path.mkdir

    def failing_mkdir(self, *args, **kwargs):
        if self == blocked or blocked in self.parents:
            raise os_error(errno.EROFS, self)
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", failing_mkdir)
    single = run_cli(capsys, "render", clip, "--track", media.song, "--start", "0", "-o", blocked / "day1" / "a.mp4")
    assert single.code == StorageError.exit_code
    line = one_error_line(single.err)
    assert str(blocked / "day1") in line and "read-only" in line

    batch = run_cli(capsys, "render", clip, media.clip, "--track", media.song, "--start", "0", "-o", blocked)
    assert batch.code == StorageError.exit_code
    assert str(blocked) in one_error_line(batch.err) and not blocked.exists()


def test_render_failing_to_move_into_place_keeps_the_existing_output(media, clip, tmp_path, capsys, monkeypatch):
    out = tmp_path / "final.mp4"
    out.write_bytes(b"the editor's earlier cut")
    real_replace = os.replace

    def failing_replace(src, dst, *args, **kwargs):
        if Path(dst) == out:
            raise os_error(errno.ENOSPC, dst)
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", failing_replace)
    result = run_cli(capsys, "render", clip, "--track", media.song, "--start", "0", "-o", out, "--force")
    assert result.code == StorageError.exit_code
    line = one_error_line(result.err)
    assert str(out) in line and "no space left on device" in line
    assert out.read_bytes() == b"the editor's earlier cut" and hidden_leftovers(tmp_path) == []


def test_a_failing_cleanup_never_hides_ffmpegs_reason(media, clip, tmp_path, capsys, monkeypatch):
    real_unlink = Path.unlink

    def failing_unlink(self, *args, **kwargs):
        if self.name.endswith(".part"):
            raise os_error(errno.EROFS, self)
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", failing_unlink)
    # WebM cannot carry H.264: ffmpeg refuses; then removing the temporary file fails too.
    result = run_cli(capsys, "render", clip, "--track", media.song, "--start", "0", "-o", tmp_path / "x.webm")
    monkeypatch.undo()
    assert result.code == MediaError.exit_code
    line = one_error_line(result.err)
    assert "cannot render" in line and "codec" in line and "read-only" not in line, line


@pytest.mark.parametrize("command", ["render", "export"])
def test_output_name_too_long_is_a_storage_error(media, clip, tmp_path, capsys, command):
    remember(clip, media.song)
    suffix = ".mp4" if command == "render" else ".otio"
    out = tmp_path / ("n" * 300 + suffix)
    result = run_cli(capsys, command, clip, "-o", out)
    assert result.code == StorageError.exit_code
    assert "file name too long" in one_error_line(result.err)
    assert user_files(tmp_path) == ["clip.mp4"]


@pytest.mark.parametrize("where,code,cause", [
    ("mkstemp", errno.EROFS, "read-only"),
    ("mkstemp", errno.EIO, "input/output error"),
    ("mkstemp", errno.EDQUOT, "quota"),
    ("replace", errno.ENOSPC, "no space left on device"),
    ("mkdir", errno.EROFS, "read-only"),
])
def test_export_os_errors_are_one_line_and_change_nothing(media, clip, tmp_path, capsys, monkeypatch, where, code,
                                                         cause):
    import tempfile

    remember(clip, media.song)
    out = (tmp_path / "timelines" / "cut.otio") if where == "mkdir" else (tmp_path / "cut.otio")
    if where == "replace":
        out.write_text("the editor's timeline")
    if where == "mkstemp":
        real = tempfile.mkstemp
        monkeypatch.setattr(tempfile, "mkstemp", lambda *a, **k: (_ for _ in ()).throw(os_error(code, out.parent)))
    elif where == "replace":
        real = os.replace
        monkeypatch.setattr(os, "replace", lambda src, dst, *a, **k: (_ for _ in ()).throw(os_error(code, dst))
                            if Path(dst) == out else real(src, dst, *a, **k))
    else:
        real = Path.mkdir
        monkeypatch.setattr(Path, "mkdir", lambda self, *a, **k: (_ for _ in ()).throw(os_error(code, self))
                            if self == out.parent else real(self, *a, **k))
    before = sha(clip)
    result = run_cli(capsys, "export", clip, "-o", out, "--force")
    assert result.code == StorageError.exit_code
    line = one_error_line(result.err)
    assert str(out) in line and cause in line, line
    assert sha(clip) == before and hidden_leftovers(tmp_path) == []
    if where == "replace":
        assert out.read_text() == "the editor's timeline"
    else:
        assert not out.exists()


def test_read_only_mount_for_render_and_export(media, clip, tmp_path, capsys):
    with mounted_tmpfs(tmp_path / "ro", "size=1m") as mount:
        (mount / "clip.mgsv.mp4").write_bytes(b"an earlier render")
        (mount / "clip.mgsv.otio").write_text("an earlier timeline")
        remounted = subprocess.run(["mount", "-o", "remount,ro", str(mount)], capture_output=True, text=True)
        if remounted.returncode != 0:
            pytest.skip(f"cannot remount read-only: {remounted.stderr.strip()}")
        remember(clip, media.song)
        for args in (["render", clip, "-o", mount, "--force"], ["export", clip, "-o", mount, "--force"],
                     ["render", clip, "-o", mount / "new" / "x.mp4"], ["export", clip, "-o", mount / "new" / "x.otio"]):
            result = run_cli(capsys, *args)
            assert result.code == StorageError.exit_code, (args, result.err)
            line = one_error_line(result.err)
            assert "read-only" in line and str(mount) in line, line
        assert sorted(p.name for p in mount.iterdir()) == ["clip.mgsv.mp4", "clip.mgsv.otio"]
        assert (mount / "clip.mgsv.mp4").read_bytes() == b"an earlier render"
        assert (mount / "clip.mgsv.otio").read_text() == "an earlier timeline"


# ---------------------------------------------------------------- 3. tracks shorter than the clip


def suggest_cli(capsys, *args):
    return run_cli(capsys, "suggest", *args, "--device", "cpu", "--untrained")


def test_suggest_ranks_only_tracks_as_long_as_the_clip(capsys, long_clips, built):
    music, index = built
    result = suggest_cli(capsys, long_clips.thirteen, "--index", index, "--json", "--top", "3")
    assert result.code == 0, result.err
    [obj] = json_lines(result.out)
    assert obj["ok"] is True and obj["left_out_short"] == 1 and obj["left_out_missing"] == 0
    assert len(obj["suggestions"]) == 2
    assert "01-alpha.wav" not in [Path(s["track"]).name for s in obj["suggestions"]]  # 11 s < 13 s
    assert all(s["fits"] is True and s["end"] - s["start"] == pytest.approx(13.0, abs=0.05)
               for s in obj["suggestions"])
    assert any("1 track(s) shorter than the clip left out" in note and "--include-short" in note
               for note in obj["notes"])

    table = suggest_cli(capsys, long_clips.thirteen, "--index", index)
    assert table.code == 0 and "shorter than the clip left out" in table.out and "--include-short" in table.out


def test_include_short_marks_them_and_render_and_export_warn(capsys, long_clips, built, tmp_path):
    music, index = built
    video = Path(shutil.copy2(long_clips.thirteen, tmp_path / "thirteen.mp4"))
    result = suggest_cli(capsys, video, "--index", index, "--json", "--top", "3", "--include-short")
    assert result.code == 0, result.err
    [obj] = json_lines(result.out)
    assert obj["left_out_short"] == 0 and len(obj["suggestions"]) == 3
    fits = {Path(s["track"]).name: s["fits"] for s in obj["suggestions"]}
    assert fits == {"01-alpha.wav": False, "02-beta.MP3": True, "03-gamma.flac": True}
    short = next(s for s in obj["suggestions"] if not s["fits"])
    assert (short["start"], short["end"]) == (0.0, pytest.approx(11.0, abs=0.05))  # the whole track
    assert any("shorter than the clip: render plays" in note for note in obj["notes"])

    table = suggest_cli(capsys, video, "--index", index, "--top", "3", "--include-short")
    [row] = [line for line in table.out.splitlines() if "Synth A - Alpha" in line]  # the short track's row
    assert table.code == 0 and "00:00–00:11 short" in row

    pick = str(short["rank"])
    rendered = run_cli(capsys, "render", video, "--pick", pick, "-o", tmp_path / "out.mp4")
    assert rendered.code == 0, rendered.err
    assert "the track (11.00 s) is shorter than the clip" in rendered.out and "silence" in rendered.out
    exported = run_cli(capsys, "export", video, "--pick", pick, "-o", tmp_path / "cut.otio")
    assert exported.code == 0, exported.err
    assert "the track (11.00 s) is shorter than the clip" in exported.out
    as_json = run_cli(capsys, "export", video, "--pick", pick, "-o", tmp_path / "cut.otio", "--force", "--json")
    assert "shorter than the clip" in json.loads(as_json.out)["warnings"][0]


def test_every_track_shorter_than_the_clip_says_so(capsys, long_clips, built):
    result = suggest_cli(capsys, long_clips.long, "--index", built[1], "--json")
    assert result.code == UsageError.exit_code
    line = one_error_line(result.err)
    assert "3 of the 3 indexed track(s) are shorter than long.mp4" in line and "--include-short" in line
    [failed] = json_lines(result.out)
    assert failed["ok"] is False and "--include-short" in failed["error"]
    anyway = suggest_cli(capsys, long_clips.long, "--index", built[1], "--json", "--include-short")
    assert anyway.code == 0 and len(json_lines(anyway.out)[0]["suggestions"]) == 3


def test_records_of_the_previous_version_still_load_and_work(media, clip, tmp_path, capsys):
    """mgsv 0.1 remembered suggestions without "fits" (nor left_out_*): they load, and a short
    track among them is worked out from the lengths."""
    from mgsv_cli.editor import record

    stat = clip.stat()
    old = {"video": str(clip.resolve()), "duration": 3.0, "checkpoint": "old", "encoders": "tiny",
           "untrained": True, "video_size": stat.st_size, "video_mtime_ns": stat.st_mtime_ns,
           "suggestions": [
               {"rank": 1, "track": str(media.song), "score": 0.5, "start": 1.0, "end": 4.0, "predicted_start": 1.0,
                "predicted_end": 4.0, "track_duration": 8.0, "title": None, "artist": None},
               {"rank": 2, "track": str(media.jingle), "score": 0.4, "start": 0.0, "end": 1.5,
                "predicted_start": 0.0, "predicted_end": 1.5, "track_duration": 1.5, "title": None, "artist": None}]}
    target = record._remembered_path(clip.resolve())
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(old))
    loaded = record.load_last_suggestion(clip)
    assert [s.fits for s in loaded.suggestions] == [True, False]
    assert (loaded.left_out_short, loaded.left_out_missing) == (0, 0)
    assert loaded.to_json()["suggestions"][1]["fits"] is False
    exported = run_cli(capsys, "export", clip, "--pick", "2", "-o", tmp_path / "old.otio", "--json")
    assert exported.code == 0, exported.err
    assert "shorter than the clip" in json.loads(exported.out)["warnings"][0]


# ---------------------------------------------------------------- 4. suggest --json for a failed video


def test_suggest_json_prints_ok_false_for_a_single_failed_video(capsys, media_src, built, tmp_path):
    corrupt = suggest_cli(capsys, media_src / "clips" / "corrupt.mp4", "--index", built[1], "--json")
    assert corrupt.code == MediaError.exit_code
    [line] = json_lines(corrupt.out)
    assert line["ok"] is False and line["video"].endswith("corrupt.mp4") and line["error"]
    assert line["error"] in one_error_line(corrupt.err)

    missing = suggest_cli(capsys, tmp_path / "nope.mp4", "--index", built[1], "--json")
    assert missing.code == UsageError.exit_code
    assert json_lines(missing.out) == [{"video": str(tmp_path / "nope.mp4"), "ok": False,
                                        "error": "no such file or folder"}]
    one_error_line(missing.err)

    plain = suggest_cli(capsys, media_src / "clips" / "corrupt.mp4", "--index", built[1])
    assert plain.code == MediaError.exit_code and plain.out == ""  # the table output prints no JSON


# ---------------------------------------------------------------- 5. hints that fit the command


def test_an_input_path_the_os_refuses_is_a_media_error(media, tmp_path, capsys):
    too_long = tmp_path / ("v" * 300 + ".mp4")
    result = run_cli(capsys, "render", too_long, "--track", media.song, "--start", "0", "-o", tmp_path / "x.mp4")
    assert result.code == MediaError.exit_code
    assert "file name too long" in one_error_line(result.err)
    suggested = run_cli(capsys, "suggest", too_long, "--json", "--untrained")
    assert suggested.code == UsageError.exit_code  # as any input that cannot be read
    assert "file name too long" in one_error_line(suggested.err)
    assert json_lines(suggested.out) == [{"video": str(too_long), "ok": False, "error": "file name too long"}]


def test_each_command_offers_only_its_own_options(clip, capsys):
    export = run_cli(capsys, "export", clip)
    assert export.code == UsageError.exit_code
    line = one_error_line(export.err)
    assert f"run `mgsv suggest {clip}` first" in line and "--track" not in line and "--start" not in line

    render = run_cli(capsys, "render", clip)
    assert render.code == UsageError.exit_code
    line = one_error_line(render.err)
    assert "mgsv suggest" in line and "--track" in line and "--start" in line


# ---------------------------------------------------------------- 6. export --frame-rate


@pytest.mark.parametrize("rate", ["nan", "inf", "-inf", "0", "-25"])
def test_export_frame_rate_must_be_a_positive_number(media, clip, tmp_path, capsys, rate):
    remember(clip, media.song)
    result = run_cli(capsys, "export", clip, "--frame-rate", rate, "-o", tmp_path / "cut.otio")
    assert result.code == UsageError.exit_code
    assert "--frame-rate" in one_error_line(result.err)
    assert not (tmp_path / "cut.otio").exists()


# ---------------------------------------------------------------- 7. leftovers of killed renders


def test_render_removes_only_temporaries_of_renders_that_are_gone(media, clip, tmp_path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()  # a process id that no longer runs: a render killed with -9
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        an_hour_ago, two_days_ago = time.time() - 3600, time.time() - 2 * 86400
        files = {
            "stale": (out_dir / f".clip.mgsv.mp4.mgsv-{finished.pid}-0123abcd.part", an_hour_ago),
            "running": (out_dir / f".other.mgsv.mp4.mgsv-{alive.pid}-89abcdef.part", an_hour_ago),
            "just written": (out_dir / f".third.mgsv.mp4.mgsv-{finished.pid}-fedcba98.part", time.time()),
            "abandoned": (out_dir / f".fourth.mgsv.mp4.mgsv-{alive.pid}-00ff00ff.part", two_days_ago),
            "user's": (out_dir / ".holiday.mp4.part", two_days_ago),
            "user's too": (out_dir / "download.mp4.mgsv-1-0123abcd.part", two_days_ago),
        }
        for path, mtime in files.values():
            path.write_bytes(b"x")
            os.utime(path, (mtime, mtime))
        result = run_cli(capsys, "render", clip, "--track", media.song, "--start", "0", "-o", out_dir / "clip.mp4")
        assert result.code == 0, result.err
        left = {name for name, (path, _) in files.items() if path.exists()}
        # The dead render's file goes; a running render's, a fresh one (perhaps another machine's
        # render) and the user's files stay; a day-old one goes whatever its pid (pids are reused).
        assert left == {"running", "just written", "user's", "user's too"}
        assert (out_dir / "clip.mp4").is_file()
    finally:
        alive.kill()
        alive.wait()


def test_render_temporary_names_carry_the_process_id(media, clip, tmp_path, monkeypatch):
    seen = []
    real = rendering._ffmpeg

    def spy(args, what):
        if "-y" in args:
            seen.append(Path(args[-1]).name)
        return real(args, what)

    monkeypatch.setattr(rendering, "_ffmpeg", spy)
    rendering.render(clip, media.song, 0.0, out=tmp_path / "named.mp4")
    [name] = seen
    assert rendering._TEMPORARY.match(name) and f".mgsv-{os.getpid()}-" in name
    assert rendering.remove_stale_temporaries(tmp_path) == []


# ---------------------------------------------------------------- 8. missing output folders


def test_export_creates_a_missing_output_folder(media, clip, tmp_path, capsys):
    remember(clip, media.song)
    nested = tmp_path / "timelines" / "monday" / "cut.fcpxml"
    result = run_cli(capsys, "export", clip, "-o", nested)
    assert result.code == 0, result.err
    assert nested.is_file()
    folder = tmp_path / "new-folder"  # no extension: a folder, as render takes it
    result = run_cli(capsys, "export", clip, "-o", folder, "--format", "edl")
    assert result.code == 0, result.err
    assert (folder / "clip.mgsv.edl").is_file()


def test_render_creates_a_missing_output_folder(media, clip, tmp_path, capsys):
    remember(clip, media.song)
    result = run_cli(capsys, "render", clip, "-o", tmp_path / "renders" / "tuesday")
    assert result.code == 0, result.err
    assert (tmp_path / "renders" / "tuesday" / "clip.mgsv.mp4").is_file()


# ---------------------------------------------------------------- 9. tracks gone from the disk


def test_suggest_skips_tracks_whose_file_is_gone(capsys, media_src, indexed_music):
    music, index = indexed_music
    video = media_src / "clips" / "clip0.mp4"
    first = suggest_cli(capsys, video, "--index", index, "--json", "--top", "1")
    [best] = json_lines(first.out)[0]["suggestions"]
    Path(best["track"]).unlink()

    result = suggest_cli(capsys, video, "--index", index, "--json", "--top", "2")
    assert result.code == 0, result.err
    [obj] = json_lines(result.out)
    tracks = [s["track"] for s in obj["suggestions"]]
    assert len(tracks) == 2 and best["track"] not in tracks  # still K, the next ones taken
    assert obj["left_out_missing"] == 1
    assert any("mgsv index MUSIC_DIR --prune" in note for note in obj["notes"])
    table = suggest_cli(capsys, video, "--index", index, "--top", "2")
    assert "1 indexed track(s) skipped: the file is gone" in table.out and "--prune" in table.out

    for track in tracks:
        Path(track).unlink()
    gone = suggest_cli(capsys, video, "--index", index)
    assert gone.code == IndexDatabaseError.exit_code
    assert "mgsv index MUSIC_DIR --prune" in one_error_line(gone.err)


def test_render_and_export_of_a_gone_track_name_prune(media, clip, tmp_path, capsys):
    track = Path(shutil.copy2(media.song, tmp_path / "deleted-later.wav"))
    remember(clip, track)
    track.unlink()
    for args in (["render"], ["export"], ["export", "--snap", "beat"], ["render", "--snap", "beat"]):
        result = run_cli(capsys, *args, clip)
        assert result.code == MediaError.exit_code, result.err
        line = one_error_line(result.err)
        assert "deleted-later.wav" in line and "gone" in line and "--prune" in line
    assert user_files(tmp_path) == ["clip.mp4"]
