"""``mgsv render``: the music moment laid under a video, checked by measuring the files ffmpeg wrote."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from mgsv_cli.editor import render as rendering
from mgsv_cli.media import synth
from mgsv_cli.errors import MediaError, OutputExistsError, UsageError

import _media_checks as mc

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
