"""Output contracts: each recipient's Avro schema, derived from its policy and the input schema.

The derived schemas are checked in under ``schemas/out/`` (``policy contracts --write``); a test
fails when a checked-in file is stale. Each field records its purpose, operator and sources,
so the contract itself explains why the recipient receives it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from streams.contracts.schemas import Schema, fields_by_name
from streams.crypto.views import ENCRYPTION_ATTRIBUTE, contract_attribute, key_topic
from streams.policy.model import Policy
from streams.policy.operators import OPERATORS

OUTPUT_NAMESPACE = "fr.screening.out"


def _record_name(recipient: str) -> str:
    return "".join(part.capitalize() for part in recipient.split("_")) + "View"


def output_schema(policy: Policy, input_schema: Schema) -> Schema:
    """Derive the Avro record schema of what ``policy``'s recipient receives."""
    inputs = fields_by_name(input_schema)
    fields: list[dict[str, Any]] = []
    # Small-cell protection withholds these fields (null) in records released one ladder step up.
    withheld = set(policy.k_anonymity.withheld) if policy.k_anonymity is not None else set()
    for rule in policy.emitted:
        sources = [inputs[s] for s in rule.sources]
        avro_type = OPERATORS[rule.op].output_type(sources, rule.args)
        nullable = rule.when is not None or rule.name in withheld or any(s.nullable for s in sources)
        data_class = (
            sources[0].data_class
            if rule.op in ("keep", "encrypt")
            else ("pseudonym" if rule.op == "pseudonymise" else "derived")
        )
        field: dict[str, Any] = {
            "name": rule.name,
            "type": ["null", avro_type] if nullable else avro_type,
        }
        if nullable:
            field["default"] = None
        field.update(
            {
                "class": data_class,
                "purpose": rule.purpose,
                "operator": rule.op,
                "sources": list(rule.sources),
            }
        )
        if rule.when is not None:
            field["when"] = rule.when.describe()
        if rule.name in withheld:
            field["withheld"] = "null when small-cell protection released the record one ladder step up"
        if rule.op == "encrypt":  # bytes on the wire; what they decrypt to, and how
            plaintext_type = OPERATORS["keep"].output_type(sources, {})
            field[ENCRYPTION_ATTRIBUTE] = contract_attribute(plaintext_type, key_topic(policy.topic))
        fields.append(field)
    return {
        "type": "record",
        "name": _record_name(policy.recipient),
        "namespace": f"{OUTPUT_NAMESPACE}.{policy.recipient}",
        "doc": f"{policy.title}: what topic {policy.topic} carries. Derived from "
        f"{policy.path.name}; do not edit by hand (screening-streams policy contracts --write).",
        "fields": fields,
    }


def contract_path(directory: Path, policy: Policy) -> Path:
    """Where the derived contract of ``policy`` is checked in."""
    version = policy.topic.rsplit(".", 1)[-1]
    return directory / "out" / f"{policy.recipient}.{version}.avsc"


def render(schema: Schema) -> str:
    """The checked-in text of a derived contract (stable formatting)."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def stale_contracts(policies: tuple[Policy, ...], input_schema: Schema, directory: Path) -> list[Path]:
    """Return the contract files that are missing or differ from what the policies derive."""
    stale = []
    for policy in policies:
        path = contract_path(directory, policy)
        expected = render(output_schema(policy, input_schema))
        if not path.exists() or path.read_text(encoding="utf-8") != expected:
            stale.append(path)
    return stale


def write_contracts(policies: tuple[Policy, ...], input_schema: Schema, directory: Path) -> list[Path]:
    """(Re)write every derived contract; return the paths written."""
    written = []
    for policy in policies:
        path = contract_path(directory, policy)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(output_schema(policy, input_schema)), encoding="utf-8")
        written.append(path)
    return written
