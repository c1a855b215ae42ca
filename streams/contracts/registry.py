"""Schema registry clients behind one small interface.

:class:`HttpSchemaRegistry` speaks the Confluent Schema Registry REST API (Confluent's own
server, or Apicurio's ``/apis/ccompat/v7``). :class:`InMemorySchemaRegistry` is a test double
for unit tests and is never presented as a registry server.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Protocol

from streams.errors import RegistryError

_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


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
    """A Confluent-compatible REST client with per-process caching of ids and schemas."""

    def __init__(self, base_url: str, *, timeout_s: float = 10.0) -> None:
        """Point the client at ``base_url`` (e.g. ``http://127.0.0.1:18081/apis/ccompat/v7``)."""
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._by_id: dict[int, str] = {}
        self._ids: dict[tuple[str, str], int] = {}
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
            raise RegistryError(f"registry {method} {url} failed: HTTP {exc.code} {detail}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise RegistryError(f"registry {method} {url} unreachable: {exc}") from exc

    def register(self, subject: str, schema: str) -> int:
        """Register ``schema`` under ``subject`` (idempotent: same schema, same id)."""
        key = (subject, schema)
        with self._lock:
            if key in self._ids:
                return self._ids[key]
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

    def get_schema(self, schema_id: int) -> str:
        """Fetch (once) the schema registered under ``schema_id``."""
        with self._lock:
            cached = self._by_id.get(schema_id)
        if cached is not None:
            return cached
        answer = self._call("GET", f"/schemas/ids/{schema_id}")
        try:
            schema = str(answer["schema"])
        except (TypeError, KeyError) as exc:
            raise RegistryError(f"registry gave no schema for id {schema_id}: {answer!r}") from exc
        with self._lock:
            self._by_id[schema_id] = schema
        return schema


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
