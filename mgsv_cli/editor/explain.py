"""Why this track, why here, in one line of text: ``mgsv suggest --explain``.

A strip along the whole track (the first 240 s the model sees), one cell per stretch of
2.5 s windows, each drawn as a block as tall as the matching attention there (the
network's relevance of that part of the track for the video), with the cut marked by
brackets. The web page draws the same data (``Suggestion.relevance``) as a picture.
"""
from __future__ import annotations

from typing import Sequence

from mgsv_cli.features.recipe import WINDOW_STEP_S

BLOCKS = " ▁▂▃▄▅▆▇█"


def relevance_strip(relevance: Sequence[float], start: float, end: float, width: int = 48) -> str:
    """``relevance`` (one value in [0, 1] per 2.5 s window) as ``width`` block cells, the cut
    ``[start, end)`` (seconds) wrapped in ``[`` ``]``. Cells take the most relevant window they cover."""
    n = len(relevance)
    if n == 0:
        return ""
    width = max(1, min(width, n))
    cells = []
    for cell in range(width):
        first, last = cell * n // width, max(cell * n // width + 1, (cell + 1) * n // width)
        level = max(min(max(relevance[first:last]), 1.0), 0.0)
        cells.append(BLOCKS[round(level * (len(BLOCKS) - 1))])
    seconds_per_cell = n * WINDOW_STEP_S / width
    first_cut = min(width - 1, int(start / seconds_per_cell))
    last_cut = min(width - 1, max(first_cut, int((end - 1e-9) / seconds_per_cell)))
    chosen = "".join(cells[first_cut:last_cut + 1])
    return "".join(cells[:first_cut]) + "[" + chosen + "]" + "".join(cells[last_cut + 1:])
