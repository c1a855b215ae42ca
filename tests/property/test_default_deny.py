"""Default deny, proven over randomly generated records (hypothesis).

Each example is a batch of valid events: the realistic generator seeded by hypothesis, with
hypothesis then overriding the fields that drive filters, routing and conditions. Over the
examples this checks well over 10 000 events. The central property is non-interference: a
recipient's view is a function of the fields its policy names, and of nothing else.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.assembly import PolicySet, build_pipeline
from streams.contracts.codec import ViewEncoder
from streams.contracts.registry import InMemorySchemaRegistry
from streams.contracts.schemas import fields_by_name, input_schema
from streams.domain.generate import GeneratorSettings, generate_events
from streams.domain.geography import COMMUNES, DEFAULT_GEOGRAPHY
from streams.kafka.dispatch import partition_for
from streams.kafka.publish import event_encoder
from streams.pipeline import InputRecord, OutputRecord, Pipeline
from streams.policy.engine import Minimiser
from streams.policy.pseudonyms import StaticKeyRing
from streams.settings import Settings
from tests.conftest import public_key_ring

BATCH = 25
EXAMPLES = 420  # × BATCH events = 10 500 events per property
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

V2 = fields_by_name(input_schema(2))
ENUMS = {name: info.symbols for name, info in V2.items() if info.base == "enum"}

ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -'@.éèçÉ"


@st.composite
def events(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A batch of valid v2 events with hypothesis-chosen filters, routing and conditions."""
    seed = draw(st.integers(0, 2**31))
    batch = list(generate_events(BATCH, GeneratorSettings(seed=seed, schema_version=2)))
    for event in batch:
        event["processing_mode"] = draw(st.sampled_from(["P", "P", "P", "T", "D"]))
        event["result"] = draw(st.sampled_from(ENUMS["result"]))
        event["collective_housing"] = draw(st.sampled_from(ENUMS["collective_housing"]))
        event["commune_code"] = draw(st.sampled_from(COMMUNES)).insee_code
        event["symptomatic"] = draw(st.sampled_from([True, False, None]))
    return batch


def replacement(rng: random.Random, name: str, current: Any) -> Any:
    """A different value for input field ``name`` of the same Avro type."""
    info = V2[name]
    if info.base == "enum":
        return rng.choice([s for s in info.symbols if s != current])
    if info.base == "boolean":
        return not current if current is not None else rng.random() < 0.5
    if info.base in ("int", "long"):
        return (current or 0) + rng.randint(1, 10_000)
    if info.base == "array":
        return ["".join(rng.choices(ALPHABET, k=rng.randint(1, 30))) for _ in range(rng.randint(0, 3))]
    return "".join(rng.choices(ALPHABET, k=rng.randint(0, 40))) + "\u00e9"


def _unnamed(policy_sources: frozenset[str]) -> list[str]:
    return [name for name in V2 if name not in policy_sources]


@PROPERTY
@given(batch=events(), seed=st.integers(0, 2**31))
def test_views_depend_only_on_fields_the_policy_names(
    v2_minimiser: Minimiser, batch: list[dict[str, Any]], seed: int
) -> None:
    """Changing any field a recipient's policy does not name leaves that recipient's view unchanged."""
    rng = random.Random(seed)
    for event in batch:
        for view in v2_minimiser.apply(event):
            policy = view.agency.policy
            altered = dict(event)
            for name in _unnamed(policy.named_sources()):
                altered[name] = replacement(rng, name, event[name])
            again = [v.record for v in v2_minimiser.apply(altered) if v.agency.agency == view.agency.agency]
            assert again == [view.record], f"{policy.recipient} view changed when an unnamed field changed"


@PROPERTY
@given(batch=events())
def test_no_raw_identifier_reaches_a_recipient_that_may_not_see_it(
    v2_minimiser: Minimiser, batch: list[dict[str, Any]]
) -> None:
    """NIR, names, contacts and professional identifiers appear as values only where a policy keeps or encrypts them."""
    sensitive = [
        "nir",
        "last_name",
        "first_names",
        "phone",
        "email",
        "prescriber_rpps",
        "prescriber_email",
        "prescriber_last_name",
        "lab_finess",
        "event_id",
    ]
    for event in batch:
        for view in v2_minimiser.apply(event):
            kept = {s for r in view.agency.policy.emitted if r.op in ("keep", "encrypt") for s in r.sources}
            # A patient and a prescriber may share a surname: a kept field's value is no leak.
            shared = {event[s] for s in kept if isinstance(event.get(s), str)}
            strings = {v for v in view.record.values() if isinstance(v, str)}
            strings |= {item for v in view.record.values() if isinstance(v, list) for item in v}
            for name in sensitive:
                value = event.get(name)
                if name not in kept and value not in shared and isinstance(value, str):
                    assert value not in strings, f"{name} leaked to {view.agency.agency}"


@PROPERTY
@given(batch=events())
def test_filters_modes_and_regions_hold(v2_minimiser: Minimiser, batch: list[dict[str, Any]]) -> None:
    """Only P records go anywhere; CNAM and ARS get positives only; each ARS only its region."""
    for event in batch:
        views = v2_minimiser.apply(event)
        if event["processing_mode"] != "P":
            assert views == []
            continue
        recipients = sorted(v.agency.recipient for v in views)
        if event["result"] == "POSITIVE":
            assert recipients == ["ars", "cnam", "spf"]
        else:
            assert recipients == ["spf"]
        for view in views:
            if view.agency.recipient == "ars":
                assert view.agency.region == DEFAULT_GEOGRAPHY.region_of(event["commune_code"])
                assert view.agency.topic == f"tracing.ars.{view.agency.region}.results.v1"
                if event["collective_housing"] == "NONE":
                    assert view.record["last_name"] is None and view.record["phone"] is None


