"""research: reproducing the paper on MGSV-EC.

``dataset`` owns the release layout and the packed feature cache; ``synthetic`` writes a
small MGSV-EC-shaped dataset with a planted signal; ``download`` fetches the real one;
``train`` is MaDe's training loop and ``train_real`` ReAL's two-stage one, both on
``runs`` (run folders, schedule, model selection, log); ``evaluation`` is ``mgsv eval``;
``curves`` writes what both leave for a researcher to look at (TensorBoard event files, PNGs).

May import: base modules, ``features.recipe``, ``features.weights`` (the hub helpers a
download shares with the encoders'), ``models`` and ``retrieval``. Never the index, the editor
or the app.
"""
