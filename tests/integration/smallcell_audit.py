"""An independent check of the audit trail of small-cell holds against the topics (test_smallcell.py).

Reads, read_committed, the guarded recipient's topic and the audit topic; opens the audit records'
sealed coordinates with the audit secret; and checks that every view the policies derive for the
recipient is, in the audit chain, either delivered at once (its decision points at a record of the
recipient's topic with step 0), or held and then, exactly once, released (the record it points at
exists, with the same step and window headers) or suppressed; that every record of the recipient's
topic has exactly one audit entry pointing at it; and that every partition's chain verifies.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from streams.assembly import audit_schema, load_policy_set
from streams.audit.chain import AuditWriter, verify_chain
from streams.audit.held import HELD_REASON
from streams.audit.keys import AuditKeys
from streams.domain.geography import DEFAULT_GEOGRAPHY
from streams.kafka.offsets import ReadRecord, beginning_offsets, read_from
from streams.policy.engine import Minimiser

from .conftest import Env


def _all(env: Env, topic: str) -> list[ReadRecord]:
    s = env.settings
    starts = beginning_offsets(s.bootstrap_servers, [topic], auth=s.kafka_auth)
    return read_from(s.bootstrap_servers, starts, auth=s.kafka_auth, idle_timeout_s=10.0)


def check_small_cell_audit(
    env: Env, keys: AuditKeys, events: Iterable[Mapping[str, Any]], recipient: str = "spf"
) -> dict[str, Any]:
    """The figures of the check (module docstring); ``problems`` must be empty; ``held_refs``: the audit
    references of the held views."""
    s = env.settings
    policy_set = load_policy_set(s)
    policy = next(p for p in policy_set.policies if p.recipient == recipient)
    topic = s.topic_prefix + policy.topic
    minimiser = Minimiser(policy_set.policies, policy_set.input_schema, env.keys, DEFAULT_GEOGRAPHY)
    views = {
        keys.event_ref(str(e["event_id"]))
        for e in events
        for v in minimiser.apply(dict(e))
        if v.agency.recipient == recipient
    }
    released_records = {(r.partition, r.offset): dict(r.headers) for r in _all(env, topic)}
    writer = AuditWriter(keys, audit_schema(), b"")
    audit = sorted(_all(env, s.audit_topic), key=lambda r: (r.partition, r.offset))
    at_once: Counter[str] = Counter()
    held: Counter[str] = Counter()
    fates: Counter[str] = Counter()
    pointed: Counter[tuple[int, int]] = Counter()
    by_step: Counter[str] = Counter()
    problems = Counter[str]()
    chains: dict[int, list[tuple[int, bytes | None]]] = {}
    for r in audit:
        chains.setdefault(r.partition, []).append((r.offset, r.value))
        assert r.value is not None
        record = writer.decode(r.value)
        ref, fate = record["audit_ref"], record["small_cell"]
        (decision,) = [d for d in record["recipients"] if d["recipient"] == recipient] or [None]
        if decision is None:
            continue
        where = None
        if decision["sealed_location"] is not None:
            text = keys.unseal(decision["sealed_location"], ref.encode() + b"|" + recipient.encode())
            t, p, o = text.rsplit(":", 2)
            where = (t, int(p), int(o))
        if fate is None and decision["delivered"]:
            at_once[ref] += 1
            step = None
        elif fate is None and decision["reason"] == HELD_REASON:
            held[ref] += 1
            if where is None or where[0] != s.hold_topic(recipient):
                problems["held_not_at_hold_record"] += 1
            continue
        elif fate is None:
            continue  # filtered out or dead-lettered: no view
        else:
            fates[ref] += 1
            if not fate["released"]:
                by_step["suppressed"] += 1
                if where is not None or fate["reason"] != "small_cell":
                    problems["suppression_malformed"] += 1
                continue
            step = fate["step"]
            by_step[f"step {step}"] += 1
        if where is None or where[0] != topic or (where[1], where[2]) not in released_records:
            problems["release_not_on_topic"] += 1
            continue
        headers = released_records[(where[1], where[2])]
        if int(headers.get("smallcell.step", b"-1")) != (step or 0):
            problems["wrong_step_header"] += 1
        if fate is not None and int(headers.get("smallcell.window", b"-1")) != fate["window"]:
            problems["wrong_window_header"] += 1
        pointed[(where[1], where[2])] += 1
    defects = 0
    for partition, values in chains.items():
        _, found = verify_chain(writer, partition, values)
        defects += sum(1 for p in found if p.kind != "start")
    decided = set(at_once) | set(held)
    problems["views_without_decision"] = len(views - decided)
    problems["decisions_without_view"] = len(decided - views)
    problems["decided_twice"] = sum(n - 1 for n in (at_once + held).values() if n > 1) + len(set(at_once) & set(held))
    problems["held_without_fate"] = len(set(held) - set(fates))
    problems["fate_without_hold"] = len(set(fates) - set(held))
    problems["fate_twice"] = sum(n - 1 for n in fates.values() if n > 1)
    problems["records_without_audit"] = len(set(released_records) - set(pointed))
    problems["records_audited_twice"] = sum(n - 1 for n in pointed.values() if n > 1)
    problems["chain_defects"] = defects
    return {
        "views": len(views),
        "delivered_at_once": len(at_once),
        "held": len(held),
        "fates": dict(sorted(by_step.items())),
        "problems": {k: v for k, v in problems.items() if v},
        "held_refs": sorted(held),
    }
