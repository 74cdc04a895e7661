"""--fit planning on structures of generated songs: exact lengths, joins on bar lines, the real
ending, loops, the fallback reasons, and edit lists through the suggestion record."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mgsv_cli.editor.editlist import EditList
from mgsv_cli.editor.fitting import JOIN_LEAD_SECONDS, fit_suggestion, plan_edit
from mgsv_cli.editor.record import Suggestion, SuggestionResult
from mgsv_cli.errors import UsageError
from mgsv_cli.media import synth
from mgsv_cli.media.beats import ANALYSIS_SAMPLE_RATE
from mgsv_cli.media.structure import TrackStructure, analyse_signal

SECONDS, BPM = 80.0, 100.0


@pytest.fixture(scope="module")
def structure() -> TrackStructure:
    import librosa

    audio = synth.music_samples(SECONDS, BPM, seed=2, ending=True).mean(axis=1)
    audio = librosa.resample(audio, orig_sr=synth.SAMPLE_RATE, target_sr=ANALYSIS_SAMPLE_RATE)
    return analyse_signal(audio, ANALYSIS_SAMPLE_RATE)[1]


def on_a_bar_line(structure: TrackStructure, t: float) -> bool:
    return bool(np.min(np.abs(np.asarray(structure.bars) - JOIN_LEAD_SECONDS - t)) < 1e-6)


@pytest.mark.parametrize("start,clip", [(10.0, 20.0), (31.3, 12.0), (0.0, 45.5), (5.5, 9.0)])
def test_ending_is_exact_joins_on_bars_and_ends_with_the_track(structure, start, clip):
    edit = plan_edit("ending", structure, start, clip)
    assert edit.mode == "ending" and edit.reason is None
    assert edit.seconds == pytest.approx(clip, abs=1e-9)
    assert edit.spans[-1].end == pytest.approx(structure.end, abs=1e-9)  # the track's own ending
    assert edit.spans[-1].start <= structure.last_downbeat  # the final downbeat plays
    for k, join in enumerate(edit.joins):
        assert on_a_bar_line(structure, join.out) and on_a_bar_line(structure, join.into)
        assert join.into > join.out  # ending skips forward
        assert join.at == pytest.approx(sum(s.seconds for s in edit.spans[:k + 1]), abs=1e-9)
    assert abs(edit.start - start) < structure.bar_seconds  # the moment still starts the music


def test_a_pinned_start_stays_on_its_downbeat(structure):
    start = structure.bars[6]
    edit = plan_edit("ending", structure, start, 17.3, pinned=True)
    assert edit.start == pytest.approx(start, abs=1e-9)
    assert edit.seconds == pytest.approx(17.3, abs=1e-9)
    # The remainder came out of the ring-out: the music still holds the last downbeat and some ring.
    assert edit.spans[-1].end >= structure.last_downbeat + 0.5 - 1e-9


def test_loop_fills_a_clip_longer_than_the_track(structure):
    clip = structure.end + 37.0
    edit = plan_edit("loop", structure, 4.0, clip)
    assert edit.mode == "loop" and edit.seconds == pytest.approx(clip, abs=1e-9)
    assert any(j.into < j.out for j in edit.joins)  # something repeats
    assert edit.spans[-1].end == pytest.approx(structure.end, abs=1e-9)
    for join in edit.joins:
        assert on_a_bar_line(structure, join.out) and on_a_bar_line(structure, join.into)
    assert plan_edit("ending", structure, 4.0, clip).reason.endswith("--fit loop fills it")


def test_the_join_can_be_moved_to_another_bar_line(structure):
    edit = plan_edit("ending", structure, 10.0, 20.0)
    wanted = edit.joins[0].out + JOIN_LEAD_SECONDS + structure.bar_seconds
    moved = plan_edit("ending", structure, 10.0, 20.0, join_at=wanted)
    assert moved.joins[0].out == pytest.approx(wanted - JOIN_LEAD_SECONDS, abs=1e-6)
    assert moved.seconds == pytest.approx(20.0, abs=1e-9)
    with pytest.raises(UsageError, match="no join at"):
        plan_edit("ending", structure, 10.0, 20.0, join_at=2.0)  # before a bar of the moment has played


@pytest.mark.parametrize("change,reason", [
    (dict(tempo_bpm=0.0, bars=[], meter=None, chroma=[], timbre=[], loudness=[], sections=[]), "no beat grid"),
    (dict(bars=[], meter=None, chroma=[], timbre=[], loudness=[], sections=[]), "no bar lines"),
])
def test_beatless_or_barless_tracks_fall_back_to_cut_with_the_reason(structure, change, reason):
    edit = plan_edit("ending", dataclasses.replace(structure, **change), 10.0, 20.0)
    assert edit.mode == "cut" and edit.requested == "ending" and reason in edit.reason
    assert [(s.start, s.end) for s in edit.spans] == [(10.0, 30.0)] and not edit.spliced
    assert "cut (" in edit.summary()


def test_a_clip_too_short_for_a_bar_and_the_ending_falls_back(structure):
    edit = plan_edit("loop", structure, 10.0, 1.0)
    assert edit.mode == "cut" and "shorter than a bar" in edit.reason


def entry(start: float = 10.0, clip: float = 20.0) -> Suggestion:
    return Suggestion(rank=1, track="/music/song.flac", score=1.0, start=start, end=start + clip,
                      predicted_start=start, predicted_end=start + clip, track_duration=SECONDS)


def test_fit_suggestion_keeps_cut_untouched_and_records_the_edit(structure):
    plain = entry()
    assert fit_suggestion(plain, "cut", structure, 20.0) == plain
    fitted = fit_suggestion(plain, "ending", structure, 20.0)
    assert fitted.edit is not None and fitted.start == fitted.edit.start
    assert fitted.end - fitted.start == pytest.approx(20.0, abs=1e-9)  # render, snap and export read the length so


def test_edit_lists_round_trip_through_the_record(structure):
    fitted = fit_suggestion(entry(), "loop", structure, SECONDS + 30.0)
    result = SuggestionResult(video="/clips/a.mp4", duration=SECONDS + 30.0, suggestions=[fitted],
                              checkpoint="c", encoders="tiny")
    back = SuggestionResult.from_json(result.to_json()).pick(1)
    assert back.edit.to_dict() == fitted.edit.to_dict()
    assert back.edit.seconds == pytest.approx(SECONDS + 30.0, abs=1e-5)
    # The server's exact answers carry dataclasses.asdict's form.
    assert Suggestion(**dataclasses.asdict(fitted)).edit == fitted.edit
    # Records without an edit (mgsv 0.1, or --fit cut) still load, as cuts.
    assert SuggestionResult.from_json({"video": "/v.mp4", "duration": 5.0, "suggestions": [
        {"rank": 1, "track": "/t.wav", "score": 0.5, "start": 1.0, "end": 6.0}]}).pick(1).edit is None


def test_malformed_edit_lists_are_refused():
    with pytest.raises(UsageError, match="edit list"):
        EditList.from_dict({"mode": "ending", "spans": [{"start": 0, "end": 1}, {"start": 5, "end": 6}], "joins": []})
    with pytest.raises(UsageError, match="edit list"):
        EditList.from_dict({"mode": "remix", "spans": [{"start": 0, "end": 1}]})
