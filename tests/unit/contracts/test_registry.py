"""Unit tests of the registry clients (streams.contracts.registry) with injected fakes.

:class:`SchemaResolver` is driven with a scripted fake client and a fake clock: lookups are
counted, negative entries expire, outages surface as ``RegistryUnavailable`` and are never
cached. :class:`HttpSchemaRegistry` is pointed at a scripted HTTP server on loopback.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from streams.contracts.registry import COMPATIBILITY, HttpSchemaRegistry, SchemaNotFound, SchemaResolver
from streams.errors import RegistryError, RegistryUnavailable


@dataclass
class FakeClient:
    """A registry client whose answers are scripted per id; counts every get_schema call."""

    schemas: dict[int, str] = field(default_factory=dict)
    down: bool = False
    calls: Counter[int] = field(default_factory=Counter)
    gate: threading.Event | None = None  # when set, get_schema waits for it (concurrency tests)

    def register(self, subject: str, schema: str) -> int:
        """Store under the next id."""
        schema_id = max(self.schemas, default=0) + 1
        self.schemas[schema_id] = schema
        return schema_id

    def get_schema(self, schema_id: int) -> str:
        """Answer from the script, or fail like an unreachable registry."""
        self.calls[schema_id] += 1
        if self.gate is not None:
            self.gate.wait(5)
        if self.down:
            raise RegistryUnavailable("connection refused")
        if schema_id not in self.schemas:
            raise SchemaNotFound(f"no {schema_id}")
        return self.schemas[schema_id]


@dataclass
class FakeClock:
    """Seconds that move only when the test says so."""

    now: float = 1000.0

    def __call__(self) -> float:
        """The injected clock."""
        return self.now


def test_found_schema_is_looked_up_once() -> None:
    """A known id costs one lookup, then is served from memory."""
    client = FakeClient({7: "s7"})
    resolver = SchemaResolver(client, clock=FakeClock())
    assert [resolver.get_schema(7) for _ in range(5)] == ["s7"] * 5
    assert client.calls[7] == 1 and resolver.lookups == 1


def test_unknown_id_is_negatively_cached_until_the_ttl_expires() -> None:
    """2 000 records with one unknown id cost one lookup per TTL; after it, the id is asked again."""
    client, clock = FakeClient(), FakeClock()
    resolver = SchemaResolver(client, clock=clock, negative_ttl_s=30)
    for _ in range(2000):
        with pytest.raises(SchemaNotFound):
            resolver.get_schema(99)
    assert client.calls[99] == 1
    clock.now += 29.9
    with pytest.raises(SchemaNotFound):
        resolver.get_schema(99)
    assert client.calls[99] == 1
    clock.now += 0.2
    client.schemas[99] = "registered meanwhile"
    assert resolver.get_schema(99) == "registered meanwhile"
    assert client.calls[99] == 2


def test_outage_is_retriable_and_never_cached() -> None:
    """While the registry is down every lookup raises RegistryUnavailable; once back, it answers."""
    client = FakeClient({5: "s5"}, down=True)
    resolver = SchemaResolver(client, clock=FakeClock())
    for _ in range(3):
        with pytest.raises(RegistryUnavailable):
            resolver.get_schema(5)
    with pytest.raises(RegistryUnavailable):
        resolver.resolve([5, 6])
    client.down = False
    assert resolver.get_schema(5) == "s5"
    assert client.calls[5] == 5  # 3 + 1 (resolve) + 1: a failure is not remembered


def test_non_retriable_client_error_is_reported_as_unavailable() -> None:
    """A registry refusing to answer (e.g. HTTP 401) is infrastructure too: never a dead letter."""

    class Refusing(FakeClient):
        def get_schema(self, schema_id: int) -> str:
            """Refuse like a misconfigured registry."""
            raise RegistryError("HTTP 401")

    with pytest.raises(RegistryUnavailable, match="401"):
        SchemaResolver(Refusing(), clock=FakeClock()).get_schema(1)


def test_resolve_looks_each_distinct_id_up_once_and_caches_negatives() -> None:
    """resolve() asks for each id once (duplicates collapsed), known and missing alike."""
    client = FakeClient({1: "a", 2: "b"})
    resolver = SchemaResolver(client, clock=FakeClock(), max_workers=4)
    resolver.resolve([1, 2, 3, 1, 3, 2, 4])
    assert client.calls == Counter({1: 1, 2: 1, 3: 1, 4: 1})
    assert not resolver.needs_lookup([1, 2, 3, 4])
    resolver.resolve([1, 2, 3, 4])
    assert sum(client.calls.values()) == 4


def test_concurrent_misses_for_one_id_cost_one_lookup() -> None:
    """Eight threads missing the same id at once share one request (single flight)."""
    gate = threading.Event()
    client = FakeClient({42: "s42"}, gate=gate)
    resolver = SchemaResolver(client, clock=FakeClock())
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(resolver.get_schema(42))) for _ in range(8)]
    for t in threads:
        t.start()
    while client.calls[42] == 0:
        threading.Event().wait(0.001)
    gate.set()
    for t in threads:
        t.join(5)
    assert results == ["s42"] * 8
    assert client.calls[42] == 1


def test_concurrent_misses_of_an_unknown_id_all_see_not_found() -> None:
    """Waiters on an in-flight lookup of an unknown id get SchemaNotFound too, one request in all."""
    gate = threading.Event()
    client = FakeClient(gate=gate)
    resolver = SchemaResolver(client, clock=FakeClock())
    errors: list[type[BaseException]] = []

    def miss() -> None:
        try:
            resolver.get_schema(8)
        except SchemaNotFound as exc:
            errors.append(type(exc))

    threads = [threading.Thread(target=miss) for _ in range(4)]
    for t in threads:
        t.start()
    while client.calls[8] == 0:
        threading.Event().wait(0.001)
    gate.set()
    for t in threads:
        t.join(5)
    assert errors == [SchemaNotFound] * 4
    assert client.calls[8] == 1


def test_only_scope_answers_other_ids_from_memory_without_a_request() -> None:
    """Inside only(ids), an id outside the set (bytes of a non-framed payload) costs no lookup."""
    client = FakeClient({1: "a", 0x22657665: "looks like an id"})
    resolver = SchemaResolver(client, clock=FakeClock())
    with resolver.only([1]):
        assert resolver.get_schema(1) == "a"
        with pytest.raises(SchemaNotFound, match="not framed"):
            resolver.get_schema(0x22657665)
    assert client.calls == Counter({1: 1})
    assert resolver.get_schema(0x22657665) == "looks like an id"  # outside the scope: looked up


def test_only_scope_is_per_thread() -> None:
    """A scope opened by one thread does not restrict lookups made by another."""
    client = FakeClient({3: "c"})
    resolver = SchemaResolver(client, clock=FakeClock())
    seen: list[str] = []
    with resolver.only([]):
        worker = threading.Thread(target=lambda: seen.append(resolver.get_schema(3)))
        worker.start()
        worker.join(5)
    assert seen == ["c"]


def test_registered_schema_needs_no_lookup() -> None:
    """A schema registered through the resolver is known by id at once."""
    client = FakeClient()
    resolver = SchemaResolver(client, clock=FakeClock())
    schema_id = resolver.register("s-value", "text")
    assert resolver.get_schema(schema_id) == "text"
    assert client.calls[schema_id] == 0


# --- HttpSchemaRegistry against a scripted server ---------------------------------------------


@dataclass
class Script:
    """What the scripted server answers, and what it was asked."""

    routes: dict[tuple[str, str], Any] = field(default_factory=dict)  # (status, payload), or a list of them in turn
    seen: list[tuple[str, str, Any]] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    """A loopback HTTP server answering from a script (unit-test double of a registry)."""
    script = Script()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            script.seen.append((self.command, self.path, body))
            answer = script.routes.get((self.command, self.path), (404, {"error_code": 40401}))
            if isinstance(answer, list):
                answer = answer.pop(0) if len(answer) > 1 else answer[0]
            status, payload = answer
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            """Silence the access log."""

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/apis/ccompat/v7", script
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_http_404_is_not_found_5xx_is_unavailable_4xx_is_an_error(server: tuple[str, Script]) -> None:
    """HTTP answers map to the three error kinds the pipeline tells apart."""
    url, script = server
    client = HttpSchemaRegistry(url)
    with pytest.raises(SchemaNotFound):
        client.get_schema(1)
    script.routes[("GET", "/apis/ccompat/v7/schemas/ids/2")] = (503, {"message": "starting"})
    with pytest.raises(RegistryUnavailable, match="503"):
        client.get_schema(2)
    script.routes[("GET", "/apis/ccompat/v7/schemas/ids/3")] = (401, {"message": "no"})
    with pytest.raises(RegistryError, match="401") as refused:
        client.get_schema(3)
    assert not isinstance(refused.value, RegistryUnavailable)


def test_connection_refused_is_unavailable() -> None:
    """Nobody listening on the port: RegistryUnavailable (retriable), not a data error."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RegistryUnavailable, match="unreachable"):
        HttpSchemaRegistry(f"http://127.0.0.1:{port}", timeout_s=2).get_schema(1)


