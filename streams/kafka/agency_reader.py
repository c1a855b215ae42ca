"""What the agencies' reference client reads: its topic and its key topic, ``read_committed``.

:class:`AgencyTopicReader` reads one agency topic from the beginning, the end or a point in time,
and its compacted key topic up to its current end (again, on demand, when a record names a data
key not seen yet: the processor commits a key record in the same transaction as the records that
need it, so a ``read_committed`` reader that has a record can always find its key). Decryption
happens in :mod:`streams.crypto.reader`; this module only moves bytes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from streams.credentials import KafkaAuth
from streams.kafka.offsets import KafkaIOError, ReadRecord


@dataclass(frozen=True)
class StartAt:
    """Where to start: ``beginning``, ``end`` (only records written from now) or an instant (ms)."""

    mode: str  # "beginning" | "end" | "time"
    time_ms: int | None = None


def _consumer(bootstrap_servers: str, client_id: str, auth: KafkaAuth) -> KafkaConsumer:
    try:
        return KafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            **auth.kafka_python(),
            client_id=client_id,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
    except KafkaError as exc:
        raise KafkaIOError(f"cannot connect to Kafka at {bootstrap_servers}: {exc}") from exc


def _record(r: object) -> ReadRecord:
    headers = tuple((k, v) for k, v in (getattr(r, "headers", None) or ()))
    return ReadRecord(r.topic, r.partition, r.offset, r.key, r.value, headers)  # type: ignore[attr-defined]


class AgencyTopicReader:
    """Reads an agency topic and its key topic (see module docstring); close it when done."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        key_topic: str,
        *,
        auth: KafkaAuth,
        client_id: str = "screening-streams-agency",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Connect two ``read_committed`` consumers as ``auth``'s principal (no consumer group, nothing committed)."""
        self.topic = topic
        self.key_topic = key_topic
        self._clock = clock
        self._data = _consumer(bootstrap_servers, client_id, auth)
        try:
            self._keys = _consumer(bootstrap_servers, client_id + "-keys", auth)
        except KafkaIOError:
            self._data.close()
            raise
        try:
            self._partitions = self._assign(self._data, topic)
            self._key_partitions = self._assign(self._keys, key_topic)
            self._keys.seek_to_beginning(*self._key_partitions)
        except Exception:
            self.close()
            raise

    @staticmethod
    def _assign(consumer: KafkaConsumer, topic: str) -> list[TopicPartition]:
        try:
            partitions = consumer.partitions_for_topic(topic)
        except KafkaError as exc:
            raise KafkaIOError(f"cannot read the metadata of {topic}: {exc}") from exc
        if not partitions:
            raise KafkaIOError(f"topic {topic} does not exist (or this principal may not describe it)")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        return tps

    def seek(self, start: StartAt) -> None:
        """Position the agency topic's partitions."""
        try:
            if start.mode == "beginning":
                self._data.seek_to_beginning(*self._partitions)
            elif start.mode == "end":
                self._data.seek_to_end(*self._partitions)
            else:
                assert start.time_ms is not None
                found = self._data.offsets_for_times({tp: start.time_ms for tp in self._partitions})
                ends = self._data.end_offsets(self._partitions)
                for tp in self._partitions:
                    hit = found.get(tp)
                    self._data.seek(tp, hit.offset if hit is not None else ends[tp])
        except KafkaError as exc:
            raise KafkaIOError(f"cannot position {self.topic}: {exc}") from exc

    def read_keys(self) -> list[ReadRecord]:
        """Every key record committed since the last call, up to the key topic's current end."""
        out: list[ReadRecord] = []
        try:
            ends = self._keys.end_offsets(self._key_partitions)
            while any(self._keys.position(tp) < ends[tp] for tp in self._key_partitions):
                for records in self._keys.poll(timeout_ms=500, max_records=5000).values():
                    out.extend(_record(r) for r in records)
        except KafkaError as exc:
            raise KafkaIOError(f"cannot read {self.key_topic}: {exc}") from exc
        return out

    def records(self, idle_timeout_s: float) -> Iterator[ReadRecord]:
        """The agency topic's committed records, in offset order per partition, until ``idle_timeout_s`` of quiet."""
        idle_since = self._clock()
        while self._clock() - idle_since < idle_timeout_s:
            try:
                batch = self._data.poll(timeout_ms=200, max_records=2000)
            except KafkaError as exc:
                raise KafkaIOError(f"cannot read {self.topic}: {exc}") from exc
            if batch:
                idle_since = self._clock()
            for tp in sorted(batch, key=lambda t: t.partition):
                for r in batch[tp]:
                    yield _record(r)

    def close(self) -> None:
        """Close both consumers."""
        for consumer in (self._data, self._keys):
            with contextlib.suppress(KafkaError):
                consumer.close()