@PROPERTY
@given(batch=events())
def test_pseudonyms_are_stable_per_agency_and_unlinkable_across(
    v2_minimiser: Minimiser, batch: list[dict[str, Any]]
) -> None:
    """The same person has the same pseudonym twice at one agency, and different ones at two."""
    for event in batch:
        event = {**event, "processing_mode": "P", "result": "POSITIVE"}
        first = {v.agency.recipient: v.record for v in v2_minimiser.apply(event)}
        retest = {
            **event,
            "event_id": "ffffffff-ffff-4fff-bfff-ffffffffffff",
            "sampled_at": event["sampled_at"] + 86_400_000,
            "validated_at": event["validated_at"] + 86_400_000,
        }
        second = {v.agency.recipient: v.record for v in v2_minimiser.apply(retest)}
        assert first["spf"]["pseudonym"] == second["spf"]["pseudonym"]
        assert first["ars"]["pseudonym"] == second["ars"]["pseudonym"]
        assert first["spf"]["pseudonym"] != first["ars"]["pseudonym"]
        assert first["spf"]["event_ref"] != second["spf"]["event_ref"]


def test_new_input_fields_reach_no_topic(v2_minimiser: Minimiser, policy_set: PolicySet) -> None:
    """Fields added by v2 (variant, vaccination) are named by no policy, so no view has them."""
    new_fields = set(V2) - {f["name"] for f in policy_set.input_schema["fields"]}
    assert new_fields == {"variant_screening", "vaccination_status"}
    for policy in policy_set.policies:
        assert not new_fields & policy.named_sources()
    for event in generate_events(500, GeneratorSettings(seed=11, schema_version=2, positive_share=0.5)):
        for view in v2_minimiser.apply(event):
            assert not new_fields & set(view.record)


# --- whole output records, not only views (issue 8, item 6) ---------------------------------------

WHOLE = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _whole_pipeline(keys: StaticKeyRing, policy_set: PolicySet) -> tuple[Pipeline, ViewEncoder]:
    registry = InMemorySchemaRegistry()
    pipeline = build_pipeline(
        Settings(),
        registry,
        keys,
        clock_ms=lambda: 1_601_510_400_000,
        policy_set=policy_set,
        public_keys=public_key_ring(),
    )
    return pipeline, event_encoder(registry, Settings().ingress_topic, 2)


def _records(pipeline: Pipeline, encoder: ViewEncoder, event: dict[str, Any]) -> dict[str, OutputRecord] | None:
    """The agency records of one event by agency, or None when it is dead-lettered."""
    outputs = pipeline.process(InputRecord(Settings().ingress_topic, 0, 0, b"k", encoder.encode(event)))
    if any(o.dead_letter for o in outputs):
        return None
    return {dict(o.headers)["policy.agency"].decode(): o for o in outputs}


@WHOLE
@given(batch=events(), seed=st.integers(0, 2**31))
def test_whole_records_depend_only_on_fields_the_policy_names(
    keys: StaticKeyRing, policy_set: PolicySet, batch: list[dict[str, Any]], seed: int
) -> None:
    """Key, headers, timestamp, partition key and value of each agency record ignore fields its policy does not name.

    (Values of agencies that encrypt fields differ run to run by their random nonces: their
    length is compared; the views themselves are covered above.)
    """
    pipeline, encoder = _whole_pipeline(keys, policy_set)
    rng = random.Random(seed)
    by_agency = {a.agency: a for a in pipeline.minimiser.agencies}
    compared = 0
    for event in batch:
        first = _records(pipeline, encoder, event)
        if not first:
            continue
        for agency, record in first.items():
            policy = by_agency[agency].policy
            altered = dict(event)
            for name in _unnamed(policy.named_sources()):
                if name not in VALIDATED:  # the validator reads these: an invalid event is no view
                    altered[name] = replacement(rng, name, event[name])
            again = _records(pipeline, encoder, altered)
            assert again is not None and agency in again
            other = again[agency]
            assert (other.topic, other.key, tuple(other.headers), other.timestamp_ms, other.route_key) == (
                record.topic,
                record.key,
                tuple(record.headers),
                record.timestamp_ms,
                record.route_key,
            ), f"{agency} record metadata changed when an unnamed field changed"
            assert partition_for(other, {other.topic: 3}) == partition_for(record, {record.topic: 3})
            if any(r.op == "encrypt" for r in policy.emitted):
                assert len(other.value or b"") == len(record.value or b"")
            else:
                assert other.value == record.value, f"{agency} record value changed when an unnamed field changed"
            compared += 1
    assert compared > 0


#: Input fields the validator checks (changing them may make the event invalid, hence no record).
VALIDATED = frozenset(
    {"event_id", "emitted_at", "lab_finess", "nir", "birth_date", "phone", "email", "postcode", "commune_code"}
    | {"sampled_at", "validated_at", "symptom_onset_date", "prescriber_rpps", "prescriber_email", "prescriber_phone"}
    | {"prescriber_org_finess", "sex"}
)
