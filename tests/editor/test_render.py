"""``mgsv render``: the music moment laid under a video, checked by measuring the files ffmpeg wrote."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import _media_checks as mc
import pytest

from mgsv_cli.editor import render as rendering
from mgsv_cli.errors import MediaError, OutputExistsError, UsageError
from mgsv_cli.media import ffmpeg as media_ffmpeg
from mgsv_cli.media import synth

VOICE_SEED = 3
TONE_HZ = 5000.0  # above the synthetic voice's harmonics, so each can be measured apart


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Short inputs shared by the module's tests (each test writes into its own folder)."""
    root = tmp_path_factory.mktemp("render_media")
    return SimpleNamespace(
        talk=synth.synth_clip(root / "talk.mp4", seconds=5.0, speech_like=True, seed=VOICE_SEED),
        mute=synth.synth_clip(root / "mute.mp4", seconds=4.0, with_audio=False, seed=1),
        blip=synth.synth_clip(root / "blip.mp4", seconds=0.6, seed=2),
        song=synth.synth_track(root / "song.mp3", seconds=20.0, bpm=110, seed=4),
        tone=synth.synth_tone(root / "tone.wav", seconds=12.0, freq=TONE_HZ, level_db=-12.0),
        jingle=synth.synth_track(root / "jingle.wav", seconds=2.0, bpm=120, seed=5),
        segments=synth.speech_segments(5.0, seed=VOICE_SEED),
    )


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


# ---------------------------------------------------------------- the rendered file


def test_replace_copies_video_and_lays_music_of_exact_length(media, tmp_path):
    out = tmp_path / "out.mp4"
    result = rendering.render(media.talk, media.song, start=3.0, out=out)

    assert result.out_path == out and out.is_file()
    assert mc.packet_hashes(out) == mc.packet_hashes(media.talk)
    frame = 1.0 / mc.video_fps(media.talk)
    assert abs(mc.audio_seconds(out) - mc.video_seconds(media.talk)) <= frame
    assert result.duration == pytest.approx(mc.video_seconds(media.talk), abs=1e-3)
    assert (result.start, result.end, result.mix) == (3.0, pytest.approx(8.0, abs=1e-3), "replace")
    assert len(mc.stream_lines(out, "Audio")) == 1 and "aac" in mc.stream_lines(out, "Audio")[0]
    assert mc.max_volume_db(out) > -10.0
    samples = mc.audio(out)
    assert mc.rms_db(samples, 0.0, 0.05) < mc.rms_db(samples, 1.0, 2.0) - 15.0  # fades in
    assert mc.rms_db(samples, 4.95, 5.0) < mc.rms_db(samples, 2.0, 3.0) - 15.0  # fades out at the end
    assert mc.integrated_loudness(out) == pytest.approx(-16.0, abs=1.5)
    assert result.loudness == pytest.approx(-16.0, abs=1.5)
    assert result.warnings == [] and _leftovers(tmp_path) == []


def test_loudness_target_is_met(media, tmp_path):
    out = tmp_path / "quiet.mp4"
    rendering.render(media.talk, media.song, start=0.0, out=out, loudness=-23.0, fade_in=0.0, fade_out=0.0)
    assert mc.integrated_loudness(out) == pytest.approx(-23.0, abs=1.5)
    samples = mc.audio(out)
    assert mc.rms_db(samples, 0.0, 0.05) > -60.0  # no fade-in asked for


def _band_levels(path: Path, segments, f_lo: float, f_hi: float):
    """Band level (dB) while the voice talks and in the pauses (after the ducker's release)."""
    samples = mc.audio(path)
    talking = [mc.band_db(samples, s + 0.1, e, f_lo, f_hi) for s, e in segments]
    pauses = [mc.band_db(samples, e + 0.35, n, f_lo, f_hi) for (_, e), (n, _) in zip(segments, segments[1:])]
    return sum(talking) / len(talking), sum(pauses) / len(pauses)


