"""Exactly-once processing: consume → minimise → produce inside Kafka transactions.

faust's own exactly-once mode has open bugs (duplicates #517, a crash on rebalance #323,
sends outside the transaction #177), so this runner does what Kafka Streams did before
KIP-447, directly on aiokafka:

* one transactional producer per input partition, ``transactional.id`` =
  ``<group>-<topic>-<partition>``: whichever worker owns a partition next initialises the
  same id and thereby fences any zombie that still thinks it owns it;
* each batch of one partition is one transaction holding all its outputs (views and dead
  letters) and the consumer offset of the batch (``send_offsets_to_transaction``);
* any failure aborts the transaction, drops the producer and seeks the consumer back to the
  first record of the batch, so the batch is processed again — nothing is acknowledged
  unless its outputs are committed with it.

A ``read_committed`` reader of the agency topics therefore sees every event once, across
crashes (``kill -9``), broker restarts and rebalances.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced

from streams.kafka.dispatch import outputs_with_retry, partition_for
from streams.pipeline import InputRecord, Pipeline
from streams.settings import Settings

log = logging.getLogger(__name__)

SleepFn = Callable[[float], Awaitable[None]]


class ProducerLike(Protocol):
    """The part of ``AIOKafkaProducer`` the runner uses (a fake in unit tests)."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def transaction(self) -> Any: ...
    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Any = None,
    ) -> Awaitable[Any]: ...
    async def send_offsets_to_transaction(self, offsets: Mapping[TopicPartition, int], group_id: str) -> None: ...


def transactional_id(group_id: str, tp: TopicPartition) -> str:
    """The transactional id bound to one input partition (fencing across workers)."""
    return f"{group_id}-{tp.topic}-{tp.partition}"


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: TransactionalRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.runner.release(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("assigned %d ingress partitions", len(assigned))


class TransactionalRunner:
    """Runs the pipeline over the ingress topic with per-partition transactions."""

    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        partitions: Mapping[str, int],
        *,
        producer_factory: Callable[[str], ProducerLike] | None = None,
        sleep: SleepFn = asyncio.sleep,
    ) -> None:
        """Process ``settings.ingress_topic``; ``partitions`` gives each output topic's count."""
        self.settings = settings
        self.pipeline = pipeline
        self.partitions = dict(partitions)
        self._producer_factory = producer_factory or self._aiokafka_producer
        self._sleep = sleep
        self._producers: dict[TopicPartition, ProducerLike] = {}
        self._busy = asyncio.Lock()
        self.transactions = 0
        self.aborts = 0

    def _aiokafka_producer(self, txn_id: str) -> ProducerLike:
        producer: ProducerLike = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap_servers,
            transactional_id=txn_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            max_batch_size=512 * 1024,
            transaction_timeout_ms=60_000,
            request_timeout_ms=30_000,
        )
        return producer

    def _consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers,
            group_id=self.settings.group_id,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )

    async def _producer(self, tp: TopicPartition) -> ProducerLike:
        producer = self._producers.get(tp)
        if producer is None:
            producer = self._producer_factory(transactional_id(self.settings.group_id, tp))
            await producer.start()  # init_transactions: fences the previous owner, aborts its open txn
            self._producers[tp] = producer
        return producer

    async def _drop(self, tp: TopicPartition) -> None:
        producer = self._producers.pop(tp, None)
        if producer is not None:
            try:
                await producer.stop()
            except (KafkaError, OSError) as exc:
                log.warning("stopping the producer of %s failed: %s", tp, type(exc).__name__)

    async def release(self, revoked: list[TopicPartition]) -> None:
        """Called on rebalance: wait for the batch in flight, then drop the revoked producers."""
        async with self._busy:
            for tp in revoked:
                await self._drop(tp)

    async def run(self) -> None:
        """Consume until cancelled; every batch is committed atomically with its outputs."""
        consumer = self._consumer()
        consumer.subscribe([self.settings.ingress_topic], listener=_Listener(self))
        await consumer.start()
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=200, max_records=self.settings.batch_size * 4)
                if not batches:
                    continue
                # Partitions have independent producers: their transactions overlap, so one
                # round costs about one commit latency instead of one per partition.
                async with self._busy:
                    owned = consumer.assignment()
                    await asyncio.gather(
                        *(self._commit_batch(consumer, tp, msgs) for tp, msgs in batches.items() if tp in owned)
                    )
        finally:
            for tp in list(self._producers):
                await self._drop(tp)
            await consumer.stop()

    async def _commit_batch(self, consumer: AIOKafkaConsumer, tp: TopicPartition, messages: list[Any]) -> None:
        records = [
            InputRecord(m.topic, m.partition, m.offset, m.key, m.value, tuple(m.headers or ()), m.timestamp)
            for m in messages
        ]
        outputs = await outputs_with_retry(self.pipeline, records, self._sleep)
        try:
            producer = await self._producer(tp)
            async with producer.transaction():
                deliveries = [
                    await producer.send(
                        o.topic,
                        o.value,
                        key=o.key,
                        partition=partition_for(o, self.partitions),
                        headers=list(o.headers),
                    )
                    for o in outputs
                ]
                await asyncio.gather(*deliveries)
                await producer.send_offsets_to_transaction({tp: messages[-1].offset + 1}, self.settings.group_id)
            self.transactions += 1
        except ProducerFenced:
            # Another worker took this partition; until the revocation reaches us, we must not
            # move past the batch: seek back, so whoever owns the partition processes it.
            log.warning("producer for %s fenced by a newer owner; batch left to the owner", tp)
            self.aborts += 1
            self._producers.pop(tp, None)
            consumer.seek(tp, messages[0].offset)
        except (KafkaError, OSError) as exc:
            self.aborts += 1
            log.warning("transaction for %s aborted (%s); the batch will be processed again", tp, type(exc).__name__)
            await self._drop(tp)
            consumer.seek(tp, messages[0].offset)
            await self._sleep(1.0)
