"""Which backend a URI means: the one place that decides, :func:`open_store`.

Two backends implement :class:`~mgsv_cli.index.trackstore.TrackStore`, each directly:

- an SQLite file (``sqlite_store.SqliteTrackStore``; the default, an editor's own library):
  one row per file, committed one track at a time;
- a Lance store (``lance_store.LanceTrackStore``) at a local folder or an object-store URI
  (``s3://...``), for catalogs of 10^5 to 10^7 tracks: one row per file, committed in batches.

A ``*.lance`` path, an existing folder or any ``scheme://`` URI is a Lance store, anything
else an SQLite file.
"""
from __future__ import annotations

import os

from mgsv_cli.index.trackstore import TrackStore

__all__ = ["TrackStore", "is_lance_uri", "open_store"]


def is_lance_uri(uri: str) -> bool:
    """Does ``uri`` name a Lance store? Any ``scheme://`` URI (``s3://``, ``gs://``, ``az://``,
    ``file://``), a path ending in ``.lance``, or an existing folder (an SQLite index is a file)."""
    text = str(uri)
    return "://" in text or text.rstrip("/\\").endswith(".lance") or os.path.isdir(os.path.expanduser(text))


def open_store(uri=None, *, create: bool = False, key_encoding: str | None = None,
               require_tracks: bool = False) -> TrackStore:
    """The store at ``uri``: a ``*.lance`` folder, an existing folder or any ``scheme://`` URI is a
    Lance store, anything else an SQLite file; None is the default SQLite index.

    ``create`` makes an empty store when there is none; without it a missing store is an
    ``IndexDatabaseError`` naming `mgsv index`, and with ``require_tracks`` so is an empty one.
    Object-store URIs go to Lance unchanged: credentials come from the usual environment
    variables (``AWS_*``...). ``key_encoding``: how a new Lance store keeps X-Pool keys
    (``float16``, ``int8``); an SQLite index keeps float16.
    """
    from mgsv_cli.errors import IndexDatabaseError, UsageError

    text = str(uri).strip() if uri is not None else ""
    if uri is not None and not text:
        raise UsageError("no store given: pass a path to an .sqlite index or a Lance folder/URI")
    if text and is_lance_uri(text):
        from mgsv_cli.index.lance_store import LanceTrackStore

        store: TrackStore = LanceTrackStore.open(text, create=create, key_encoding=key_encoding)
    else:
        if key_encoding not in (None, "float16"):
            raise UsageError(f"{key_encoding} keys are for Lance track stores (--store DIR.lance); "
                             "an SQLite index keeps float16 keys")
        from mgsv_cli.index.sqlite_store import SqliteTrackStore

        store = SqliteTrackStore.open(text or None, create=create)
    if require_tracks and len(store) == 0:
        name = store.uri
        store.close()
        hint = f"mgsv index MUSIC_DIR --store {name}" if is_lance_uri(name) else "mgsv index MUSIC_DIR"
        raise IndexDatabaseError(f"the music index {name} is empty: run `{hint}` first")
    return store
