"""Business validation of decoded screening events, beyond what the Avro schema enforces.

Every rejection carries a stable code and a sentence that never repeats the offending value,
so dead-letter headers and logs stay free of identifying data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from streams.domain.geography import Geography, department_of
from streams.domain.nir import nir_problem
from streams.errors import RecordRejected

MS_PER_DAY = 86_400_000
#: Earliest plausible instant for a screening timestamp (2020-01-01T00:00Z).
EARLIEST_TEST_MS = 1_577_836_800_000
#: Earliest plausible birth date, in days since 1970-01-01 (1900-01-01).
EARLIEST_BIRTH_DAY = -25_567
#: Longest string any field may hold; longer ones are rejected as oversized.
MAX_STRING = 512
_STRING_FIELDS = (
    "lab_finess",
    "nir",
    "last_name",
    "first_names",
    "phone",
    "email",
    "postcode",
    "city",
    "commune_code",
    "prescriber_rpps",
    "prescriber_last_name",
    "prescriber_first_name",
    "prescriber_phone",
    "prescriber_email",
    "prescriber_org_finess",
)


def wall_clock_ms() -> int:
    """The real clock, in epoch milliseconds (inject another one in tests)."""
    return time.time_ns() // 1_000_000


class EventValidator:
    """Checks identifiers, codes, dates and sizes of one decoded event."""

    def __init__(self, geography: Geography, clock_ms: Callable[[], int] = wall_clock_ms) -> None:
        """Validate communes against ``geography`` and future dates against ``clock_ms``."""
        self.geography = geography
        self.clock_ms = clock_ms

    def check(self, record: Mapping[str, Any]) -> None:
        """Raise :class:`RecordRejected` (stage ``validate``) for the first problem found."""
        for name in _STRING_FIELDS:
            value = record.get(name)
            if value is not None and len(value) > MAX_STRING:
                raise _reject("oversized_field", f"field {name} is longer than {MAX_STRING} characters")
        if sum(len(line) for line in record["address_lines"]) > MAX_STRING or len(record["address_lines"]) > 8:
            raise _reject("oversized_field", "address_lines exceed 8 lines or 512 characters")
        problem = nir_problem(record["nir"])
        if problem is not None:
            raise _reject("invalid_nir", problem)
        commune = record["commune_code"]
        if department_of(commune) is None:
            raise _reject("invalid_commune", "commune code is not 5 characters of an INSEE code")
        if self.geography.region_of(commune) is None:
            raise _reject("unknown_commune", "commune code's department maps to no region (not guessed)")
        if len(record["lab_finess"]) != 9:
            raise _reject("invalid_field", "lab_finess must be 9 characters")
        rpps = record.get("prescriber_rpps")
        if rpps is not None and (len(rpps) != 11 or not (rpps.isascii() and rpps.isdigit())):
            raise _reject("invalid_field", "prescriber_rpps must be 11 digits")
        self._check_dates(record)

    def _check_dates(self, record: Mapping[str, Any]) -> None:
        latest = self.clock_ms() + MS_PER_DAY
        sampled, validated, emitted = record["sampled_at"], record["validated_at"], record["emitted_at"]
        for name, value in (("sampled_at", sampled), ("validated_at", validated), ("emitted_at", emitted)):
            if not EARLIEST_TEST_MS <= value <= latest:
                raise _reject("out_of_range_date", f"{name} is before 2020 or in the future")
        if validated < sampled:
            raise _reject("out_of_range_date", "validated_at is before sampled_at")
        birth = record["birth_date"]
        if not EARLIEST_BIRTH_DAY <= birth <= sampled // MS_PER_DAY:
            raise _reject("out_of_range_date", "birth_date is before 1900 or after sampling")
        onset = record.get("symptom_onset_date")
        if onset is not None and not birth <= onset <= validated // MS_PER_DAY + 1:
            raise _reject("out_of_range_date", "symptom_onset_date is outside birth..validation")


def _reject(code: str, message: str) -> RecordRejected:
    return RecordRejected(code, message, stage="validate")
