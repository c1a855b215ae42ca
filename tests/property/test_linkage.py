"""The linkage attacker: can SPF's and CNAM's records of one event be joined by metadata alone?

10 000 events go through the real pipeline (``process_each``, as the runner calls it) and the
dispatch path (``partition_for``), one transaction per batch of 250; offsets are given as the
broker gives them (consecutive per partition, one commit marker per touched partition per
transaction). For every record the attacker sees what Kafka exposes besides the value: key,
headers, timestamp, partition, offset, and which transaction it belongs to (commit markers
show the boundaries, and transactions line up across topics in time). He also uses the one
shared field that narrows the candidates most cheaply: CNAM only receives positives, and
SPF's records say their result. Chance is a uniform pick among the SPF positives of the same
transaction; each attacker must stay within a few standard deviations of it. Two controls
show the attackers are not blind: on a leaky variant (an ingress-time header; outputs produced
in input order) the same attackers link far better than chance.
"""

from __future__ import annotations

import math
import random
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import pytest

from streams.assembly import PolicySet, build_pipeline
from streams.contracts.registry import InMemorySchemaRegistry
from streams.domain.generate import GeneratorSettings, generate_events
from streams.kafka.dispatch import partition_for
from streams.kafka.publish import event_encoder
from streams.pipeline import InputRecord, OutputRecord, Pipeline
from streams.policy.pseudonyms import StaticKeyRing
from streams.settings import Settings
from tests.conftest import public_key_ring

EVENTS = 10_000
BATCH = 250
START_MS = 1_601_510_400_000  # 2020-10-01T00:00Z; the clock moves 25 s per event: ~3 days in all
SPF, CNAM = "surveillance.spf.results.v1", "tracing.cnam.results.v1"
PARTITIONS = {SPF: 3, CNAM: 3}


@dataclass(frozen=True)
class Seen:
    """One agency record as a reader of its topic sees it, plus the ground truth (never used to attack)."""

    txn: int
    partition: int
    offset: int
    rank: float  # position within its partition's share of the transaction, in [0, 1)
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp: int
    positive: bool  # SPF: the record's result field; CNAM: always (its filter)
    event: int  # ground truth: index of the source event


def _pipeline(keys: StaticKeyRing, policy_set: PolicySet, clock: list[int]) -> tuple[Pipeline, Callable[..., bytes]]:
    registry = InMemorySchemaRegistry()
    pipeline = build_pipeline(
        Settings(),
        registry,
        keys,
        clock_ms=lambda: clock[0],
        policy_set=policy_set,
        public_keys=public_key_ring(),
    )
    encoder = event_encoder(registry, Settings().ingress_topic)
    return pipeline, lambda event: encoder.encode(dict(event))


def _broker(
    batches: Sequence[list[tuple[InputRecord, OutputRecord]]],
    results: dict[int, bool],
) -> dict[str, list[Seen]]:
    """Assign partitions and offsets as the broker does; return what each topic's reader sees."""
    next_offset: dict[tuple[str, int], int] = defaultdict(int)
    seen: dict[str, list[Seen]] = {SPF: [], CNAM: []}
    for txn, pairs in enumerate(batches):
        placed: dict[tuple[str, int], list[tuple[int, InputRecord, OutputRecord]]] = defaultdict(list)
        for source, out in pairs:
            if out.topic not in seen:
                continue
            tp = (out.topic, partition_for(out, PARTITIONS))
            placed[tp].append((next_offset[tp], source, out))
            next_offset[tp] += 1
        for (topic, partition), records in placed.items():
            next_offset[(topic, partition)] += 1  # the transaction's commit marker
            for rank, (offset, source, out) in enumerate(records):
                seen[topic].append(
                    Seen(
                        txn,
                        partition,
                        offset,
                        rank / len(records),
                        out.key,
                        tuple(out.headers),
                        out.timestamp_ms or 0,
                        topic == CNAM or results[source.offset],
                        source.offset,
                    )
                )
    return seen


def _run(
    keys: StaticKeyRing,
    policy_set: PolicySet,
    produce: Callable[[Pipeline, list[InputRecord]], list[tuple[InputRecord, OutputRecord]]],
) -> dict[str, list[Seen]]:
    clock = [START_MS]
    pipeline, encode = _pipeline(keys, policy_set, clock)
    events = list(generate_events(EVENTS, GeneratorSettings(seed=808, positive_share=0.3)))
    results = {i: e["result"] == "POSITIVE" for i, e in enumerate(events)}
    batches = []
    for first in range(0, EVENTS, BATCH):
        records = []
        for i in range(first, min(first + BATCH, EVENTS)):
            # ingress partition by key, as publish does; offsets here index the events (ground truth only)
            partition = zlib.crc32(str(events[i]["event_id"]).encode()) % 6
            records.append(InputRecord(Settings().ingress_topic, partition, i, None, encode(events[i])))
        clock[0] = START_MS + first * 25_000
        batches.append(produce(pipeline, records))
    return _broker(batches, results)


def _as_runner(pipeline: Pipeline, records: list[InputRecord]) -> list[tuple[InputRecord, OutputRecord]]:
    """What the runner produces, in its order: ``process_each``."""
    return [(source, out) for source, outs in pipeline.process_each(records) for out in outs]


def _input_order(pipeline: Pipeline, records: list[InputRecord]) -> list[tuple[InputRecord, OutputRecord]]:
    """The leaky control: each record's outputs in input order (what the runner did before)."""
    return [(r, out) for r in records for out in pipeline.process(r)]


