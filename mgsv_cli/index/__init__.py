"""index: the track stores ``mgsv index`` writes and the search reads: pure storage.

``backend`` is the :class:`~mgsv_cli.index.backend.TrackStore` interface and ``open_store``,
the one place a URI becomes a backend; ``sqlite_store`` (with ``sqlite_db``, its SQLite
plumbing) keeps an editor's library in one file, ``lance_store`` a catalog of millions in a
Lance dataset at a folder or an ``s3://`` URI; ``records`` holds the records they exchange;
``locking`` the writer lock. ``pipeline`` is the one indexing pipeline (scan, plan, embed,
write) for both backends, and ``ray_engine`` runs the same plan and per-file work on Ray
Data. The store keeps arrays; it knows nothing of the networks (``retrieval`` does).

May import: base modules, ``media`` and ``features``. Never ``models``, ``retrieval``, the
editor, research or the app.
"""
