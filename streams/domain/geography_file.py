"""An optional geography override file: add departments to the routing table without a code change.

The file (``SCREENING_GEOGRAPHY_FILE``) is JSON::

    {"departments": {"975": "28"}}

Each entry maps a department code (as :func:`~streams.domain.geography.department_of` derives
it from a commune code: 2 characters, ``2A``/``2B``, or ``97x``) to one of the 18 known region
codes. Only departments that map to no region may be added; re-mapping a known department
(which would send identifying data to another agency) is refused. Anything else fails fast
with a :class:`~streams.errors.ConfigError` naming the file and the department.
"""

from __future__ import annotations

import json
from pathlib import Path

from streams.domain.geography import DEFAULT_GEOGRAPHY, Geography
from streams.errors import ConfigError

__all__ = ["is_department_code", "load_geography_file", "parse_overrides"]


def is_department_code(code: str) -> bool:
    """Whether ``code`` is a department code a commune code can yield (``75``, ``2A``, ``975``)."""
    if not code.isascii():
        return False
    if len(code) == 3:
        return code.isdigit() and code.startswith("97")
    if len(code) == 2:
        return (code.isdigit() and code != "97") or code in ("2A", "2B")
    return False


def parse_overrides(data: object, source: str, base: Geography = DEFAULT_GEOGRAPHY) -> dict[str, str]:
    """Validate the decoded JSON of an override file; return its department -> region entries."""
    if not isinstance(data, dict) or set(data) != {"departments"}:
        raise ConfigError(f"geography file {source}: expected a JSON object with exactly the key 'departments'")
    departments = data["departments"]
    if not isinstance(departments, dict):
        raise ConfigError(f"geography file {source}: 'departments' must map department codes to region codes")
    overrides: dict[str, str] = {}
    for department, region in departments.items():
        if not is_department_code(department):
            raise ConfigError(
                f"geography file {source}: department {department!r} is not a department code "
                "(2 characters, 2A/2B, or 97x)"
            )
        if not isinstance(region, str) or region not in base.region_names:
            raise ConfigError(
                f"geography file {source}: department {department} maps to {region!r}, "
                f"not one of the {len(base.region_names)} region codes ({', '.join(sorted(base.region_names))})"
            )
        known = base.region_of_department(department)
        if known is not None and known != region:
            raise ConfigError(
                f"geography file {source}: department {department} already belongs to region {known}; "
                "the file may only add departments that map to no region"
            )
        overrides[department] = region
    return overrides


def load_geography_file(path: Path, base: Geography = DEFAULT_GEOGRAPHY) -> Geography:
    """Read an override file and return ``base`` with its departments added."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"geography file {path}: cannot read it ({exc.strerror or exc})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"geography file {path}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    return base.with_departments(parse_overrides(data, str(path), base))
