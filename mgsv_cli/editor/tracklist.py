"""The suggester's view of the library's tracks: every track's id and duration as arrays, a
``TrackInfo`` on demand.

An editor's SQLite library is read whole (thousands of tracks: the list is the index's own).
A catalog store of a million tracks is not: its records as Python objects take ~6 s and ~1 GB
to build, and a query needs only two numbers per track (whether it is long enough for the
clip, and where the first stage's ids sit) plus the records of the few tracks suggested.
So :class:`TrackList` keeps ids and durations as numpy arrays for all tracks, and either
holds the ``TrackInfo`` list (``of``) or loads the records of the positions asked for
(``lazy``), keeping the last few thousand.

May import: base modules, ``index`` and ``editor.record``.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

_KEEP_LOADED = 4096  # lazy records kept between queries (a few videos' candidates)


class TrackList:
    """Tracks by position: ``ids`` int64 [N], ``durations`` float64 [N] seconds; ``tracks[p]`` a ``TrackInfo``."""

    def __init__(self, ids, durations, infos: Sequence | None = None,
                 load: Callable[[list[int]], list] | None = None):
        import numpy as np

        self.ids = np.asarray(ids, dtype=np.int64)
        self.durations = np.asarray(durations, dtype=np.float64)
        self._infos = infos
        self._load = load
        self._loaded: dict[int, Any] = {}
        self._order = np.argsort(self.ids, kind="stable")
        self._sorted_ids = self.ids[self._order]

    @classmethod
    def of(cls, infos: Sequence) -> "TrackList":
        """The list of a library read whole (``TrackInfo`` objects, in index order)."""
        return cls([t.id for t in infos], [t.duration for t in infos], infos=list(infos))

    @classmethod
    def lazy(cls, ids, durations, load: Callable[[list[int]], list]) -> "TrackList":
        """Tracks ``ids`` [N] of ``durations`` [N]; ``load(ids)`` returns their ``TrackInfo`` in that order."""
        return cls(ids, durations, load=load)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __getitem__(self, position):
        if isinstance(position, slice):
            chosen = range(len(self))[position]
            self.load(chosen)
            return [self[p] for p in chosen]
        position = int(position)
        if self._infos is not None:
            return self._infos[position]
        if position not in self._loaded:
            self.load([position])
        return self._loaded[position]

    def __iter__(self) -> Iterator:
        if self._infos is not None:
            return iter(self._infos)
        return (self[p] for p in range(len(self)))

    def load(self, positions: Sequence[int]) -> None:
        """Read the records of ``positions`` in one call (a lazy list; nothing to do otherwise)."""
        if self._infos is not None:
            return
        wanted = sorted({int(p) for p in positions} - self._loaded.keys())
        if not wanted:
            return
        if len(self._loaded) + len(wanted) > _KEEP_LOADED:
            self._loaded.clear()
        infos = self._load([int(self.ids[p]) for p in wanted])
        self._loaded.update(zip(wanted, infos))

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
