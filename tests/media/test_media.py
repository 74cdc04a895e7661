"""media.py: probing, 1-fps frame decoding and first-channel 16 kHz audio, on generated files."""
from __future__ import annotations

import functools
import sys

import numpy as np
import pytest
from _media_helpers import (
    corrupt_copy,
    counter_video,
    ffmpeg,
    pattern_video,
    tone,
    two_channel_audio,
)

from mgsv_cli.errors import MediaError
from mgsv_cli.media import ffmpeg as media


def read16k(path, **kwargs):
    return media.read_audio_mono(path, sample_rate=16000, **kwargs)


# ---------------------------------------------------------------- probe


def test_probe_video_with_audio_and_title(tmp_path):
    path = pattern_video(tmp_path / "clip.mp4", 3.0, size="320x240", title="Beach day")
    info = media.probe(path)
    assert info.has_video and info.has_audio
    assert info.duration == pytest.approx(3.0, abs=0.1)
    assert (info.width, info.height) == (320, 240)
    assert info.fps == pytest.approx(25.0)
    assert info.sample_rate == 44100 and info.channels == 1
    assert info.tags == {"title": "Beach day"}


def test_probe_audio_tags_and_channels(tmp_path):
    path = two_channel_audio(tmp_path / "song.mp3", 2.0, 440, None, codec="libmp3lame",
                             extra=("-metadata", "title=Song A", "-metadata", "artist=Band",
                                    "-metadata", "album=First"))
    info = media.probe(path)
    assert not info.has_video and info.has_audio
    assert (info.sample_rate, info.channels) == (44100, 2)
    assert info.tags == {"title": "Song A", "artist": "Band", "album": "First"}
    assert info.duration == pytest.approx(2.0, abs=0.1)


def test_probe_cover_art_is_not_video(tmp_path):
    cover = tmp_path / "cover.png"
    ffmpeg("-f", "lavfi", "-i", "color=c=red:s=64x64:d=1", "-frames:v", "1", cover)
    song = tone(tmp_path / "plain.mp3", 1.5, codec="libmp3lame")
    tagged = tmp_path / "tagged.mp3"
    ffmpeg("-i", song, "-i", cover, "-map", "0", "-map", "1", "-c", "copy",
           "-disposition:v", "attached_pic", tagged)
    info = media.probe(tagged)
    assert info.has_audio and not info.has_video


def test_probe_applies_display_rotation(tmp_path):
    plain = pattern_video(tmp_path / "plain.mp4", 1.0, size="320x240", with_audio=False)
    rotated = tmp_path / "rotated.mp4"
    ffmpeg("-display_rotation:v:0", "90", "-i", plain, "-c", "copy", rotated)
    info = media.probe(rotated)
    assert (info.width, info.height) == (240, 320)
    frames, _ = media.read_frames_1fps(rotated)
    assert frames.shape[1:] == (320, 240, 3)


def test_probe_a_vertical_clip_and_a_portrait_clip_stored_landscape(tmp_path):
    """A phone's portrait clip is either stored 1080x1920 or stored 1920x1080 with a display
    matrix turning it: both are 1080x1920 on screen."""
    vertical = tmp_path / "vertical.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=1080x1920:r=30:d=0.2", "-c:v", "libx264", "-preset", "ultrafast",
           "-pix_fmt", "yuv420p", vertical)
    landscape = pattern_video(tmp_path / "landscape.mp4", 0.2, size="1920x1080", with_audio=False)
    for degrees, expected in (("90", 90), ("-90", 270), ("180", 180)):
        turned = tmp_path / f"turned{degrees}.mp4"
        ffmpeg("-display_rotation:v:0", degrees, "-i", landscape, "-c", "copy", turned)
        info = media.probe(turned)
        assert info.rotation == expected
        assert (info.width, info.height) == ((1920, 1080) if expected == 180 else (1080, 1920))
    info = media.probe(vertical)
    assert (info.width, info.height, info.rotation) == (1080, 1920, 0)
    assert not info.variable_frame_rate and info.fps == pytest.approx(30.0) and info.nominal_fps == pytest.approx(30.0)


