"""`--snap beat` reads the track's beat grid from the store it was indexed into, an SQLite index or a
Lance store alike: ``snapping.grid_for_track``, render's moment, `mgsv render`, `mgsv suggest` and
`mgsv export`.

The stored grid is made 0.15 s earlier than the click track's real beats (a quarter of its 0.6 s
period; plus one at 0, so that any start has a stored beat within half a beat, inside the
track): a start snapped 0.15 s before a real beat cannot have come from detecting the beats now.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from mgsv_cli.editor.render import resolve_moment
from mgsv_cli.editor.snapping import grid_for_track
from mgsv_cli.index.pipeline import import_tokens
from mgsv_cli.index.records import NewTrack
from mgsv_cli.media.beats import BeatGrid
from mgsv_cli.media.synth import synth_click_track, synth_clip

pytest.register_assert_rewrite("_library_helpers")
from _library_helpers import run_cli  # noqa: E402
from _store_helpers import STORE_KINDS, store_at  # noqa: E402

pytest_plugins = ["_library_helpers"]

SHIFT = 0.15  # seconds the stored grid lies before the real beats


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("snap_store")
    beats = synth_click_track(folder / "clicks.wav", seconds=30.0, bpm=100.0)
    clip = synth_clip(folder / "clip.mp4", seconds=3.0, with_audio=False)
    return (folder / "clicks.wav").resolve(), beats, clip.resolve()


@pytest.fixture(params=STORE_KINDS)
def store_with_grid(request, tmp_path, media, tiny_encoders):
    """A store holding the click track (random tokens) with a grid of its own, SHIFT before the real one."""
    track, beats, _ = media
    grid = BeatGrid(100.0, sorted({0.0} | {round(b - SHIFT, 4) for b in beats if b - SHIFT > 0.05}), None)
    target = store_at(tmp_path, request.param)
    tokens = np.random.default_rng(0).standard_normal((96, tiny_encoders.music_dim)).astype(np.float32)
    written = import_tokens(target, [NewTrack(str(track), "", 30.0, tokens, np.arange(96) < 12,
                                              tiny_encoders.encoder_id, {"title": "Clicks"}, grid.to_dict())])
    assert written == 1
    return target, grid


def on_stored_beat(start: float, grid: BeatGrid) -> bool:
    return min(abs(start - b) for b in grid.beats) < 1e-3


def test_the_grid_comes_from_the_store_and_render_snaps_onto_it(media, store_with_grid):
    track, beats, clip = media
    target, grid = store_with_grid
    assert grid_for_track(track, target) == (grid, "index")
    requested = beats[6] + 0.02  # nearer the real beat 6, but the stored grid is what counts
    _, start = resolve_moment(clip, track=track, start=requested, snap="beat", index_path=target)
    assert start == pytest.approx(beats[6] - SHIFT, abs=1e-3)
    # Not in the store: detected from the file now, onto the real beats.
    other = str(target).replace("lib.", "other.")
    import_tokens(other, [NewTrack("/nowhere/else.wav", "", 30.0, np.zeros((96, 64), np.float32),
                                   np.arange(96) < 4, "x")])
    found, source = grid_for_track(track, other)
    assert source == "detected" and found != grid
    _, detected = resolve_moment(clip, track=track, start=requested, snap="beat", index_path=other)
    assert detected == pytest.approx(beats[6], abs=0.03)


def test_render_suggest_and_export_cli_snap_onto_the_stored_beats(capsys, media, store_with_grid, tmp_path):
    track, beats, clip = media
    target, grid = store_with_grid
    rendered = run_cli(capsys, "render", clip, "--track", track, "--start", beats[10] + 0.02, "--snap", "beat",
                       "--index", target, "-o", tmp_path / "out.mp4", "--json", "--no-server")
    assert rendered.code == 0, rendered.err
    assert json.loads(rendered.out.strip().splitlines()[-1])["start"] == pytest.approx(beats[10] - SHIFT, abs=1e-3)

    suggested = run_cli(capsys, "suggest", clip, "--index", target, "--untrained", "--json", "--device", "cpu",
                        "--no-server", "--snap", "beat")
    assert suggested.code == 0, suggested.err
    [entry] = json.loads(suggested.out.strip().splitlines()[-1])["suggestions"]
    assert entry["track"] == str(track) and on_stored_beat(entry["start"], grid), entry
    exported = run_cli(capsys, "export", clip, "--format", "otio", "-o", tmp_path / "timeline.otio", "--snap", "beat",
                       "--index", target, "--json", "--no-server")
    assert exported.code == 0, exported.err
    out = json.loads(exported.out.strip().splitlines()[-1])
    assert out["track"] == str(track) and on_stored_beat(out["start"], grid), out
