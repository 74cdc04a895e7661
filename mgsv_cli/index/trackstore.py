"""The track store interface: what every backend offers (both implement it directly).

A store holds, per track: a stable integer id, the location (path or URI), the content
hash, the duration, tags, the frozen AST tokens [S, D] with their window mask [S], the
beat grid and the structure (bars, sections, the ending); per file it took, its size, mtime
and content hash (:class:`FileState`), and the files it could not take (:class:`FailedFile`).
Beside them it keeps **derived data per checkpoint** (keyed by a model fingerprint): each
track's pooled vector h0(M) [d], X-Pool keys [S_i, d] and score offset, written by
``retrieval.derived`` and read by the search. The store itself knows nothing of the networks: it keeps arrays. Writes go
through :meth:`TrackStore.writing` (the writer lock of the store, for one indexing run);
the indexing pipeline (``pipeline.py``) is written once against this interface.
"""
from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from typing import Any, Iterable, Iterator, Sequence

from mgsv_cli.index.records import DerivedRows, FailedFile, FileState, NewTrack, StoreHealth, TrackRecord


class TrackStore(ABC):
    """What the pipeline, the search, the editor and ``mgsv serve`` need of a store."""

    uri: str
    #: Tracks per :meth:`add_tracks` call the pipeline makes: what one commit should hold
    #: (SQLite: one, so Ctrl-C loses at most the track in flight; Lance: a batch, one version each).
    commit_size: int = 1
    #: Whether the store can build and search a vector index on a checkpoint's pooled vectors
    #: (``build_vector_index``, ``derived_dataset``): the IVF-PQ first stage needs one.
    supports_vector_index: bool = False

    # -- reading ---------------------------------------------------------------------------

    @property
    @abstractmethod
    def encoder_id(self) -> str | None:
        """The encoders that made every stored token (None while the store is empty)."""

    @property
    @abstractmethod
    def content_version(self) -> str:
        """Changes whenever a track is added, replaced or removed (for caches and ``mgsv serve``)."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def ids_and_durations(self) -> tuple[Any, Any]:
        """(ids int64 [N], durations float64 [N] seconds) of every track, by id: what a search over
        the whole store needs of each track, without N records."""

    @abstractmethod
    def tracks(self, ids: Sequence[int] | None = None) -> list[TrackRecord]:
        """Records of ``ids`` in the order asked (every track, by id, when None)."""

    @abstractmethod
    def find(self, location: str | os.PathLike) -> TrackRecord | None:
        """The track stored for the file at ``location`` (resolved like the pipeline resolves it), or None."""

    @abstractmethod
    def tokens_for(self, ids: Sequence[int]) -> tuple[Any, Any]:
        """AST tokens of ``ids`` in the order asked: float32 [K, S, D], mask bool [K, S]."""

    @abstractmethod
    def iter_tokens(self, batch_size: int = 256) -> Iterator[tuple[Any, Any, Any]]:
        """Every track's tokens in batches: (ids int64 [B], tokens float32 [B, S, D], mask bool [B, S])."""

    @abstractmethod
    def beats_for(self, ids: Sequence[int]) -> list[dict | None]:
        """The beat grids (``media.beats.BeatGrid.to_dict()``) of ``ids`` in the order asked; None
        for a track whose grid was not found."""

    @abstractmethod
    def beat_count(self) -> int:
        """How many tracks have a beat grid."""

    @abstractmethod
    def structures_for(self, ids: Sequence[int]) -> list[dict | None]:
        """The structures (``media.structure.TrackStructure.to_dict()``: bars, sections, the
        ending) of ``ids`` in the order asked; None for a track stored without one (a store
        from before structures, until its next index run)."""

    @abstractmethod
    def structure_count(self) -> int:
        """How many tracks have a structure."""

    @abstractmethod
    def failed_files(self) -> list[FailedFile]:
        """The files the store could not take, by path."""

    def pin(self) -> None:
        """Make every later read see the store as it is now, while an indexing run writes."""

    def health(self) -> StoreHealth:
        """Counts, and damage found by a deeper check where the backend has one."""
        return StoreHealth(len(self), self.beat_count(), len(self.failed_files()), None)

    # -- writing (one indexing run, inside :meth:`writing`) --------------------------------

    @abstractmethod
    def writing(self, lock_timeout: float = 2.0) -> contextlib.AbstractContextManager[None]:
        """The writer's hold on the store for an indexing run (a second run fails with one line)."""

    @abstractmethod
    def file_states(self) -> dict[str, FileState]:
        """What the store knows of every file it took, by location."""

    @abstractmethod
    def failed_states(self) -> dict[str, tuple[int | None, int | None]]:
        """(size, mtime_ns) of every remembered failure, by path."""

    @abstractmethod
    def set_encoders(self, encoder_id: str, *, replace: bool = False) -> None:
        """Record the encoders of the tokens about to be added; tokens of other encoders live in
        another space: refused (``IndexDatabaseError``) unless ``replace``, which drops every track."""

    @abstractmethod
    def add_tracks(self, tracks: Iterable[NewTrack]) -> int:
        """Store tracks, replacing what the store held for their files; returns how many were
        stored. Atomic per call: a killed writer leaves the store as before the call."""

    @abstractmethod
    def touch(self, items: Sequence[tuple[str, FileState]]) -> None:
        """Each file ``(location, state)`` has the content stored for it, with a new size or mtime."""

    @abstractmethod
    def reuse(self, items: Sequence[tuple[str, FileState]]) -> list[str]:
        """Give each ``(location, state)`` the stored track of identical content (a renamed or
        copied file) without embedding it; returns the locations that got one."""

    @abstractmethod
    def remove(self, locations: Sequence[str]) -> int:
        """Forget the files at ``locations`` and the tracks no other file holds; returns the
        tracks removed."""

    @abstractmethod
    def remember_failures(self, items: Sequence[tuple[str, int | None, int | None, str]]) -> None:
        """Remember each ``(path, size, mtime_ns, reason)`` as a file that could not be taken."""

    @abstractmethod
    def forget_failures(self, paths: Sequence[str]) -> None: ...

    @abstractmethod
    def tracks_without_beats(self) -> list[tuple[int, str]]:
        """(id, location) of the tracks with no beat grid yet."""

    @abstractmethod
    def set_beats(self, items: Sequence[tuple[int, dict | None]]) -> None:
        """Store each ``(track id, beat grid)``."""

    @abstractmethod
    def tracks_without_structure(self) -> list[tuple[int, str]]:
        """(id, location) of the tracks with no structure yet."""

    @abstractmethod
    def set_structures(self, items: Sequence[tuple[int, dict | None]]) -> None:
        """Store each ``(track id, structure)``."""

    def compact(self) -> int:
        """Tidy the store after a run of many commits; returns how many datasets it tidied
        (0 where nothing needs it)."""
        return 0

    # -- derived data per checkpoint -------------------------------------------------------

    @abstractmethod
    def derived_missing(self, fingerprint: str) -> list[int]:
        """Ids of tracks with no current derived rows for ``fingerprint``."""

    @abstractmethod
    def put_derived(self, fingerprint: str, rows: DerivedRows) -> None:
        """Store (replace) derived rows for ``fingerprint``; atomic per call."""

    @abstractmethod
    def pooled_matrix(self, fingerprint: str) -> tuple[Any, Any]:
        """(track_ids int64 [N], pooled float32 [N, d]) of every track with current rows, by id."""

    @abstractmethod
    def derived_for(self, fingerprint: str, ids: Sequence[int]) -> DerivedRows:
        """Pooled vectors, keys and offsets of ``ids`` (the rerank's input), in the order asked."""

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Release what the store holds open."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
