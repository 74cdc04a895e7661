"""Synthesised test and demo media: real files in every format, with the structure they promise."""
from __future__ import annotations

import _media_checks as mc
import numpy as np
import pytest

from mgsv_cli.errors import UsageError
from mgsv_cli.media import ffmpeg as media
from mgsv_cli.media import synth


@pytest.mark.parametrize("ext", [".wav", ".mp3", ".flac", ".ogg", ".m4a", ".opus"])
def test_track_in_every_format_with_tags(tmp_path, ext):
    path = synth.synth_track(tmp_path / f"song{ext}", seconds=3.0, bpm=100, seed=1, title="Blue Hour",
                             artist="mgsv synth")
    info = media.probe(path)
    assert info.has_audio and not info.has_video
    assert info.duration == pytest.approx(3.0, abs=0.1)
    assert info.tags.get("title") == "Blue Hour" and info.tags.get("artist") == "mgsv synth"
    assert mc.max_volume_db(path) > -6.0


def test_music_is_deterministic_and_seeded():
    a = synth.music_samples(4.0, bpm=120, seed=7)
    assert a.shape == (int(4.0 * synth.SAMPLE_RATE), 2) and a.dtype == np.float32
    assert np.array_equal(a, synth.music_samples(4.0, bpm=120, seed=7))
    assert not np.allclose(a, synth.music_samples(4.0, bpm=120, seed=8))
    assert float(np.abs(a).max()) <= 1.0


def test_music_has_sections_and_beats():
    bpm = 120.0
    bar = 4 * 60.0 / bpm
    samples = synth.music_samples(28 * bar, bpm=bpm, key="Am", seed=3).mean(axis=1)
    rate = synth.SAMPLE_RATE

    def rms(t0, t1):
        seg = samples[int(t0 * rate):int(t1 * rate)]
        return float(np.sqrt(np.mean(seg ** 2)))

    intro, chorus = rms(0, 8 * bar), rms(16 * bar, 24 * bar)
    outro = rms(24 * bar, 28 * bar)
    assert chorus > 2.0 * intro and chorus > 2.0 * outro  # bars 0-7: sparse intro, 16-23: full chorus
    beat = 60.0 / bpm
    on = np.mean([rms(k * beat, k * beat + 0.03) for k in range(32, 48)])
    off = np.mean([rms(k * beat + 0.3 * beat, k * beat + 0.3 * beat + 0.03) for k in range(32, 48)])
    assert on > 1.5 * off  # drums hit on the beat


def test_keys_parse_and_bad_keys_are_refused():
    assert synth._parse_key("Bbm", None) == (10, "minor")
    assert synth._parse_key("f#", None) == (6, "major")
    with pytest.raises(UsageError):
        synth._parse_key("H", None)
    with pytest.raises(UsageError):
        synth.synth_track("song.xyz", seconds=1.0)


def test_click_track_clicks_exactly_on_its_beats(tmp_path):
    times = synth.synth_click_track(tmp_path / "clicks.wav", seconds=4.0, bpm=96, offset=0.25)
    assert times == pytest.approx([0.25 + k * 0.625 for k in range(6)])
    samples = mc.audio(tmp_path / "clicks.wav", rate=synth.SAMPLE_RATE)
    loud = np.flatnonzero(np.abs(samples) > 0.05)
    onsets = loud[np.insert(np.diff(loud) > synth.SAMPLE_RATE * 0.1, 0, True)] / synth.SAMPLE_RATE
    assert onsets == pytest.approx(times, abs=0.001)


@pytest.mark.parametrize("ext", [".mp4", ".mov", ".mkv"])
def test_clip_with_voice(tmp_path, ext):
    path = synth.synth_clip(tmp_path / f"clip{ext}", seconds=3.0, speech_like=True, seed=2)
    info = media.probe(path)
    assert info.has_video and info.has_audio and (info.width, info.height) == (320, 240)
    assert info.fps == pytest.approx(25.0)
    assert mc.video_seconds(path) == pytest.approx(3.0, abs=0.001)
    assert "h264" in mc.stream_lines(path, "Video")[0]
    samples = mc.audio(path)
    segments = synth.speech_segments(3.0, seed=2)
    (start, end), (next_start, _) = segments[0], segments[1]
    assert mc.rms_db(samples, start + 0.05, end - 0.05) > mc.rms_db(samples, end + 0.05, next_start - 0.05) + 30
    frames, _ = media.read_frames_1fps(path)
    assert frames.shape[0] == 4 and not np.array_equal(frames[0], frames[2])  # the picture moves


def test_clip_without_audio_and_webm(tmp_path):
    mute = synth.synth_clip(tmp_path / "mute.mp4", seconds=2.0, with_audio=False)
    assert not media.probe(mute).has_audio and media.probe(mute).has_video
    webm = synth.synth_clip(tmp_path / "clip.webm", seconds=1.5, seed=4)
    assert "vp9" in mc.stream_lines(webm, "Video")[0] and "opus" in mc.stream_lines(webm, "Audio")[0]
    samples = mc.audio(webm)
    assert mc.rms_db(samples, 0.2, 1.2) > -20.0  # the continuous voice-like tone


def test_speech_segments_leave_pauses():
    segments = synth.speech_segments(20.0, seed=5)
    assert segments[0][0] == pytest.approx(0.3)
    for (s0, e0), (s1, _) in zip(segments, segments[1:]):
        assert 0.6 - 1e-9 <= e0 - s0 <= 1.6 + 1e-9 and s1 - e0 >= 0.35 - 1e-9
    assert segments[-1][1] <= 20.0


def test_demo_library_and_clip(tmp_path):
    paths = synth.make_demo_library(tmp_path / "music", n_tracks=7, seed=1, seconds=(3.0, 5.0))
    assert [p.suffix for p in paths] == [".mp3", ".flac", ".ogg", ".m4a", ".wav", ".opus", ".mp3"]
    titles = set()
    for path in paths:
        info = media.probe(path)
        assert 2.9 <= info.duration <= 5.1 and info.tags.get("artist") == "mgsv synth"
        titles.add(info.tags.get("title"))
    assert len(titles) == 7
    clip = synth.make_demo_clip(tmp_path / "demo.mp4", seconds=2.0)
    info = media.probe(clip)
    assert info.has_video and info.has_audio and info.duration == pytest.approx(2.0, abs=0.1)
