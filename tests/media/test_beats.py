"""Beat grids on generated click tracks with known tempo and meter, and start snapping."""
from __future__ import annotations

import numpy as np
import pytest
from _workflow_helpers import SR, click_track, nearest_distance, write_wav

from mgsv_cli.errors import DataError
from mgsv_cli.media.beats import BeatGrid, beats_of_file, detect_beats, snap_start


@pytest.mark.parametrize("bpm", [100.0, 128.0])
def test_tempo_and_beats_of_click_track(bpm):
    audio, truth = click_track(bpm, 30.0, noise=0.003)
    grid = detect_beats(audio, SR)
    assert abs(grid.tempo_bpm - bpm) / bpm < 0.02
    beats = np.array(grid.beats)
    assert np.all(nearest_distance(beats, truth) < 0.030)
    # Nearly every true beat is found (the tracker may drop one at either end).
    assert np.mean(nearest_distance(truth, beats) < 0.030) >= 0.9


@pytest.mark.parametrize("bpm,meter", [(100.0, 4), (128.0, 4), (110.0, 3)])
def test_downbeats_follow_the_accents(bpm, meter):
    audio, truth = click_track(bpm, 30.0, meter=meter)
    grid = detect_beats(audio, SR)
    assert grid.downbeats is not None
    accented = truth[::meter]
    assert np.all(nearest_distance(grid.downbeats, accented) < 0.030)
    assert np.mean(nearest_distance(accented, grid.downbeats) < 0.030) >= 0.8
    # One downbeat per bar, not on every other beat.
    assert np.median(np.diff(grid.downbeats)) == pytest.approx(meter * 60.0 / bpm, rel=0.02)


def test_no_downbeats_without_accents():
    audio, truth = click_track(100.0, 30.0, accented=False)
    grid = detect_beats(audio, SR)
    assert abs(grid.tempo_bpm - 100.0) < 2.0
    assert grid.downbeats is None


def test_no_grid_for_silence_or_noise():
    assert detect_beats(np.zeros(SR * 5, dtype=np.float32), SR) == BeatGrid(0.0, [], None)
    noise = np.random.default_rng(1).normal(0, 0.1, SR * 20).astype(np.float32)
    grid = detect_beats(noise, SR)
    assert grid.beats == [] and grid.tempo_bpm == 0.0


def test_beats_of_file_decodes_and_resamples(tmp_path):
    audio, truth = click_track(120.0, 20.0, sr=44100)
    grid = beats_of_file(write_wav(tmp_path / "clicks.wav", audio, sr=44100))
    assert abs(grid.tempo_bpm - 120.0) < 2.4
    assert np.all(nearest_distance(grid.beats, truth) < 0.030)


def test_grid_json_round_trip_and_bad_json():
    grid = BeatGrid(127.5, [0.5, 0.97, 1.44], [0.5])
    assert BeatGrid.from_json(grid.to_json()) == grid
    no_meter = BeatGrid(90.0, [1.0, 1.6667], None)
    assert BeatGrid.from_json(no_meter.to_json()) == BeatGrid(90.0, [1.0, 1.6667], None)
    with pytest.raises(DataError):
        BeatGrid.from_json("{not json")
    with pytest.raises(DataError):
        BeatGrid.from_json('{"beats": [1, 2]}')


BEATS = [0.5 + 0.5 * k for k in range(40)]  # 120 BPM from 0.5 s to 20 s
DOWNBEATS = BEATS[::4]  # 0.5, 2.5, 4.5, ...


def test_snap_prefers_a_downbeat_within_half_a_beat():
    start, kind = snap_start(4.3, 10.0, BEATS, DOWNBEATS, track_duration=30.0)
    assert (start, kind) == (4.5, "downbeat")


def test_snap_falls_back_to_the_nearest_beat():
    # 3.6 s is 1.1 s from the nearest downbeat (2.5 / 4.5) but 0.1 s from the beat at 3.5.
    start, kind = snap_start(3.6, 10.0, BEATS, DOWNBEATS, track_duration=30.0)
    assert (start, kind) == (3.5, "beat")
    start, kind = snap_start(3.6, 10.0, BEATS, None, track_duration=30.0)
    assert (start, kind) == (3.5, "beat")


def test_snap_keeps_the_cut_inside_the_track():
    # The downbeat at 16.5 is closest, but an 8 s cut from there would end past 24.4 s.
    assert snap_start(16.3, 8.0, BEATS, DOWNBEATS, track_duration=24.4) == (16.3, None)
    # With room for it, the same start snaps to that downbeat.
    assert snap_start(16.3, 8.0, BEATS, DOWNBEATS, track_duration=30.0) == (16.5, "downbeat")
    # Near the end the snap may only go earlier: 16.1 -> beat 16.0, not downbeat 16.5.
    start, kind = snap_start(16.1, 8.0, BEATS, DOWNBEATS, track_duration=24.4)
    assert (start, kind) == (16.0, "beat") and start + 8.0 <= 24.4


def test_snap_leaves_the_start_alone_without_a_close_beat():
    assert snap_start(3.0, 5.0, [10.0, 10.5, 11.0], None, track_duration=30.0) == (3.0, None)
    assert snap_start(3.0, 5.0, [], None, track_duration=30.0) == (3.0, None)


def test_snapped_cut_on_detected_grid_lands_on_a_true_downbeat():
    audio, truth = click_track(128.0, 30.0)
    grid = detect_beats(audio, SR)
    period = 60.0 / 128.0
    target = truth[8] + 0.3 * period  # a little after the third bar line
    start, kind = snap_start(target, 12.0, grid.beats, grid.downbeats, track_duration=30.0)
    assert kind == "downbeat"
    assert abs(start - truth[8]) < 0.030
