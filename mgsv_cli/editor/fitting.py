"""Fitting a track to a clip's length on its bars, with its real ending (``--fit``).

Modes (``editlist.FIT_MODES``):

- ``cut``: the model's moment cut to the clip's length, faded in and out: what mgsv always did
  (:func:`fit_suggestion` returns the suggestion untouched);
- ``ending``: the moment starts the music and the track's own ending finishes it on the
  clip's last frame. One join skips forward from a bar line of the moment (the *out* bar) to
  a bar line before the ending (the *in* bar); the track then plays to where its sound stops;
- ``loop``: as ``ending`` when the rest of the track from the moment is long enough; when it
  is not (a clip longer than the track), whole bars or sections repeat (joins that jump
  back) until it is, and the ending still finishes it.

**Phase and exact length.** Both sides of a join are bar lines, so the beat runs on across
it. The cut itself sits ``JOIN_LEAD_SECONDS`` before both bar lines, and the equal-power
crossfade (``CROSSFADE_SECONDS``) ends at the cut: the incoming downbeat's attack is heard
whole, never blended with the outgoing one. With both sides on the bar grid, the output's
length is fixed up to less than a bar by the start and the end; the remainder is taken where
it is least heard: the start moves (before its fade-in) by less than a bar, or, when the
start is pinned on a downbeat (``--snap beat``), the ending's ring-out after the last
downbeat is shortened (never below ``MIN_RING_SECONDS``, with a short fade); a pinned start
moves only when no join leaves a ring-out long enough (a note says so). Either way the spans
add up to the clip's length exactly.

**Join cost.** Bars are compared in harmony (cosine distance of bar chroma), timbre
(distance of standardised MFCCs) and loudness (dB), each in units of the track's own median
bar-to-bar change of that kind, averaged (``d``). For leaving at bar line ``i`` and resuming
at bar line ``j`` the cost is the lower of two readings, plus the difference in bar length
(tempo): *context*, how much bar ``j`` (what now follows) differs from bar ``i`` (what would
have followed) and bar ``j - 1`` from bar ``i - 1`` (what came before), averaged; and
*transition*, ``d(i - 1, j - 1)`` averaged with how much the step heard across the join,
``d(i - 1, j)``, exceeds the larger of the track's own steps into ``i`` and into ``j`` (so the
end of one section may join the start of another, as the track changes sections itself). A
join between bars that repeat (the same chord of the same section) costs about 0; one "as
rough as an ordinary bar change" about 1. Section starts on both sides earn a small
bonus (editors' tools cut at song parts), and a join is preferred near the place that keeps
the ending's whole last section. A join rougher than ``ACCEPT_PERCENTILE`` of the track's
own bar changes is not made.

**Fallback.** ``ending``/``loop`` fall back to ``cut`` with a reason (shown in the table and
the JSON) when the track has no beat grid (speech, noise, free time), no bar lines (the
meter is unclear), too few bars, a clip too short for a bar of the moment plus the ending,
(``ending``) a track shorter than the clip, or no join smooth enough.

Pure functions over a :class:`~mgsv_cli.media.structure.TrackStructure`; only
:func:`structure_for_track` and :func:`fit_entry` read a file.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass

from mgsv_cli.editor.editlist import EditList, Join, Span, check_fit
from mgsv_cli.editor.record import Suggestion, SuggestionResult
from mgsv_cli.errors import MgsvError, UsageError, first_line
from mgsv_cli.media.structure import TrackStructure

CROSSFADE_SECONDS = 0.06
JOIN_LEAD_SECONDS = 0.02
MIN_BARS = 4  # fewer bar lines: nothing to join
MIN_HEAD_BARS = 1.0  # the model's moment plays at least this long before a join
MIN_RING_SECONDS = 0.5  # what is kept of the last downbeat's ring-out when it is shortened
END_FADE_SECONDS = 0.3  # the fade over a shortened ring-out
MIN_ENDING_BARS = 4  # the preferred ending is the last section at least this long before the last downbeat
ACCEPT_PERCENTILE = 90.0
# Per bar between the in bar line and the place that keeps the ending: a longer tail takes
# the moment the video wants away, a shorter one keeps less of the ending.
LONGER_TAIL_WEIGHT = 0.25
SHORTER_TAIL_WEIGHT = 0.1
SHIFT_WEIGHT = 0.5  # per bar the start moves
PINNED_SHIFT_COST = 10.0  # moving a start pinned on a downbeat: only when nothing else works
TRIM_WEIGHT = 1.0  # per bar of the real ending's ring-out cut away
SECTION_BONUS = 0.2
TEMPO_WEIGHT = 10.0  # per unit of relative bar-length difference (1% -> 0.1)
JOIN_PENALTY = 0.3  # loop: each further join
MAX_LOOP_CANDIDATES = 48
_TOLERANCE = 1e-6

# ---------------------------------------------------------------- join costs


@dataclass(frozen=True)
class JoinCosts:
    """``cost[i, j]``: leaving at bar line ``i`` and resuming at bar line ``j`` (see the module's
    docstring); ``natural``: the same measure between each bar and the next (what the track
    does itself, ``[n - 1]``); ``limit``: the ``ACCEPT_PERCENTILE`` of ``natural``."""

    cost: object  # float64 [n, n]
    natural: object  # float64 [n - 1]
    limit: float
    section: object  # bool [n]: the bar line starts a section


def join_costs(structure: TrackStructure) -> JoinCosts:
    import numpy as np

    bars = np.asarray(structure.bars, dtype=np.float64)
    n = len(bars)
    chroma = np.asarray(structure.chroma, dtype=np.float64).reshape(n, -1)
    timbre = np.asarray(structure.timbre, dtype=np.float64).reshape(n, -1)
    loud = np.asarray(structure.loudness, dtype=np.float64).reshape(n)
    unit = chroma / np.maximum(np.linalg.norm(chroma, axis=1, keepdims=True), 1e-12)
    harmony = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    spread = timbre.std(axis=0, keepdims=True)
    z = (timbre - timbre.mean(axis=0, keepdims=True)) / np.where(spread > 1e-9, spread, 1.0)
    squared = (z ** 2).sum(axis=1)
    colour = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * z @ z.T, 0.0))
    level = np.abs(loud[:, None] - loud[None, :])
    parts = []
    for matrix, floor in ((harmony, 1e-3), (colour, 1e-2), (level, 0.1)):
        steps = np.diagonal(matrix, offset=1)
        scale = max(float(np.median(steps)) if len(steps) else 0.0, floor)
        parts.append((matrix / scale, steps / scale))
    direct = np.mean([p[0] for p in parts], axis=0)
    natural = np.mean([p[1] for p in parts], axis=0)
    # Context: what follows (i vs j) and what came before (i - 1 vs j - 1): low where the
    # music around both bar lines is alike (the same chord of the same kind of section).
    context = direct.copy()
    context[1:, 1:] = 0.5 * (direct[1:, 1:] + direct[:-1, :-1])
    # Transition: what came before is alike and the step heard across the join (bar i - 1 to
    # bar j) is no bigger than the steps the track makes itself at i and at j: low for a join
    # from the end of one section to the start of another, as the track changes sections.
    into = np.concatenate([[0.0], natural])  # the step into bar k, k >= 1
    transition = np.full_like(direct, np.inf)
    excess = np.maximum(0.0, direct[:-1, 1:] - np.maximum(into[1:, None], into[None, 1:]))
    transition[1:, 1:] = 0.5 * (direct[:-1, :-1] + excess)
    cost = np.minimum(context, transition)
    lengths = np.diff(bars)
    if len(lengths):
        before = np.concatenate([[lengths[0]], lengths])  # bar i - 1's length, for bar line i
        median = float(np.median(lengths))
        cost += TEMPO_WEIGHT * np.abs(before[:, None] - before[None, :]) / median
    limit = float(np.percentile(natural, ACCEPT_PERCENTILE)) if len(natural) else 0.0
    section_times = np.asarray(structure.sections, dtype=np.float64)
    section = np.array([bool(len(section_times)) and bool(np.min(np.abs(section_times - b)) < 1e-3) for b in bars])
    return JoinCosts(cost=cost, natural=natural, limit=limit, section=section)


# ---------------------------------------------------------------- planning


def unusable(structure: TrackStructure) -> str | None:
    """Why a track's structure cannot be joined on bars, or None."""
    if structure.tempo_bpm <= 0:
        return "no beat grid (speech, noise or free time)"
    if not structure.bars:
        return "no bar lines (the meter is unclear)"
    if len(structure.bars) < MIN_BARS:
        return f"too few bars ({len(structure.bars)}) to join"
    return None


