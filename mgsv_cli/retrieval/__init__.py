"""retrieval: a store's tracks ranked for a video by a model, and the moment found in them.

Between the storage (``index``) and the editor: ``derived`` computes and keeps each
checkpoint's rows of the tracks (pooled vector, X-Pool keys, score offset) in the store;
``first_stage`` keeps the candidates of ``cos(v, h0)`` (every track of a library the model
scores whole); ``keys`` scores candidates with the model, from keys held in memory or read
from the store; ``search`` joins them (:class:`~mgsv_cli.retrieval.search.Retriever`) and finds
the moments. The one search path of ``suggest``, ``mgsv serve``, ``mgsv eval`` and the benches.

May import: base modules, ``media``, ``features``, ``models`` and ``index``. Never the editor,
research or the app.
"""
