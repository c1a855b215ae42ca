"""An independent check of the audit trail against the topics (used by the audit and nemesis tests).

Reads, read_committed, every record of the agency result topics and of the audit topic; opens
the audit records' sealed coordinates with the audit secret; and compares: every agency record
has exactly one audit entry pointing at it, every audit entry points at a committed agency
record, every ingress record has exactly one audit record, and every partition's chain verifies.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from streams.assembly import audit_schema
from streams.audit.chain import AuditWriter, verify_chain
from streams.audit.keys import AuditKeys
from streams.kafka.offsets import beginning_offsets, read_from

from .conftest import Env, agency_result_topics


@dataclass(frozen=True)
class AuditReport:
    """What the comparison found (all defect counts must be 0)."""

    audit_records: int
    outputs: int
    outputs_without_audit: int
    audit_without_output: int
    ingress_without_audit: int
    ingress_audited_twice: int
    chain_defects: int

    def defects(self) -> int:
        """The sum of every defect count."""
        return (
            self.outputs_without_audit
            + self.audit_without_output
            + self.ingress_without_audit
            + self.ingress_audited_twice
            + self.chain_defects
        )


def _all(env: Env, topics: list[str]) -> list:  # type: ignore[type-arg]
    s = env.settings
    starts = beginning_offsets(s.bootstrap_servers, topics, auth=s.kafka_auth)
    return read_from(s.bootstrap_servers, starts, auth=s.kafka_auth, idle_timeout_s=10.0)


def check_audit(env: Env, keys: AuditKeys) -> AuditReport:
    """Compare the audit topic with the agency topics and the ingress topic of ``env``."""
    s = env.settings
    writer = AuditWriter(keys, audit_schema(), b"")
    outputs = {(r.topic, r.partition, r.offset) for r in _all(env, agency_result_topics(env))}
    ingress = {(r.topic, r.partition, r.offset) for r in _all(env, [s.ingress_topic])}
    audit = sorted(_all(env, [s.audit_topic]), key=lambda r: (r.partition, r.offset))
    pointed: Counter[tuple[str, int, int]] = Counter()
    sources: Counter[tuple[str, int, int]] = Counter()
    defects = 0
    by_partition: dict[int, list[tuple[int, bytes | None]]] = {}
    for r in audit:
        by_partition.setdefault(r.partition, []).append((r.offset, r.value))
        assert r.value is not None
        record = writer.decode(r.value)
        aad = record["audit_ref"].encode()
        topic, partition, offset = keys.unseal(record["sealed_source"], aad + b"|source").rsplit(":", 2)
        sources[(topic, int(partition), int(offset))] += 1
        for entry in record["recipients"]:
            if entry["sealed_location"] is not None:
                where = keys.unseal(entry["sealed_location"], aad + b"|" + entry["recipient"].encode())
                t, p, o = where.rsplit(":", 2)
                pointed[(t, int(p), int(o))] += 1
    for partition, values in by_partition.items():
        _, problems = verify_chain(writer, partition, values)
        defects += sum(1 for p in problems if p.kind != "start")
    return AuditReport(
        audit_records=len(audit),
        outputs=len(outputs),
        outputs_without_audit=len(outputs - set(pointed)),
        audit_without_output=len(set(pointed) - outputs) + sum(n - 1 for n in pointed.values() if n > 1),
        ingress_without_audit=len(ingress - set(sources)),
        ingress_audited_twice=sum(n - 1 for n in sources.values() if n > 1),
        chain_defects=defects,
    )