@pytest.fixture(scope="module")
def observed(keys: StaticKeyRing, policy_set: PolicySet) -> dict[str, list[Seen]]:
    """SPF and CNAM as their readers see them after 10 000 events through the runner's path."""
    return _run(keys, policy_set, _as_runner)


@pytest.fixture(scope="module")
def leaky(keys: StaticKeyRing, policy_set: PolicySet) -> dict[str, list[Seen]]:
    """The same events, outputs produced in input order (control)."""
    return _run(keys, policy_set, _input_order)


Attacker = Callable[[Seen, list[Seen], random.Random], Seen]


def _nearest(score: Callable[[Seen], float]) -> Callable[[list[Seen], random.Random], Seen]:
    def pick(candidates: list[Seen], rng: random.Random) -> Seen:
        best = min(score(c) for c in candidates)
        return rng.choice([c for c in candidates if score(c) == best])

    return pick


def header_equality(target: Seen, candidates: list[Seen], rng: random.Random) -> Seen:
    """The candidate sharing the most exact (name, value) header pairs with the target."""
    mine = set(target.headers)
    return _nearest(lambda c: -len(mine & set(c.headers)))(candidates, rng)


def timestamp_equality(target: Seen, candidates: list[Seen], rng: random.Random) -> Seen:
    """The candidate whose record time is nearest the target's."""
    return _nearest(lambda c: abs(c.timestamp - target.timestamp))(candidates, rng)


def rank_alignment(target: Seen, candidates: list[Seen], rng: random.Random) -> Seen:
    """The candidate at the nearest relative position within its partition's share of the transaction."""
    return _nearest(lambda c: abs(c.rank - target.rank))(candidates, rng)


def partition_and_rank(target: Seen, candidates: list[Seen], rng: random.Random) -> Seen:
    """Same partition number if any, then nearest relative position."""
    return _nearest(lambda c: (c.partition != target.partition) * 10 + abs(c.rank - target.rank))(candidates, rng)


def key_equality(target: Seen, candidates: list[Seen], rng: random.Random) -> Seen:
    """The candidate with the same record key (or the longest common key prefix)."""
    key = target.key or b""
    return _nearest(lambda c: -len(_common_prefix(key, c.key or b"")))(candidates, rng)


def _common_prefix(a: bytes, b: bytes) -> bytes:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


ATTACKERS: dict[str, Attacker] = {
    "header equality": header_equality,
    "timestamp equality": timestamp_equality,
    "rank alignment in the transaction": rank_alignment,
    "partition and rank alignment": partition_and_rank,
    "key equality": key_equality,
}


def _attack(seen: dict[str, list[Seen]], attacker: Attacker, seed: int = 1) -> tuple[float, float, float, int]:
    """(accuracy, chance, standard deviation of chance's accuracy, number of CNAM records attacked)."""
    rng = random.Random(seed)
    spf_by_txn: dict[int, list[Seen]] = defaultdict(list)
    for record in seen[SPF]:
        if record.positive:
            spf_by_txn[record.txn].append(record)
    hits, chance, variance = 0, 0.0, 0.0
    targets = seen[CNAM]
    for target in targets:
        candidates = spf_by_txn[target.txn]
        assert any(c.event == target.event for c in candidates), "the true match must be a candidate"
        p = 1 / len(candidates)
        chance += p
        variance += p * (1 - p)
        hits += attacker(target, candidates, rng).event == target.event
    n = len(targets)
    return hits / n, chance / n, math.sqrt(variance) / n, n


def test_the_run_is_what_the_attack_assumes(observed: dict[str, list[Seen]]) -> None:
    """Thousands of CNAM records, each with its SPF twin; several days of processing; 3 partitions each."""
    assert len(observed[CNAM]) > 2000
    assert len(observed[SPF]) > len(observed[CNAM])
    assert {r.partition for r in observed[CNAM]} == {0, 1, 2}
    assert len({r.timestamp for r in observed[SPF]}) >= 3  # days, not milliseconds
    assert all(r.timestamp % 86_400_000 == 0 for topic in observed.values() for r in topic)


@pytest.mark.parametrize("name", list(ATTACKERS))
def test_metadata_links_spf_and_cnam_records_no_better_than_chance(observed: dict[str, list[Seen]], name: str) -> None:
    """Keys, headers, timestamps, partitions, offsets and order within a transaction give no edge over chance."""
    accuracy, chance, sigma, n = _attack(observed, ATTACKERS[name])
    print(f"\n[linkage] {name}: accuracy {accuracy:.4f}, chance {chance:.4f} (σ {sigma:.4f}) over {n} CNAM records")
    assert accuracy <= chance + 4 * sigma + 0.002, f"{name} links {accuracy:.2%} against chance {chance:.2%}"


def test_control_an_ingress_time_header_is_an_exact_join_key(observed: dict[str, list[Seen]]) -> None:
    """The header attacker is not blind: give every output the ingress time (as before) and it links them all."""
    stamped = {
        topic: [replace(r, headers=(*r.headers, ("source.timestamp-ms", str(START_MS + r.event).encode()))) for r in rs]
        for topic, rs in observed.items()
    }
    accuracy, chance, _, _ = _attack(stamped, header_equality)
    assert accuracy > 0.99 > 20 * chance


def test_control_input_order_lets_rank_alignment_beat_chance(leaky: dict[str, list[Seen]]) -> None:
    """The rank attacker is not blind: outputs produced in input order line up across topics."""
    accuracy, chance, sigma, n = _attack(leaky, rank_alignment)
    print(f"\n[linkage] control, input order: accuracy {accuracy:.4f}, chance {chance:.4f} (σ {sigma:.4f}) over {n}")
    assert accuracy > chance + 10 * sigma