def test_register_sets_the_subject_rule_before_the_first_version(server: tuple[str, Script]) -> None:
    """The compatibility rule is PUT before the first POST of a subject, once per client."""
    url, script = server
    base = "/apis/ccompat/v7"
    script.routes[("PUT", f"{base}/config/t-value")] = (200, {"compatibilityLevel": COMPATIBILITY})
    script.routes[("POST", f"{base}/subjects/t-value/versions")] = (200, {"id": 11})
    client = HttpSchemaRegistry(url)
    assert client.register("t-value", '"string"') == 11
    assert client.register("t-value", '"long"') == 11  # the scripted server gives 11 again
    assert [(m, p) for m, p, _ in script.seen] == [
        ("GET", f"{base}/config/t-value"),
        ("PUT", f"{base}/config/t-value"),
        ("POST", f"{base}/subjects/t-value/versions"),
        ("POST", f"{base}/subjects/t-value/versions"),
    ]
    assert script.seen[1][2] == {"compatibility": "FORWARD_TRANSITIVE"}


def test_a_stricter_existing_rule_is_kept(server: tuple[str, Script]) -> None:
    """A subject already FULL_TRANSITIVE (implies forward transitive) is not weakened."""
    url, script = server
    base = "/apis/ccompat/v7"
    script.routes[("GET", f"{base}/config/f-value")] = (200, {"compatibilityLevel": "FULL_TRANSITIVE"})
    script.routes[("POST", f"{base}/subjects/f-value/versions")] = (200, {"id": 3})
    assert HttpSchemaRegistry(url).register("f-value", '"string"') == 3
    assert ("PUT", f"{base}/config/f-value") not in [(m, p) for m, p, _ in script.seen]


