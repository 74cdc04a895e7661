"""index: the music index an editor builds with ``mgsv index``.

``store`` is the SQLite track store (tracks, AST tokens, beat grids, failed files);
``token_cache`` keeps, per checkpoint, the network's derived track tokens so that
``suggest`` scores thousands of tracks without re-running the music enhancer.

May import: base modules, ``media``, ``features`` and ``models``. Never the editor,
research or the CLI.
"""
