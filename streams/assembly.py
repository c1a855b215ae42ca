"""Assemble the processor from settings: policies, keys, registry, encoders, pipeline.

This is where injected parts (registry client, key ring, clock, geography) meet; tests build
a :class:`Pipeline` with in-memory doubles, the worker with the real ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from streams.audit.chain import AuditWriter
from streams.audit.decisions import Auditor
from streams.audit.keys import AuditKeys
from streams.contracts.codec import EventDecoder, ViewEncoder, register_encoder
from streams.contracts.registry import SchemaRegistryClient, SchemaResolver
from streams.contracts.schemas import Schema, canonical_json, input_schema, load_schema, schema_dir
from streams.contracts.wire import frame
from streams.crypto.envelope import FieldEncryptor
from streams.crypto.letters import OPERATORS, LetterSealer, check_operators_key
from streams.crypto.ring import KeyDirectory, PublicKeyRing
from streams.crypto.views import ViewSealer, encrypted_fields
from streams.domain.geography import DEFAULT_GEOGRAPHY, Geography
from streams.domain.validation import EventValidator, wall_clock_ms
from streams.errors import ConfigError
from streams.pipeline import Pipeline
from streams.policy.engine import Minimiser, _regions_of
from streams.policy.model import Policy, default_policy_dir, load_policies
from streams.policy.outputs import output_schema
from streams.policy.pseudonyms import KeyRing
from streams.settings import Settings

INPUT_VERSION = 1  # the reader contract the processor is built against
AUDIT_CONTRACT = "audit.v1.avsc"


@dataclass(frozen=True)
class PolicySet:
    """Validated policies with the input contract they were validated against."""

    policies: tuple[Policy, ...]
    input_schema: Schema


def load_policy_set(settings: Settings, geography: Geography = DEFAULT_GEOGRAPHY) -> PolicySet:
    """Load the input contract and every policy, failing fast on any problem."""
    schema = input_schema(INPUT_VERSION)
    directory = settings.policy_dir or default_policy_dir()
    return PolicySet(load_policies(directory, schema, frozenset(geography.region_names)), schema)


def _expand(policy_set: PolicySet, geography: Geography, render: Callable[[Policy, str | None], str]) -> list[str]:
    names: list[str] = []
    for policy in policy_set.policies:
        names += [render(policy, region) for region in _regions_of(policy, geography)]
    return names


def agency_names(policy_set: PolicySet, geography: Geography = DEFAULT_GEOGRAPHY) -> list[str]:
    """Every agency that needs a key: one per recipient, one per region for routed recipients."""
    return _expand(policy_set, geography, lambda p, r: p.recipient if r is None else f"{p.recipient}.{r}")


def output_topics(policy_set: PolicySet, geography: Geography = DEFAULT_GEOGRAPHY) -> list[str]:
    """Every agency topic (without prefix) the policies can write to."""
    return _expand(policy_set, geography, lambda p, r: p.topic.replace("{region}", r or ""))


def guarded_policies(policy_set: PolicySet) -> list[Policy]:
    """The policies under small-cell protection (a ``k_anonymity`` option)."""
    return [p for p in policy_set.policies if p.k_anonymity is not None]


def hold_topics(settings: Settings, policy_set: PolicySet) -> list[str]:
    """The small-cell hold topic (with the prefix) of every recipient under protection."""
    return [settings.hold_topic(p.recipient) for p in guarded_policies(policy_set)]


def encrypting_agencies(policy_set: PolicySet, geography: Geography = DEFAULT_GEOGRAPHY) -> list[str]:
    """Agencies whose policy encrypts fields: each needs a public key in force."""
    encrypting = PolicySet(
        tuple(p for p in policy_set.policies if any(r.op == "encrypt" for r in p.emitted)), policy_set.input_schema
    )
    return agency_names(encrypting, geography)


def key_holders(policy_set: PolicySet, geography: Geography = DEFAULT_GEOGRAPHY) -> list[str]:
    """Everyone the processor seals to: the encrypting agencies, and the operators (dead letters)."""
    return [*encrypting_agencies(policy_set, geography), OPERATORS]


def load_public_keys(settings: Settings) -> KeyDirectory | None:
    """The agencies' public keys from ``SCREENING_PUBLIC_KEYS_DIR`` (None when unset), re-read when it changes."""
    if settings.public_keys_dir is None:
        return None
    return KeyDirectory(settings.public_keys_dir, settings.public_keys_reload_s)