def test_a_weaker_existing_rule_is_replaced(server: tuple[str, Script]) -> None:
    """A subject left at BACKWARD (Confluent's default) is set to FORWARD_TRANSITIVE."""
    url, script = server
    base = "/apis/ccompat/v7"
    script.routes[("GET", f"{base}/config/b-value")] = (200, {"compatibilityLevel": "BACKWARD"})
    script.routes[("PUT", f"{base}/config/b-value")] = (200, {"compatibilityLevel": COMPATIBILITY})
    script.routes[("POST", f"{base}/subjects/b-value/versions")] = (200, {"id": 4})
    HttpSchemaRegistry(url).register("b-value", '"string"')
    assert ("PUT", f"{base}/config/b-value", {"compatibility": COMPATIBILITY}) in script.seen


def test_a_rule_set_by_another_worker_in_between_is_accepted(server: tuple[str, Script]) -> None:
    """Two workers starting together both find no rule; the second PUT gets Apicurio's 409 ("rule
    already exists"): the client reads the level again and goes on, since the rule now holds."""
    url, script = server
    base = "/apis/ccompat/v7"
    script.routes[("GET", f"{base}/config/c-value")] = [
        (404, {"error_code": 40401}),
        (200, {"compatibilityLevel": COMPATIBILITY}),
    ]
    script.routes[("PUT", f"{base}/config/c-value")] = (409, {"message": "COMPATIBILITY rule already exists"})
    script.routes[("POST", f"{base}/subjects/c-value/versions")] = (200, {"id": 5})
    assert HttpSchemaRegistry(url).register("c-value", '"string"') == 5
    script.routes[("GET", f"{base}/config/d-value")] = (404, {"error_code": 40401})
    script.routes[("PUT", f"{base}/config/d-value")] = (409, {"message": "conflict"})
    with pytest.raises(RegistryError, match="409"):  # and a 409 with no rule behind it still fails
        HttpSchemaRegistry(url).register("d-value", '"string"')


