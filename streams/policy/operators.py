"""Operators: small callables registered under the name a policy uses.

An operator declares which input kinds it accepts (checked when policies load), the Avro type
it produces (used to derive each recipient's output contract), and a builder that returns the
per-value function applied on the hot path. Values are wire-native: dates are int days since
1970-01-01, timestamps int epoch milliseconds (UTC), enums their symbol strings.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streams.contracts.schemas import FieldInfo
from streams.domain.geography import Geography, department_of
from streams.domain.nir import normalise_nir
from streams.policy.pseudonyms import KeyRing, make_pseudonymiser

ValueFn = Callable[..., Any]
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_MS_PER_DAY = 86_400_000


@dataclass(frozen=True)
class BuildContext:
    """What an operator may use when it is compiled for one agency."""

    agency: str
    keys: KeyRing
    geography: Geography
    sources: tuple[str, ...]
    kinds: tuple[str, ...]  # the kind of each source field (``date``, ``timestamp-millis``...)


@dataclass(frozen=True)
class Operator:
    """One registered operator (see module docstring)."""

    name: str
    doc: str
    input_kinds: tuple[frozenset[str] | None, ...]  # one entry per source; None = any kind
    output_type: Callable[[Sequence[FieldInfo], Mapping[str, Any]], Any]
    build: Callable[[BuildContext, Mapping[str, Any]], ValueFn]
    args: Mapping[str, type] = field(default_factory=dict)  # allowed argument names and types
    emits: bool = True  # False for ``drop``: documents a refusal, produces nothing
    #: Range checks of well-typed arguments: returns what is wrong, or None (run at policy load).
    check_args: Callable[[Mapping[str, Any]], str | None] = lambda args: None


OPERATORS: dict[str, Operator] = {}


def register(op: Operator) -> Operator:
    """Add ``op`` to :data:`OPERATORS` under its name (names are unique)."""
    if op.name in OPERATORS:
        raise ValueError(f"operator {op.name!r} registered twice")
    OPERATORS[op.name] = op
    return op


def _plain(avro_type: Any) -> Any:
    """Non-null branch of a field's type (nullability is the engine's business)."""
    if isinstance(avro_type, list):
        branches = [b for b in avro_type if b != "null"]
        return branches[0] if len(branches) == 1 else branches
    return avro_type


def _date_of(days: int) -> dt.date:
    return dt.date.fromordinal(_EPOCH_ORDINAL + days)


def _days_of(kind_is_timestamp: bool, value: int) -> int:
    return value // _MS_PER_DAY if kind_is_timestamp else value


STRING = frozenset({"string", "uuid"})
DATE = frozenset({"date"})
INSTANT = frozenset({"timestamp-millis", "date"})

register(
    Operator(
        name="keep",
        doc="copy the value unchanged",
        input_kinds=(None,),
        output_type=lambda fields, args: _plain(fields[0].avro_type),
        build=lambda ctx, args: lambda v: v,
    )
)

register(
    Operator(
        name="drop",
        doc="refuse the field explicitly (documents why it is not shared; outputs nothing)",
        input_kinds=(None,),
        output_type=lambda fields, args: None,
        build=lambda ctx, args: lambda v: None,
        emits=False,
    )
)

# The view keeps the value; the pipeline encrypts it for the agency just before encoding
# (streams/crypto: AES-256-GCM under a data key sealed to the agency's public key).
register(
    Operator(
        name="encrypt",
        doc="deliver the value encrypted for the recipient only (AES-256-GCM, data key sealed to its public key)",
        input_kinds=(None,),
        output_type=lambda fields, args: "bytes",
        build=lambda ctx, args: lambda v: v,
    )
)


NORMALISERS = frozenset({"nir"})


def _check_pseudonymise(args: Mapping[str, Any]) -> str | None:
    if "normalise" in args and args["normalise"] not in NORMALISERS:
        return f"argument 'normalise' must be one of {sorted(NORMALISERS)} (got {args['normalise']!r})"
    return None


def _build_pseudonymise(ctx: BuildContext, args: Mapping[str, Any]) -> ValueFn:
    # Memoise person identifiers (people are re-tested); unique ids (memoise: false) never hit.
    cache = (1 << 16) if args.get("memoise", True) else 0
    pseudo = make_pseudonymiser(ctx.keys.key_for(ctx.agency), domain=ctx.sources[0], cache_size=cache)
    if args.get("normalise") == "nir":
        return lambda v: pseudo(normalise_nir(v))
    return pseudo


register(
    Operator(
        name="pseudonymise",
        doc="keyed HMAC-SHA-256 pseudonym with the agency's own secret (base64url, 20 chars)",
        input_kinds=(STRING,),
        output_type=lambda fields, args: "string",
        build=_build_pseudonymise,
        args={"normalise": str, "memoise": bool},
        check_args=_check_pseudonymise,
    )
)

register(
    Operator(
        name="birth_year",
        doc="generalise a date to its year",
        input_kinds=(DATE,),
        output_type=lambda fields, args: "int",
        build=lambda ctx, args: lambda v: _date_of(v).year,
    )
)


AGE_BAND_WIDTH, AGE_BAND_TOP = 10, 90  # the defaults


def _check_age_band(args: Mapping[str, Any]) -> str | None:
    width, top = args.get("width", AGE_BAND_WIDTH), args.get("top", AGE_BAND_TOP)
    if width < 1:
        return f"argument 'width' must be at least 1 (got {width})"
    if top < width:
        return f"argument 'top' ({top}) must be at least 'width' ({width})"
    return None


def _build_age_band(ctx: BuildContext, args: Mapping[str, Any]) -> ValueFn:
    width = int(args.get("width", AGE_BAND_WIDTH))
    top = int(args.get("top", AGE_BAND_TOP))

    def age_band(birth_days: int, at: int) -> str:
        born = _date_of(birth_days)
        when = _date_of(at // _MS_PER_DAY)
        age = when.year - born.year - ((when.month, when.day) < (born.month, born.day))
        lower = max(age, 0) // width * width
        if lower >= top:
            return f"{top}+"
        return f"{lower}-{lower + width - 1}"

    return age_band


register(
    Operator(
        name="age_band",
        doc="age at a reference instant (second source), in bands of `width` years, top-coded at `top`+",
        input_kinds=(DATE, frozenset({"timestamp-millis"})),
        output_type=lambda fields, args: "string",
        build=_build_age_band,
        args={"width": int, "top": int},
        check_args=_check_age_band,
    )
)

register(
    Operator(
        name="department",
        doc="generalise an INSEE commune code to its department code",
        input_kinds=(STRING,),
        output_type=lambda fields, args: "string",
        build=lambda ctx, args: department_of,
    )
)

register(
    Operator(
        name="region",
        doc="generalise an INSEE commune code to its INSEE region code",
        input_kinds=(STRING,),
        output_type=lambda fields, args: "string",
        build=lambda ctx, args: ctx.geography.region_of,
    )
)


def _build_day(ctx: BuildContext, args: Mapping[str, Any]) -> ValueFn:
    return lambda v: v // _MS_PER_DAY


register(
    Operator(
        name="day",
        doc="truncate a timestamp to its UTC calendar day",
        input_kinds=(frozenset({"timestamp-millis"}),),
        output_type=lambda fields, args: {"type": "int", "logicalType": "date"},
        build=_build_day,
    )
)


def _iso_week_builder(is_timestamp: bool) -> ValueFn:
    def iso_week(v: int) -> str:
        year, week, _ = _date_of(_days_of(is_timestamp, v)).isocalendar()
        return f"{year}-W{week:02d}"

    return iso_week


register(
    Operator(
        name="iso_week",
        doc="generalise a date or timestamp to its ISO week, e.g. 2020-W27",
        input_kinds=(INSTANT,),
        output_type=lambda fields, args: "string",
        build=lambda ctx, args: _iso_week_builder(ctx.kinds[0] == "timestamp-millis"),
    )
)


def _check_mask(args: Mapping[str, Any]) -> str | None:
    keep_last = args.get("keep_last", 2)
    return f"argument 'keep_last' must be at least 0 (got {keep_last})" if keep_last < 0 else None


def _build_mask(ctx: BuildContext, args: Mapping[str, Any]) -> ValueFn:
    keep_last = int(args.get("keep_last", 2))

    def mask(v: str) -> str:
        shown = v[-keep_last:] if keep_last else ""
        return "*" * (len(v) - len(shown)) + shown

    return mask


register(
    Operator(
        name="mask",
        doc="replace all but the last `keep_last` characters with '*'",
        input_kinds=(STRING,),
        output_type=lambda fields, args: "string",
        build=_build_mask,
        args={"keep_last": int},
        check_args=_check_mask,
    )
)
