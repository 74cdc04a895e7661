"""`mgsv render --snap beat`: the cut starts on a beat of the track, keeping the video's length."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mgsv_cli.editor.render import resolve_moment
from mgsv_cli.media.synth import synth_click_track, synth_clip


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("snap")
    beats = synth_click_track(folder / "clicks.wav", seconds=30.0, bpm=100.0)
    clip = synth_clip(folder / "clip.mp4", seconds=3.0, with_audio=False)
    return folder / "clicks.wav", beats, clip


def test_snap_moves_an_off_beat_start_to_the_nearest_beat(media):
    track, beats, clip = media
    requested = beats[6] + 0.2  # 0.2 s late: less than half a beat (0.3 s) away from beat 6
    _, start = resolve_moment(clip, track=track, start=requested, snap="beat")
    assert start == pytest.approx(beats[6], abs=0.03)
    _, unsnapped = resolve_moment(clip, track=track, start=requested)
    assert unsnapped == requested


def test_render_cli_snaps_and_reports_the_start(media, tmp_path, isolated_home):
    track, beats, clip = media
    out = tmp_path / "out.mp4"
    env = {**os.environ, "MGSV_HOME": str(isolated_home), "PYTHONPATH": str(Path.cwd())}
    result = subprocess.run([sys.executable, "-m", "mgsv_cli", "render", str(clip), "--track", str(track),
                             "--start", str(beats[10] - 0.15), "--snap", "beat", "-o", str(out), "--json"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    rendered = json.loads(result.stdout.strip().splitlines()[-1])
    assert rendered["start"] == pytest.approx(beats[10], abs=0.03)
    assert out.is_file()


def test_an_unknown_snap_mode_is_a_usage_error(media, tmp_path, isolated_home):
    track, _, clip = media
    env = {**os.environ, "MGSV_HOME": str(isolated_home), "PYTHONPATH": str(Path.cwd())}
    result = subprocess.run([sys.executable, "-m", "mgsv_cli", "render", str(clip), "--track", str(track),
                             "--start", "1", "--snap", "bar", "-o", str(tmp_path / "x.mp4")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "snap" in result.stderr
