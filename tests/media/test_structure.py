"""Track structure: bars, sections and the ending of generated songs whose structure is known."""
from __future__ import annotations

import numpy as np
import pytest

from mgsv_cli.errors import DataError
from mgsv_cli.media import synth
from mgsv_cli.media.beats import ANALYSIS_SAMPLE_RATE
from mgsv_cli.media.structure import TrackStructure, analyse_file, analyse_signal, checkerboard_novelty

SECONDS, BPM = 70.0, 120.0


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    """A 70 s song at 120 BPM that ends on a ringing final downbeat, as a file, with its plan."""
    path = tmp_path_factory.mktemp("structure") / "song.flac"
    synth.synth_track(path, seconds=SECONDS, bpm=BPM, seed=5, ending=True)
    return path, synth.song_plan(SECONDS, BPM, ending=True)


@pytest.fixture(scope="module")
def analysed(song):
    return analyse_file(song[0])


def test_bars_are_the_known_bar_lines(song, analysed):
    _, plan = song
    _, structure = analysed
    assert structure.meter == 4
    bars = np.asarray(structure.bars)
    truth = np.asarray(plan.bars)
    # Every detected bar line is a real one (the tracker's onset lag is a few tens of ms).
    assert np.all(np.min(np.abs(bars[:, None] - truth[None, :]), axis=1) < 0.05)
    assert len(bars) >= len(truth) - 2
    assert structure.last_downbeat == pytest.approx(plan.last_downbeat, abs=0.05)
    assert structure.bar_seconds == pytest.approx(240.0 / BPM, rel=0.01)


def test_the_sound_ends_where_the_ring_out_fades(song, analysed):
    _, structure = analysed
    assert structure.duration == pytest.approx(SECONDS, abs=0.05)
    assert SECONDS - 1.0 < structure.end <= structure.duration + 1e-6


def test_sections_are_found_within_a_bar(song, analysed):
    _, plan = song
    _, structure = analysed
    bar = 240.0 / BPM
    found = np.asarray(structure.sections)
    hits = [np.min(np.abs(found - t)) <= bar + 0.05 for t in plan.sections]
    assert np.mean(hits) >= 0.75, (structure.sections, plan.sections)
    # Every boundary found is a real one or the final hit (its own "section" of ring-out).
    allowed = np.asarray(plan.sections + [plan.last_downbeat])
    assert all(np.min(np.abs(allowed - t)) <= bar + 0.05 for t in found), (structure.sections, plan.sections)
    assert len(structure.chroma) == len(structure.timbre) == len(structure.loudness) == len(structure.bars)


def test_one_decode_gives_the_same_as_the_signal(song, analysed):
    from mgsv_cli.media.ffmpeg import read_audio_mono

    audio = read_audio_mono(song[0], sample_rate=ANALYSIS_SAMPLE_RATE)
    grid, structure = analyse_signal(audio, ANALYSIS_SAMPLE_RATE)
    assert grid.beats == pytest.approx(analysed[0].beats, abs=1e-6)
    assert structure.bars == pytest.approx(analysed[1].bars, abs=1e-6)


def test_json_round_trip_and_newer_versions_refused(analysed):
    _, structure = analysed
    back = TrackStructure.from_json(structure.to_json())
    assert back.bars == pytest.approx(structure.bars, abs=1e-4)
    assert back.sections == pytest.approx(structure.sections, abs=1e-4)
    assert np.allclose(back.chroma, structure.chroma, atol=1e-4)
    assert back.meter == structure.meter and back.end == pytest.approx(structure.end, abs=1e-4)
    with pytest.raises(DataError, match="newer"):
        TrackStructure.from_dict({**structure.to_dict(), "version": 99})
    with pytest.raises(DataError, match="one row of features per bar"):
        TrackStructure.from_dict({**structure.to_dict(), "loudness": []})


def test_noise_has_no_bars():
    rng = np.random.default_rng(0)
    noise = 0.3 * rng.standard_normal(20 * ANALYSIS_SAMPLE_RATE).astype(np.float32)
    grid, structure = analyse_signal(noise, ANALYSIS_SAMPLE_RATE)
    assert structure.bars == [] and structure.sections == [] and structure.meter is None
    assert structure.last_downbeat is None and not structure.has_bars


def test_novelty_peaks_at_a_block_boundary():
    similarity = np.zeros((16, 16))
    similarity[:6, :6] = 1.0
    similarity[6:, 6:] = 1.0
    novelty = checkerboard_novelty(similarity, 4)
    assert int(np.argmax(novelty)) == 6


def test_song_plan_matches_the_music():
    plan = synth.song_plan(60.0, 120.0, ending=True)
    assert plan.last_downbeat == 56.0 and plan.bars[-1] == 56.0 and plan.sections[0] == 0.0
    samples = synth.music_samples(60.0, 120.0, seed=1, ending=True).mean(axis=1)
    rate = synth.SAMPLE_RATE

    def level(t0, t1):
        seg = samples[int(t0 * rate):int(t1 * rate)]
        return 20 * np.log10(np.sqrt(np.mean(seg ** 2)) + 1e-12)

    # The final hit is the loudest moment of the outro, then it rings down by tens of dB.
    assert level(56.0, 56.5) > level(54.0, 54.5)
    assert level(59.5, 60.0) < level(56.0, 56.5) - 25
