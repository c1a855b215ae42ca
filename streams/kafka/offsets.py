"""Small synchronous Kafka helpers (kafka-python) for the CLI, the demo and the tests.

Offsets, consumer-group lag and bounded reads; not used on the worker's hot path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError

from streams.credentials import KafkaAuth
from streams.errors import ScreeningStreamsError


class KafkaIOError(ScreeningStreamsError):
    """A read-side Kafka operation (offsets, reads) failed."""


@dataclass(frozen=True)
class ReadRecord:
    """One record read back from a topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


def _consumer(bootstrap_servers: str, auth: KafkaAuth, isolation: str = "read_committed") -> KafkaConsumer:
    try:
        return KafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            **auth.kafka_python(),
            enable_auto_commit=False,
            isolation_level=isolation,
            group_id=None,
            consumer_timeout_ms=1000,
        )
    except KafkaError as exc:
        raise KafkaIOError(f"cannot connect a consumer to {bootstrap_servers}: {exc}") from exc


def _offsets(bootstrap_servers: str, topics: Iterable[str], which: str, auth: KafkaAuth) -> dict[TopicPartition, int]:
    consumer = _consumer(bootstrap_servers, auth)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        return dict(getattr(consumer, f"{which}_offsets")(tps)) if tps else {}
    except KafkaError as exc:
        raise KafkaIOError(f"cannot read {which} offsets: {exc}") from exc
    finally:
        consumer.close()


def end_offsets(bootstrap_servers: str, topics: Iterable[str], *, auth: KafkaAuth) -> dict[TopicPartition, int]:
    """Return the end offset of every partition of ``topics`` (existing topics only)."""
    return _offsets(bootstrap_servers, topics, "end", auth)


def beginning_offsets(bootstrap_servers: str, topics: Iterable[str], *, auth: KafkaAuth) -> dict[TopicPartition, int]:
    """Return the first offset still held (after retention) of every partition of ``topics``."""
    return _offsets(bootstrap_servers, topics, "beginning", auth)


def group_lag(bootstrap_servers: str, group_id: str, topic: str, *, auth: KafkaAuth) -> int:
    """How many records of ``topic`` the group has not committed yet (all partitions)."""
    ends = end_offsets(bootstrap_servers, [topic], auth=auth)
    admin = _admin(bootstrap_servers, auth)
    try:
        committed = admin.list_group_offsets(group_id)
        if group_id in committed:  # kafka-python 3 nests the offsets under the group id
            committed = committed[group_id]
    except KafkaError as exc:
        raise KafkaIOError(f"cannot read offsets of group {group_id}: {exc}") from exc
    finally:
        admin.close()
    lag = 0
    for tp, end in ends.items():
        meta = committed.get(tp)
        done = meta.offset if meta is not None and meta.offset >= 0 else 0
        lag += max(end - done, 0)
    return lag


