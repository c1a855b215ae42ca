"""DLQ replay round trip on the real broker: quarantine, fix the geography without code, replay once.

Only the public contract is used: the ``screening-streams worker`` and ``screening-streams dlq``
commands configured by environment variables, and the topics. An event from Saint-Pierre-et-
Miquelon (commune 97501, department 975, in no region) is dead-lettered with
``unknown_commune``. Replaying it before the fix sends it back to the DLQ with a higher replay
count (per the replay ledger); after the fix (``SCREENING_GEOGRAPHY_FILE`` mapping 975 to
region 28) one replay delivers it exactly once, and later replays send nothing unless asked
(``--again``). An invalid record whose producer set ``dlq.replay.count: 99`` is dead-lettered
without that header and replayed like any other: producers cannot forge replay counts.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from kafka import TopicPartition

from streams.assembly import load_policy_set
from streams.contracts.registry import HttpSchemaRegistry
from streams.crypto.keys import generate_key_pair, write_key_pair
from streams.dlq.ledger import Ledger, ledger_topic, read_ledger
from streams.dlq.letters import DeadLetter, parse
from streams.domain.generate import GeneratorSettings, generate_events
from streams.domain.geography import DEFAULT_GEOGRAPHY
from streams.kafka.offsets import ReadRecord, read_from, wait_for_lag_zero
from streams.kafka.publish import event_encoder, framed_events, publish_raw
from streams.policy.engine import Minimiser
from streams.stack.settings import Endpoints

from .conftest import Env, Worker, make_env

STRAY_ID = "97500000-0000-4000-8000-000000000975"
FORGED_ID = "99000000-0000-4000-8000-000000000099"
FORGED_HEADERS = (("dlq.replay.count", b"99"), ("dlq.replay.of", b"screening.results.dlq.v1:0:0"))


def _read_all(env: Env, topic: str) -> list[ReadRecord]:
    full = env.settings.topic_prefix + topic if not topic.startswith(env.settings.topic_prefix) else topic
    start = {TopicPartition(full, p): 0 for p in range(env.partitions[full])}
    return read_from(env.settings.bootstrap_servers, start, auth=env.settings.kafka_auth)


def _cli(env: Env, *args: str) -> str:
    """Run ``screening-streams dlq ARGS`` as an operator would, with the environment's variables."""
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "dlq", *args],
        env=env.process_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _cli_without_key(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    """``screening-streams dlq ARGS`` without the operators' private key in the environment (any exit code)."""
    environ = {k: v for k, v in env.process_env().items() if k != "SCREENING_DLQ_PRIVATE_KEY"}
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", "dlq", *args], env=environ, capture_output=True, text=True, timeout=120
    )


def _drain(env: Env) -> None:
    s = env.settings
    wait_for_lag_zero(s.bootstrap_servers, s.group_id, s.ingress_topic, auth=s.kafka_auth, timeout_s=180)