def test_original_and_duck_keep_the_voice_and_duck_the_music(media, tmp_path):
    level = {}
    for mix in ("replace", "original", "duck"):
        out = tmp_path / f"{mix}.mp4"
        result = rendering.render(media.talk, media.tone, start=1.0, out=out, mix=mix, fade_in=0, fade_out=0)
        assert result.mix == mix and result.warnings == []
        assert mc.packet_hashes(out) == mc.packet_hashes(media.talk)
        assert mc.integrated_loudness(out) == pytest.approx(-16.0, abs=1.5)
        level[mix] = SimpleNamespace(music=_band_levels(out, media.segments, TONE_HZ - 200, TONE_HZ + 200),
                                     voice=_band_levels(out, media.segments, 100.0, 2000.0))
        if mix != "replace":  # the kept voice stays in sync with the picture
            lag, correlation = mc.best_lag(mc.bandpass(mc.audio(media.talk), 100, 2000),
                                           mc.bandpass(mc.audio(out), 100, 2000), max_lag=2400)
            assert lag == 0 and correlation > 0.8
    # replace drops the video's own voice; original and duck keep it.
    assert level["original"].voice[0] > level["replace"].voice[0] + 40.0
    assert level["duck"].voice[0] > level["replace"].voice[0] + 40.0
    # original: the music stays steady; duck: it drops while the voice talks and comes back in pauses.
    assert abs(level["original"].music[0] - level["original"].music[1]) < 1.0
    talking_drop = level["original"].music[0] - level["duck"].music[0]
    pause_drop = level["original"].music[1] - level["duck"].music[1]
    assert talking_drop > 8.0
    assert pause_drop < talking_drop - 6.0


@pytest.mark.parametrize("mix", ["original", "duck"])
def test_video_without_audio_falls_back_to_replace(media, tmp_path, mix):
    out = tmp_path / "mute.mp4"
    result = rendering.render(media.mute, media.song, start=2.0, out=out, mix=mix)
    assert result.mix == "replace" and result.requested_mix == mix
    assert any("no audio" in w for w in result.warnings)
    assert mc.packet_hashes(out) == mc.packet_hashes(media.mute)
    assert mc.max_volume_db(out) > -10.0


def test_cut_running_past_the_track_end_is_moved_back(media, tmp_path):
    out = tmp_path / "late.mp4"
    result = rendering.render(media.talk, media.song, start=18.0, out=out)
    assert result.requested_start == 18.0
    assert result.start == pytest.approx(15.0, abs=0.05) and result.end == pytest.approx(20.0, abs=0.05)
    assert any("moved back" in w for w in result.warnings)
    assert abs(mc.audio_seconds(out) - 5.0) <= 0.04
    samples = mc.audio(out)
    assert mc.rms_db(samples, 1.0, 3.5) > -30.0  # real music, not padding


def test_track_shorter_than_video_plays_whole_then_silence(media, tmp_path):
    out = tmp_path / "padded.mp4"
    result = rendering.render(media.talk, media.jingle, start=0.5, out=out)
    assert result.start == 0.0 and result.end == pytest.approx(2.0, abs=0.02)
    assert result.padded_seconds == pytest.approx(3.0, abs=0.02)
    assert any("silence" in w for w in result.warnings) and any("moved" in w for w in result.warnings)
    samples = mc.audio(out)
    assert abs(len(samples) / mc.RATE - 5.0) <= 0.04
    assert mc.rms_db(samples, 0.6, 1.0) > -30.0
    assert mc.rms_db(samples, 2.3, 5.0) < -80.0


def test_webm_and_mkv_outputs(media, tmp_path):
    clip = synth.synth_clip(tmp_path / "clip.webm", seconds=2.0, seed=6)
    result = rendering.render(clip, media.song, start=0.0)
    assert result.out_path == tmp_path / "clip.mgsv.webm"
    assert "opus" in mc.stream_lines(result.out_path, "Audio")[0]
    assert mc.packet_hashes(result.out_path) == mc.packet_hashes(clip)
    mkv = rendering.render(media.talk, media.song, start=0.0, out=tmp_path / "talk.mkv").out_path
    assert "aac" in mc.stream_lines(mkv, "Audio")[0]
    assert mc.packet_hashes(mkv) == mc.packet_hashes(media.talk)


