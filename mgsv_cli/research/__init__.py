"""research: reproducing the paper on MGSV-EC, and training on your own media.

``dataset`` owns the release layout, the packed feature cache and the record of which
encoders made a dataset; ``build`` makes that layout from (video, music, moment) files
(``mgsv data build``); ``synthetic`` writes a small MGSV-EC-shaped dataset with a planted
signal, or planted media files built into one (``--media``); ``download`` fetches the real
one; ``train`` is MaDe's training loop and ``train_real`` ReAL's two-stage one, both on
``runs`` (run folders, schedule, model selection, log, the dataset's encoders);
``evaluation`` is ``mgsv eval``; ``curves`` writes what both leave for a researcher to look at
(TensorBoard event files, PNGs).

May import: base modules, ``media``, ``features``, ``models``, ``retrieval``, and the index's
Ray path ``index.ray_engine`` (``build`` embeds music with the code ``mgsv index`` runs, on
either engine, and videos with the code ``mgsv suggest`` runs). Never the track stores, the
editor or the app.
"""