def _cut(requested: str, start: float, clip_seconds: float, reason: str) -> EditList:
    return EditList(mode="cut", requested=requested, spans=(Span(start, start + clip_seconds),), joins=(),
                    length=clip_seconds, reason=reason)


@dataclass(frozen=True)
class _Plan:
    """A candidate edit: the joins as (out bar, in bar) pairs and how the remainder is absorbed."""

    cost: float
    start: float
    end: float
    fade_out: float
    pairs: tuple[tuple[int, int], ...]
    join_costs: tuple[float, ...]
    notes: tuple[str, ...]


def plan_edit(mode: str, structure: TrackStructure, start: float, clip_seconds: float, *, pinned: bool = False,
              join_at: float | None = None) -> EditList:
    """The edit list of ``mode`` for a clip of ``clip_seconds`` whose music starts at ``start``.

    ``pinned``: the start lies on a downbeat the editor asked for (``--snap beat``);
    ``join_at``: make the (first) join leave the moment at the bar line nearest this time
    (the page's "move the join"); a UsageError when no edit can join there.
    ``cut`` gives a one-span edit list (render treats it as today's cut).
    """
    check_fit(mode)
    if mode == "cut":
        return EditList(mode="cut", requested="cut", spans=(Span(start, start + clip_seconds),), length=clip_seconds)
    if clip_seconds <= 0:
        raise UsageError(f"clip length {clip_seconds} s: must be positive")
    reason = unusable(structure)
    if reason:
        return _cut(mode, start, clip_seconds, reason)
    import numpy as np

    bars = np.asarray(structure.bars, dtype=np.float64)
    end = float(structure.end)
    last = int(np.flatnonzero(bars < end)[-1])
    bar = float(structure.bar_seconds or 0.0)
    ring = end - bars[last]
    min_clip = MIN_HEAD_BARS * bar + min(ring, MIN_RING_SECONDS)
    if clip_seconds < min_clip:
        return _cut(mode, start, clip_seconds, f"the clip ({clip_seconds:.1f} s) is shorter than a bar and the "
                                               f"ending ({min_clip:.1f} s)")
    if mode == "ending" and end + _TOLERANCE < clip_seconds:
        return _cut(mode, start, clip_seconds, f"the track ({end:.1f} s of sound) is shorter than the clip "
                                               f"({clip_seconds:.1f} s): --fit loop fills it")
    costs = join_costs(structure)
    ctx = _Context(structure, bars, end, last, bar, costs, float(start), float(clip_seconds), pinned, join_at)
    extra = clip_seconds - (end - start)
    if mode == "loop" and extra > _TOLERANCE:
        plan, why = ctx.loop(extra)
    else:
        plan, why = ctx.ending()
    if plan is None:
        if join_at is not None:
            raise UsageError(f"no join at {join_at:.2f} s: {why}")
        return _cut(mode, start, clip_seconds, why)
    # Loop is what was made when music repeats; one skip forward (or none) is an ending.
    made = "loop" if any(j < i for i, j in plan.pairs) else "ending"
    return _edit_list(made, mode, structure, plan, clip_seconds, costs)


