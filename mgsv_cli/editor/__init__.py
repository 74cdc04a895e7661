"""editor: what an editor does with a clip: suggest, render, export.

``record`` is the one typed suggestion record (``Suggestion``, ``SuggestionResult``;
to/from JSON, remembered per video, ``pick``); ``snapping`` is the one path that moves a
cut onto the beat; ``suggest`` ranks tracks and finds moments; ``render`` is the ffmpeg
mixdown (it owns the mix modes); ``export`` writes timelines through OpenTimelineIO;
``tracklist`` is the suggester's view of the library's tracks (arrays for all, records on demand).

May import: base modules, ``media``, ``features``, ``models``, ``index`` and ``retrieval``.
Never research or the app.
"""