# ---------------------------------------------------------------- safety and errors


def test_default_output_name():
    assert rendering.default_output_path(Path("a/clip.MOV")) == Path("a/clip.mgsv.mov")
    assert rendering.default_output_path(Path("clip.mp4")) == Path("clip.mgsv.mp4")
    assert rendering.default_output_path(Path("clip.avi")) == Path("clip.mgsv.mkv")


def test_refuses_existing_output_unless_forced(media, tmp_path):
    out = tmp_path / "taken.mp4"
    out.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="--force"):
        rendering.render(media.talk, media.song, start=0.0, out=out)
    assert out.read_bytes() == b"precious"
    rendering.render(media.talk, media.song, start=0.0, out=out, force=True)
    assert mc.packet_hashes(out) == mc.packet_hashes(media.talk)


def test_never_overwrites_its_inputs(media, tmp_path):
    video = tmp_path / "own.mp4"
    video.write_bytes(media.talk.read_bytes())
    before = _sha(video)
    with pytest.raises(UsageError, match="never overwrites"):
        rendering.render(video, media.song, start=0.0, out=video, force=True)
    with pytest.raises(UsageError, match="never overwrites"):
        rendering.render(video, media.talk, start=0.0, out=media.talk, force=True)
    assert _sha(video) == before


@pytest.mark.parametrize("start", [-1.0, 25.0, float("nan")])
def test_start_outside_the_track_is_refused(media, tmp_path, start):
    with pytest.raises(UsageError):
        rendering.render(media.talk, media.song, start=start, out=tmp_path / "x.mp4")
    assert list(tmp_path.iterdir()) == []


def test_video_shorter_than_a_second_is_refused(media, tmp_path):
    with pytest.raises(MediaError, match="at least 1 s"):
        rendering.render(media.blip, media.song, start=0.0, out=tmp_path / "x.mp4")


