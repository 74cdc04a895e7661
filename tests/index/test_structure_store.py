"""Each track's structure (bars, sections, the ending) in both track stores.

Computed once per track at index time beside the beat grid, kept through the TrackStore
interface, and added to a store written before structures on its next run without
re-embedding; the editor reads it from there (the file is decoded only for a track the store
has none for).
"""
from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from mgsv_cli.index.backend import open_store
from mgsv_cli.index.pipeline import index_folder
from mgsv_cli.index.records import FileState
from mgsv_cli.media import synth

pytest.register_assert_rewrite("_library_helpers")
from _store_helpers import STORE_KINDS, store_at, synthetic  # noqa: E402

pytest_plugins = ["_library_helpers"]

STRUCTURE = {"duration": 10.0, "end": 9.5, "tempo_bpm": 120.0, "meter": 4, "bars": [0.0, 2.0, 4.0],
             "sections": [0.0], "chroma": [[1.0] * 12] * 3, "timbre": [[0.0] * 13] * 3, "loudness": [-20.0] * 3,
             "version": 1}


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_a_store_keeps_each_tracks_structure(tmp_path, kind):
    store = open_store(store_at(tmp_path, kind), create=True)
    with store.writing():
        store.add_tracks([dataclasses.replace(synthetic(0), structure=STRUCTURE, size=100, mtime_ns=1), synthetic(1)])
        first, second = store.find("/m/0.wav").track_id, store.find("/m/1.wav").track_id
        assert store.structures_for([second, first]) == [None, STRUCTURE]
        assert store.tracks_without_structure() == [(second, "/m/1.wav")]
        store.set_structures([(second, {**STRUCTURE, "end": 8.0})])
        assert store.tracks_without_structure() == []
        assert store.structures_for([second])[0]["end"] == 8.0
        # A copy of a track's content under another name keeps its structure with its tokens.
        assert store.reuse([("/m/copy.wav", FileState(100, 2, f"{0:032x}"))]) == ["/m/copy.wav"]
        assert store.structures_for([store.find("/m/copy.wav").track_id]) == [STRUCTURE]
        # New content at a known location replaces the structure with the track's.
        store.add_tracks([synthetic(7, location="/m/0.wav")])
        assert store.structures_for([first]) == [None]
    assert store.structure_count() == 2
    store.close()


def _drop_structures(target: str, kind: str) -> None:
    """Make ``target`` a store written before structures: no such column at all."""
    if kind == "sqlite":
        conn = sqlite3.connect(target)
        conn.execute("ALTER TABLE tracks DROP COLUMN structure")
        conn.commit()
        conn.close()
    else:
        import lance

        lance.dataset(str(Path(target) / "tracks.lance")).drop_columns(["structure"])


class _Counting:
    def __init__(self, encoders):
        self._encoders, self.embedded = encoders, []

    def __getattr__(self, name):
        return getattr(self._encoders, name)

    def embed_tracks(self, paths):
        paths = list(paths)
        self.embedded += paths
        return self._encoders.embed_tracks(paths)


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_an_old_store_gains_structures_on_its_next_run_without_re_embedding(tmp_path, tiny_encoders, kind,
                                                                           monkeypatch):
    from mgsv_cli.editor import fitting

    music = tmp_path / "music"
    synth.synth_track(music / "a.wav", seconds=24.0, bpm=120.0, seed=1, ending=True)
    synth.synth_track(music / "b.wav", seconds=20.0, bpm=100.0, seed=2)
    target = store_at(tmp_path, kind)
    counting = _Counting(tiny_encoders)
    report = index_folder(music, target, encoders=counting, detect_beats=True)
    assert report.ok and report.structures_added == 2 and len(counting.embedded) == 2
    with open_store(target) as store:
        a = store.find(str((music / "a.wav").resolve()))
        stored = store.structures_for([a.track_id])[0]
        grid = store.beats_for([a.track_id])[0]
    assert stored["bars"] and stored["bars"] == [b for b in grid["downbeats"] if b < stored["end"]]
    found, source = fitting.structure_for_track(music / "a.wav", target)
    assert source == "index" and found.bars == stored["bars"]

    _drop_structures(target, kind)
    with open_store(target) as store:  # an old store reads as one without structures
        assert store.structures_for([a.track_id]) == [None] and store.structure_count() == 0
    assert fitting.structure_for_track(music / "a.wav", target)[1] == "detected"  # the fallback

    counting.embedded.clear()
    again = index_folder(music, target, encoders=counting, detect_beats=True)
    assert again.ok and again.unchanged == 2 and again.structures_added == 2
    assert counting.embedded == []  # nothing re-embedded
    with open_store(target) as store:
        assert store.structures_for([a.track_id])[0]["bars"] == stored["bars"]  # on the stored grid
        assert store.beats_for([a.track_id])[0] == grid
    third = index_folder(music, target, encoders=counting, detect_beats=True)
    assert third.structures_added == 0  # once per track

    # The editor reads it from the store: no decoding.
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a track whose structure the store keeps")

    monkeypatch.setattr(fitting, "detected_structure", no_decoding)
    assert fitting.structure_for_track(music / "a.wav", target)[1] == "index"
