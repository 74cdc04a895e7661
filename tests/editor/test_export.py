"""Timeline export: every format read back with OpenTimelineIO has the music cut at the right frames."""
from __future__ import annotations

import json
import re
import sqlite3
from fractions import Fraction
from pathlib import Path

import numpy as np
import opentimelineio as otio
import pytest

from _workflow_helpers import clear_settings_env, click_track, write_wav
from mgsv_cli.editor.record import SuggestionResult
from mgsv_cli.editor import export as writers
from mgsv_cli.cli import main
from mgsv_cli.errors import MediaError, OutputExistsError, UsageError

@pytest.fixture(autouse=True)
def no_settings_from_the_shell(monkeypatch):
    clear_settings_env(monkeypatch)


VIDEO_SECONDS = 4.0
BPM = 120.0
CLICK_OFFSET = 0.3


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    """A 4 s, 25 fps clip and a 30 s click track at 120 BPM (beats at 0.3 + 0.5 k s)."""
    from mgsv_cli.media.synth import synth_clip

    folder = tmp_path_factory.mktemp("media")
    synth_clip(folder / "clip.mp4", seconds=VIDEO_SECONDS, fps=25, with_audio=False, size=(64, 48))
    audio, _ = click_track(BPM, 30.0, offset=CLICK_OFFSET, sr=44100)
    write_wav(folder / "song.wav", audio, sr=44100)
    return folder


def suggestion_for(folder: Path, start: float = 12.345, rank: int = 1, track: Path | None = None) -> SuggestionResult:
    """A suggestion record as `mgsv suggest --json` prints it, read back through the typed record."""
    video, track = folder / "clip.mp4", track or folder / "song.wav"
    entry = {"rank": rank, "track": str(track.resolve()), "score": 1.25, "start": start,
             "end": start + VIDEO_SECONDS, "predicted_start": start - 1, "predicted_end": start + 5,
             "track_duration": 30.0}
    return SuggestionResult.from_json({"video": str(video.resolve()), "duration": VIDEO_SECONDS, "suggestions": [entry]})


def read_back(path: Path, fmt: str, rate: float):
    adapter = writers.FORMATS[fmt][0]
    options = {"rate": rate} if fmt == "edl" else {}
    return otio.adapters.read_from_file(str(path), adapter_name=adapter, **options)


def clips_by_kind(timeline) -> dict:
    found = {}
    for track in timeline.tracks:
        for clip in track.find_clips():
            found.setdefault(track.kind, clip)
    return found


@pytest.mark.parametrize("fmt", ["fcpxml", "fcp7", "edl", "otio"])
def test_music_source_range_matches_the_cut(media_dir, tmp_path, fmt):
    suggestion = suggestion_for(media_dir)
    out = writers.export_timeline(suggestion, media_dir / "clip.mp4", fmt, tmp_path / f"t{writers.FORMATS[fmt][1]}")
    timeline = read_back(out, fmt, 25.0)
    clips = clips_by_kind(timeline)
    music = clips[otio.schema.TrackKind.Audio]
    start = music.source_range.start_time
    end = music.source_range.end_time_exclusive()
    assert start.to_frames(25.0) == round(12.345 * 25)  # 308.6 -> 309
    assert end.to_frames(25.0) == round(12.345 * 25) + round(VIDEO_SECONDS * 25)
    assert music.media_reference.target_url.endswith("song.wav")
    if fmt == "edl":
        assert otio.schema.TrackKind.Video not in clips  # the EDL carries the music only
    else:
        video = clips[otio.schema.TrackKind.Video]
        assert video.source_range.start_time.to_frames(25.0) == 0
        assert video.source_range.duration.to_frames(25.0) == VIDEO_SECONDS * 25
        assert video.media_reference.target_url.endswith("clip.mp4")