def test_missing_and_corrupt_inputs(media, tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(os.urandom(4096))
    with pytest.raises(MediaError, match="no such file"):
        rendering.render(tmp_path / "absent.mp4", media.song, start=0.0)
    with pytest.raises(MediaError, match="corrupt.mp4"):
        rendering.render(corrupt, media.song, start=0.0)
    with pytest.raises(MediaError, match="no such file"):
        rendering.render(media.talk, tmp_path / "absent.mp3", start=0.0, out=tmp_path / "x.mp4")
    with pytest.raises(MediaError, match="no audio"):
        rendering.render(media.talk, media.mute, start=0.0, out=tmp_path / "x.mp4")
    with pytest.raises(MediaError, match="no video"):
        rendering.render(media.song, media.song, start=0.0, out=tmp_path / "x.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.mp4"]


def test_bad_options_are_refused(media, tmp_path):
    for kwargs in ({"mix": "loud"}, {"loudness": 3.0}, {"fade_in": -1.0}, {"out": tmp_path / "x.gif"}):
        with pytest.raises(UsageError):
            rendering.render(media.talk, media.song, start=0.0, **{"out": tmp_path / "x.mp4", **kwargs})


def test_failed_encode_leaves_nothing_behind(media, tmp_path):
    # WebM cannot carry H.264: ffmpeg refuses, and no temporary file may remain.
    with pytest.raises(MediaError, match="cannot render"):
        rendering.render(media.talk, media.song, start=0.0, out=tmp_path / "x.webm")
    assert list(tmp_path.iterdir()) == []


def test_interrupted_render_leaves_nothing_behind(media, tmp_path, monkeypatch):
    real = rendering._ffmpeg

    def interrupted(args, what):
        if "-y" not in args:
            return real(args, what)
        Path(args[-1]).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(rendering, "_ffmpeg", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rendering.render(media.talk, media.song, start=0.0, out=tmp_path / "x.mp4")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("start,video,track,expected", [
    (10.0, 5.0, 60.0, (10.0, 5.0, 0.0)),
    (58.0, 5.0, 60.0, (55.0, 5.0, 0.0)),
    (0.0, 5.0, 5.0, (0.0, 5.0, 0.0)),
    (1.0, 8.0, 3.0, (0.0, 3.0, 5.0)),
])
def test_fit_cut(start, video, track, expected):
    cut = rendering.fit_cut(start, video, track)
    assert (cut.start, cut.seconds, cut.padded) == pytest.approx(expected)
    assert bool(cut.warnings) == (expected[0] != start or expected[2] > 0)


def test_fit_fades_shrinks_overlapping_fades():
    assert rendering.fit_fades(0.5, 1.0, 5.0)[:2] == (0.5, 1.0)
    fade_in, fade_out, notes = rendering.fit_fades(0.5, 1.0, 1.2)
    assert fade_in + fade_out == pytest.approx(1.2) and fade_out == pytest.approx(2 * fade_in) and notes


# ---------------------------------------------------------------- the command line


def _mgsv(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mgsv_cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "COLUMNS": "200"})


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _remember(video: Path, moments: list[tuple[Path, float]]) -> None:
    from mgsv_cli.editor.record import Suggestion, SuggestionResult, remember_suggestion

    suggestions = [Suggestion(rank=i + 1, track=str(track), score=1.0 - i / 10, start=start, end=start + 5.0,
                              predicted_start=start, predicted_end=start + 5.0, track_duration=20.0)
                   for i, (track, start) in enumerate(moments)]
    remember_suggestion(SuggestionResult(video=str(video.resolve()), duration=5.0, suggestions=suggestions,
                                         checkpoint="test", encoders="tiny"))


def test_cli_renders_a_given_moment(media, tmp_path):
    out = tmp_path / "cli.mp4"
    proc = _mgsv("render", media.talk, "--track", media.song, "--start", "2.5", "-o", out, "--mix", "duck", "--json")
    assert proc.returncode == 0, proc.stderr
    (line,) = _json_lines(proc.stdout)
    assert line["ok"] and line["out_path"] == str(out) and line["start"] == 2.5 and line["mix"] == "duck"
    assert mc.packet_hashes(out) == mc.packet_hashes(media.talk)

    again = _mgsv("render", media.talk, "--track", media.song, "--start", "2.5", "-o", out)
    assert again.returncode == OutputExistsError.exit_code
    assert "--force" in again.stderr and "Traceback" not in again.stderr


def test_cli_uses_the_remembered_suggestion(media, tmp_path):
    video = tmp_path / "talk.mp4"
    video.write_bytes(media.talk.read_bytes())
    _remember(video, [(media.song, 1.0), (media.tone, 4.0)])
    proc = _mgsv("render", video, "--pick", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    (line,) = _json_lines(proc.stdout)
    assert line["track"] == str(media.tone) and line["start"] == 4.0
    assert Path(line["out_path"]) == tmp_path / "talk.mgsv.mp4"

    proc = _mgsv("render", video, "--pick", "3", "--force")
    assert proc.returncode == UsageError.exit_code and "only 2" in proc.stderr


def test_cli_without_a_remembered_suggestion_says_what_to_do(media, tmp_path):
    proc = _mgsv("render", media.talk)
    assert proc.returncode == UsageError.exit_code
    assert "mgsv suggest" in proc.stderr and "--track" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_short_video_is_a_clear_error(media, tmp_path):
    proc = _mgsv("render", media.blip, "--track", media.song, "--start", "0", "-o", tmp_path / "x.mp4")
    assert proc.returncode == MediaError.exit_code
    assert "at least 1 s" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["--track", "song.mp3"], ["--start", "3"], ["--mix", "loud"],
                                  ["--pick", "2", "--track", "song.mp3", "--start", "1"]])
def test_cli_refuses_inconsistent_options(media, args):
    proc = _mgsv("render", media.talk, *args)
    assert proc.returncode == UsageError.exit_code and "Traceback" not in proc.stderr


