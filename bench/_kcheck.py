"""An independent small-cell check over a guarded recipient's topic (shared by ``throughput.py`` and the
integration test ``tests/integration/test_smallcell.py``; not a benchmark itself).

It does not use the guard's code (``streams.policy.smallcell``, ``streams.kafka.smallcell_io``): it
reads the agency topic itself with its own ``read_committed`` consumer to the end of every
partition, decodes each record with the recipient's contract, and groups the records by their window
header and the values of every counted field (the policy's ``KAnonymity.columns``; null where a ladder
step withheld it), so a class is a set of records released at the same detail in the same window. It
counts the classes below k (violations), repeated keys (duplicates), records whose withheld fields do
not match their step header (malformed), and, given the expected keys, records no event explains. The
hold topic gives what is not on the agency topic: suppressed views (the close records' counts) and
views still held (hold entries minus the k - 1 each open entry released minus every view a close entry
decided), so released + suppressed + still held can be compared with the views the events imply.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import fastavro
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from streams.contracts.schemas import strip_logical_types
from streams.credentials import KafkaAuth
from streams.policy.model import Policy
from streams.policy.outputs import output_schema

Message = tuple[bytes | None, bytes | None, dict[str, bytes]]


def read_committed(bootstrap: str, topic: str, *, auth: KafkaAuth, idle_s: float = 30.0) -> Iterator[Message]:
    """Every committed record of ``topic`` as ``(key, value, headers)``: a group-less ``read_committed``
    consumer (as ``auth``'s principal) assigned every partition from the beginning, until each reports its
    end (past the transaction markers). Raises if a partition is not read to its end within ``idle_s`` of silence."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            **auth.librdkafka(),
            "group.id": f"kcheck-{uuid.uuid4().hex}",  # assign() only: never joins nor commits
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=30).topics[topic]
        if metadata.error is not None:
            raise RuntimeError(f"{topic}: {metadata.error}")
        pending = set(metadata.partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in pending])
        idle = time.monotonic()
        while pending and time.monotonic() - idle < idle_s:
            for message in consumer.consume(10_000, 0.5):
                idle = time.monotonic()
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard(message.partition())
                        continue
                    raise RuntimeError(f"reading {topic}: {error.name()}")
                listed = message.headers() or []
                pairs = listed.items() if isinstance(listed, dict) else listed
                headers = {str(k): v for k, v in pairs if isinstance(v, bytes)}
                yield message.key(), message.value(), headers
        if pending:
            raise RuntimeError(f"{topic}: partitions not read to their end: {sorted(pending)}")
    finally:
        consumer.close()


@dataclass
class HoldSummary:
    """What the hold topic says: entries by kind, views released per ladder step at window close, suppressed."""

    kinds: Counter[str] = field(default_factory=Counter)
    released_by_step: Counter[int] = field(default_factory=Counter)  # step >= 1: only closes release there
    suppressed: int = 0

    def still_held(self, k: int) -> int:
        """Views held in windows not closed yet: every hold entry is one view; an open entry released k - 1 of
        them (its k-th view was never held); a close entry decided all its window still held."""
        decided = sum(self.released_by_step.values()) + self.suppressed
        return self.kinds["hold"] - (k - 1) * self.kinds["open"] - decided


def hold_summary(messages: Iterable[Message]) -> HoldSummary:
    """Sum the hold topic's records (their ``smallcell.entry`` header; the close records' JSON counts)."""
    out = HoldSummary()
    for _, value, headers in messages:
        kind = headers.get("smallcell.entry", b"?").decode()
        out.kinds[kind] += 1
        if kind == "close":
            body = json.loads(value or b"")
            out.released_by_step.update({step + 1: n for step, n in enumerate(body["released"]) if n})
            out.suppressed += int(body["suppressed"])
    return out