def test_refused_rule_fails_loudly(server: tuple[str, Script]) -> None:
    """A registry that answers the PUT with another level makes register fail naming the subject."""
    url, script = server
    base = "/apis/ccompat/v7"
    script.routes[("PUT", f"{base}/config/r-value")] = (200, {"compatibilityLevel": "NONE"})
    with pytest.raises(RegistryError, match="r-value"):
        HttpSchemaRegistry(url).register("r-value", '"string"')


def test_incompatible_schema_409_is_an_error_not_an_outage(server: tuple[str, Script]) -> None:
    """A 409 (the rule refuses the schema) is a RegistryError, never retried as an outage."""
    url, script = server
    base = "/apis/ccompat/v7"
    script.routes[("PUT", f"{base}/config/i-value")] = (200, {"compatibilityLevel": COMPATIBILITY})
    script.routes[("POST", f"{base}/subjects/i-value/versions")] = (409, {"message": "Incompatible"})
    with pytest.raises(RegistryError, match="409") as refused:
        HttpSchemaRegistry(url).register("i-value", '"string"')
    assert not isinstance(refused.value, RegistryUnavailable)


def test_compatibility_none_leaves_rules_alone(server: tuple[str, Script]) -> None:
    """With compatibility=None the client never touches /config."""
    url, script = server
    script.routes[("POST", "/apis/ccompat/v7/subjects/n-value/versions")] = (200, {"id": 1})
    HttpSchemaRegistry(url, compatibility=None).register("n-value", '"string"')
    assert [p for _, p, _ in script.seen] == ["/apis/ccompat/v7/subjects/n-value/versions"]


def test_resolve_within_returns_pending_ids_and_keeps_looking_them_up() -> None:
    """A slow lookup is left running: its id is reported pending, and known once the lookup ends."""
    gate = threading.Event()
    client = FakeClient({1: "a", 2: "b"}, gate=gate)
    resolver = SchemaResolver(client, clock=FakeClock())
    assert resolver.resolve_within([1, 2, 3], timeout_s=0.01) == {1, 2, 3}
    assert resolver.resolve_within([1, 2, 3], timeout_s=0.0) == {1, 2, 3}  # still the same lookups
    gate.set()
    assert resolver.resolve_within([1, 2, 3], timeout_s=5) == set()
    assert client.calls == Counter({1: 1, 2: 1, 3: 1})
    assert resolver.get_schema(2) == "b"
    with pytest.raises(SchemaNotFound):
        resolver.get_schema(3)  # negatively cached by the background lookup
    assert client.calls[3] == 1


def test_resolve_within_reports_an_outage_then_tries_again() -> None:
    """A background lookup that met a stopped registry raises RegistryUnavailable once; the next call asks again."""
    client = FakeClient({4: "d"}, down=True)
    resolver = SchemaResolver(client, clock=FakeClock())
    with pytest.raises(RegistryUnavailable):
        resolver.resolve_within([4], timeout_s=5)
    client.down = False
    assert resolver.resolve_within([4], timeout_s=5) == set()
    assert resolver.get_schema(4) == "d" and client.calls[4] == 2


def test_not_found_from_a_registry_still_loading_is_an_outage(server: tuple[str, Script]) -> None:
    """Apicurio answers while replaying its journal: "not found" then, with /health/ready 503, is retriable."""
    url, script = server
    script.routes[("GET", "/health/ready")] = (503, {"status": "DOWN"})
    client = HttpSchemaRegistry(url, clock=FakeClock())
    with pytest.raises(RegistryUnavailable, match="not ready"):
        client.get_schema(77)
    script.routes[("GET", "/health/ready")] = (200, {"status": "UP"})
    with pytest.raises(SchemaNotFound):
        client.get_schema(77)


def test_a_ready_answer_is_trusted_for_a_few_seconds(server: tuple[str, Script]) -> None:
    """Many misses in a row cost one readiness request until 5 s have passed (injected clock)."""
    url, script = server
    script.routes[("GET", "/health/ready")] = (200, {"status": "UP"})
    clock = FakeClock()
    client = HttpSchemaRegistry(url, clock=clock)
    for schema_id in range(10):
        with pytest.raises(SchemaNotFound):
            client.get_schema(schema_id)
    clock.now += 5.1
    with pytest.raises(SchemaNotFound):
        client.get_schema(99)
    assert [p for _, p, _ in script.seen].count("/health/ready") == 2
