"""NIR (French social-security number) rules: normalisation, key, validation.

A NIR is 15 characters: sex (1) · birth year (2) · birth month (2) · birth place (5:
a 2-char department and a 3-digit commune, a 3-digit overseas department and a 2-digit
commune, or ``99`` and a 3-digit country code) · order (3) · key (2).
The key is ``97 - (n mod 97)`` where ``n`` is the 13-character body read as a number,
after substituting ``19`` for ``2A`` and ``18`` for ``2B`` in the birth department (Corsica).

These functions sit on the per-event hot path: plain string operations, no regex. Reasons
returned by :func:`nir_problem` never contain the value itself (a NIR is a direct identifier).
"""

from __future__ import annotations

from typing import Final

from streams.errors import ScreeningStreamsError

__all__ = [
    "ASCII_PROBLEM",
    "DEPARTMENT_PROBLEM",
    "DIGITS_PROBLEM",
    "KEY_PROBLEM",
    "LENGTH_PROBLEM",
    "MONTH_PROBLEM",
    "NIR_LENGTH",
    "SEX_PROBLEM",
    "YEAR_PROBLEM",
    "InvalidNir",
    "complete_nir",
    "is_valid_nir",
    "nir_key",
    "nir_problem",
    "normalise_nir",
]

NIR_LENGTH: Final = 15
_BODY_LENGTH: Final = 13
_CORSICA: Final = {"2A": "19", "2B": "18"}

# Reasons: short, stable sentences; never the value.
LENGTH_PROBLEM: Final = "NIR must be 15 characters"
ASCII_PROBLEM: Final = "NIR must contain only ASCII letters and digits"
SEX_PROBLEM: Final = "NIR sex digit must be 1 or 2"
YEAR_PROBLEM: Final = "NIR birth year must be 2 digits"
MONTH_PROBLEM: Final = "NIR birth month out of range"
DEPARTMENT_PROBLEM: Final = "NIR birth department is malformed"
DIGITS_PROBLEM: Final = "NIR commune, order and key must be digits"
KEY_PROBLEM: Final = "NIR key does not match"


class InvalidNir(ScreeningStreamsError, ValueError):
    """A NIR body or number is malformed; the message never contains the value."""


def normalise_nir(nir: str) -> str:
    """Return ``nir`` with every whitespace character removed and letters upper-cased."""
    return "".join(nir.split()).upper()


def _numeric_body(body13: str) -> int:
    """Read a 13-character NIR body as an int, with the Corsica substitution applied."""
    if len(body13) != _BODY_LENGTH or not body13.isascii():
        raise InvalidNir("NIR body must be 13 ASCII characters")
    department = body13[5:7]
    substitute = _CORSICA.get(department)
    if substitute is not None:
        body13 = body13[:5] + substitute + body13[7:]
    if not body13.isdigit():
        raise InvalidNir("NIR body must be digits apart from a 2A/2B birth department")
    return int(body13)


def nir_key(body13: str) -> int:
    """Return the control key (1..97) of a 13-character NIR body.

    Corsican departments are substituted (``2A`` -> 19, ``2B`` -> 18) before computing.
    Raises :class:`InvalidNir` when the body is not 13 characters of digits (bar 2A/2B).
    """
    return 97 - _numeric_body(body13) % 97


def complete_nir(body13: str) -> str:
    """Return the 15-character NIR made of ``body13`` followed by its 2-digit key."""
    key = nir_key(body13)
    return f"{body13}{key:02d}"


def _month_in_range(month: str) -> bool:
    """Tell whether a 2-digit NIR month is 01-12, 20-42 or 50-99 (the last two: unknown)."""
    if not month.isdigit():
        return False
    value = int(month)
    return 1 <= value <= 12 or 20 <= value <= 42 or value >= 50


def nir_problem(nir: str) -> str | None:
    """Return None when ``nir`` is a valid NIR, else a short reason that omits the value.

    The value is checked as given: call :func:`normalise_nir` first to accept spaced or
    lower-case input. Checks, in order: length, ASCII, sex digit (1 or 2), birth year,
    birth month (01-12, or 20-42 / 50-99 when unknown), birth department (2 digits or
    2A/2B), remaining digits, and the key.
    """
    if len(nir) != NIR_LENGTH:
        return LENGTH_PROBLEM
    if not nir.isascii():
        return ASCII_PROBLEM
    if nir[0] not in ("1", "2"):
        return SEX_PROBLEM
    if not nir[1:3].isdigit():
        return YEAR_PROBLEM
    if not _month_in_range(nir[3:5]):
        return MONTH_PROBLEM
    department = nir[5:7]
    if not (department.isdigit() or department in _CORSICA):
        return DEPARTMENT_PROBLEM
    if not nir[7:].isdigit():
        return DIGITS_PROBLEM
    if int(nir[13:]) != nir_key(nir[:13]):
        return KEY_PROBLEM
    return None


def is_valid_nir(nir: str) -> bool:
    """Tell whether ``nir`` (as given, not normalised) is a valid NIR."""
    return nir_problem(nir) is None
