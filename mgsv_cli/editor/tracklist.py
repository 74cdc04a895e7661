"""The suggester's view of a store's tracks: every track's id and duration as arrays, a
``TrackRecord`` on demand.

A query needs two numbers per track (whether it is long enough for the clip, and where the
retriever's ids sit) plus the records of the few tracks suggested; a catalog's records as
Python objects would take seconds and a gigabyte to build for a million tracks. So :class:`TrackList`
keeps ids and durations as numpy arrays for all tracks and loads the records of the
positions asked for, keeping the last few thousand.

May import: base modules, ``index`` and ``editor.record``.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

_KEEP_LOADED = 4096  # records kept between queries (a few videos' candidates)


class TrackList:
    """Tracks by position: ``ids`` int64 [N], ``durations`` float64 [N] seconds; ``tracks[p]`` a
    ``TrackRecord``, read with ``load(ids)`` (e.g. ``TrackStore.tracks``: records in the order asked)."""

    def __init__(self, ids, durations, load: Callable[[list[int]], list]):
        import numpy as np

        self.ids = np.asarray(ids, dtype=np.int64)
        self.durations = np.asarray(durations, dtype=np.float64)
        self._load = load
        self._loaded: dict[int, Any] = {}
        self._order = np.argsort(self.ids, kind="stable")
        self._sorted_ids = self.ids[self._order]

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __getitem__(self, position):
        if isinstance(position, slice):
            chosen = range(len(self))[position]
            self.load(chosen)
            return [self[p] for p in chosen]
        position = int(position)
        if position not in self._loaded:
            self.load([position])
        return self._loaded[position]

    def __iter__(self) -> Iterator:
        return (self[p] for p in range(len(self)))

    def load(self, positions: Sequence[int]) -> None:
        """Read the records of ``positions`` in one call (those not read already)."""
        wanted = sorted({int(p) for p in positions} - self._loaded.keys())
        if not wanted:
            return
        if len(self._loaded) + len(wanted) > _KEEP_LOADED:
            self._loaded.clear()
        records = self._load([int(self.ids[p]) for p in wanted])
        self._loaded.update(zip(wanted, records))

    def fits(self, clip_seconds: float):
        """bool [N]: which tracks are long enough for a clip of ``clip_seconds`` (``record.tracks_fit``)."""
        from mgsv_cli.editor.record import tracks_fit

        return tracks_fit(self.durations, clip_seconds)

    def positions_of(self, ids):
        """Positions int64 [K] of track ``ids`` [K]; -1 for an id not in the list."""
        import numpy as np

        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if not len(self):
            return np.full(ids.shape, -1, dtype=np.int64)
        at = np.clip(np.searchsorted(self._sorted_ids, ids), 0, len(self) - 1)
        return np.where(self._sorted_ids[at] == ids, self._order[at], -1).astype(np.int64)
