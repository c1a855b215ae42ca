"""Granularity: the partial order "reveals at least as much as" over operator applications.

A :class:`Grain` is an operator with its arguments in canonical form (defaults filled in,
arguments that change no output value removed, equivalent arguments merged), applied to a
given tuple of source fields. ``a`` is *at least as fine as* ``b`` (:func:`at_least_as_fine`)
when ``b``'s output is a function of ``a``'s output on the same sources: whoever receives ``a``
can compute ``b``, so replacing ``b`` by ``a`` never loses access and replacing ``a`` by ``b``
never gains any. The order is sound, not complete: pairs it cannot prove are *incomparable*,
which the lock and the diff treat as a gain.

The order, per kind of source:

* any source: ``keep`` is the top; :data:`ABSENT` (``drop``, or not received) the bottom;
  an operator this module does not know is comparable only with itself, ``keep`` and ``absent``.
* commune code: ``keep`` ⪰ ``department`` ⪰ ``region`` (a region is a function of a department).
* timestamp: ``keep`` ⪰ ``day`` (UTC) ⪰ ``iso_week``; date: ``keep`` ⪰ ``birth_year`` and
  ``keep`` ⪰ ``iso_week``, while ``birth_year`` and ``iso_week`` are incomparable (ISO weeks
  straddle calendar years).
* ``age_band(width=w, top=t)`` on (birth date, reference instant) is a partition of ages into
  ``[0, w), [w, 2w), ...`` with everything from ``T = ceil(t / w) * w`` up in one top class
  (``lower >= top`` is top-coded, so a top that is not a multiple of the width moves the cut up
  to the next multiple). Its cut points are ``{w, 2w, ..., T}``; one band is at least as fine as
  another when its cut points include the other's: ``age_band(5, 90)`` ⪰ ``age_band(10, 90)``
  ⪰ ``age_band(10, 80)``, while ``age_band(5, 90)`` and ``age_band(10, 95)`` (cut at 100) are
  incomparable. ``birth_year`` and ``age_band`` read different sources and are incomparable:
  a year of birth does not say on which side of a band boundary a birthday falls.
* ``mask(keep_last=n)``: finer as ``n`` grows (``n >= 0``).
* ``pseudonymise``: below ``keep``; ``normalise: nir`` links spellings that the raw pseudonym
  keeps apart and vice versa, so the two are incomparable; ``memoise`` is a cache, not access.
* ``encrypt``: the recipient decrypts the exact value, the broker and the processor's operators
  see ciphertext. Ordered on both readers at once, it sits below ``keep`` (which also shows the
  value to the platform) and above ``absent``, and is incomparable with every generalisation
  in clear: ``birth_year`` → ``encrypt`` gives the recipient the full date, ``encrypt`` →
  ``birth_year`` gives the platform the year; both are gains.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard

Relation = Literal["same", "finer", "coarser", "incomparable"]

#: Argument defaults of the operators (as their builders in ``operators.py`` apply them).
DEFAULTS: Mapping[str, Mapping[str, Any]] = {"age_band": {"width": 10, "top": 90}, "mask": {"keep_last": 2}}
#: Arguments that change no output value.
IRRELEVANT: Mapping[str, frozenset[str]] = {"pseudonymise": frozenset({"memoise"})}
#: ``(finer, coarser)`` operator pairs proved by the definitions of the operators.
_CHAINS = frozenset({("department", "region"), ("day", "iso_week")})


@dataclass(frozen=True, order=True)
class Grain:
    """An operator with canonical arguments (build with :meth:`of`); ``absent`` is the bottom."""

    op: str
    args: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, op: str, args: Mapping[str, Any] | None = None) -> Grain:
        """The canonical grain of ``op`` applied with ``args`` (``drop`` is :data:`ABSENT`)."""
        if op == "drop":
            return ABSENT
        given = dict(args or {})
        merged = {**DEFAULTS.get(op, {}), **given}
        for name in IRRELEVANT.get(op, ()):
            merged.pop(name, None)
        if op == "pseudonymise":
            merged = {"normalise": "nir"} if merged.get("normalise") == "nir" else {}
        elif op == "age_band":
            merged = _canonical_band(merged)
        return cls(op, tuple(sorted(merged.items())))

    @property
    def arguments(self) -> dict[str, Any]:
        """The canonical arguments as a mapping."""
        return dict(self.args)

    def describe(self) -> str:
        """Readable form, e.g. ``age_band(top=90, width=10)`` or ``keep``."""
        if not self.args:
            return self.op
        return f"{self.op}({', '.join(f'{k}={v}' for k, v in self.args)})"


ABSENT = Grain("absent")
KEEP = Grain("keep")
DAY = Grain("day")


def _canonical_band(args: Mapping[str, Any]) -> dict[str, Any]:
    width, top = args.get("width"), args.get("top")
    if set(args) != {"width", "top"} or not _is_int(width) or not _is_int(top) or width < 1:
        return dict(args)  # outside the defined order: comparable with itself only
    if top <= 0:
        return {"width": 1, "top": 0}  # every age top-coded: one class
    return {"width": width, "top": -(-top // width) * width}


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def band_cuts(grain: Grain) -> frozenset[int] | None:
    """Cut points (ages where a new class starts) of a canonical ``age_band``, None if undefined."""
    args = grain.arguments
    if grain.op != "age_band" or set(args) != {"width", "top"}:
        return None
    width, top = args["width"], args["top"]
    if not _is_int(width) or not _is_int(top) or width < 1 or top < 0 or top % width:
        return None
    return frozenset(range(width, top + 1, width))


def at_least_as_fine(a: Grain, b: Grain) -> bool:
    """True when ``b``'s output is a function of ``a``'s on the same sources (``a`` ⪰ ``b``)."""
    if a == b or b == ABSENT:
        return True
    if a == ABSENT:
        return False
    if a == KEEP:
        return True
    if b == KEEP:
        return False
    if (a.op, b.op) in _CHAINS:
        return not a.args and not b.args
    if a.op == b.op == "age_band":
        cuts_a, cuts_b = band_cuts(a), band_cuts(b)
        return cuts_a is not None and cuts_b is not None and cuts_b <= cuts_a
    if a.op == b.op == "mask":
        shown_a, shown_b = a.arguments.get("keep_last"), b.arguments.get("keep_last")
        if set(a.arguments) == set(b.arguments) == {"keep_last"} and _is_int(shown_a) and _is_int(shown_b):
            return bool(shown_a >= shown_b >= 0)
    return False


def relation(old: Grain, new: Grain) -> Relation:
    """How ``new`` compares with ``old``: the same, finer (a gain), coarser, or incomparable."""
    if old == new:
        return "same"
    if at_least_as_fine(old, new):
        return "coarser"
    if at_least_as_fine(new, old):
        return "finer"
    return "incomparable"


def needs(grain: Grain, sources: int) -> tuple[Grain, ...]:
    """Per source, a grain from which ``grain`` can be computed (``age_band``: the date, the day)."""
    if grain.op == "age_band" and sources == 2:
        return (KEEP, DAY)  # the band is computed from the birth date and the UTC day of the instant
    if sources == 1:
        return (grain,)
    return (KEEP,) * sources
