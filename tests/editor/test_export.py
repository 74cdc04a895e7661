"""Timeline export: every format read back with OpenTimelineIO has the music cut at the right frames."""
from __future__ import annotations

import dataclasses
import json
import re
import sqlite3
from fractions import Fraction
from pathlib import Path

import numpy as np
import opentimelineio as otio
import pytest
from _workflow_helpers import clear_settings_env, click_track, write_wav

from mgsv_cli.cli import main
from mgsv_cli.editor import export as writers
from mgsv_cli.editor.record import SuggestionResult, load_last_suggestion
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
    return SuggestionResult.from_json({"video": str(video.resolve()), "duration": VIDEO_SECONDS,
                                       "suggestions": [entry]})


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
    from mgsv_cli.index.pipeline import import_tokens
    from mgsv_cli.index.records import NewTrack
    from mgsv_cli.media.beats import BeatGrid

    index = tmp_path / "index.sqlite"
    track = str((media_dir / "song.wav").resolve())
    import_tokens(index, [NewTrack(track, "", 30.0, np.zeros((4, 8), np.float32), np.ones(4, bool), "test-encoder")])
    stored = BeatGrid(100.0, [5.0, 5.6, 6.2, 6.8], [6.2])  # deliberately not the file's real grid
    with sqlite3.connect(index) as conn:
        conn.execute("UPDATE tracks SET beats = ? WHERE path = ?", (stored.to_json(), track))
    snapped, info = snap_suggestion(suggestion_for(media_dir, start=6.0), 1, index_path=index)
    assert (info.grid_source, info.snapped_to, info.start) == ("index", "downbeat", 6.2)
    assert snapped.pick(1).end == pytest.approx(6.2 + VIDEO_SECONDS)


# ---------------------------------------------------------------- what a vertical-video editor needs (issue 19)


@pytest.fixture(scope="module")
def phone_clips(tmp_path_factory):
    """Clips as phones make them, 30 fps nominal: ``vertical`` 1080x1920 with sound; ``turned``
    stored 1920x1080 with a 90-degree display matrix and a silent sound track; ``vfr`` 360x640
    with 2 frames of every 5 kept (12 fps on average) and no sound."""
    from _media_helpers import ffmpeg

    folder = tmp_path_factory.mktemp("phone")
    x264 = ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=1080x1920:r=30:d=1", "-f", "lavfi", "-i", "sine=f=440:d=1:r=48000",
           *x264, "-c:a", "aac", folder / "vertical.mp4")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=1920x1080:r=30:d=1", "-f", "lavfi", "-i", "anullsrc=r=44100:cl=mono",
           "-t", "1", *x264, "-c:a", "aac", folder / "landscape.mp4")
    ffmpeg("-display_rotation:v:0", "90", "-i", folder / "landscape.mp4", "-c", "copy", folder / "turned.mp4")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=360x640:r=30:d=2", "-vf", "select='lt(mod(n,5),2)'", "-fps_mode", "vfr",
           *x264, folder / "vfr.mp4")
    audio, _ = click_track(BPM, 30.0, offset=CLICK_OFFSET, sr=44100)
    write_wav(folder / "song.wav", audio, sr=44100)
    return folder


# clip -> (displayed width, height, has sound, whether its rate is variable)
PHONE = {"vertical": (1080, 1920, True, False), "turned": (1080, 1920, True, False), "vfr": (360, 640, False, True)}
PHONE_START = 3.5  # frame 105 at 30 fps (87.5 at 25): tells the rates apart


def phone_suggestion(folder: Path, clip: str) -> SuggestionResult:
    from mgsv_cli.media.ffmpeg import probe

    video = folder / f"{clip}.mp4"
    seconds = probe(video).duration
    entry = {"rank": 1, "track": str((folder / "song.wav").resolve()), "score": 1.0, "start": PHONE_START,
             "end": PHONE_START + seconds, "predicted_start": PHONE_START, "predicted_end": PHONE_START + seconds,
             "track_duration": 30.0}
    return SuggestionResult.from_json({"video": str(video.resolve()), "duration": seconds, "suggestions": [entry]})


def _by_name(elements, key) -> dict:
    from urllib.parse import unquote, urlparse

    return {Path(unquote(urlparse(key(e)).path)).name: e for e in elements}