class _Context:
    """What every candidate of one :func:`plan_edit` call shares."""

    def __init__(self, structure, bars, end, last, bar, costs, start, length, pinned, join_at):
        self.structure, self.bars, self.end, self.last, self.bar = structure, bars, end, last, bar
        self.costs, self.start, self.length, self.pinned, self.join_at = costs, start, length, pinned, join_at
        self.min_head = MIN_HEAD_BARS * bar - _TOLERANCE
        self.preferred_in = self._preferred_ending()

    def _preferred_ending(self) -> int:
        """The bar line where the ending worth keeping starts: the last section that begins at
        least ``MIN_ENDING_BARS`` before the last downbeat, but no more than half the clip
        before the end (the moment the video wants keeps the other half)."""
        import numpy as np

        latest = self.bars[self.last] - MIN_ENDING_BARS * self.bar + 1e-3
        candidates = [s for s in self.structure.sections if s <= latest]
        target = candidates[-1] if candidates else self.bars[max(0, self.last - MIN_ENDING_BARS)]
        target = max(target, self.end - 0.5 * self.length)
        return int(np.argmin(np.abs(self.bars - target)))

    def absorb(self, total: float, first_cut: float) -> tuple[float, float, float, float, str | None] | None:
        """How the music of ``total`` s (start and end as planned) becomes exactly the clip's length.

        Returns ``(extra cost, start, end, fade_out, note)``, or None when neither moving the
        start (keeping a bar of the moment before ``first_cut``) nor shortening the ring-out works.
        """
        remainder = self.length - total  # > 0: the music is too short
        options = []
        start = self.start - remainder
        if start >= -_TOLERANCE and first_cut - start >= 0.5 * self.bar:
            cost = SHIFT_WEIGHT * abs(remainder) / self.bar + self._pinned_cost(remainder)
            note = (f"start moved {remainder:+.2f} s off the downbeat so the ending lands on the last frame"
                    if self.pinned and abs(remainder) > 1e-3 else None)
            options.append((cost, max(0.0, start), self.end, 0.0, note))
        end = self.end + remainder
        if remainder <= _TOLERANCE and end >= self.bars[self.last] + MIN_RING_SECONDS - _TOLERANCE:
            trimmed = self.end - end
            fade = min(END_FADE_SECONDS, max(0.0, end - self.bars[self.last] - 0.05)) if trimmed > 1e-3 else 0.0
            note = f"the last chord's ring-out shortened by {trimmed:.2f} s" if trimmed > 1e-3 else None
            options.append((TRIM_WEIGHT * trimmed / self.bar, self.start, end, fade, note))
        return min(options, key=lambda o: o[0]) if options else None

    def _pinned_cost(self, moved: float) -> float:
        """Moving a start pinned on a downbeat: only when nothing else works."""
        return PINNED_SHIFT_COST if self.pinned and abs(moved) > 1e-3 else 0.0

    def _bonus(self, i: int, j: int) -> float:
        return SECTION_BONUS if self.costs.section[i] and self.costs.section[j] else 0.0

    def _out_bars(self):
        """Bar lines a (first) join may leave from: a bar of the moment played, the last downbeat not passed."""
        import numpy as np

        ok = [i for i in range(1, self.last + 1) if self.bars[i] - self.start >= self.min_head]
        if self.join_at is not None:
            if not ok:
                return []
            nearest = int(np.argmin(np.abs(self.bars - self.join_at)))
            return [nearest] if nearest in ok else []
        return ok

    def ending(self) -> tuple[_Plan | None, str]:
        """One forward join (or none, when the rest of the track is about the clip's length)."""
        import numpy as np

        rest = self.end - self.start
        plans = []
        if rest <= self.length + 0.5 * self.bar and self.join_at is None:
            # The track's rest fits: start where the ending then lands on the last frame.
            start = max(0.0, self.end - self.length)
            moved = start - self.start
            note = f"start moved {moved:+.2f} s so the track's ending finishes the clip" if abs(moved) > 1e-3 else None
            cost = SHIFT_WEIGHT * abs(moved) / self.bar + self._pinned_cost(moved)
            plans.append(_Plan(cost, start, self.end, 0.0, (), (), (note,) if note else ()))
        rough = None
        for i in self._out_bars():
            head = self.bars[i] - self.start
            target = self.end - (self.length - head)  # the in bar line that would make it exact
            below = np.flatnonzero((self.bars <= target + _TOLERANCE))
            above = np.flatnonzero((self.bars > target + _TOLERANCE))
            for j in {int(below[-1]) if len(below) else -1, int(above[0]) if len(above) else -1}:
                if j <= i or j > self.last:
                    continue
                join = float(self.costs.cost[i, j])
                if join > self.costs.limit and self.join_at is None:
                    rough = join if rough is None else min(rough, join)
                    continue
                total = head + (self.end - self.bars[j])
                if abs(self.length - total) > self.bar + _TOLERANCE:
                    continue  # the in bar line is the last one, far from where the length wants it
                absorbed = self.absorb(total, self.bars[i])
                if absorbed is None:
                    continue
                extra, start, end, fade, note = absorbed
                weight = LONGER_TAIL_WEIGHT if j < self.preferred_in else SHORTER_TAIL_WEIGHT
                place = weight * abs(j - self.preferred_in)
                cost = join + extra + place - self._bonus(i, j)
                plans.append(_Plan(cost, start, end, fade, ((i, j),), (join,), (note,) if note else ()))
        if not plans:
            if rough is not None:
                return None, (f"no join as smooth as the track's own bar changes (the best is {rough:.2f}, "
                              f"the track's {ACCEPT_PERCENTILE:.0f}th percentile {self.costs.limit:.2f})")
            return None, "no bar line of the moment joins the ending at this length"
        return min(plans, key=lambda p: p.cost), ""

    def loop(self, extra: float) -> tuple[_Plan | None, str]:
        """Jumps back that add ``extra`` s (whole bars) to the music, then the ending (see :meth:`_best_jumps`)."""
        import numpy as np

        n = self.last + 1
        cost = self.costs.cost
        pairs = [(i, j) for i in range(1, n) for j in range(0, i)
                 if cost[i, j] <= self.costs.limit or self.join_at is not None]
        if not pairs:
            return None, "no join as smooth as the track's own bar changes to repeat"
        pairs.sort(key=lambda p: cost[p] - self._bonus(*p))
        pairs = pairs[:MAX_LOOP_CANDIDATES]
        first_min = int(np.searchsorted(self.bars, self.start + self.min_head - _TOLERANCE))
        if self.join_at is not None:
            firsts = self._out_bars()
            if not firsts:
                return None, "the join must leave the moment after its first bar"
            first_min = firsts[0]
        plans = []
        wanted = extra / self.bar
        for bars_added in sorted({max(1, math.floor(wanted)), max(1, math.ceil(wanted - 1e-9))}):
            jumps, join_total = _best_jumps(pairs, cost, self._bonus, first_min, bars_added,
                                            exact_first=self.join_at is not None)
            if jumps is None:
                continue
            total = (self.end - self.start) + sum(self.bars[i] - self.bars[j] for i, j in jumps)
            absorbed = self.absorb(total, self.bars[jumps[0][0]])
            if absorbed is None:
                continue
            extra_cost, start, end, fade, note = absorbed
            plans.append(_Plan(join_total + extra_cost, start, end, fade, tuple(jumps),
                               tuple(float(cost[p]) for p in jumps), (note,) if note else ()))
        if not plans:
            return None, "no repeat of whole bars at smooth joins fills the clip"
        return min(plans, key=lambda p: p.cost), ""


