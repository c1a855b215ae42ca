"""Publish screening events to the ingress topic, as the screening system would.

Used by ``screening-streams generate --publish``, the demo, the tests and the benchmark. It
registers the event contract under the ingress subject and frames every record in the
Confluent wire format, exactly like a stock Confluent serializer.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from streams.contracts.codec import ViewEncoder, register_encoder
from streams.contracts.registry import SchemaRegistryClient
from streams.contracts.schemas import input_schema
from streams.credentials import KafkaAuth
from streams.errors import ScreeningStreamsError

Progress = Callable[[int], None]


class PublishError(ScreeningStreamsError):
    """Events could not be published."""


def event_encoder(registry: SchemaRegistryClient, ingress_topic: str, schema_version: int = 1) -> ViewEncoder:
    """Register the screening event contract (v1 or v2) for the ingress topic; return its encoder."""
    return register_encoder(registry, f"{ingress_topic}-value", input_schema(schema_version))


def aiokafka_auth(auth: KafkaAuth) -> dict[str, Any]:
    """The keyword arguments of an aiokafka client for ``auth`` (TLS settings as an SSL context)."""
    config = auth.kafka_python()
    if cafile := config.pop("ssl_cafile", None):
        from aiokafka.helpers import create_ssl_context

        config["ssl_context"] = create_ssl_context(cafile=cafile)
    return config


async def publish_raw(
    bootstrap_servers: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None, Sequence[tuple[str, bytes]]]],
    partitions: int,
    *,
    auth: KafkaAuth,
    progress: Progress | None = None,
) -> int:
    """Send ``(key, value, headers)`` records as ``auth``'s principal; partition by the key's CRC-32; count them."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        **aiokafka_auth(auth),
        acks="all",
        linger_ms=10,
        max_batch_size=512 * 1024,
        enable_idempotence=True,
    )
    try:
        await producer.start()
    except KafkaError as exc:
        raise PublishError(f"cannot connect a producer to {bootstrap_servers}: {exc}") from exc
    sent = 0
    try:
        window: list[asyncio.Future[Any]] = []
        for key, value, headers in records:
            partition = zlib.crc32(key or b"") % partitions
            window.append(await producer.send(topic, value, key=key, partition=partition, headers=list(headers)))
            sent += 1
            if len(window) >= 5000:
                await asyncio.gather(*window)
                window.clear()
                if progress:
                    progress(sent)
        await asyncio.gather(*window)
        if progress:
            progress(sent)
    except KafkaError as exc:
        raise PublishError(f"publishing to {topic} failed after {sent} records: {exc}") from exc
    finally:
        await producer.stop()
    return sent


def framed_events(
    events: Iterable[Mapping[str, Any]], encoder: ViewEncoder
) -> Iterable[tuple[bytes, bytes, Sequence[tuple[str, bytes]]]]:
    """Encode events for :func:`publish_raw`, keyed by their event id."""
    for event in events:
        yield str(event["event_id"]).encode(), encoder.encode(dict(event)), ()