def check_fcpxml(path: Path, clip: str) -> None:
    """The FCPXML's own words: the sequence format's size and frame duration, each asset's streams."""
    import xml.etree.ElementTree as ElementTree

    width, height, sound, _ = PHONE[clip]
    root = ElementTree.parse(path).getroot()
    formats = {f.get("id"): f for f in root.iter("format")}
    sequence_format = formats[root.find(".//sequence").get("format")]
    assert (sequence_format.get("width"), sequence_format.get("height")) == (str(width), str(height))
    assert Fraction(sequence_format.get("frameDuration").rstrip("s")) == Fraction(1, 30)
    assert sequence_format.get("name") is None  # the adapter's made-up "FFVideoFormat1080p30" would say landscape
    assets = _by_name(root.iter("asset"), lambda a: a.get("src"))
    video, music = assets[f"{clip}.mp4"], assets["song.wav"]
    assert (video.get("hasVideo"), video.get("hasAudio")) == ("1", "1" if sound else "0")
    video_format = formats[video.get("format")]
    assert (video_format.get("width"), video_format.get("height")) == (str(width), str(height))
    assert (music.get("hasVideo"), music.get("hasAudio"), music.get("format")) == ("0", "1", None)
    assert (music.get("audioChannels"), music.get("audioRate")) == ("1", "44100")


def check_fcp7(path: Path, clip: str) -> None:
    """The FCP7 XML's own words: the sequence's and each file's <samplecharacteristics>, rate and streams."""
    import xml.etree.ElementTree as ElementTree

    width, height, sound, _ = PHONE[clip]
    root = ElementTree.parse(path).getroot()
    sequence = root.find(".//sequence")
    assert (sequence.findtext("rate/timebase"), sequence.findtext("rate/ntsc")) == ("30", "FALSE")
    picture = sequence.find("media/video/format/samplecharacteristics")
    assert (picture.findtext("width"), picture.findtext("height")) == (str(width), str(height))
    assert (picture.findtext("rate/timebase"), picture.findtext("rate/ntsc")) == ("30", "FALSE")
    files = _by_name((f for f in root.iter("file") if f.find("pathurl") is not None), lambda f: f.findtext("pathurl"))
    video, music = files[f"{clip}.mp4"], files["song.wav"]
    assert (video.findtext("media/video/samplecharacteristics/width"),
            video.findtext("media/video/samplecharacteristics/height")) == (str(width), str(height))
    assert (video.find("media/audio") is not None) == sound
    assert music.find("media/video") is None and music.findtext("media/audio/channelcount") == "1"


@pytest.mark.parametrize("clip", sorted(PHONE))
@pytest.mark.parametrize("fmt", ["fcpxml", "fcp7", "edl", "otio"])
def test_timelines_carry_frame_size_rate_and_sound(phone_clips, tmp_path, fmt, clip):
    width, height, sound, variable = PHONE[clip]
    out = tmp_path / f"t{writers.FORMATS[fmt][1]}"
    written = writers.write_timeline(phone_suggestion(phone_clips, clip), phone_clips / f"{clip}.mp4", fmt, out)
    assert written.plan.rate == 30.0 and (written.plan.width, written.plan.height) == (width, height)
    expected = (r"vfr\.mp4 has a variable frame rate \(1[23]\.\d\d fps on average, 30 nominal\): "
                r"the timeline runs at 30 fps")
    assert [bool(re.fullmatch(expected, w)) for w in written.warnings] == ([True] if variable else [])
    timeline = read_back(out, fmt, 30.0)
    clips = clips_by_kind(timeline)
    music = clips[otio.schema.TrackKind.Audio]
    assert music.source_range.start_time.rate == 30.0
    assert music.source_range.start_time.to_frames(30.0) == 105
    if fmt == "fcpxml":
        check_fcpxml(out, clip)
    elif fmt == "fcp7":
        check_fcp7(out, clip)
        picture = timeline.metadata["fcp_xml"]["media"]["video"]["format"]["samplecharacteristics"]
        assert (picture["width"], picture["height"]) == (str(width), str(height))  # OTIO reads it too
    elif fmt == "otio":
        reference = clips[otio.schema.TrackKind.Video].media_reference
        bounds = reference.available_image_bounds
        assert (bounds.min.x, bounds.min.y, bounds.max.x, bounds.max.y) == (0, 0, width, height)
        assert (reference.metadata["mgsv"]["has_video"], reference.metadata["mgsv"]["has_audio"]) == (True, sound)
        assert timeline.metadata["mgsv"]["width"] == width and timeline.metadata["mgsv"]["height"] == height
        assert clips[otio.schema.TrackKind.Audio].media_reference.metadata["mgsv"]["has_video"] is False
    else:  # an EDL holds the music and its timecodes: 3.5 s is 00:00:03:15 at 30 fps (03:12 at 25)
        assert "00:00:03:15" in out.read_text()