def _best_jumps(pairs, cost, bonus, first_min: int, bars_added: int, exact_first: bool = False):
    """The cheapest sequence of backward jumps ``(i, j)`` adding ``bars_added`` bars.

    Dynamic programming over (the first bar line a jump may leave from, the bars still to
    add): a jump leaves at ``i`` no earlier than that, lands at ``j < i``, and the music then
    plays at least a bar before the next jump. Each jump costs its join cost, less the
    section bonus, plus ``JOIN_PENALTY`` (fewer, longer repeats are better).
    Returns ``(jumps, cost)`` or ``(None, inf)``.
    """
    import sys

    @functools.lru_cache(maxsize=None)
    def best(earliest: int, remaining: int, first: bool) -> tuple[float, tuple]:
        if remaining == 0:
            return 0.0, ()
        found = (math.inf, ())
        for i, j in pairs:
            length = i - j
            if i < earliest or length > remaining or (first and exact_first and i != earliest):
                continue
            tail_cost, tail = best(j + 1, remaining - length, False)
            total = float(cost[i, j]) - bonus(i, j) + JOIN_PENALTY + tail_cost
            if total < found[0]:
                found = (total, ((i, j), *tail))
        return found

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 4 * bars_added + 100))
    try:
        total, jumps = best(first_min, bars_added, True)
    finally:
        sys.setrecursionlimit(limit)
    return (list(jumps), total) if jumps else (None, math.inf)


