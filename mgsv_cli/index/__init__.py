"""index: the track stores ``mgsv index`` writes and ``suggest`` searches.

``store`` is the SQLite track store (tracks, AST tokens, beat grids, failed files), the
default for an editor's own library; ``token_cache`` keeps, per checkpoint, the
network's derived track tokens so that ``suggest`` scores thousands of tracks without
re-running the music enhancer. For catalogs of millions: ``backend`` is the
:class:`~mgsv_cli.index.backend.TrackStore` interface both backends implement
(``sqlite_store`` over the SQLite file, ``lance_store`` over a Lance dataset at a folder
or ``s3://`` URI; ``records`` holds their row types) and ``open_store`` picks one from
a URI; ``search`` is the two-stage search (pooled vectors, X-Pool rerank of the top N,
moments on the top K); ``ray_engine`` indexes a folder or object-store prefix on Ray
Data into a Lance store.

May import: base modules, ``media``, ``features`` and ``models``. Never the editor,
research or the CLI.
"""