def test_edl_text_has_one_audio_event_with_the_cut(media_dir, tmp_path):
    out = writers.export_timeline(suggestion_for(media_dir, start=10.0), media_dir / "clip.mp4", "edl",
                                  tmp_path / "cut.edl")
    events = [line.split() for line in out.read_text().splitlines() if re.match(r"^\d{3}\s", line)]
    assert len(events) == 1
    number, reel, channel, transition, src_in, src_out, rec_in, rec_out = events[0]
    assert (channel, transition) == ("A", "C")
    assert (src_in, src_out, rec_in, rec_out) == ("00:00:10:00", "00:00:14:00", "00:00:00:00", "00:00:04:00")
    assert "song.wav" in out.read_text()


@pytest.mark.parametrize("fmt", ["fcp7", "edl", "otio"])
def test_ntsc_rate_is_exact(media_dir, tmp_path, fmt):
    out = writers.export_timeline(suggestion_for(media_dir), media_dir / "clip.mp4", fmt,
                                  tmp_path / f"ntsc{writers.FORMATS[fmt][1]}", frame_rate=29.97)
    rate = 30000 / 1001
    music = clips_by_kind(read_back(out, fmt, rate))[otio.schema.TrackKind.Audio]
    assert music.source_range.start_time.rate == pytest.approx(rate)
    assert music.source_range.start_time.to_frames(rate) == round(12.345 * rate)
    assert music.source_range.duration.to_frames(rate) == round(VIDEO_SECONDS * rate)


def test_fcpxml_times_sit_on_ntsc_frames(media_dir, tmp_path):
    out = writers.export_timeline(suggestion_for(media_dir), media_dir / "clip.mp4", "fcpxml",
                                  tmp_path / "ntsc.fcpxml", frame_rate=29.97)
    text = out.read_text()
    assert 'frameDuration="1001/30000s"' in text
    frame = Fraction(1001, 30000)
    for value in re.findall(r'\b(?:offset|duration|start)="(\d+(?:/\d+)?)s"', text):
        assert (Fraction(value) / frame).denominator == 1, value  # a whole number of frames
    music_start = re.search(r'<clip name="song.wav"[^>]*start="([^"]+)s"', text).group(1)
    assert Fraction(music_start) == round(12.345 * 30000 / 1001) * frame


def test_timeline_rate_choices():
    assert writers.timeline_rate(None) == 25.0
    assert writers.timeline_rate(25.0) == 25.0
    assert writers.timeline_rate(29.97) == pytest.approx(30000 / 1001)
    assert writers.timeline_rate(23.976) == pytest.approx(24000 / 1001)
    assert writers.timeline_rate(12.0) == 25.0  # no SMPTE timecode at 12 fps


def test_refuses_to_overwrite_without_force(media_dir, tmp_path):
    out = tmp_path / "cut.otio"
    out.write_text("keep me")
    with pytest.raises(OutputExistsError):
        writers.export_timeline(suggestion_for(media_dir), media_dir / "clip.mp4", "otio", out)
    assert out.read_text() == "keep me"
    writers.export_timeline(suggestion_for(media_dir), media_dir / "clip.mp4", "otio", out, force=True)
    assert otio.adapters.read_from_file(str(out)).name == "clip"
    assert not list(tmp_path.glob(".*.tmp"))


def test_never_writes_over_its_media(media_dir):
    with pytest.raises(UsageError):
        writers.export_timeline(suggestion_for(media_dir), media_dir / "clip.mp4", "otio",
                                media_dir / "song.wav", force=True)


def test_missing_track_and_bad_pick_and_format(media_dir, tmp_path):
    gone = suggestion_for(media_dir, track=tmp_path / "deleted.wav")
    with pytest.raises(MediaError):
        writers.export_timeline(gone, media_dir / "clip.mp4", "otio", tmp_path / "a.otio")
    with pytest.raises(UsageError):
        writers.export_timeline(suggestion_for(media_dir), media_dir / "clip.mp4", "otio", tmp_path / "b.otio", pick=2)
    with pytest.raises(UsageError):
        writers.export_timeline(suggestion_for(media_dir), media_dir / "clip.mp4", "aaf", tmp_path / "c.aaf")
    assert not (tmp_path / "a.otio").exists() and not (tmp_path / "b.otio").exists()


