"""The edit list: which parts of a track play under a clip, in order, and how they are joined.

A suggestion's music is one span of its track in ``cut`` mode; ``--fit ending`` / ``loop``
(``editor/fitting.py``) make it several spans played butt to butt, each join a cut point
with a short equal-power crossfade that *ends* at the cut (the incoming span's media just
before its in-point is the handle the crossfade uses), as an editor's "end at cut" audio
transition. Render, export, the server's preview and the page all read this one value.

JSON (``to_dict``; ``from_dict`` reads it back and also ``dataclasses.asdict``'s form)::

    {"mode": "ending", "requested": "ending", "reason": null, "length": 12.0, "fade_out": 0.0,
     "spans": [{"start": 31.02, "end": 39.0}, {"start": 115.0, "end": 119.02}],
     "joins": [{"at": 7.98, "out": 39.0, "into": 115.0, "crossfade": 0.06, "cost": 0.21,
                "section": false}],
     "notes": []}

``spans``: source seconds, cut points; their lengths add up to ``length`` (the clip's).
``joins[k]`` lies between span k and k+1: ``at`` in the output, ``out``/``into`` in the
track. ``mode`` is what was made (``cut`` after a fallback, whose ``reason`` says why).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mgsv_cli.errors import UsageError

FIT_MODES = ("cut", "ending", "loop")


@dataclass(frozen=True)
class Span:
    """A part of the track that plays: ``[start, end)`` in source seconds."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Join:
    """A join between two spans: the music leaves the track at ``out`` and resumes at ``into``.

    ``at``: where the cut lies in the output (seconds from the clip's start); ``crossfade``:
    the equal-power crossfade's length, ending at the cut; ``cost``: how rough the join is,
    in units of the track's own typical bar-to-bar change (0 = the same music continues);
    ``section``: both sides are section starts.
    """

    at: float
    out: float
    into: float
    crossfade: float
    cost: float
    section: bool = False


@dataclass(frozen=True)
class EditList:
    """The music of a suggestion as spans of its track and the joins between them."""

    mode: str  # what was made: "cut", "ending" or "loop"
    requested: str  # what was asked for
    spans: tuple[Span, ...]
    joins: tuple[Join, ...] = ()
    length: float = 0.0  # the clip's length; the spans add up to it
    fade_out: float = 0.0  # a fade at the very end (only when the ending's ring-out was shortened)
    reason: str | None = None  # why the requested mode fell back to "cut"
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # dataclasses.asdict (the server's exact answers) and JSON give dicts and lists.
        object.__setattr__(self, "spans", tuple(s if isinstance(s, Span) else Span(**dict(s)) for s in self.spans))
        object.__setattr__(self, "joins", tuple(j if isinstance(j, Join) else Join(**dict(j)) for j in self.joins))
        object.__setattr__(self, "notes", tuple(self.notes))

    @property
    def spliced(self) -> bool:
        """Whether the music is more than one span cut to length (render splices it)."""
        return self.mode != "cut"

    @property
    def start(self) -> float:
        return self.spans[0].start

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.spans)

    def summary(self) -> str:
        """A few words for the suggestion table: ``ending, 1 join``; ``cut (no bar lines ...)``."""
        if self.reason:
            return f"cut ({self.reason})"
        if self.mode == "cut":
            return "cut"
        n = len(self.joins)
        return f"{self.mode}, {n} join{'s' if n != 1 else ''}" if n else f"{self.mode}, no join"

    def shifted_to_length(self, seconds: float) -> "EditList":
        """The same edit lasting ``seconds``: the first span's start moves by the difference.

        Render measures the clip from its video packets, suggest from the container; the
        two differ by a frame at most, and the joins and the ending must stay where they are.
        """
        delta = float(seconds) - self.length
        if abs(delta) < 1e-9:
            return self
        first = self.spans[0]
        start = first.start - delta
        if start < 0 or start >= first.end - 1e-3:
            raise UsageError(f"the edit list lasts {self.length:.3f} s and cannot be fitted to {seconds:.3f} s: "
                             "run `mgsv suggest` again")
        joins = tuple(Join(j.at + delta, j.out, j.into, j.crossfade, j.cost, j.section) for j in self.joins)
        return EditList(self.mode, self.requested, (Span(start, first.end), *self.spans[1:]), joins,
                        float(seconds), self.fade_out, self.reason, self.notes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "requested": self.requested,
            "reason": self.reason,
            "length": round(self.length, 6),
            "fade_out": round(self.fade_out, 6),
            "spans": [{"start": round(s.start, 6), "end": round(s.end, 6)} for s in self.spans],
            "joins": [{"at": round(j.at, 6), "out": round(j.out, 6), "into": round(j.into, 6),
                       "crossfade": round(j.crossfade, 6), "cost": round(j.cost, 4), "section": j.section}
                      for j in self.joins],
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EditList":
        """The inverse of :meth:`to_dict`; a UsageError for anything else."""
        try:
            spans = tuple(Span(float(s["start"]), float(s["end"])) for s in data["spans"])
            joins = tuple(Join(float(j["at"]), float(j["out"]), float(j["into"]), float(j["crossfade"]),
                               float(j.get("cost", 0.0)), bool(j.get("section", False)))
                          for j in data.get("joins") or ())
            found = cls(mode=str(data["mode"]), requested=str(data.get("requested", data["mode"])), spans=spans,
                        joins=joins, length=float(data.get("length") or sum(s.seconds for s in spans)),
                        fade_out=float(data.get("fade_out") or 0.0), reason=data.get("reason"),
                        notes=tuple(str(n) for n in data.get("notes") or ()))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UsageError(f"not an edit list: {exc!r}") from None
        if found.mode not in FIT_MODES or found.requested not in FIT_MODES:
            raise UsageError(f"not an edit list: mode {found.mode!r}")
        if not spans or len(joins) != len(spans) - 1 or any(s.seconds <= 0 for s in spans):
            raise UsageError("not an edit list: one join between each two spans of positive length")
        return found


def check_fit(mode: str | None) -> None:
    """A UsageError for a ``--fit`` that is not one of :data:`FIT_MODES`."""
    if mode is not None and mode not in FIT_MODES:
        raise UsageError(f"--fit {mode!r}: expected one of {', '.join(FIT_MODES)}")
