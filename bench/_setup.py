"""Setting up and tearing down one benchmark run on the local stack (not a benchmark itself).

Shared by ``throughput.py`` and ``backlog.py``: the stack up (``lifecycle.up``, or reused), a fresh
topic prefix, throw-away pseudonym keys and agency key pairs (the encrypting policies seal to their
public halves), the topics and the ACL plan, applied as the stack's admin. The bench process talks
to Kafka as the admin; the workers run as the processor (``_stack.start_workers``).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from streams.assembly import (
    PolicySet,
    agency_names,
    build_pipeline,
    hold_topics,
    key_holders,
    load_policy_set,
    load_public_keys,
    output_topics,
)
from streams.contracts.registry import HttpSchemaRegistry
from streams.crypto.keys import generate_key_pair, write_key_pair
from streams.crypto.ring import import_public_key
from streams.kafka.acl import acl_plan, agency_users
from streams.kafka.acl_apply import apply_plan, to_acl
from streams.kafka.topics import admin_client, create_topics
from streams.pipeline import Pipeline
from streams.policy.pseudonyms import StaticKeyRing, generate_keys, write_key_file
from streams.settings import Settings, settings_from_env
from streams.stack import lifecycle
from streams.stack.settings import StackSettings


@dataclass
class BenchRun:
    """One run's stack, settings (as the admin, with the run's prefix), keys, topics and policies."""

    stack: StackSettings
    settings: Settings
    run_dir: Path
    policy_set: PolicySet
    holds: list[str]
    keys: dict[str, bytes]
    keys_file: Path
    parts: dict[str, int]
    registry: HttpSchemaRegistry
    broker_pid: int | None

    @property
    def prefix(self) -> str:
        """The run's topic prefix, e.g. ``bench1700000000.``."""
        return self.settings.topic_prefix

    @property
    def outputs(self) -> list[str]:
        """The agency topics, with the prefix."""
        return [self.prefix + t for t in output_topics(self.policy_set)]

    def bench_topics(self) -> list[str]:
        """Every topic created for this run (what :func:`cleanup` deletes)."""
        return [t for t in self.parts if t.startswith(self.prefix)]

    def reference(self) -> Pipeline:
        """An in-process Pipeline with the workers' keys, policies and registry (expected outputs, output keys)."""
        return build_pipeline(
            self.settings,
            self.registry,
            StaticKeyRing(self.keys),
            policy_set=self.policy_set,
            public_keys=load_public_keys(self.settings),
        )


def prepare(stem: str, *, small_cells: bool = True) -> BenchRun:
    """Bring the stack up, make keys, topics and ACLs under a fresh prefix ``<stem><unix time>.``.

    Sets ``SCREENING_PUBLIC_KEYS_DIR`` (and, without small cells, ``SCREENING_POLICY_DIR``) in this
    process's environment, which the workers inherit.
    """
    stack = StackSettings.from_env(os.environ)
    ends = lifecycle.up(stack, echo=lambda line: print(f"  {line}"), users=agency_users(load_policy_set(Settings())))
    prefix = f"{stem}{int(time.time())}."
    settings = settings_from_env().with_(
        bootstrap_servers=ends.bootstrap_servers,
        registry_url=ends.registry_url,
        topic_prefix=prefix,
        kafka_auth=lifecycle.admin_auth(stack),
    )
    run_dir = stack.state_dir / "bench" / prefix.rstrip(".")
    if not small_cells:
        policy_dir = without_small_cells(run_dir / "policies")
        settings = settings.with_(policy_dir=policy_dir)
        os.environ["SCREENING_POLICY_DIR"] = str(policy_dir)  # inherited by the workers
    policy_set = load_policy_set(settings)
    holds = hold_topics(settings, policy_set)
    keys = generate_keys(agency_names(policy_set))
    keys_file = run_dir / "throwaway-keys.json"
    write_key_file(keys_file, keys)
    # Throw-away agency key pairs: the workers seal encrypted fields to the public halves.
    public_dir = run_dir / "public-keys"
    now = int(time.time() * 1000)
    for agency in key_holders(policy_set):
        pair = generate_key_pair(agency, now - 86_400_000, now + 30 * 86_400_000)
        _, public = write_key_pair(run_dir / "agency-keys", pair)
        import_public_key(public_dir, public)
    settings = settings.with_(public_keys_dir=public_dir)
    os.environ["SCREENING_PUBLIC_KEYS_DIR"] = str(public_dir)  # inherited by the workers
    parts = create_topics(settings, output_topics(policy_set), holds)
    apply_plan(settings, policy_set)
    broker = [int(p) for p in re.findall(r"pid (\d+)", lifecycle.status(stack).get("kafka", ""))]
    return BenchRun(
        stack,
        settings,
        run_dir,
        policy_set,
        holds,
        keys,
        keys_file,
        parts,
        HttpSchemaRegistry(settings.registry_url),
        broker[0] if broker else None,
    )


def without_small_cells(target: Path) -> Path:
    """A copy of the shipped policies without their ``k_anonymity`` option."""
    import yaml

    from streams.policy.model import default_policy_dir

    target.mkdir(parents=True, exist_ok=True)
    for path in default_policy_dir().glob("*.yaml"):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        doc.pop("k_anonymity", None)
        (target / path.name).write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return target


def cleanup(settings: Settings, topics: list[str], policy_set: PolicySet, groups: Iterable[str] = ()) -> None:
    """Delete the bench topics, the worker group (and ``groups``) and the ACLs applied for them (best effort)."""
    admin = admin_client(settings.bootstrap_servers, auth=settings.kafka_auth)
    try:
        admin.delete_topics(topics, raise_errors=False)
        names = [settings.group_id, *groups]
        admin.delete_groups(names)
        rules = acl_plan(settings, policy_set)
        admin.delete_acls([to_acl(rule) for rule in rules])
        print(f"deleted {len(topics)} bench topics, group(s) {', '.join(names)} and {len(rules)} ACLs")
    except Exception as exc:  # best effort: never hide the benchmark's own error
        print(f"cleanup failed: {type(exc).__name__}: {exc}")
    finally:
        admin.close()
