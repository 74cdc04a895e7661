"""Files written by mgsv 0.1.0 before the package was laid out along the pipeline still work.

tests/fixtures/v0_1 was made by that code (commit 15b04d6): a tiny checkpoint, a music
index of four tracks (one with a stored beat grid), a video's frame features, and the
suggestions that code printed for them, with and without ``--snap beat``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "v0_1"


@pytest.fixture
def old_files(tmp_path) -> Path:
    copy = tmp_path / "v0_1"
    shutil.copytree(FIXTURES, copy)  # opening an index may write beside it; the fixture stays as made
    return copy


def test_old_checkpoint_loads_with_its_config(old_files):
    from mgsv_cli.models.checkpoint import load_model

    model, variant, meta = load_model(old_files / "checkpoint", device="cpu")
    assert variant.name == "tiny" and model.cfg.d_model == 64
    assert meta["metrics"]["note"].startswith("made by mgsv 0.1.0")


def test_old_index_opens_with_its_tracks_tokens_and_beats(old_files):
    from mgsv_cli.index.backend import open_store

    with open_store(old_files / "index.sqlite") as index:
        tracks = index.tracks()
        assert [t.path for t in tracks] == [f"/music/track-{k}.mp3" for k in range(4)]
        assert [t.duration for t in tracks] == [31.0, 64.5, 122.0, 18.0]
        beats = index.beats_for([t.id for t in tracks])
        assert beats[1] and beats[1]["tempo_bpm"] == 120.0
        feats, mask = index.tokens_for([t.id for t in tracks])
        assert feats.shape[0] == 4 and mask.sum(axis=1).tolist() == [13, 26, 49, 8]
        assert index.integrity_check() == "ok"


@pytest.mark.parametrize("snap", [None, "beat"])
def test_old_files_give_the_same_suggestions(old_files, snap):
    from mgsv_cli.editor.suggest import Suggester
    from mgsv_cli.features.encoders import load_encoders

    expected = json.loads((old_files / "expected_suggestions.json").read_text())[str(snap)]
    frames = np.load(old_files / "video_frames.npy")
    mask = (np.arange(50) < 13).astype(np.float32)
    encoders = load_encoders("tiny", device="cpu")
    with Suggester.open(index_path=old_files / "index.sqlite", checkpoint=old_files / "checkpoint",
                        encoders_obj=encoders, device="cpu") as suggester:
        got = suggester.suggest_features(frames, mask, 12.4, top_k=4, video="/clips/fixture.mp4", snap=snap).to_json()
    assert [s["track"] for s in got["suggestions"]] == [s["track"] for s in expected["suggestions"]]
    for mine, theirs in zip(got["suggestions"], expected["suggestions"]):
        for key in ("score", "start", "end", "predicted_start", "predicted_end"):
            assert mine[key] == pytest.approx(theirs[key], abs=1e-4), key
        assert mine.get("snapped_to") == theirs.get("snapped_to")
    # Keys added since 0.1 (tracks left out as too short or gone) are not in the old output.
    added = {"left_out_short": 0, "left_out_missing": 0}
    assert {k: got[k] for k in added} == added
    assert {k: v for k, v in got.items() if k not in ("suggestions", *added)} == \
        {k: v for k, v in expected.items() if k != "suggestions"}
