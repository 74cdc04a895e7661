"""TrackList: the suggester's arrays over every track, and records loaded only when asked."""
from __future__ import annotations

import numpy as np
import pytest

from mgsv_cli.editor.record import track_fits
from mgsv_cli.editor.tracklist import TrackList
from mgsv_cli.index.records import TrackRecord


def infos(n: int, seed: int = 0) -> list[TrackRecord]:
    rng = np.random.default_rng(seed)
    ids = rng.choice(10_000, size=n, replace=False)
    durations = np.round(rng.uniform(-1.0, 60.0, n), 2)
    durations[::7] = 0.0  # unknown lengths
    return [TrackRecord(int(i), f"/music/{i}.wav", f"hash{i}", float(d), {"title": f"T{i}"})
            for i, d in zip(ids, durations)]


def listing_of(tracks) -> TrackList:
    by_id = {t.id: t for t in tracks}
    return TrackList([t.id for t in tracks], [t.duration for t in tracks], lambda ids: [by_id[i] for i in ids])


def test_fits_and_positions_agree_with_the_per_track_rules():
    tracks = infos(200)
    listing = listing_of(tracks)
    for clip in (0.0, 5.0, 29.97, 59.0, 75.0):
        assert listing.fits(clip).tolist() == [track_fits(t.duration, clip) for t in tracks]
    position_of = {t.id: k for k, t in enumerate(tracks)}
    asked = [tracks[5].id, 10_001, tracks[0].id, tracks[199].id, -3]
    assert listing.positions_of(asked).tolist() == [position_of.get(i, -1) for i in asked]
    assert list(listing) == tracks and listing[3] is tracks[3] and listing[2:5] == tracks[2:5]
    assert listing_of([]).positions_of([1, 2]).tolist() == [-1, -1]


def test_a_lazy_list_reads_only_the_records_asked_for_in_one_call():
    tracks = infos(50, seed=1)
    by_id = {t.id: t for t in tracks}
    calls = []

    def load(ids):
        calls.append(list(ids))
        return [by_id[i] for i in ids]

    listing = TrackList([t.id for t in tracks], [t.duration for t in tracks], load)
    assert len(listing) == 50 and calls == []  # nothing read to build it
    np.testing.assert_array_equal(listing.fits(30.0), [track_fits(t.duration, 30.0) for t in tracks])
    listing.load([7, 3, 7])
    assert calls == [[tracks[3].id, tracks[7].id]]
    assert listing[7] is tracks[7] and listing[3] is tracks[3] and len(calls) == 1  # kept
    assert listing[10] is tracks[10] and calls[-1] == [tracks[10].id]
    assert listing[1:3] == tracks[1:3]
    with pytest.raises(IndexError):
        listing[50]