@dataclass
class KReport:
    """The independent check's figures (see module docstring); :attr:`ok` when nothing is wrong."""

    k: int
    released: int = 0
    released_by_step: Counter[int] = field(default_factory=Counter)
    classes: int = 0
    smallest_class: int = 0
    below_k: list[tuple[Any, int]] = field(default_factory=list)  # (class, size) of every violation
    duplicates: int = 0
    malformed: int = 0  # withheld fields not matching the step header, or headers missing
    unexpected: int | None = None  # released keys no event explains (None: not checked)
    hold: HoldSummary = field(default_factory=HoldSummary)
    views: int | None = None  # views the events imply (None: unknown)

    @property
    def still_held(self) -> int:
        """Views held in windows still open (from the hold topic)."""
        return self.hold.still_held(self.k)

    @property
    def lost(self) -> int | None:
        """Views neither released, suppressed nor still held (None when the expected count is unknown)."""
        if self.views is None:
            return None
        return self.views - self.released - self.hold.suppressed - self.still_held

    @property
    def ok(self) -> bool:
        """No class below k, no duplicate, nothing malformed, unexplained or lost, steps agreeing with the hold log."""
        closes = {s: n for s, n in self.released_by_step.items() if s > 0}
        return (
            not self.below_k
            and self.duplicates == 0
            and self.malformed == 0
            and not self.unexpected
            and self.lost in (None, 0)
            and closes == dict(self.hold.released_by_step)
        )

    def rows(self, all_closed: bool = False) -> list[tuple[str, object, str]]:
        """(check, count, verdict) rows for a table; ``all_closed``: every window should have closed (none held)."""
        steps = sorted(set(self.released_by_step) | set(self.hold.released_by_step) | {0})
        below = self.below_k

        def verdict(good: bool) -> str:
            return "ok" if good else "NO"

        return [
            ("classes checked (window, values at the released detail)", self.classes, ""),
            (f"classes below k = {self.k} (violations)", len(below), "ok" if not below else f"NO {below[:3]}"),
            ("smallest class", self.smallest_class, verdict(self.smallest_class >= self.k or not self.classes)),
            ("duplicated records (same key twice)", self.duplicates, verdict(not self.duplicates)),
            ("withheld fields not matching the step header", self.malformed, verdict(not self.malformed)),
            ("records no event explains", self.unexpected, verdict(not self.unexpected)),
            *(
                (
                    "released at full detail (step 0)" if s == 0 else f"released at ladder step {s}",
                    self.released_by_step[s],
                    ""
                    if s == 0
                    else verdict(self.released_by_step[s] == self.hold.released_by_step[s]) + " (hold log)",
                )
                for s in steps
            ),
            ("released, all steps", self.released, ""),
            ("suppressed (the hold topic's close records)", self.hold.suppressed, ""),
            ("still held (windows not closed)", self.still_held, verdict(self.still_held == 0) if all_closed else ""),
            ("views the events imply", self.views, ""),
            ("lost (views - released - suppressed - held)", self.lost, verdict(self.lost == 0)),
        ]

    def as_dict(self) -> dict[str, Any]:
        """The figures as plain JSON-able values."""
        return {
            "views": self.views,
            "released": self.released,
            "released_by_step": dict(sorted(self.released_by_step.items())),
            "suppressed": self.hold.suppressed,
            "still_held": self.still_held,
            "lost": self.lost,
            "classes": self.classes,
            "smallest_class": self.smallest_class,
            "classes_below_k": len(self.below_k),
            "duplicates": self.duplicates,
            "malformed": self.malformed,
            "unexpected": self.unexpected,
            "hold_entries": dict(self.hold.kinds),
            "hold_released_by_step": dict(sorted(self.hold.released_by_step.items())),
        }


def check_released(
    policy: Policy,
    input_schema: Any,
    messages: Iterable[Message],
    expected_keys: set[bytes] | None = None,
) -> KReport:
    """Group the guarded ``policy``'s released records (``messages`` of its topic) into classes and count
    what is wrong (module docstring); ``expected_keys``: the keys the events imply, if known."""
    option = policy.k_anonymity
    if option is None:
        raise ValueError(f"{policy.recipient} has no k_anonymity option")
    parsed = fastavro.parse_schema(strip_logical_types(output_schema(policy, input_schema)))
    columns = option.columns
    withheld = [{s.field for s in option.ladder[:step]} for step in range(len(option.ladder) + 1)]
    classes: Counter[tuple[int, tuple[Any, ...]]] = Counter()
    keys: Counter[bytes | None] = Counter()
    report = KReport(option.k)
    for key, value, headers in messages:
        try:
            window, step = int(headers["smallcell.window"]), int(headers["smallcell.step"])
            hidden = withheld[step]
        except (KeyError, ValueError, IndexError):
            report.malformed += 1
            continue
        view = fastavro.schemaless_reader(io.BytesIO((value or b"")[5:]), parsed, None)
        assert isinstance(view, dict)
        cell = tuple(view[f] for f in columns)
        if any((view[f] is None) != (f in hidden) for f in columns) or any(view[f] is not None for f in hidden):
            report.malformed += 1
        classes[(window, cell)] += 1
        keys[key] += 1
        report.released_by_step[step] += 1
        report.released += 1
    report.classes = len(classes)
    report.smallest_class = min(classes.values(), default=0)
    report.below_k = [(c, n) for c, n in classes.items() if n < option.k]
    report.duplicates = sum(n - 1 for n in keys.values() if n > 1)
    if expected_keys is not None:
        report.unexpected = sum(1 for k in keys if k not in expected_keys)
    return report


def k_check(
    bootstrap: str,
    policy: Policy,
    input_schema: Any,
    topic: str,
    hold_topic: str,
    *,
    auth: KafkaAuth,
    views: int | None = None,
    expected_keys: set[bytes] | None = None,
) -> KReport:
    """Read ``topic`` (the guarded policy's, with prefix) and ``hold_topic`` to their ends (as ``auth``'s
    principal, one that may read both) and check them; ``views``: how many views the events imply (for the
    lost count)."""
    report = check_released(policy, input_schema, read_committed(bootstrap, topic, auth=auth), expected_keys)
    report.hold = hold_summary(read_committed(bootstrap, hold_topic, auth=auth))
    report.views = views if views is not None else None if expected_keys is None else len(expected_keys)
    return report


def decided(bootstrap: str, topic: str, hold_topic: str, *, auth: KafkaAuth) -> int:
    """Views released or suppressed so far, from the topics (a cheaper count than :func:`k_check`: no decoding)."""
    released = sum(1 for _ in read_committed(bootstrap, topic, auth=auth))
    return released + hold_summary(read_committed(bootstrap, hold_topic, auth=auth)).suppressed
