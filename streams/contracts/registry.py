"""Schema registry clients behind one small interface, and the decoder's caching front.

:class:`HttpSchemaRegistry` speaks the Confluent Schema Registry REST API (Confluent's own
server, or Apicurio's ``/apis/ccompat/v7``). Before it first registers a schema under a
subject it sets that subject's compatibility rule (``FORWARD_TRANSITIVE`` by default, see
:data:`COMPATIBILITY`), so the registry itself refuses a schema the project's readers could not
read. :class:`SchemaResolver` sits between the decoder and a client: positive cache, negative
cache with a TTL, one lookup per id however many threads miss it at once, lookups done ahead
of the CPU-bound pass (off the event loop), and no lookup at all for records that are not
framed. :class:`InMemorySchemaRegistry` is a test double for unit tests and is never
presented as a registry server.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any, Protocol

from streams.errors import RegistryError, RegistryUnavailable

_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"

#: The compatibility rule of every subject the project registers, ingress and agency alike.
#: Confluent's terms: FORWARD = data written with the new schema is readable by a reader using
#: the previous one; TRANSITIVE = by readers of *every* earlier version. Ingress: producers
#: upgrade first and the processor keeps reading with its v1 reader (and replays old dead
#: letters), so each new writer schema must be readable by v1 and every later reader.
#: Agency topics: the processor (their producer) upgrades first and agencies keep reading with
#: older versions. ``BACKWARD`` (Confluent's default) is the opposite direction: it would let a
#: producer drop a field the v1 reader needs.
COMPATIBILITY = "FORWARD_TRANSITIVE"
#: Levels that imply :data:`COMPATIBILITY`; a subject already this strict is left as it is.
_AT_LEAST_FORWARD_TRANSITIVE = frozenset({"FORWARD_TRANSITIVE", "FULL_TRANSITIVE"})


class SchemaNotFound(RegistryError):
    """The registry answered that no schema has this id (a data problem, not an outage)."""


class SchemaRegistryClient(Protocol):
    """The two calls screening-streams needs from a Confluent-compatible registry."""

    def register(self, subject: str, schema: str) -> int:
        """Register ``schema`` (Avro JSON) under ``subject``; return its global id."""
        ...

    def get_schema(self, schema_id: int) -> str:
        """Return the Avro JSON registered under ``schema_id``; raise :class:`SchemaNotFound`."""
        ...


class HttpSchemaRegistry:
    """A Confluent-compatible REST client with per-process caching of ids and schemas.

    Errors: 404 on a schema id is :class:`SchemaNotFound`; no answer, a timeout or a 5xx is
    :class:`~streams.errors.RegistryUnavailable` (retriable); any other refusal (409
    incompatible schema, 422 invalid schema, 401/403) is :class:`~streams.errors.RegistryError`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 10.0,
        compatibility: str | None = COMPATIBILITY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Point the client at ``base_url`` (e.g. ``http://127.0.0.1:18081/apis/ccompat/v7``).

        ``compatibility`` is set on each subject before this client first registers under it
        (``None``: leave subjects' rules alone). ``clock`` dates the last readiness check.
        """
        self.base_url = base_url.rstrip("/")
        self._root = self.base_url.split("/apis/", 1)[0]
        self._clock = clock
        self._ready_until = float("-inf")
        self.timeout_s = timeout_s
        self.compatibility = compatibility
        self._by_id: dict[int, str] = {}
        self._ids: dict[tuple[str, str], int] = {}
        self._configured: set[str] = set()
        self._lock = threading.Lock()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = f"{self.base_url}{path}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            url, data=data, method=method, headers={"Content-Type": _CONTENT_TYPE, "Accept": _CONTENT_TYPE}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            if exc.code == 404:
                raise SchemaNotFound(f"registry {url}: not found ({detail})") from exc
            kind = RegistryUnavailable if exc.code >= 500 else RegistryError
            raise kind(f"registry {method} {url} failed: HTTP {exc.code} {detail}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise RegistryUnavailable(f"registry {method} {url} unreachable: {exc}") from exc

    def compatibility_of(self, subject: str) -> str | None:
        """The subject's own compatibility level, or ``None`` when it has none (or does not exist)."""
        quoted = urllib.parse.quote(subject, safe="")
        try:
            answer = self._call("GET", f"/config/{quoted}")
        except SchemaNotFound:
            return None
        level = answer.get("compatibilityLevel") if isinstance(answer, dict) else None
        return str(level) if level else None

    def set_compatibility(self, subject: str, level: str) -> None:
        """Set ``subject``'s compatibility level (``PUT /config/<subject>``); the subject may not exist yet."""
        quoted = urllib.parse.quote(subject, safe="")
        answer = self._call("PUT", f"/config/{quoted}", {"compatibility": level})
        got = answer.get("compatibilityLevel") or answer.get("compatibility") if isinstance(answer, dict) else None
        if got != level:
            raise RegistryError(f"registry did not set compatibility {level} on {subject!r}: {answer!r}")

    def _rule_holds(self, current: str | None) -> bool:
        """Whether a subject's level ``current`` is the wanted one, or implies it."""
        if current == self.compatibility:
            return True
        return self.compatibility == COMPATIBILITY and current in _AT_LEAST_FORWARD_TRANSITIVE

    def _ensure_rule(self, subject: str) -> None:
        if self.compatibility is None or subject in self._configured:
            return
        if not self._rule_holds(self.compatibility_of(subject)):
            try:
                self.set_compatibility(subject, self.compatibility)
            except RegistryError as exc:
                # Another process set the rule between our read and our write (Apicurio answers
                # 409 "rule already exists" when two workers start together): fine if it holds.
                if isinstance(exc, RegistryUnavailable) or not self._rule_holds(self.compatibility_of(subject)):
                    raise
        with self._lock:
            self._configured.add(subject)

    def register(self, subject: str, schema: str) -> int:
        """Register ``schema`` under ``subject`` (idempotent: same schema, same id).

        The subject's compatibility rule is set first; a schema the rule refuses raises
        :class:`~streams.errors.RegistryError` naming the subject (HTTP 409).
        """
        key = (subject, schema)
        with self._lock:
            if key in self._ids:
                return self._ids[key]
        self._ensure_rule(subject)
        quoted = urllib.parse.quote(subject, safe="")
        answer = self._call("POST", f"/subjects/{quoted}/versions", {"schema": schema, "schemaType": "AVRO"})
        try:
            schema_id = int(answer["id"])
        except (TypeError, KeyError, ValueError) as exc:
            raise RegistryError(f"registry gave no id when registering {subject!r}: {answer!r}") from exc
        with self._lock:
            self._ids[key] = schema_id
            self._by_id.setdefault(schema_id, schema)
        return schema_id

    def _ready(self) -> bool:
        """Whether the registry says its storage is ready (``/health/ready``; no such endpoint counts as ready).

        Apicurio with kafkasql storage answers requests while it still replays its journal, and
        then says "not found" for ids it has not reached yet: such an answer is an outage, not a
        verdict. A ready answer is trusted for 5 s.
        """
        if self._clock() < self._ready_until:
            return True
        try:
            with urllib.request.urlopen(f"{self._root}/health/ready", timeout=self.timeout_s):
                ready = True
        except urllib.error.HTTPError as exc:
            ready = exc.code == 404
        except (urllib.error.URLError, OSError, ValueError):
            ready = False
        if ready:
            self._ready_until = self._clock() + 5.0
        return ready

    def get_schema(self, schema_id: int) -> str:
        """Fetch (once) the schema registered under ``schema_id``.

        "Not found" from a registry that is not ready yet raises ``RegistryUnavailable``.
        """
        with self._lock:
            cached = self._by_id.get(schema_id)
        if cached is not None:
            return cached
        try:
            answer = self._call("GET", f"/schemas/ids/{schema_id}")
        except SchemaNotFound:
            if not self._ready():
                raise RegistryUnavailable(
                    f"registry not ready (storage loading); schema id {schema_id} unknown yet"
                ) from None
            raise
        try:
            schema = str(answer["schema"])
        except (TypeError, KeyError) as exc:
            raise RegistryError(f"registry gave no schema for id {schema_id}: {answer!r}") from exc
        with self._lock:
            self._by_id[schema_id] = schema
        return schema


class SchemaResolver:
    """The decoder's view of a registry: cached, negatively cached, single-flight, I/O ahead of time.

    * a found schema is kept for the life of the process (ids are immutable);
    * an id the registry does not know is remembered for ``negative_ttl_s`` (clock injected), so
      a flood of records with unknown ids costs one lookup per id per TTL, not one per record;
    * threads missing the same id at once share one lookup (single flight);
    * :meth:`resolve` looks ids up ahead of time (the worker calls it off the event loop, in a
      thread), concurrently on up to ``max_workers`` connections;
    * inside :meth:`only`, :meth:`get_schema` looks up only the ids it was given (those of
      properly framed records); any other id, e.g. four bytes of a JSON payload read as an id,
      is answered "not found" from memory, without a request.

    Outages surface as :class:`~streams.errors.RegistryUnavailable` and are never cached.
    """

    def __init__(
        self,
        client: SchemaRegistryClient,
        *,
        clock: Callable[[], float] = time.monotonic,
        negative_ttl_s: float = 30.0,
        max_workers: int = 8,
    ) -> None:
        """Front ``client``; ``clock`` (seconds) dates the negative entries."""
        self._client = client
        self._clock = clock
        self.negative_ttl_s = negative_ttl_s
        self._max_workers = max(1, max_workers)
        self._known: dict[int, str] = {}
        self._missing: dict[int, float] = {}  # id -> time its negative entry expires
        self._inflight: dict[int, Future[str]] = {}
        self._lock = threading.Lock()
        self._scope = threading.local()
        self._pool: ThreadPoolExecutor | None = None  # background lookups (resolve_within)
        self._background: dict[int, Future[RegistryError | None]] = {}
        self.lookups = 0  # requests made to the client (tests and stats read it)

    def register(self, subject: str, schema: str) -> int:
        """Register through the client and remember the schema under its id."""
        schema_id = self._client.register(subject, schema)
        with self._lock:
            self._known[schema_id] = schema
            self._missing.pop(schema_id, None)
        return schema_id

    def _cached(self, schema_id: int) -> str | None:
        """The schema from memory; raise :class:`SchemaNotFound` for a live negative entry."""
        with self._lock:
            text = self._known.get(schema_id)
            if text is not None:
                return text
            expires = self._missing.get(schema_id)
            if expires is not None:
                if self._clock() < expires:
                    raise SchemaNotFound(f"schema id {schema_id} is not in the registry (cached)")
                del self._missing[schema_id]
        return None

    def needs_lookup(self, schema_ids: Iterable[int]) -> bool:
        """True when some id is neither known nor negatively cached (no I/O)."""
        for schema_id in schema_ids:
            try:
                if self._cached(schema_id) is None:
                    return True
            except SchemaNotFound:
                continue
        return False

    def get_schema(self, schema_id: int) -> str:
        """Return the schema of ``schema_id``; raise :class:`SchemaNotFound` or ``RegistryUnavailable``."""
        text = self._cached(schema_id)
        if text is not None:
            return text
        allowed: frozenset[int] | None = getattr(self._scope, "allowed", None)
        if allowed is not None and schema_id not in allowed:
            raise SchemaNotFound(f"schema id {schema_id} not looked up: the record is not framed")
        return self._fetch(schema_id)

    def resolve(self, schema_ids: Iterable[int]) -> None:
        """Look up every id not yet known or negatively cached (blocking: run it off the event loop).

        Unknown ids become negative entries; raises ``RegistryUnavailable`` when the registry
        does not answer for some id (the others' answers are kept).
        """
        misses = []
        for schema_id in dict.fromkeys(schema_ids):
            try:
                if self._cached(schema_id) is None:
                    misses.append(schema_id)
            except SchemaNotFound:
                continue
        if not misses:
            return
        if len(misses) == 1 or self._max_workers == 1:
            outcomes = [self._outcome(i) for i in misses]
        else:
            with ThreadPoolExecutor(min(self._max_workers, len(misses)), thread_name_prefix="registry") as pool:
                outcomes = list(pool.map(self._outcome, misses))
        for outcome in outcomes:
            if outcome is not None:
                raise outcome

    def resolve_within(self, schema_ids: Iterable[int], timeout_s: float) -> set[int]:
        """Start lookups of the unknown ids in the background; wait at most ``timeout_s``; return those still pending.

        Lookups go on after the call returns, so a caller can set aside the records waiting for
        them and go on with the rest (the runner defers their partitions). Raises
        ``RegistryUnavailable`` when a lookup of one of these ids found the registry down (that
        lookup is then forgotten, so the next call tries again).
        """
        wanted: dict[int, Future[RegistryError | None]] = {}
        for schema_id in dict.fromkeys(schema_ids):
            try:
                if self._cached(schema_id) is not None:
                    continue
            except SchemaNotFound:
                continue
            with self._lock:
                future = self._background.get(schema_id)
                if future is None:
                    if self._pool is None:
                        self._pool = ThreadPoolExecutor(self._max_workers, thread_name_prefix="registry")
                    future = self._background[schema_id] = self._pool.submit(self._outcome, schema_id)
            wanted[schema_id] = future
        if wanted and timeout_s > 0:
            wait(list(wanted.values()), timeout=timeout_s, return_when=FIRST_EXCEPTION)
        pending = set()
        failure: RegistryError | None = None
        for schema_id, future in wanted.items():
            if not future.done():
                pending.add(schema_id)
                continue
            with self._lock:
                self._background.pop(schema_id, None)
            failure = failure or future.result()
        if failure is not None:
            raise failure
        return pending

    def _outcome(self, schema_id: int) -> RegistryError | None:
        try:
            self._fetch(schema_id)
        except SchemaNotFound:
            return None
        except RegistryError as exc:
            return exc
        return None

    def _fetch(self, schema_id: int) -> str:
        """One lookup per id at a time: later callers wait for the first one's answer."""
        with self._lock:
            text = self._known.get(schema_id)
            if text is not None:
                return text
            flight = self._inflight.get(schema_id)
            leader = flight is None
            if flight is None:
                flight = self._inflight[schema_id] = Future()
        if not leader:
            return flight.result()
        try:
            with self._lock:
                self.lookups += 1
            text = self._client.get_schema(schema_id)
        except SchemaNotFound as exc:
            with self._lock:
                self._missing[schema_id] = self._clock() + self.negative_ttl_s
            flight.set_exception(exc)
            raise
        except RegistryError as exc:
            unavailable = exc if isinstance(exc, RegistryUnavailable) else RegistryUnavailable(str(exc))
            flight.set_exception(unavailable)
            if unavailable is exc:
                raise
            raise unavailable from exc
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        else:
            with self._lock:
                self._known[schema_id] = text
            flight.set_result(text)
            return text
        finally:
            with self._lock:
                self._inflight.pop(schema_id, None)

    @contextmanager
    def only(self, schema_ids: Iterable[int]) -> Iterator[None]:
        """Within the block (this thread only), look up no id outside ``schema_ids``."""
        previous = getattr(self._scope, "allowed", None)
        self._scope.allowed = frozenset(schema_ids)
        try:
            yield
        finally:
            self._scope.allowed = previous


class InMemorySchemaRegistry:
    """A dictionary with the registry interface, for unit tests (ids start at ``first_id``)."""

    def __init__(self, first_id: int = 1) -> None:
        """Create an empty catalogue whose first registered schema gets ``first_id``."""
        self._next = first_id
        self._by_id: dict[int, str] = {}
        self._ids: dict[tuple[str, str], int] = {}

    def register(self, subject: str, schema: str) -> int:
        """Store ``schema`` under ``subject``; the same text always gets the same id."""
        for (_, text), schema_id in self._ids.items():
            if text == schema:
                self._ids[(subject, schema)] = schema_id
                return schema_id
        schema_id = self._next
        self._next += 1
        self._ids[(subject, schema)] = schema_id
        self._by_id[schema_id] = schema
        return schema_id

    def get_schema(self, schema_id: int) -> str:
        """Return the stored schema or raise :class:`SchemaNotFound`."""
        try:
            return self._by_id[schema_id]
        except KeyError:
            raise SchemaNotFound(f"no schema with id {schema_id}") from None
