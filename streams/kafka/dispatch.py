"""Produce a batch of output records with explicit partitions, and never report a failure as done.

The send function is injected (a producer's send, a fake in unit tests). Records are
partitioned here with CRC-32 of their route key, the agency's keyed hash of the person
(:mod:`streams.policy.engine`), so one person's records share a partition at each agency and
stay in order there, while two agencies' partitions of one person are unrelated.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from streams.errors import RegistryUnavailable
from streams.pipeline import InputRecord, OutputRecord, Pipeline

log = logging.getLogger(__name__)

#: ``send(topic, key, value, partition, headers)`` returns an awaitable delivery.
SendFn = Callable[[str, bytes | None, bytes | None, int, Sequence[tuple[str, bytes]]], Awaitable[Awaitable[Any]]]
SleepFn = Callable[[float], Awaitable[None]]


def partition_for(record: OutputRecord, partitions: Mapping[str, int]) -> int:
    """Partition of a record: its explicit one, else CRC-32 of its route key (per person and agency)
    modulo its topic's count."""
    count = partitions.get(record.topic)
    if count is None:
        raise KeyError(f"no partition count known for topic {record.topic!r}")
    if record.partition is not None:
        if not 0 <= record.partition < count:
            raise KeyError(f"partition {record.partition} of topic {record.topic!r} does not exist ({count})")
        return record.partition
    return zlib.crc32(record.route_key) % count


class Dispatcher:
    """Sends output records and waits for every delivery, retrying failed ones."""

    def __init__(
        self,
        send: SendFn,
        partitions: Mapping[str, int],
        *,
        sleep: SleepFn = asyncio.sleep,
        max_backoff_s: float = 30.0,
    ) -> None:
        """Send through ``send``; ``partitions`` gives each output topic's partition count."""
        self._send = send
        self._partitions = dict(partitions)
        self._sleep = sleep
        self._max_backoff_s = max_backoff_s
        self.retries = 0

    def partition_for(self, record: OutputRecord) -> int:
        """Stable partition of a record: CRC-32 of its route key modulo the partition count."""
        return partition_for(record, self._partitions)

    async def _enqueue(self, record: OutputRecord) -> Awaitable[Any]:
        """Hand one record to the producer; an enqueue error becomes a failed delivery."""
        # Outside the try: an unknown topic is a bug to surface, not a delivery to retry forever.
        partition = self.partition_for(record)
        try:
            return await self._send(record.topic, record.key, record.value, partition, record.headers)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed

    async def dispatch(self, records: Sequence[OutputRecord]) -> None:
        """Send every record and return only once all are acknowledged by the broker.

        A failed delivery is retried with exponential backoff until it succeeds (or the task
        is cancelled): the caller acknowledges the input only after this returns.
        """
        pending = list(records)
        backoff = 0.1
        while pending:
            deliveries = [await self._enqueue(r) for r in pending]
            results = await asyncio.gather(*deliveries, return_exceptions=True)
            failed = [r for r, res in zip(pending, results, strict=True) if isinstance(res, BaseException)]
            if not failed:
                return
            first = next(res for res in results if isinstance(res, BaseException))
            self.retries += len(failed)
            log.warning(
                "%d of %d deliveries failed (%s); retrying in %.1f s",
                len(failed),
                len(pending),
                type(first).__name__,
                backoff,
            )
            await self._sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff_s)
            pending = failed


async def outputs_of(pipeline: Pipeline, records: list[InputRecord]) -> list[OutputRecord]:
    """Run the pipeline over a batch from an event loop: registry lookups in a thread, then the pass.

    Raises :class:`~streams.errors.RegistryUnavailable` (nothing produced) while the registry
    does not answer.
    """
    if pipeline.needs_prefetch(records):
        await asyncio.to_thread(pipeline.prefetch, records)
    return pipeline.process_many(records)


async def outputs_with_retry(
    pipeline: Pipeline, records: list[InputRecord], sleep: SleepFn = asyncio.sleep, max_backoff_s: float = 30.0
) -> list[OutputRecord]:
    """Run the pipeline over a batch, retrying while the schema registry is unreachable.

    Per-record problems are already dead letters; a registry outage is infrastructure, so
    the batch waits (never acknowledged as done) until the registry answers again.
    """
    backoff = 0.5
    while True:
        try:
            return await outputs_of(pipeline, records)
        except RegistryUnavailable as exc:
            log.warning("schema registry unavailable (%s); retrying batch in %.1f s", type(exc).__name__, backoff)
            await sleep(backoff)
            backoff = min(backoff * 2, max_backoff_s)