def _edit_list(made: str, requested: str, structure: TrackStructure, plan: _Plan, length: float,
               costs: JoinCosts) -> EditList:
    """Spans and joins of a plan: cuts ``JOIN_LEAD_SECONDS`` before each pair's bar lines."""
    bars = [float(b) for b in structure.bars]
    spans, joins = [], []
    position, at = float(plan.start), 0.0
    for (i, j), cost in zip(plan.pairs, plan.join_costs):
        out, into = bars[i] - JOIN_LEAD_SECONDS, bars[j] - JOIN_LEAD_SECONDS
        spans.append(Span(position, out))
        at += out - position
        section = costs.section  # bool [n]
        joins.append(Join(at=at, out=out, into=into, crossfade=min(CROSSFADE_SECONDS, max(0.0, into)),
                          cost=cost, section=bool(section[i] and section[j])))  # type: ignore[index]
        position = into
    spans.append(Span(position, float(plan.end)))
    # Floating-point sums: the last span ends exactly where the clip does.
    spans[-1] = Span(spans[-1].start, spans[-1].start + (length - sum(s.seconds for s in spans[:-1])))
    return EditList(mode=made, requested=requested, spans=tuple(spans), joins=tuple(joins), length=float(length),
                    fade_out=float(plan.fade_out), notes=plan.notes)