def wait_for_lag_zero(
    bootstrap_servers: str,
    group_id: str,
    topic: str,
    *,
    auth: KafkaAuth,
    timeout_s: float,
    on_progress: Callable[[int], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Block until the group's lag on ``topic`` is 0; return the seconds waited."""
    start = clock()
    lag: int | str = "unknown"
    while True:
        try:
            lag = group_lag(bootstrap_servers, group_id, topic, auth=auth)
        except KafkaIOError:  # group or coordinator not there yet: the worker is joining
            lag = "unknown"
        if on_progress and isinstance(lag, int):
            on_progress(lag)
        if lag == 0:
            return clock() - start
        if clock() - start > timeout_s:
            raise KafkaIOError(f"group {group_id} still lags {lag} records on {topic} after {timeout_s:.0f} s")
        sleep(0.25)


def _admin(bootstrap_servers: str, auth: KafkaAuth) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(bootstrap_servers=bootstrap_servers, **auth.kafka_python())
    except KafkaError as exc:
        raise KafkaIOError(f"cannot reach Kafka at {bootstrap_servers} as {auth.principal}: {exc}") from exc


def group_state(bootstrap_servers: str, group_id: str, *, auth: KafkaAuth) -> tuple[str, int]:
    """The group's state (e.g. ``Stable``) and number of members."""
    admin = _admin(bootstrap_servers, auth)
    try:
        described = admin.describe_groups([group_id])
    except KafkaError as exc:
        raise KafkaIOError(f"cannot describe group {group_id}: {exc}") from exc
    finally:
        admin.close()
    info = described.get(group_id, {}) if isinstance(described, dict) else {}
    return str(info.get("group_state", "Unknown")), len(info.get("members") or ())


def wait_for_members(
    bootstrap_servers: str,
    group_id: str,
    *,
    auth: KafkaAuth,
    timeout_s: float,
    count: int | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    gone: Callable[[], str | None] = lambda: None,
) -> float:
    """Block until the group is ``Stable`` with at least one member (exactly ``count`` if given).

    Returns the seconds waited. ``gone`` is asked on every round: a text (e.g. "the worker
    exited with 70") ends the wait at once with that reason instead of at the timeout.
    """
    start = clock()
    while True:
        reason = gone()
        if reason is not None:
            raise KafkaIOError(f"group {group_id}: stopped waiting for members: {reason}")
        try:
            state, members = group_state(bootstrap_servers, group_id, auth=auth)
        except KafkaIOError:
            state, members = "Unknown", 0
        if state == "Stable" and (members == count if count is not None else members > 0):
            return clock() - start
        if clock() - start > timeout_s:
            wanted = f"exactly {count} stable members" if count is not None else "stable member"
            raise KafkaIOError(f"group {group_id}: no {wanted} after {timeout_s:.0f} s (state {state})")
        sleep(0.2)


def count_records(bootstrap_servers: str, start: Mapping[TopicPartition, int], *, auth: KafkaAuth) -> dict[str, int]:
    """Count the committed records per topic from ``start`` to the current ends.

    Offsets over-count on transactional topics (commit markers take offsets), so this reads.
    """
    counts: dict[str, int] = {tp.topic: 0 for tp in start}
    for record in read_from(bootstrap_servers, start, auth=auth):
        counts[record.topic] += 1
    return counts


def read_from(
    bootstrap_servers: str,
    start: Mapping[TopicPartition, int],
    *,
    auth: KafkaAuth,
    limit: int | None = None,
    idle_timeout_s: float = 2.0,
    isolation: str = "read_committed",
) -> list[ReadRecord]:
    """Read records from the given partitions and offsets until ``limit`` or the ends are reached."""
    out: list[ReadRecord] = []
    for record in iter_from(bootstrap_servers, start, auth=auth, idle_timeout_s=idle_timeout_s, isolation=isolation):
        out.append(record)
        if limit is not None and len(out) >= limit:
            break
    return out


def iter_from(
    bootstrap_servers: str,
    start: Mapping[TopicPartition, int],
    *,
    auth: KafkaAuth,
    idle_timeout_s: float = 2.0,
    isolation: str = "read_committed",
    complete: bool = False,
) -> Iterator[ReadRecord]:
    """Yield records from the given partitions and offsets up to the ends seen when it started.

    Memory stays bounded by one poll (a 1.4 M-record topic streams through); each partition's
    records come in offset order. Reading stops after ``idle_timeout_s`` without a record;
    with ``complete`` that raises :class:`KafkaIOError` unless every end was reached (a short
    read must not pass for the whole topic).
    """
    consumer = _consumer(bootstrap_servers, auth, isolation)
    try:
        tps = list(start)
        consumer.assign(tps)
        for tp, offset in start.items():
            consumer.seek(tp, offset)
        ends = dict(consumer.end_offsets(tps))
        idle_since = time.monotonic()
        while True:
            if all(consumer.position(tp) >= ends[tp] for tp in tps):
                break
            if time.monotonic() - idle_since >= idle_timeout_s:
                if complete:
                    short = sorted(f"{tp.topic}[{tp.partition}]" for tp in tps if consumer.position(tp) < ends[tp])
                    raise KafkaIOError(f"read stopped {idle_timeout_s:.0f} s short of the end of {', '.join(short)}")
                break
            batch = consumer.poll(timeout_ms=200, max_records=5000)
            if batch:
                idle_since = time.monotonic()
            for tp_records in batch.values():
                for r in tp_records:
                    yield ReadRecord(
                        r.topic, r.partition, r.offset, r.key, r.value, tuple((k, v) for k, v in (r.headers or ()))
                    )
    except KafkaError as exc:
        raise KafkaIOError(f"cannot read records: {exc}") from exc
    finally:
        consumer.close()
