"""serve: ``mgsv serve``, models kept warm behind a local web page and JSON API, and the
client ``mgsv suggest``/``render``/``export`` use to hand their work to a running server.

``state`` is the small state file (port, token, pid) that says a server is running;
``client`` is the standard-library HTTP client the CLI uses (it never imports torch,
FastAPI or the server); ``engine`` holds what stays loaded (the ``Suggester``, a cache
of clip features) and does the work; ``files`` decides which files may ever be served
(the index's tracks, uploads, outputs) and stores uploads; ``preview`` makes the audio
of a cut with ffmpeg; ``app`` is the FastAPI application (token, Host check, JSON
errors); ``server`` runs it on uvicorn. ``static/`` holds the page (plain HTML/CSS/JS).

An app-layer package, like the CLI; FastAPI and uvicorn only in ``app`` and ``server``.
May import: base modules, ``media``, ``features``, ``models``, ``index``, ``retrieval``,
``editor`` and ``settings``. Never research or the CLI (the CLI imports ``client``).
"""
