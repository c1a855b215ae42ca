"""The backlog benchmark's baseline: a transactional aiokafka consume → produce passthrough (its own process).

Started by ``backlog.py`` as ``python bench/_passthrough.py --bootstrap B --source T --sink S --group G
--transactional-id ID``. It copies every record of ``T`` (key, value and headers, byte for byte) to
the same partition of ``S`` with Kafka transactions, exactly once: consumer ``read_committed``
without auto-commit; per ``getmany(max_records=500)`` batch, one transaction with the sends and
the consumed offsets (``send_offsets_to_transaction``). No decoding, no policy, no audit: the
lowest cost of an exactly-once consume → produce loop in Python, which the worker is measured against.
The producer keeps aiokafka's defaults (``linger_ms`` 0, 16 KiB batches) but for ``acks=all`` and idempotence.

Credentials come from the environment (``streams.credentials.auth_from_env``: the bench passes the
admin's as ``SCREENING_KAFKA_USERNAME`` / ``SCREENING_KAFKA_PASSWORD``). SIGTERM ends it after the
current transaction. It prints one line per ~10 s (records copied, transactions) and one at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import OffsetAndMetadata

from streams.credentials import KafkaAuth, auth_from_env
from streams.kafka.publish import aiokafka_auth

MAX_RECORDS = 500
POLL_MS = 200


def auth_environment(auth: KafkaAuth) -> dict[str, str]:
    """The environment variables that make :func:`auth_from_env` in a child return ``auth``."""
    env = {
        "SCREENING_KAFKA_SECURITY_PROTOCOL": auth.security_protocol,
        "SCREENING_KAFKA_SASL_MECHANISM": auth.mechanism,
    }
    if auth.sasl and auth.username and auth.password:
        env["SCREENING_KAFKA_USERNAME"] = auth.username
        env["SCREENING_KAFKA_PASSWORD"] = auth.password
    if auth.ca_file is not None:
        env["SCREENING_KAFKA_CA_FILE"] = str(auth.ca_file)
    return env


async def passthrough(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Copy ``args.source`` to ``args.sink`` transactionally until SIGTERM; return the records copied."""
    auth = aiokafka_auth(auth_from_env(environ))
    consumer = AIOKafkaConsumer(
        args.source,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **auth,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap,
        transactional_id=args.transactional_id,
        enable_idempotence=True,
        acks="all",
        **auth,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await producer.start()
    await consumer.start()
    copied = transactions = 0
    last_line = time.monotonic()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=POLL_MS, max_records=MAX_RECORDS)
            if not batches:
                continue
            async with producer.transaction():
                offsets = {}
                for tp, records in batches.items():
                    for r in records:
                        await producer.send(
                            args.sink, r.value, key=r.key, partition=tp.partition, headers=list(r.headers)
                        )
                    copied += len(records)
                    offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, "")
                await producer.send_offsets_to_transaction(offsets, args.group)
            transactions += 1
            if time.monotonic() - last_line >= 10:
                print(f"passthrough: {copied:,} records in {transactions:,} transactions", flush=True)
                last_line = time.monotonic()
    finally:
        await consumer.stop()
        await producer.stop()
    print(f"passthrough stopped: {copied:,} records in {transactions:,} transactions", flush=True)
    return copied


def main() -> None:
    """Parse the flags and run the passthrough until SIGTERM."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--source", required=True, help="topic to read (read_committed)")
    p.add_argument("--sink", required=True, help="topic to write (same partition as the source record)")
    p.add_argument("--group", required=True, help="consumer group (offsets committed in the transactions)")
    p.add_argument("--transactional-id", required=True)
    asyncio.run(passthrough(p.parse_args(), os.environ))


if __name__ == "__main__":
    main()