# ---------------------------------------------------------------- suggestions


def fit_suggestion(entry: Suggestion, mode: str, structure: TrackStructure | None, clip_seconds: float,
                   join_at: float | None = None) -> Suggestion:
    """``entry`` with its music fitted to ``clip_seconds`` by ``mode`` (its ``edit``, and its
    start moved where the edit starts); ``cut`` gives ``entry`` back untouched.

    ``structure`` None: the track could not be analysed (the edit falls back to ``cut``).
    A start snapped onto the beat (``entry.snapped_to``) is pinned (see the module's docstring).
    """
    check_fit(mode)
    if mode == "cut":
        return dataclasses.replace(entry, edit=None)
    if structure is None:
        edit = _cut(mode, entry.start, clip_seconds, "the track could not be analysed")
    else:
        edit = plan_edit(mode, structure, entry.start, clip_seconds, pinned=entry.snapped_to is not None,
                         join_at=join_at)
    if not edit.spliced:
        return dataclasses.replace(entry, edit=edit)
    start = edit.start
    return dataclasses.replace(entry, start=start, end=start + clip_seconds, edit=edit)


@functools.lru_cache(maxsize=64)
def _structure_cached(path: str, size: int, mtime_ns: int) -> TrackStructure:
    from mgsv_cli.media.structure import structure_of_file

    return structure_of_file(path)


def structure_for_track(track, index_path=None) -> tuple[TrackStructure, str]:
    """The track's structure and where it came from: ``"index"`` when the track store at
    ``index_path`` (either backend; None: mgsv's index) keeps one from index time, else
    ``"detected"`` now from the file (kept for this process, keyed by the file's size and
    mtime): the fallback for a track outside the store or a store from before structures,
    as ``snapping.grid_for_track`` is for beat grids."""
    path = os.path.abspath(os.fspath(track))
    stored = _stored_structure(path, index_path)
    if stored is not None:
        return stored, "index"
    return detected_structure(path), "detected"


def _stored_structure(track: str, index_path) -> TrackStructure | None:
    from mgsv_cli.editor.snapping import stored_for_track

    return structure_from_store(stored_for_track(track, index_path, lambda store, ids: store.structures_for(ids)))


def structure_from_store(found: dict | None) -> TrackStructure | None:
    """A stored structure dict as a :class:`TrackStructure` (None: none stored, or unreadable)."""
    if not found:
        return None
    try:
        return TrackStructure.from_dict(found)
    except (MgsvError, KeyError, TypeError, ValueError):
        return None


def detected_structure(track) -> TrackStructure:
    """The structure found now from the file (kept for this process by size and mtime)."""
    path = os.path.abspath(os.fspath(track))
    info = os.stat(path)
    return _structure_cached(path, info.st_size, info.st_mtime_ns)


def fit_entry(entry: Suggestion, mode: str, clip_seconds: float, *, structure: TrackStructure | None = None,
              index_path=None, join_at: float | None = None, look_in_store: bool = True) -> Suggestion:
    """:func:`fit_suggestion`, finding the track's structure when not given: the one the store
    at ``index_path`` keeps (unless ``look_in_store`` is False: the caller has looked), else
    from the file."""
    check_fit(mode)
    if mode == "cut":
        return fit_suggestion(entry, mode, None, clip_seconds)
    if structure is None:
        try:
            structure = structure_for_track(entry.track, index_path)[0] if look_in_store else \
                detected_structure(entry.track)
        except (MgsvError, OSError) as exc:  # the suggestion stands as a cut, saying why
            reason = f"the track could not be analysed: {first_line(exc)}"
            return dataclasses.replace(entry, edit=_cut(mode, entry.start, clip_seconds, reason))
    return fit_suggestion(entry, mode, structure, clip_seconds, join_at=join_at)


def refit_suggestion(result: SuggestionResult, pick: int, fit: str | None, *, index_path=None,
                     join_at: float | None = None) -> SuggestionResult:
    """``result`` with suggestion ``pick`` fitted again: by ``fit``, else by the mode its edit
    list asked for (after ``--snap beat`` moved its start, or ``join_at`` its join)."""
    entry = result.pick(pick)
    mode = fit or (entry.edit.requested if entry.edit is not None else "cut")
    return result.with_entry(fit_entry(entry, mode, result.duration, index_path=index_path, join_at=join_at))