def test_probe_tells_a_variable_frame_rate(tmp_path):
    # A 30 fps recording that dropped frames irregularly, as a phone does in low light.
    vfr = tmp_path / "vfr.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=64x48:r=30:d=3", "-vf", "select='lt(mod(n,5),2)'",
           "-fps_mode", "vfr", "-c:v", "libx264", "-pix_fmt", "yuv420p", vfr)
    info = media.probe(vfr)
    assert info.nominal_fps == pytest.approx(30.0)
    assert info.fps == pytest.approx(12.0, abs=0.5)  # 2 frames of every 5 kept
    assert info.variable_frame_rate
    assert not media.probe(pattern_video(tmp_path / "cfr.mp4", 1.0, with_audio=False)).variable_frame_rate


def test_probe_tells_sound_even_when_silent(tmp_path):
    silent = tmp_path / "silent.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=64x48:r=25:d=1", "-f", "lavfi", "-i", "anullsrc=r=48000:cl=stereo",
           "-t", "1", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", silent)
    info = media.probe(silent)
    assert info.has_audio and (info.sample_rate, info.channels) == (48000, 2)
    assert not media.probe(pattern_video(tmp_path / "mute.mp4", 1.0, with_audio=False)).has_audio


@pytest.mark.parametrize("stream,expected", [
    # (stream line and what follows it, (width, height, fps, nominal fps, rotation, variable))
    ("Video: h264, yuv420p, 1080x1920, 14.90 fps, 30 tbr, 90k tbn", (1080, 1920, 14.9, 30.0, 0, True)),
    ("Video: h264, yuv420p, 1920x1080, 29.97 fps, 29.97 tbr, 30k tbn\n    Side data:\n"
     "      Display Matrix: rotation of -90.00 degrees", (1080, 1920, 29.97, 29.97, 270, False)),
    # ffmpeg before 5 printed the rotation as a stream tag, turning the other way.
    ("Video: h264, yuv420p, 1920x1080, 30 fps, 30 tbr, 90k tbn\n    Metadata:\n      rotate          : 90",
     (1080, 1920, 30.0, 30.0, 270, False)),
    # An interlaced stream's nominal rate is its field rate: not a variable frame rate.
    ("Video: h264, yuv420p(top first), 1920x1080, 25 fps, 50 tbr, 90k tbn", (1920, 1080, 25.0, 50.0, 0, False)),
    ("Video: vp8, yuv420p, 640x480, 1k tbr, 1k tbn", (640, 480, 1000.0, 1000.0, 0, False)),
])
def test_parse_video_rates_and_rotation(stream, expected):
    stderr = f"Input #0, mov, from 'x.mp4':\n  Duration: 00:00:05.00, start: 0.0\n  Stream #0:0: {stream}\n"
    info = media.parse_ffmpeg_input_info(stderr)
    assert (info.width, info.height, info.rotation, info.variable_frame_rate) == (
        expected[0], expected[1], expected[4], expected[5])
    assert (info.fps, info.nominal_fps) == pytest.approx(expected[2:4])


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    import os

    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    fields = handle.read().rpartition(b")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _gone(pid: int) -> bool:
    """Whether ``pid`` is dead: no such process, or a zombie nobody has reaped yet (it runs no more)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rpartition(b")")[2].split()[0] in (b"Z", b"X")
    except OSError:
        return True


def wait_for(condition, what: str, deadline_s: float = 60.0, poll_s: float = 0.05):
    """Poll ``condition()`` until it returns something true; fail after a generous ``deadline_s``."""
    import time

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    pytest.fail(f"{what}: not within {deadline_s:.0f} s")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")
def test_ffmpeg_dies_with_the_process_that_started_it(tmp_path):
    """kill -9 of mgsv must not leave its ffmpeg running: here one that would run for 10 minutes."""
    import os
    import signal
    import subprocess

    script = ("from mgsv_cli.media.ffmpeg import run_ffmpeg\n"
              "run_ffmpeg(['-re', '-f', 'lavfi', '-i', 'sine=d=600', '-f', 'null', '-'], 'playing a tone')\n")
    parent = subprocess.Popen([sys.executable, "-c", script])
    child = None
    try:
        child = wait_for(lambda: next(iter(_children(parent.pid)), None), "ffmpeg started")
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        wait_for(lambda: _gone(child), "the orphaned ffmpeg died")
    finally:
        parent.kill()
        parent.wait()
        if child is not None and not _gone(child):
            os.kill(child, signal.SIGKILL)


def test_probe_decodes_when_container_has_no_duration(tmp_path):
    raw = tmp_path / "clip.h264"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=64x48:r=25:d=2", "-c:v", "libx264", "-f", "h264", raw)
    assert "Duration: N/A" in media.run_ffmpeg(["-i", raw], "x", check=False).stderr.decode()
    assert media.probe(raw).duration == pytest.approx(2.0, abs=0.1)


def test_parse_input_info_layouts_and_cover():
    stderr = """Input #0, matroska,webm, from 'x.mkv':
  Metadata:
    TITLE           : Loud
  Duration: 00:01:02.50, start: 0.000000, bitrate: 1 kb/s
  Stream #0:0: Video: mjpeg, yuvj420p, 600x600, 90k tbr, 90k tbn (attached pic)
  Stream #0:1(eng): Audio: ac3, 48000 Hz, 5.1(side), fltp, 448 kb/s
    Metadata:
      title           : stream title is not the song title
"""
    info = media.parse_ffmpeg_input_info(stderr)
    assert info.duration == pytest.approx(62.5)
    assert not info.has_video and info.has_audio
    assert (info.sample_rate, info.channels) == (48000, 6)
    assert info.tags == {"title": "Loud"}


@pytest.mark.parametrize("kind", ["missing", "empty", "text", "corrupt", "folder"])
def test_unreadable_inputs_raise_one_line_media_error(tmp_path, kind):
    path = tmp_path / f"bad-{kind}.mp4"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a video\n" * 50)
    elif kind == "corrupt":
        corrupt_copy(pattern_video(tmp_path / "good.mp4", 1.0), path)
    elif kind == "folder":
        path.mkdir()
    for read in (media.probe, media.read_frames_1fps, functools.partial(media.read_audio_mono, sample_rate=16000)):
        with pytest.raises(MediaError) as caught:
            read(path)
        message = str(caught.value)
        assert path.name in message and "\n" not in message
    if kind == "empty":
        assert "empty" in message
    if kind == "missing":
        assert "no such file" in message


def test_run_ffmpeg_names_the_task_and_the_reason(tmp_path):
    with pytest.raises(MediaError, match=r"^converting nothing: .*No such file or directory"):
        media.run_ffmpeg(["-i", tmp_path / "nothing.wav", "-f", "null", "-"], "converting nothing")


# ---------------------------------------------------------------- frames at 1 fps


def _frame_numbers(frames: np.ndarray) -> list[int]:
    return [int(f[0, 0, 0]) for f in frames]


def test_frames_are_those_shown_at_whole_seconds(tmp_path):
    frames, duration = media.read_frames_1fps(counter_video(tmp_path / "v.mkv", "25", 6.52))
    assert duration == pytest.approx(6.52)
    assert frames.dtype == np.uint8 and frames.shape == (7, 24, 32, 3)
    assert _frame_numbers(frames) == [0, 25, 50, 75, 100, 125, 150]


def test_ntsc_rate_takes_the_frame_still_on_screen(tmp_path):
    # 29.97 fps: frame 30 starts at 1.001 s, so frame 29 is the one shown at t = 1 s.
    frames, _ = media.read_frames_1fps(counter_video(tmp_path / "v.mp4", "30000/1001", 4.5))
    assert _frame_numbers(frames) == [0, 29, 59, 89, 119]


def test_whole_second_duration_includes_the_final_instant(tmp_path):
    # i = 0..floor(6.0): t = 6 s is the end, where the last frame (149) is still shown.
    frames, duration = media.read_frames_1fps(counter_video(tmp_path / "v.mkv", "25", 6.0))
    assert duration == pytest.approx(6.0)
    assert _frame_numbers(frames) == [0, 25, 50, 75, 100, 125, 149]


def test_at_most_fifty_frames(tmp_path):
    path = counter_video(tmp_path / "long.mkv", "2", 64.0)
    frames, duration = media.read_frames_1fps(path, max_frames=50)
    assert duration == pytest.approx(64.0)
    assert len(frames) == 50
    assert _frame_numbers(frames) == [2 * i for i in range(50)]
    assert len(media.read_frames_1fps(path, max_frames=5)[0]) == 5


def test_short_side_resize_matches_pil_bicubic(tmp_path):
    from PIL import Image

    path = pattern_video(tmp_path / "v.mp4", 1.5, size="160x90", with_audio=False)
    full, _ = media.read_frames_1fps(path)
    small, _ = media.read_frames_1fps(path, short_side=224)
    assert small.shape == (2, 224, 398, 3)  # int(224 * 160 / 90) = 398, like torchvision
    expected = np.asarray(Image.fromarray(full[1]).resize((398, 224), Image.BICUBIC))
    np.testing.assert_array_equal(small[1], expected)


def test_shortest_side_size_truncates_like_torchvision():
    assert media.shortest_side_size(1920, 1080, 224) == (398, 224)
    assert media.shortest_side_size(1080, 1920, 224) == (224, 398)
    assert media.shortest_side_size(500, 500, 224) == (224, 224)


def test_frames_of_audio_only_file_fail_clearly(tmp_path):
    with pytest.raises(MediaError, match="no video stream"):
        media.read_frames_1fps(tone(tmp_path / "a.wav", 1.0))


def test_frames_for_duration():
    assert media.frames_for_duration(0.0) == 0
    assert media.frames_for_duration(0.4) == 1
    assert media.frames_for_duration(23.9) == 24
    assert media.frames_for_duration(24.0) == 25
    assert media.frames_for_duration(49.99, 50) == 50
    assert media.frames_for_duration(50.0, 50) == 50
    assert media.frames_for_duration(300.0) == 301
    assert media.frames_for_duration(300.0, 50) == 50


# ---------------------------------------------------------------- audio


def _tone_level(samples: np.ndarray, freq: float, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(samples)) / len(samples)
    bins = np.fft.rfftfreq(len(samples), 1 / rate)
    return float(spectrum[np.argmin(np.abs(bins - freq))])


def test_audio_is_16k_float_from_the_first_channel(tmp_path):
    left_only = read16k(two_channel_audio(tmp_path / "l.wav", 2.0, 440, None))
    right_only = read16k(two_channel_audio(tmp_path / "r.wav", 2.0, None, 440))
    assert left_only.dtype == np.float32 and left_only.ndim == 1
    assert len(left_only) == pytest.approx(32000, abs=16)
    # lavfi's sine has amplitude 1/8; a downmix would halve it and leak the right channel.
    assert np.abs(left_only).max() == pytest.approx(0.125, abs=0.01)
    assert _tone_level(left_only, 440) > 0.05
    assert np.abs(right_only).max() < 1e-3


def test_audio_resampling_keeps_the_pitch(tmp_path):
    samples = read16k(two_channel_audio(tmp_path / "s.flac", 1.0, 1000, 3000,
                                                     sample_rate=48000, codec="flac"))
    assert _tone_level(samples, 1000) > 0.05
    assert _tone_level(samples, 3000) < 1e-3


def test_audio_from_a_video_and_max_seconds(tmp_path):
    path = pattern_video(tmp_path / "v.mp4", 3.0)
    assert len(read16k(path)) == pytest.approx(48000, abs=1200)
    assert len(read16k(path, max_seconds=1.0)) == 16000


def test_audio_of_silent_video_fails_clearly(tmp_path):
    with pytest.raises(MediaError, match="no audio stream"):
        read16k(counter_video(tmp_path / "v.mkv", "25", 1.0))


# ---------------------------------------------------------------- why ffmpeg failed

# The tail of ffmpeg 7-9's stderr for real failures, as written to a full disk, a file
# size limit, a read-only mount, ...: the reason comes before statistics and wrap-up lines.
_WRAP_UP = """[out#0/mp4 @ 0x56099dd453c0] video:181KiB audio:77KiB subtitle:0KiB other streams:0KiB global headers:0KiB muxing overhead: unknown
frame=  125 fps=0.0 q=-1.0 Lsize=       0KiB time=00:00:04.92 bitrate=   0.1kbits/s speed=54.2x elapsed=0:00:00.09
[aac @ 0x56099ddc1bc0] Qavg: 64525.949
Conversion failed!
"""  # noqa: E501  (ffmpeg's own lines, verbatim)
_HEADER = """Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'error-clip.mp4':
  Metadata:
    title           : Error 404 (a clip about a broken website)
  Duration: 00:00:05.00, start: 0.000000, bitrate: 400 kb/s
  Stream #0:0[0x1](und): Video: h264 (High), yuv420p(progressive), 320x240, 296 kb/s, 25 fps, 25 tbr
Stream mapping:
  Stream #0:0 -> #0:0 (copy)
Output #0, mp4, to '/out/.clip.mgsv.mp4.part':
"""


def _failure(errno_text: str) -> str:
    return _HEADER + f"""[aost#0:1/aac @ 0x56099ddc1080] Error submitting a packet to the muxer: {errno_text}
[out#0/mp4 @ 0x56099dd453c0] Error muxing a packet
[out#0/mp4 @ 0x56099dd453c0] Task finished with error code: -28 ({errno_text})
[out#0/mp4 @ 0x56099dd453c0] Terminating thread with return code -28 ({errno_text})
[mp4 @ 0x56099dd45580] Starting second pass: moving the moov atom to the beginning of the file
[out#0/mp4 @ 0x56099dd453c0] Error writing trailer: {errno_text}
[out#0/mp4 @ 0x56099dd453c0] Error closing file: {errno_text}
""" + _WRAP_UP


@pytest.mark.parametrize("errno_text", ["No space left on device", "File too large", "Disk quota exceeded",
                                        "Input/output error"])
def test_the_os_error_wins_over_the_statistics_printed_after_it(errno_text):
    message = media.last_ffmpeg_message(_failure(errno_text))
    assert message == f"Error closing file: {errno_text}"
    assert media.names_storage_error(message)


@pytest.mark.parametrize("stderr,expected", [
    (_HEADER + "[out#0/mp4 @ 0x55c483b77ac0] Error opening output /ro/x.mp4: Read-only file system\n"
     "Error opening output file /ro/x.mp4.\nError opening output files: Read-only file system\n",
     "Error opening output /ro/x.mp4: Read-only file system"),
    ("/locked/x.mp4: Permission denied\n", "/locked/x.mp4: Permission denied"),
    (_HEADER + "[mov,mp4,m4a,3gp,3g2,mj2 @ 0x5600] moov atom not found\n"
     "/in/broken.mp4: Invalid data found when processing input\n" + _WRAP_UP,
     "/in/broken.mp4: Invalid data found when processing input"),
    (_HEADER + "[mp4 @ 0x1] Error writing trailer of /out/x.mp4: Error number -5 occurred\n" + _WRAP_UP,
     "Error writing trailer of /out/x.mp4: Error number -5 occurred"),
    # A damaged input's decoding errors do not hide the disk that filled up later.
    (_HEADER + "[mp3float @ 0x2] Error while decoding stream #1:0: Invalid data found when processing input\n"
     "av_interleaved_write_frame(): No space left on device\n" + _WRAP_UP,
     "av_interleaved_write_frame(): No space left on device"),
    (_HEADER + _WRAP_UP, "ffmpeg failed without saying why"),  # only statistics: never one of them
    ("[aac @ 0x5] Qavg: 64525.949\n", "ffmpeg failed without saying why"),
    ("Unrecognized option 'frobnicate'.\nError splitting the argument list: Option not found\n",
     "Error splitting the argument list: Option not found"),
    ("something odd happened\n" + _WRAP_UP, "something odd happened"),  # no error words: the last real line
    # H.264 into WebM: the consequences ffmpeg prints afterwards are not the reason.
    (_HEADER + "[webm @ 0x3] Only VP8 or VP9 or AV1 video and Vorbis or Opus audio and WebVTT subtitles are "
     "supported for WebM.\n[out#0/webm @ 0x4] Could not write header (incorrect codec parameters ?): Invalid argument\n"
     "[af#0:1 @ 0x5] Error sending frames to consumers: Invalid argument\n"
     "[af#0:1 @ 0x5] Task finished with error code: -22 (Invalid argument)\n" + _WRAP_UP,
     "Could not write header (incorrect codec parameters ?): Invalid argument"),
])
def test_last_ffmpeg_message_finds_the_reason(stderr, expected):
    message = media.last_ffmpeg_message(stderr)
    assert message == expected
    assert "Qavg" not in message and "frame=" not in message and "\n" not in message


def test_a_metadata_title_is_never_the_reason():
    assert "404" not in media.last_ffmpeg_message(_HEADER + _WRAP_UP)


def test_ffmpeg_stopped_by_a_signal_says_so():
    import signal

    assert "SIGKILL" in media.ffmpeg_failure(-signal.SIGKILL, _WRAP_UP)
    assert "file size limit" in media.ffmpeg_failure(-signal.SIGXFSZ, "")
    assert media.ffmpeg_failure(1, _failure("No space left on device")).endswith("No space left on device")