@pytest.fixture(scope="module")
def round_trip(stack: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Run the whole story once and record what each step produced."""
    tmp = tmp_path_factory.mktemp("dlq")
    env = make_env(stack, tmp, "dlq")
    encoder = event_encoder(HttpSchemaRegistry(env.settings.registry_url), env.settings.ingress_topic, 1)
    events = list(generate_events(12, GeneratorSettings(seed=975, positive_share=0.5)))
    stray = dict(events[0], event_id=STRAY_ID, commune_code="97501", result="POSITIVE", processing_mode="P")
    forged = dict(events[1], event_id=FORGED_ID, nir=events[1]["nir"][:13] + "00")  # invalid NIR key
    records = [*framed_events([*events, stray], encoder), (FORGED_ID.encode(), encoder.encode(forged), FORGED_HEADERS)]
    asyncio.run(
        publish_raw(
            env.settings.bootstrap_servers,
            env.settings.ingress_topic,
            records,
            env.partitions[env.settings.ingress_topic],
            auth=env.settings.kafka_auth,
        )
    )
    seen: dict[str, Any] = {"env": env, "stray": stray}

    before_fix = Worker(env, tmp / "worker-1.log")
    try:
        _drain(env)
        seen["dlq_initial"] = env.dead_letters()
        seen["replay_before_fix"] = _cli(env, "replay", "--code", "unknown_commune")
        _drain(env)
        seen["dlq_after_failed_replay"] = env.dead_letters()
        seen["replay_forged"] = _cli(env, "replay", "--code", "invalid_nir")
        _drain(env)
        seen["dlq_after_forged_replay"] = env.dead_letters()
    finally:
        seen["exit_1"] = before_fix.stop()
        seen["log_1"] = before_fix.log()

    geography_file = tmp / "geography.json"
    geography_file.write_text(json.dumps({"departments": {"975": "28"}}), encoding="utf-8")
    seen["geography_file"] = geography_file
    fixed = Worker(env, tmp / "worker-2.log", extra_env={"SCREENING_GEOGRAPHY_FILE": str(geography_file)})
    try:
        seen["replay_after_fix"] = _cli(env, "replay", "--code", "unknown_commune")
        _drain(env)
        seen["replay_again_unasked"] = _cli(env, "replay", "--code", "unknown_commune")
        seen["replay_again_dry_run"] = _cli(env, "replay", "--code", "unknown_commune", "--again", "--dry-run")
        seen["replay_again_capped"] = _cli(
            env, "replay", "--code", "unknown_commune", "--again", "--dry-run", "--max-replays", "1"
        )
        _drain(env)
        seen["dlq_final"] = env.dead_letters()
        ledger = TopicPartition(ledger_topic(env.settings.topic_prefix), 0)  # one partition
        seen["ledger"] = read_ledger(
            read_from(env.settings.bootstrap_servers, {ledger: 0}, auth=env.settings.kafka_auth)
        )
        seen["list"] = _cli(env, "list")
        seen["show"] = _cli(env, "show", "--code", "unknown_commune", "--limit", "5", "--hex")
        seen["list_without_key"] = _cli_without_key(env, "list")
        seen["show_without_key"] = _cli_without_key(env, "show", "--code", "invalid_nir", "--hex")
        seen["replay_without_key"] = _cli_without_key(env, "replay", "--code", "invalid_nir")
        stranger, _ = write_key_pair(tmp / "stranger", generate_key_pair("operators", 0, 4_102_444_800_000))
        seen["show_wrong_key"] = _cli_without_key(env, "show", "--code", "invalid_nir", "--private-key", str(stranger))
    finally:
        seen["exit_2"] = fixed.stop()
        seen["log_2"] = fixed.log()
    yield seen


def _headers(record: ReadRecord) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers if k.startswith("dlq.")}


def _keyed(records: list[ReadRecord], key: str) -> list[ReadRecord]:
    return [r for r in records if r.key == key.encode()]


def _letters(round_trip: dict[str, Any], records: list[ReadRecord], key: str) -> list[DeadLetter]:
    """The dead letters of ``key``, their replay ranks read from the final ledger, in replay order."""
    ledger: Ledger = round_trip["ledger"]
    return sorted((parse(r, ledger) for r in _keyed(records, key)), key=lambda d: d.replay_count or 0)


def test_event_of_a_department_in_no_region_is_dead_lettered_as_unknown_commune(round_trip: dict[str, Any]) -> None:
    """Commune 97501 (department 975) is quarantined with unknown_commune, raw input kept; valid events are not."""
    assert round_trip["exit_1"] == 0, round_trip["log_1"][-2000:]
    assert {r.key for r in round_trip["dlq_initial"]} == {STRAY_ID.encode(), FORGED_ID.encode()}
    (record,) = _keyed(round_trip["dlq_initial"], STRAY_ID)
    headers = _headers(record)
    assert headers["dlq.reason.code"] == "unknown_commune" and "dlq.replay.count" not in headers
    (letter,) = _letters(round_trip, round_trip["dlq_initial"], STRAY_ID)
    assert (letter.replay_count, letter.replay_of) == (0, None)


def test_a_replay_that_fails_again_returns_once_with_count_plus_one(round_trip: dict[str, Any]) -> None:
    """Before the fix, a replay terminates after one record and yields one new dead letter: count 1, traceable."""
    assert round_trip["replay_before_fix"].startswith("replayed 1 dead letters")
    original, again = _letters(round_trip, round_trip["dlq_after_failed_replay"], STRAY_ID)
    assert again.record.key == original.record.key and again.record.value == original.record.value
    assert (original.replay_count, again.replay_count) == (0, 1)
    assert again.replay_of == original.coordinates
    assert again.code == "unknown_commune"


def test_a_forged_replay_count_is_dropped_and_the_record_is_replayed(round_trip: dict[str, Any]) -> None:
    """dlq.replay.count: 99 set by the producer never reaches the DLQ; `dlq replay` replays the record (count 1)."""
    (first,) = _keyed(round_trip["dlq_initial"], FORGED_ID)
    headers = _headers(first)
    assert headers["dlq.reason.code"] == "invalid_nir"
    assert "dlq.replay.count" not in headers and "dlq.replay.of" not in headers
    assert round_trip["replay_forged"].startswith("replayed 1 dead letters to")
    original, again = _letters(round_trip, round_trip["dlq_after_forged_replay"], FORGED_ID)
    assert (original.replay_count, again.replay_count, again.replay_of) == (0, 1, original.coordinates)


def test_after_the_geography_fix_one_replay_delivers_the_event_exactly_once(round_trip: dict[str, Any]) -> None:
    """With 975 -> 28 the replay reaches ARS Normandie, CNAM and SPF exactly once each, and the DLQ grows no more."""
    assert round_trip["exit_2"] == 0, round_trip["log_2"][-2000:]
    out = round_trip["replay_after_fix"]
    assert out.startswith("replayed 1 dead letters") and "skipped 1 an earlier replay already sent back" in out
    env: Env = round_trip["env"]
    policy_set = load_policy_set(env.settings)
    geography = DEFAULT_GEOGRAPHY.with_departments({"975": "28"})
    minimiser = Minimiser(policy_set.policies, policy_set.input_schema, env.keys, geography)
    expected = {view.agency.topic: view.record["event_ref"] for view in minimiser.apply(round_trip["stray"])}
    assert set(expected) == {"tracing.ars.28.results.v1", "tracing.cnam.results.v1", "surveillance.spf.results.v1"}
    for topic, ref in expected.items():
        copies = [r for r in _read_all(env, topic) if r.key == ref.encode()]
        assert len(copies) == 1, f"{topic}: {len(copies)} copies"
    stray = [_keyed(round_trip[k], STRAY_ID) for k in ("dlq_final", "dlq_after_failed_replay")]
    assert len(stray[0]) == len(stray[1]) == 2


def test_later_replays_send_nothing_unless_asked_again(round_trip: dict[str, Any]) -> None:
    """A second replay skips DLQ records already sent back; --again would resend them, bounded by --max-replays."""
    out = round_trip["replay_again_unasked"]
    assert out.startswith("replayed 0 dead letters") and "skipped 2 an earlier replay already sent back" in out
    assert all(letter.replay_count is not None for letter in _letters(round_trip, round_trip["dlq_final"], STRAY_ID))
    assert "dry run: would replay 2 dead letters" in round_trip["replay_again_dry_run"]
    capped = round_trip["replay_again_capped"]
    assert "dry run: would replay 1 dead letters" in capped
    assert "skipped 1 already replayed 1 times or more" in capped


def test_list_and_show_describe_without_identifying_data(round_trip: dict[str, Any]) -> None:
    """dlq list counts the two unknown_commune letters; dlq show never prints the event's identifying fields."""
    listing = round_trip["list"]
    row = next(line.split() for line in listing.splitlines() if line.startswith("unknown_commune"))
    assert row[1:] == ["validate", round_trip["env"].settings.ingress_topic, "2", "1"]
    shown = round_trip["show"]
    assert shown.count("dead letter ") == 2 and "(a replay of " in shown and "0 (an original failure)" in shown
    stray = round_trip["stray"]
    for field in ("nir", "last_name", "first_names", "phone", "email", "postcode", "city"):
        value = stray.get(field)
        if isinstance(value, str) and len(value) >= 4:
            assert value not in shown, field
    assert STRAY_ID not in shown


def test_without_the_operators_key_list_and_show_read_headers_and_replay_is_refused(round_trip: dict[str, Any]) -> None:
    """dlq list and show need no key (dlq.* headers: code, source, sizes, framing; the raw record stays sealed);
    replay without the key is refused before anything is sent; a wrong key stops show naming the DLQ record."""
    listing = round_trip["list_without_key"]
    assert listing.returncode == 0 and "unknown_commune" in listing.stdout and "invalid_nir" in listing.stdout
    shown = round_trip["show_without_key"]
    assert shown.returncode == 0, shown.stderr
    assert "sealed to the operators' key" in shown.stdout and "give the operators' private key" in shown.stdout
    assert "Confluent, schema id" in shown.stdout and FORGED_ID not in shown.stdout
    refused = round_trip["replay_without_key"]
    assert refused.returncode != 0 and "--private-key" in refused.stderr
    wrong = round_trip["show_wrong_key"]
    dlq = round_trip["env"].settings.dlq_topic
    assert wrong.returncode == 2 and f"dead letter {dlq}[" in wrong.stderr and "does not open" in wrong.stderr
    assert "not among those supplied" in wrong.stderr and not wrong.stdout
