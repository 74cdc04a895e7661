"""`--fit ending|loop` through the real CLI on generated media: suggest's JSON and table, render's
exact length and real ending, the timelines read back by OpenTimelineIO, and the fallbacks."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import _media_checks as mc
import numpy as np
import opentimelineio as otio
import pytest
from _library_helpers import run_cli
from _workflow_helpers import clear_settings_env

from mgsv_cli.editor import export as writers
from mgsv_cli.media import synth

CLIP_SECONDS = 12.0
LONG_CLIP_SECONDS = 27.0


@pytest.fixture(autouse=True)
def no_settings_from_the_shell(monkeypatch, isolated_home):
    clear_settings_env(monkeypatch)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """Two songs with real endings, a 20 s one (shorter than the long clip), a beatless noise
    "track", indexed with the tiny encoders (beats detected), and two clips without sound."""
    import torch

    from mgsv_cli.features.encoders import load_encoders
    from mgsv_cli.index.pipeline import index_folder

    root = tmp_path_factory.mktemp("fit")
    music = root / "music"
    synth.synth_track(music / "a-ending.wav", seconds=50.0, bpm=120.0, seed=1, ending=True, title="Ends")
    synth.synth_track(music / "b-ending.flac", seconds=40.0, bpm=100.0, seed=2, ending=True, title="Also Ends")
    # The last 20 s of a song (a chorus bar, the outro, the final hit): bars clear from the start.
    tail = synth.music_samples(60.0, 120.0, seed=3, ending=True)[-int(20 * synth.SAMPLE_RATE):]
    synth.write_audio(music / "c-short.wav", tail, title="Short")
    noise = 0.2 * np.random.default_rng(0).standard_normal((int(30 * synth.SAMPLE_RATE), 2))
    synth.write_audio(music / "d-noise.wav", noise, title="Noise")
    encoders = load_encoders(kind="tiny", device=torch.device("cpu"), offline=True, weights_dir=None)
    index = root / "index.sqlite"
    assert index_folder(music, index, encoders=encoders, detect_beats=True).ok
    clip = synth.synth_clip(root / "clip.mp4", seconds=CLIP_SECONDS, with_audio=False, size=(64, 48))
    long_clip = synth.synth_clip(root / "long.mp4", seconds=LONG_CLIP_SECONDS, with_audio=False, size=(64, 48))
    return root, index, clip, long_clip


def suggest(capsys, library, clip, *args) -> dict:
    _, index, *_ = library
    result = run_cli(capsys, "suggest", clip, "--index", index, "--untrained", "--encoders", "tiny", "--device",
                     "cpu", "--no-server", "--top", "4", *args)
    assert result.code == 0, result.err
    return result


def by_title(data: dict) -> dict:
    return {s["title"]: s for s in data["suggestions"]}


def test_suggest_fit_ending_json_table_and_fallback(capsys, library, tmp_path, monkeypatch):
    from mgsv_cli.editor import fitting

    root, index, clip, _ = library
    plain = json.loads(suggest(capsys, library, clip, "--json").out)
    assert all("edit" not in s for s in plain["suggestions"])  # cut, the default: as before

    def no_decoding(track):
        raise AssertionError(f"decoded {track}: its structure is in the index")

    with monkeypatch.context() as patched:  # the bars come from the index, found there at index time
        patched.setattr(fitting, "detected_structure", no_decoding)
        data = json.loads(suggest(capsys, library, clip, "--fit", "ending", "--json").out)
    found = by_title(data)
    for title in ("Ends", "Also Ends"):
        edit = found[title]["edit"]
        assert edit["mode"] == "ending" and edit["requested"] == "ending" and edit["reason"] is None
        assert sum(s["end"] - s["start"] for s in edit["spans"]) == pytest.approx(CLIP_SECONDS, abs=1e-5)
        assert found[title]["start"] == pytest.approx(edit["spans"][0]["start"], abs=1e-6)
        assert found[title]["end"] - found[title]["start"] == pytest.approx(CLIP_SECONDS, abs=1e-5)
    noise = found["Noise"]["edit"]
    assert noise["mode"] == "cut" and "no beat grid" in noise["reason"]
    assert found["Noise"]["start"] == pytest.approx(by_title(plain)["Noise"]["start"], abs=1e-6)
    monkeypatch.setenv("MGSV_FIT", "ending")  # the settings' default, for suggest without --fit
    from_settings = json.loads(suggest(capsys, library, clip, "--json").out)
    assert [s["edit"] for s in from_settings["suggestions"]] == [s["edit"] for s in data["suggestions"]]
    monkeypatch.delenv("MGSV_FIT")
    table = suggest(capsys, library, clip, "--fit", "ending").out
    assert "fit" in table and "ending, 1 join" in table.replace("ending, no join", "ending, 1 join")
    assert "cut (no beat grid" in table


def test_render_and_export_an_ending(capsys, library, tmp_path):
    root, index, clip, _ = library
    data = json.loads(suggest(capsys, library, clip, "--fit", "ending", "--json").out)
    pick = next(s for s in data["suggestions"] if s["title"] == "Ends")
    if not pick["edit"]["joins"]:  # the (random) model's moment was near the end: make one with a join
        pick = _remember_with_start(clip, data, pick["rank"], 5.0)
    edit = pick["edit"]
    assert len(edit["joins"]) == 1
    out = tmp_path / "ending.mp4"
    rendered = run_cli(capsys, "render", clip, "--pick", str(pick["rank"]), "-o", out, "--json", "--no-server")
    assert rendered.code == 0, rendered.err
    result = json.loads(rendered.out.strip().splitlines()[-1])
    assert result["edit"]["spans"] == edit["spans"]
    audio = mc.audio(out)
    assert len(audio) == round(CLIP_SECONDS * mc.RATE)  # exactly the clip, to the sample
    # The last seconds are the track's own last seconds, in place: its ending lands on the last frame.
    track = mc.audio(Path(pick["track"]))
    end = round(edit["spans"][-1]["end"] * mc.RATE)
    reference = track[end - 2 * mc.RATE:end]
    lag, correlation = mc.best_lag(reference, audio[-2 * mc.RATE:], 480)
    assert abs(lag) <= 48 and correlation > 0.9  # within a millisecond (the AAC encode blurs the rest)
    # Every format carries the spans as clips joined by a crossfade, parsed back by OpenTimelineIO.
    for fmt, (adapter, extension) in writers.FORMATS.items():
        target = tmp_path / f"timeline{extension}"
        exported = run_cli(capsys, "export", clip, "--pick", str(pick["rank"]), "--format", fmt, "-o", target,
                           "--json", "--no-server")
        assert exported.code == 0, exported.err
        assert json.loads(exported.out)["edit"]["spans"] == edit["spans"]
        timeline = otio.adapters.read_from_file(str(target), adapter_name=adapter,
                                                **({"rate": 25.0} if fmt == "edl" else {}))
        music = next(t for t in timeline.tracks if t.kind == otio.schema.TrackKind.Audio)
        clips = list(music.find_clips())
        assert len(clips) == len(edit["spans"])
        assert sum(c.source_range.duration.to_frames(25.0) for c in clips) == CLIP_SECONDS * 25
        if fmt != "edl":  # the EDL starts a dissolve's incoming event at its handle
            for c, span in zip(clips, edit["spans"]):
                assert c.source_range.start_time.to_frames(25.0) == round(span["start"] * 25)
        if fmt == "fcpxml":  # the adapter reads no transitions: they are in the XML
            text = target.read_text()
            assert text.count("<transition ") == len(edit["joins"]) and "FFAudioTransition" in text
        else:
            transitions = [t for t in music if isinstance(t, otio.schema.Transition)]
            assert len(transitions) == len(edit["joins"])


def test_loop_fills_a_clip_longer_than_a_short_track(capsys, library, tmp_path):
    root, index, _, long_clip = library
    data = json.loads(suggest(capsys, library, long_clip, "--fit", "loop", "--include-short", "--json").out)
    short = by_title(data)["Short"]
    assert short["fits"] is False
    edit = short["edit"]
    assert edit["mode"] == "loop" and any(j["into"] < j["out"] for j in edit["joins"])
    assert sum(s["end"] - s["start"] for s in edit["spans"]) == pytest.approx(LONG_CLIP_SECONDS, abs=1e-5)
    ending = json.loads(suggest(capsys, library, long_clip, "--fit", "ending", "--include-short", "--json").out)
    assert "--fit loop fills it" in by_title(ending)["Short"]["edit"]["reason"]
    out = tmp_path / "loop.mp4"
    rendered = run_cli(capsys, "render", long_clip, "--pick", str(short["rank"]), "--fit", "loop", "-o", out,
                       "--no-server")
    assert rendered.code == 0, rendered.err
    audio = mc.audio(out)
    assert len(audio) == round(LONG_CLIP_SECONDS * mc.RATE)
    assert mc.rms_db(audio, LONG_CLIP_SECONDS - 12.0, LONG_CLIP_SECONDS - 4.0) > -40  # music, not silence
    _keep_for_listening(out, "loop")


def test_render_fit_with_track_and_a_bad_mode(capsys, library, tmp_path):
    root, index, clip, _ = library
    track = root / "music" / "b-ending.flac"
    out = tmp_path / "track.mp4"
    rendered = run_cli(capsys, "render", clip, "--track", track, "--start", "7.3", "--fit", "ending", "--snap", "beat",
                       "--index", index, "-o", out, "--json", "--no-server")
    assert rendered.code == 0, rendered.err
    result = json.loads(rendered.out.strip().splitlines()[-1])
    assert result["edit"]["mode"] == "ending" and len(mc.audio(out)) == round(CLIP_SECONDS * mc.RATE)
    bad = run_cli(capsys, "render", clip, "--track", track, "--start", "1", "--fit", "remix", "-o",
                  tmp_path / "x.mp4", "--no-server")
    assert bad.code == 2 and "--fit 'remix'" in bad.err
    _keep_for_listening(out, "ending")


def _remember_with_start(clip: Path, data: dict, rank: int, start: float) -> dict:
    """Remember suggestion ``rank`` of ``data`` moved to ``start`` and fitted again, as suggest would."""
    import dataclasses

    from mgsv_cli.editor.fitting import refit_suggestion
    from mgsv_cli.editor.record import SuggestionResult, remember_suggestion

    record = SuggestionResult.from_json(data)
    entry = record.pick(rank)
    record = record.with_entry(dataclasses.replace(entry, start=start, end=start + record.duration, edit=None))
    record = refit_suggestion(record, rank, "ending")
    remember_suggestion(record)
    return record.pick(rank).to_json()


def _keep_for_listening(rendered: Path, name: str) -> None:
    """Where ``MGSV_TEST_ARTIFACTS`` names a folder, keep the render's sound as a WAV there."""
    folder = os.environ.get("MGSV_TEST_ARTIFACTS")
    if folder:
        target = Path(folder) / "fit"
        target.mkdir(parents=True, exist_ok=True)
        mc.ffmpeg("-y", "-i", str(rendered), "-vn", "-c:a", "pcm_s16le", str(target / f"{name}.wav"))
        shutil.copy2(rendered, target / f"{name}{rendered.suffix}")