def build_sealers(
    settings: Settings,
    minimiser: Minimiser,
    schemas: dict[str, Schema],
    public_keys: PublicKeyRing | KeyDirectory,
    now_ms: int,
    encryptor: FieldEncryptor | None = None,
) -> dict[str, ViewSealer]:
    """One :class:`ViewSealer` per agency whose contract (``schemas`` by recipient) encrypts fields.

    Fails when such a policy has no ``event_ref`` field, or an agency has no key in force at ``now_ms``.
    ``encryptor`` (one per key directory: it follows the directory's reloads) is made when not given.
    """
    encryptor = encryptor or FieldEncryptor(public_keys, settings.key_epoch_s * 1000)
    sealers = {}
    for agency in minimiser.agencies:
        fields = encrypted_fields(schemas[agency.recipient])
        if not fields:
            continue
        if "event_ref" not in {r.name for r in agency.policy.emitted}:
            raise ConfigError(
                f"{agency.policy.path}: recipient {agency.recipient!r} encrypts fields but has no event_ref "
                "output field, which binds each encrypted value to its record"
            )
        sealers[agency.agency] = ViewSealer(agency.agency, settings.topic_prefix + agency.topic, fields, encryptor)
    (public_keys.ring if isinstance(public_keys, KeyDirectory) else public_keys).check_in_force(sealers, now_ms)
    return sealers


def build_letter_sealer(
    settings: Settings, public_keys: PublicKeyRing | KeyDirectory, now_ms: int, encryptor: FieldEncryptor | None = None
) -> LetterSealer:
    """The sealer of dead letters; fails (:class:`~streams.crypto.errors.KeyUnavailable`) unless the
    operators have a public key in force at ``now_ms`` (a dead letter is never written in clear)."""
    check_operators_key(public_keys, now_ms)
    return LetterSealer(encryptor or FieldEncryptor(public_keys, settings.key_epoch_s * 1000), settings.dlq_topic)


def subject_for(topic: str) -> str:
    """Confluent TopicNameStrategy subject of a topic's values."""
    return f"{topic}-value"


def build_pipeline(
    settings: Settings,
    registry: SchemaRegistryClient,
    keys: KeyRing,
    *,
    geography: Geography = DEFAULT_GEOGRAPHY,
    clock_ms: Callable[[], int] = wall_clock_ms,
    policy_set: PolicySet | None = None,
    audit_keys: AuditKeys | None = None,
    public_keys: PublicKeyRing | KeyDirectory | None = None,
) -> Pipeline:
    """Build the full pipeline; registers every output contract with the registry.

    With ``audit_keys``, the pipeline drafts one audit decision record per input (see
    :func:`build_audit_writer` for the writer that completes and chains them). Fields the
    policies encrypt are sealed to the agencies' ``public_keys``: without a ring, or without a
    key in force now for every encrypting agency, building fails (nothing is sent in clear); so
    does it without an operators' key in force (dead letters are sealed to it).
    """
    policy_set = policy_set or load_policy_set(settings, geography)
    # The decoder's registry front: negative cache, single flight, lookups ahead of the pass.
    resolver = registry if isinstance(registry, SchemaResolver) else SchemaResolver(registry)
    # The reader joins the ingress subject's versions, so FORWARD_TRANSITIVE checks every new
    # writer schema against it (see contracts.registry.COMPATIBILITY).
    resolver.register(subject_for(settings.ingress_topic), canonical_json(policy_set.input_schema))
    minimiser = Minimiser(policy_set.policies, policy_set.input_schema, keys, geography)
    schemas = {p.recipient: output_schema(p, policy_set.input_schema) for p in policy_set.policies}
    encoders: dict[str, ViewEncoder] = {}
    for agency in minimiser.agencies:
        topic = settings.topic_prefix + agency.topic
        encoders[agency.agency] = register_encoder(registry, subject_for(topic), schemas[agency.recipient])
    sealers, letters = None, None
    if public_keys is not None:
        now = clock_ms()
        encryptor = FieldEncryptor(public_keys, settings.key_epoch_s * 1000)
        letters = build_letter_sealer(settings, public_keys, now, encryptor)
        sealers = build_sealers(settings, minimiser, schemas, public_keys, now, encryptor)
    return Pipeline(
        EventDecoder(resolver, policy_set.input_schema),
        EventValidator(geography, clock_ms),
        minimiser,
        encoders,
        settings.dlq_topic,
        clock_ms,
        settings.topic_prefix,
        Auditor(audit_keys, minimiser) if audit_keys is not None else None,
        sealers,
        schemas=resolver,
        letters=letters,
    )


def audit_schema() -> Schema:
    """The checked-in audit contract (``schemas/audit.v1.avsc``)."""
    return load_schema(schema_dir() / AUDIT_CONTRACT)


def build_audit_writer(settings: Settings, registry: SchemaRegistryClient, audit_keys: AuditKeys) -> AuditWriter:
    """Register the audit contract under the audit topic's subject and return the chained writer."""
    schema = audit_schema()
    schema_id = registry.register(subject_for(settings.audit_topic), canonical_json(schema))
    return AuditWriter(audit_keys, schema, frame(schema_id, b""), registry.get_schema)