def test_format_and_default_path():
    assert writers.format_from_path("x/cut.EDL") == "edl"
    assert writers.format_from_path("cut.xml") == "fcp7"
    assert writers.format_from_path("cut.mov") is None
    assert writers.default_output_path("/v/clip.mp4", "fcpxml") == Path("/v/clip.mgsv.fcpxml")


# ---------------------------------------------------------------- through the command line


def remember(folder: Path, start: float) -> None:
    from mgsv_cli.editor.record import Suggestion, SuggestionResult, remember_suggestion

    entry = Suggestion(rank=1, track=str((folder / "song.wav").resolve()), score=1.0, start=start,
                       end=start + VIDEO_SECONDS, predicted_start=start, predicted_end=start + VIDEO_SECONDS,
                       track_duration=30.0)
    remember_suggestion(SuggestionResult(video=str((folder / "clip.mp4").resolve()), duration=VIDEO_SECONDS,
                                         suggestions=[entry], checkpoint="test", encoders="tiny"))


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def test_cli_export_uses_the_remembered_suggestion(media_dir, tmp_path, capsys):
    remember(media_dir, start=6.0)
    out = tmp_path / "cut.xml"  # the extension picks fcp7
    code, stdout, _ = run_cli(["export", str(media_dir / "clip.mp4"), "-o", str(out), "--json"], capsys)
    assert code == 0
    report = json.loads(stdout)
    assert report["format"] == "fcp7" and Path(report["out"]) == out.absolute()
    music = clips_by_kind(read_back(out, "fcp7", 25.0))[otio.schema.TrackKind.Audio]
    assert music.source_range.start_time.to_frames(25.0) == 150
    code, _, stderr = run_cli(["export", str(media_dir / "clip.mp4"), "-o", str(out)], capsys)
    assert code == OutputExistsError.exit_code and "--force" in stderr


def test_cli_export_without_a_suggestion_fails_cleanly(media_dir, tmp_path, capsys):
    code, _, stderr = run_cli(["export", str(media_dir / "clip.mp4"), "-o", str(tmp_path / "x.otio")], capsys)
    assert code == UsageError.exit_code and "mgsv suggest" in stderr and "Traceback" not in stderr


def test_cli_snap_beat_detects_beats_of_the_track(media_dir, tmp_path, capsys):
    remember(media_dir, start=6.1)  # beats at 0.3 + 0.5 k: nearest downbeat (every 4th) is 6.3
    out = tmp_path / "snapped.otio"
    code, stdout, _ = run_cli(["export", str(media_dir / "clip.mp4"), "--snap", "beat", "-o", str(out), "--json"],
                              capsys)
    assert code == 0
    report = json.loads(stdout)
    assert report["snapped_to"] == "downbeat"
    assert report["start"] == pytest.approx(6.3, abs=0.03)
    assert report["end"] - report["start"] == pytest.approx(VIDEO_SECONDS)
    music = clips_by_kind(read_back(out, "otio", 25.0))[otio.schema.TrackKind.Audio]
    assert music.source_range.start_time.to_frames(25.0) == round(report["start"] * 25)


def test_snap_uses_the_beats_stored_in_the_index(media_dir, tmp_path):
    from mgsv_cli.editor.snapping import snap_suggestion
    from mgsv_cli.media.beats import BeatGrid
    from mgsv_cli.index.store import PrecomputedTrack, import_tokens

    index = tmp_path / "index.sqlite"
    track = str((media_dir / "song.wav").resolve())
    import_tokens(index, [PrecomputedTrack(track, np.zeros((4, 8), np.float32), np.ones(4, np.float32), 30.0)],
                  encoder_id="test-encoder")
    stored = BeatGrid(100.0, [5.0, 5.6, 6.2, 6.8], [6.2])  # deliberately not the file's real grid
    with sqlite3.connect(index) as conn:
        conn.execute("UPDATE tracks SET beats = ? WHERE path = ?", (stored.to_json(), track))
    snapped, info = snap_suggestion(suggestion_for(media_dir, start=6.0), 1, index_path=index)
    assert (info.grid_source, info.snapped_to, info.start) == ("index", "downbeat", 6.2)
    assert snapped.pick(1).end == pytest.approx(6.2 + VIDEO_SECONDS)