def test_a_rate_fcpxml_lacks_falls_back_to_25_and_says_so(phone_clips, tmp_path):
    written = writers.write_timeline(phone_suggestion(phone_clips, "vfr"), phone_clips / "vfr.mp4", "fcpxml",
                                     tmp_path / "t.fcpxml", frame_rate=48)
    assert written.plan.rate == 25.0
    assert written.warnings == ["FCPXML has no 48 fps timeline: it runs at 25 fps"]


def test_video_timeline_rate_choices():
    from mgsv_cli.media.ffmpeg import MediaInfo

    def rate(fps, nominal):
        return writers.video_timeline_rate(MediaInfo("x.mp4", 5.0, True, False, fps=fps, nominal_fps=nominal))

    assert rate(29.97, 29.97) == (pytest.approx(30000 / 1001), None)
    assert rate(14.9, 30.0)[0] == 30.0 and "variable frame rate (14.90 fps on average, 30 nominal)" in rate(14.9, 30)[1]
    assert rate(26.1, 1000.0)[0] == pytest.approx(30000 / 1001)  # no usable nominal rate: the next one up
    assert rate(12.0, 12.0) == (25.0, "x.mp4 runs at 12 fps, not a timecode rate: the timeline runs at 25 fps")
    assert rate(25.0, 50.0) == (25.0, None)  # an interlaced stream's field rate is no variable rate


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_timelines_get_the_permissions_the_umask_gives(media_dir, tmp_path, umask):
    import os
    import stat

    old = os.umask(umask)
    try:
        for fmt, (_, extension) in writers.FORMATS.items():
            out = writers.export_timeline(suggestion_for(media_dir), media_dir / "clip.mp4", fmt,
                                          tmp_path / f"cut{extension}")
            assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask, fmt
    finally:
        os.umask(old)


def test_a_secret_stays_private(tmp_path):
    import os
    import stat

    from mgsv_cli import paths

    paths.atomic_write_text(tmp_path / "token", "secret", private=True)
    paths.atomic_write_text(tmp_path / "shared", "hello")
    old = os.umask(0)
    os.umask(old)
    assert stat.S_IMODE((tmp_path / "token").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o666 & ~old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared", "token"]


def test_cli_export_of_a_portrait_clip_stored_landscape(phone_clips, tmp_path, capsys):
    from mgsv_cli.editor.record import remember_suggestion

    remember_suggestion(dataclasses.replace(phone_suggestion(phone_clips, "turned"), checkpoint="test",
                                            encoders="tiny"))
    out = tmp_path / "turned.xml"
    code, stdout, stderr = run_cli(["export", str(phone_clips / "turned.mp4"), "-o", str(out), "--json"], capsys)
    assert code == 0, stderr
    assert json.loads(stdout)["warnings"] == []
    check_fcp7(out, "turned")


# ---------------------------------------------------------------- a wrong video argument (issue 19)


def test_export_checks_the_video_path_first(media_dir, tmp_path):
    with pytest.raises(MediaError, match=r"^no such file: .*absent\.mp4$"):
        writers.write_timeline(suggestion_for(media_dir), tmp_path / "absent.mp4", "otio", tmp_path / "a.otio")
    with pytest.raises(UsageError, match=r"is a folder: give a video file$"):
        load_last_suggestion(tmp_path)
    with pytest.raises(MediaError, match=r"^no such file: "):
        load_last_suggestion(tmp_path / "absent.mp4")
    assert not list(tmp_path.glob("*.otio"))


def test_cli_export_of_a_missing_video_says_no_such_file(tmp_path, capsys):
    code, _, stderr = run_cli(["export", str(tmp_path / "absent.mp4")], capsys)
    assert code == MediaError.exit_code
    assert f"no such file: {tmp_path / 'absent.mp4'}" in stderr
    assert "Traceback" not in stderr and "suggest" not in stderr


def test_cli_export_of_a_folder_says_it_is_a_folder(tmp_path, capsys):
    code, _, stderr = run_cli(["export", str(tmp_path)], capsys)
    assert code == UsageError.exit_code
    assert f"{tmp_path} is a folder: give a video file" in stderr
    assert "Traceback" not in stderr and "suggest" not in stderr