def test_cli_batch_reports_bad_files_and_goes_on(media, tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ("a.mp4", "b.mp4", "a.mgsv.mp4"):  # the last: an earlier output, not an input
        (clips / name).write_bytes(media.talk.read_bytes())
    (clips / "broken.mp4").write_bytes(b"not a video")
    (clips / "notes.txt").write_text("ignored")
    out = tmp_path / "rendered"
    proc = _mgsv("render", clips, "--track", media.song, "--start", "1", "-o", out, "--json")
    assert proc.returncode == 1, proc.stderr
    lines = _json_lines(proc.stdout)
    assert [(Path(r["video"]).name, r["ok"]) for r in lines] == [("a.mp4", True), ("b.mp4", True),
                                                                  ("broken.mp4", False)]
    assert lines[2]["exit_code"] == MediaError.exit_code and "broken.mp4" in lines[2]["error"]
    assert sorted(p.name for p in out.iterdir()) == ["a.mgsv.mp4", "b.mgsv.mp4"]
    assert mc.packet_hashes(out / "b.mgsv.mp4") == mc.packet_hashes(media.talk)
    assert "2 of 3" in proc.stderr and "Traceback" not in proc.stderr

    # Nothing is overwritten without --force: each video fails, the batch still goes through all.
    proc = _mgsv("render", clips, "--track", media.song, "--start", "1", "-o", out)
    assert proc.returncode == 1 and "rendered 0 of 3" in proc.stdout
    assert proc.stderr.count("exists") == 2 and "Traceback" not in proc.stderr


def test_cli_several_videos_need_an_output_folder(media, tmp_path):
    proc = _mgsv("render", media.talk, media.mute, "--track", media.song, "--start", "0", "-o", tmp_path / "one.mp4")
    assert proc.returncode == UsageError.exit_code and "folder" in proc.stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- issue 19: what a new user hit


def test_fit_cut_says_nothing_when_nothing_moved():
    # The index stored the track as 30.84 s; the suggestion's cut ended with it, 5 ms past by
    # the render's measurement of the clip: "start moved back from 30.84 s to 30.84 s" before.
    cut = rendering.fit_cut(25.84, 5.005, 30.84)
    assert cut.start == pytest.approx(25.835) and cut.seconds == 5.005 and cut.warnings == ()
    short = rendering.fit_cut(0.02, 5.0, 4.99)  # 10 ms short, 20 ms in: plays whole, nothing to tell
    assert (short.start, short.padded, short.warnings) == (0.0, pytest.approx(0.01), ())
    moved = rendering.fit_cut(27.0, 5.0, 30.84)
    assert moved.start == pytest.approx(25.84)
    assert moved.warnings == ("start moved back from 27.00 s to 25.84 s so the music lasts the whole video",)


def test_cli_render_a_cut_a_few_ms_past_the_track_end_without_a_warning(media, tmp_path, capsys):
    from _library_helpers import run_cli

    out = tmp_path / "end.mp4"
    # tone.wav lasts 12.000 s, talk.mp4's picture 5.000 s: 7.004 runs 4 ms past the end.
    result = run_cli(capsys, "render", media.talk, "--track", media.tone, "--start", "7.004", "-o", out, "--json")
    assert result.code == 0, result.err
    line = json.loads(result.out)
    assert line["warnings"] == [] and line["start"] == pytest.approx(7.0, abs=0.002)


def _peaky_track(path: Path, seconds: float = 12.0, bpm: float = 110.0) -> Path:
    """Music under loud percussive clicks: brought to -16 LUFS by a plain gain, its true peak
    would pass the -1.5 dBTP ceiling by about 6 dB, so the normaliser must limit."""
    import numpy as np

    samples = synth.music_samples(seconds, bpm=bpm, seed=4).astype(np.float64) * 0.3
    t = np.arange(int(0.03 * synth.SAMPLE_RATE)) / synth.SAMPLE_RATE
    click = 0.6 * np.sin(2 * np.pi * 1000.0 * t) * np.exp(-t * 160.0)
    for when in synth.click_times(seconds, bpm):
        start = int(round(when * synth.SAMPLE_RATE))
        segment = samples[start:start + len(click)]
        segment += click[: len(segment), None]
    return synth.write_audio(path, samples.astype(np.float32))


def _loudness_and_true_peak(path: Path) -> tuple[float, float]:
    import re

    err = mc.ffmpeg("-i", str(path), "-map", "0:a:0", "-af", "ebur128=peak=true", "-f", "null", "-")
    summary = err[err.rfind("Summary:"):]
    loudness = float(re.search(r"I:\s+(-?[\d.]+) LUFS", summary).group(1))
    return loudness, float(re.search(r"Peak:\s+(-?[\d.]+) dBFS", summary).group(1))


@pytest.mark.parametrize("sound", ["silent", "none"])
def test_duck_without_sound_meets_the_loudness_target(media, tmp_path, sound):
    """Measured -16.7 LUFS for -16 before: not duck's doing (no sound makes every mode a
    replace) but loudnorm's dynamic mode, taken whenever a plain gain would pass the true-peak
    ceiling, missing the target on a short clip without a word. Within 0.5 LU now (a tenth
    is what the interpolated gain typically leaves; AAC adds a few hundredths)."""
    track = _peaky_track(tmp_path / "peaky.wav")
    loudness, peak = _loudness_and_true_peak(track)
    assert peak + (-16.0 - loudness) > rendering.TRUE_PEAK_DB + 3.0  # a plain gain would not do
    if sound == "silent":
        clip = tmp_path / "silent.mp4"
        mc.ffmpeg("-f", "lavfi", "-i", "testsrc2=s=64x48:r=25:d=6", "-f", "lavfi", "-i", "anullsrc=r=48000:cl=stereo",
                  "-t", "6", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(clip))
    else:
        clip = media.mute
    out = tmp_path / "ducked.mp4"
    result = rendering.render(clip, track, start=2.0, out=out, mix="duck")
    assert result.mix == "replace" and len(result.warnings) == 1 and "made as replace" in result.warnings[0]
    achieved, achieved_peak = _loudness_and_true_peak(out)
    assert achieved == pytest.approx(-16.0, abs=0.5)
    assert result.loudness == pytest.approx(-16.0, abs=0.5)
    assert achieved_peak <= rendering.TRUE_PEAK_DB + 0.3  # AAC's own overshoot on top of the limiter's margin
    # The limiter looks 5 ms (240 samples) ahead; its delay is compensated: the music stays
    # on the picture (under 1 ms off: far less than its lookahead).
    music = mc.audio(track)[int(2.0 * mc.RATE):int(8.0 * mc.RATE)]
    lag, correlation = mc.best_lag(music, mc.audio(out), max_lag=2400)
    assert abs(lag) < mc.RATE // 1000 and correlation > 0.8


def test_cli_render_of_a_missing_video_says_no_such_file(media, tmp_path, capsys):
    from _library_helpers import run_cli

    absent = tmp_path / "absent.mp4"
    for extra in ([], ["--track", str(media.song), "--start", "1"]):
        result = run_cli(capsys, "render", absent, *extra)
        assert result.code == MediaError.exit_code
        assert f"no such file: {absent}" in result.err
        assert "Traceback" not in result.err and "suggest" not in result.err
    with pytest.raises(UsageError, match="is a folder: give a video file"):
        rendering.resolve_moment(tmp_path)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _temporary(folder: Path, pid: int, machine: str | None = None, age: float = 0.0) -> Path:
    tag = "" if machine is None else f"-{machine}"
    path = folder / f".clip.mgsv.mp4.mgsv-{pid}-0123abcd{tag}.part"
    path.write_bytes(b"half a render")
    if age:
        os.utime(path, (path.stat().st_atime - age, path.stat().st_mtime - age))
    return path


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="open files are listed from /proc")
def test_stale_temporaries_of_this_machine_go_at_once_unless_held_open(tmp_path):
    here, dead = rendering._machine_tag(), _dead_pid()
    other = "0000000e" if here == "0000000f" else "0000000f"
    cases = {  # folder -> (machine, pid, seconds since written, whether the next render removes it)
        "killed": (here, dead, 0.0, True),  # however fresh: its writer is dead and nobody has it open
        "held": (here, dead, 0.0, False),  # an orphaned writer still has it open (opened below)
        "ours": (here, os.getpid(), 0.0, False),
        "remote": (other, dead, 0.0, False),  # another machine's pid means nothing here
        "remote_done": (other, dead, 2 * rendering.STALE_AFTER_SECONDS, True),
        "unknown": (None, dead, 0.0, False),  # named before names carried the machine
    }
    parts = {}
    for name, (machine, pid, age, _) in cases.items():
        (tmp_path / name).mkdir()
        parts[name] = _temporary(tmp_path / name, pid, machine, age)
    with open(parts["held"], "ab"):
        for name, (*_, removed) in cases.items():
            assert rendering.remove_stale_temporaries(tmp_path / name) == ([parts[name]] if removed else []), name
    assert sorted(name for name, part in parts.items() if part.exists()) == ["held", "ours", "remote", "unknown"]


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    if int(handle.read().rpartition(b")")[2].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return found


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rpartition(b")")[2].split()[0] in (b"Z", b"X")  # a zombie runs no more
    except OSError:
        return True


def _wait_for(condition, what: str, deadline_s: float = 60.0):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"{what}: not within {deadline_s:.0f} s")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals and /proc are Linux's")
def test_kill_9_mid_render_leaves_no_ffmpeg_and_the_next_render_removes_its_part(media, tmp_path):
    """The ffmpeg of a killed render is stopped (SIGSTOP) first, so it cannot finish on its own:
    only the parent-death signal can end it. Its .part was written a moment ago, by a process
    now dead and held by none: the next render into the folder removes it at once."""
    clip = synth.synth_clip(tmp_path / "long.mp4", seconds=40.0, size=(32, 24), seed=7)
    song = synth.synth_tone(tmp_path / "long.wav", seconds=45.0, freq=330.0)
    folder = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(rendering.__file__).parents[2])}
    mgsv = subprocess.Popen([sys.executable, "-m", "mgsv_cli", "render", str(clip), "--track", str(song),
                             "--start", "0", "--mix", "duck", "-o", str(folder / "long.mp4"), "--no-server"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stopped = None
    try:
        ffmpeg_exe = os.path.realpath(media_ffmpeg.ffmpeg_exe())

        def running_ffmpeg(pid: int) -> bool:
            # exec'd already: a child caught between fork and exec has not asked for its
            # parent-death signal yet, and stopped there it never would
            try:
                return os.path.realpath(os.readlink(f"/proc/{pid}/exe")) == ffmpeg_exe
            except OSError:
                return False

        def part_and_ffmpeg():
            parts = list(folder.glob(".long.mp4.mgsv-*.part")) if folder.is_dir() else []
            children = [pid for pid in _children(mgsv.pid) if running_ffmpeg(pid)]
            return (parts[0], children[0]) if parts and children else None

        for _ in range(50):  # an ffmpeg may end between being seen and being stopped: take the next one
            part, ffmpeg = _wait_for(part_and_ffmpeg, "the render started ffmpeg")
            try:
                os.kill(ffmpeg, signal.SIGSTOP)
            except ProcessLookupError:
                continue
            if not _gone(ffmpeg) and ffmpeg in _children(mgsv.pid):
                stopped = ffmpeg
                break
            os.kill(ffmpeg, signal.SIGCONT)
        assert stopped is not None, "never caught the render's ffmpeg"
        mgsv.kill()
        mgsv.wait()  # reaped: its pid is dead, as after a shell's kill -9
        _wait_for(lambda: _gone(stopped), "the killed render's ffmpeg died")
        assert part.exists()
        rendering.render(media.mute, media.song, start=0.0, out=folder / "next.mp4")
        assert not part.exists() and _leftovers(folder) == []
        assert stat.S_IMODE((folder / "next.mp4").stat().st_mode) == 0o666 & ~_umask()
    finally:
        mgsv.kill()
        mgsv.wait()
        if stopped is not None and not _gone(stopped):
            os.kill(stopped, signal.SIGKILL)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
