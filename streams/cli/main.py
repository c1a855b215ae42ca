"""The ``screening-streams`` command line. Every flag falls back to an environment variable."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from streams.cli.options import common_options
from streams.cli.options import settings as _settings
from streams.credentials import ADMIN, PROCESSOR, PRODUCER
from streams.errors import ScreeningStreamsError
from streams.settings import Settings, env_var
from streams.stack import lifecycle
from streams.stack.settings import StackSettings


class _Group(click.Group):
    """Turns project errors into one readable line and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ScreeningStreamsError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
def main() -> None:
    """screening-streams: minimise screening test results per recipient on Kafka."""


# ---------------------------------------------------------------- broker
@main.group()
def broker() -> None:
    """Run a real local Kafka broker (KRaft) and Apicurio registry, fetched with mvn."""


@broker.command("up")
def broker_up() -> None:
    """Fetch (once), start and wait for the local broker and registry; give every principal its credentials.

    The broker authenticates every client (SASL SCRAM-SHA-512) and allows nothing without an
    ACL; each principal's credentials file is written under the stack's state directory.
    Apply the ACLs next: ``screening-streams topics`` then ``screening-streams acl apply``.
    """
    from streams.assembly import load_policy_set
    from streams.kafka.acl import agency_users

    stack = StackSettings.from_env(os.environ)
    endpoints = lifecycle.up(stack, echo=click.echo, users=agency_users(load_policy_set(_settings())))
    click.echo(f"KAFKA_BOOTSTRAP_SERVERS={endpoints.bootstrap_servers}")
    click.echo(f"SCHEMA_REGISTRY_URL={endpoints.registry_url}")
    if endpoints.managed:
        click.echo(f"credentials (one file per principal, 0600): {stack.state_dir / 'credentials'}")


@broker.command("down")
def broker_down() -> None:
    """Stop the local broker and registry (data and downloads are kept)."""
    lifecycle.down(StackSettings.from_env(os.environ), echo=click.echo)


@broker.command("status")
def broker_status() -> None:
    """Say whether the local broker and registry run."""
    for name, state in lifecycle.status(StackSettings.from_env(os.environ)).items():
        click.echo(f"{name}: {state}")


@broker.command("wipe")
def broker_wipe() -> None:
    """Stop and delete the local broker's data (downloads are kept)."""
    lifecycle.wipe(StackSettings.from_env(os.environ))


# ---------------------------------------------------------------- topics & keys
@main.command("topics")
@common_options
def topics_create(bootstrap_servers: str | None, registry_url: str | None, topic_prefix: str | None) -> None:
    """Create every topic the processor uses (idempotent) and list their partitions."""
    from streams.assembly import hold_topics, load_policy_set, output_topics
    from streams.kafka.topics import create_topics

    settings = _settings(ADMIN, bootstrap_servers=bootstrap_servers, topic_prefix=topic_prefix)
    policy_set = load_policy_set(settings)
    counts = create_topics(settings, output_topics(policy_set), hold_topics(settings, policy_set))
    for name, count in sorted(counts.items()):
        click.echo(f"{name}  partitions={count}")


@main.group()
def acl() -> None:
    """Kafka ACLs derived from the policies (one principal per agency)."""


@acl.command("plan")
@common_options
def acl_plan_command(bootstrap_servers: str | None, registry_url: str | None, topic_prefix: str | None) -> None:
    """Print the kafka-acls.sh commands that give each agency read access to its own topic only."""
    from streams.assembly import load_policy_set
    from streams.kafka.acl import acl_plan

    settings = _settings(bootstrap_servers=bootstrap_servers, topic_prefix=topic_prefix)
    for rule in acl_plan(settings, load_policy_set(settings)):
        click.echo(rule.command(settings.bootstrap_servers))


@acl.command("apply")
@common_options
@click.option("--dry-run", is_flag=True, envvar="SCREENING_ACL_DRY_RUN", help="Print the changes without making them.")
@click.option(
    "--accept-foreign",
    is_flag=True,
    envvar="SCREENING_ACL_ACCEPT_FOREIGN",
    help="Exit 0 even when rules outside the plan (wildcards, prefixed, per host) still grant access.",
)
def acl_apply_command(
    bootstrap_servers: str | None,
    registry_url: str | None,
    topic_prefix: str | None,
    dry_run: bool,
    accept_foreign: bool,
) -> None:
    """As the admin: add the rules the policies imply, remove those they no longer imply; print both.

    Only the deployment's own rules are touched (its principals, on resources of its topic
    prefix); anything else stays as it is.
    """
    from streams.assembly import load_policy_set
    from streams.kafka.acl_apply import apply_plan

    settings = _settings(ADMIN, bootstrap_servers=bootstrap_servers, topic_prefix=topic_prefix)
    change = apply_plan(settings, load_policy_set(settings), dry_run=dry_run)
    verb = ("would add", "would remove") if dry_run else ("added", "removed")
    for rule in change.added:
        click.echo(f"{verb[0]}: {rule.principal} {rule.operation} {rule.resource_type} {rule.name} ({rule.pattern})")
    for rule in change.removed:
        click.echo(f"{verb[1]}: {rule.principal} {rule.operation} {rule.resource_type} {rule.name} ({rule.pattern})")
    click.echo(f"{verb[0]} {len(change.added)}, {verb[1]} {len(change.removed)}, unchanged {change.kept}")
    for grant in change.foreign:
        click.echo(f"outside the plan, still granting access (not removed: remove it by hand): {grant}", err=True)
    if change.foreign and not accept_foreign:
        raise ScreeningStreamsError(
            f"{len(change.foreign)} rules outside the plan still grant the deployment's principals access "
            "(listed above); remove them, or pass --accept-foreign"
        )


@main.group()
def keys() -> None:
    """Pseudonymisation keys (one secret per agency)."""


@keys.command("generate")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Key file to create (JSON, mode 0600). No environment fallback: SCREENING_KEYS_FILE names live keys.",
)
@click.option("--force", is_flag=True, default=False, help="Replace an existing key file (no environment fallback).")
def keys_generate(out: Path, force: bool) -> None:
    """Write throw-away random keys for every agency (demos and tests; never commit them); never overwrites."""
    from streams.assembly import agency_names, load_policy_set
    from streams.policy.pseudonyms import generate_keys, write_key_file

    agencies = agency_names(load_policy_set(_settings()))
    write_key_file(out, generate_keys(agencies), force=force)
    click.echo(f"wrote keys for {len(agencies)} agencies to {out}")


# ---------------------------------------------------------------- generate
@main.command("generate")
@click.option("--count", "-n", type=int, default=1000, show_default=True, envvar="SCREENING_GENERATE_COUNT")
@click.option("--seed", type=int, default=0, show_default=True, envvar="SCREENING_GENERATE_SEED")
@click.option(
    "--schema-version",
    type=click.Choice(["1", "2"]),
    default="1",
    show_default=True,
    envvar="SCREENING_GENERATE_SCHEMA_VERSION",
)
@click.option("--positive-share", type=float, default=0.15, show_default=True, envvar="SCREENING_POSITIVE_SHARE")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    envvar="SCREENING_GENERATE_OUT",
    help="Write to a file instead: .avro (container file) or .jsonl (readable dates).",
)
@click.option(
    "--publish/--no-publish",
    default=False,
    envvar="SCREENING_GENERATE_PUBLISH",
    help="Publish to the ingress topic (Confluent framing, schema registered).",
)
@common_options
def generate(
    count: int,
    seed: int,
    schema_version: str,
    positive_share: float,
    out: Path | None,
    publish: bool,
    bootstrap_servers: str | None,
    registry_url: str | None,
    topic_prefix: str | None,
) -> None:
    """Generate realistic synthetic screening events (valid NIRs, real communes, 18 regions)."""
    from streams.domain.generate import GeneratorSettings, generate_events

    if not out and not publish:
        raise click.UsageError("say where the events go: --out FILE or --publish")
    version = int(schema_version)
    events = generate_events(count, GeneratorSettings(seed=seed, positive_share=positive_share, schema_version=version))
    if out:
        _write_events(out, events, version, count)
        click.echo(f"wrote {count} events to {out}")
        return
    settings = _settings(
        PRODUCER, bootstrap_servers=bootstrap_servers, registry_url=registry_url, topic_prefix=topic_prefix
    )
    sent = _publish(settings, events, version, count)
    click.echo(f"published {sent} events to {settings.ingress_topic}")


def _publish(settings: Settings, events: Any, version: int, count: int) -> int:
    from streams.contracts.registry import HttpSchemaRegistry
    from streams.kafka.publish import event_encoder, framed_events, publish_raw
    from streams.kafka.topics import admin_client, partition_counts

    encoder = event_encoder(HttpSchemaRegistry(settings.registry_url), settings.ingress_topic, version)
    admin = admin_client(settings.bootstrap_servers, auth=settings.kafka_auth)
    try:
        partitions = partition_counts(admin, [settings.ingress_topic]).get(settings.ingress_topic)
    finally:
        admin.close()
    if not partitions:
        raise ScreeningStreamsError(f"topic {settings.ingress_topic} does not exist: run `screening-streams topics`")
    with click.progressbar(length=count, label="publishing", file=sys.stderr) as bar:
        last = [0]

        def progress(sent: int) -> None:
            bar.update(sent - last[0])
            last[0] = sent

        return asyncio.run(
            publish_raw(
                settings.bootstrap_servers,
                settings.ingress_topic,
                framed_events(events, encoder),
                partitions,
                auth=settings.kafka_auth,
                progress=progress,
            )
        )


def _write_events(out: Path, events: Any, version: int, count: int) -> None:
    import fastavro

    from streams.contracts.schemas import input_schema, to_readable

    schema = input_schema(version)
    with click.progressbar(events, length=count, label="generating", file=sys.stderr) as bar:
        if out.suffix == ".avro":
            with out.open("wb") as handle:
                # The file's schema keeps its logical types; fastavro writes the wire-native
                # ints (days, epoch millis) of the generated events as they are.
                fastavro.writer(handle, fastavro.parse_schema(schema), bar)
        else:
            with out.open("w", encoding="utf-8") as handle:
                for event in bar:
                    handle.write(json.dumps(to_readable(event, schema), ensure_ascii=False) + "\n")


# ---------------------------------------------------------------- worker
@main.command("worker")
@common_options
@click.option("--keys-file", type=click.Path(path_type=Path), envvar=env_var("keys_file"))
@click.option(
    "--geography-file",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar=env_var("geography_file"),
    help='JSON {"departments": {"975": "28"}}: departments added to the routing table.',
)
@click.option("--loglevel", envvar=env_var("log_level"), default="warning", show_default=True)
@click.option(
    "--instance-id",
    envvar=env_var("instance_id"),
    help="group.instance.id (static membership): unique per worker, kept across its restarts.",
)
@click.option(
    "--guarantee",
    type=click.Choice(["exactly_once", "at_least_once"]),
    envvar=env_var("processing_guarantee"),
    help="exactly_once (default: Kafka transactions) or at_least_once.",
)
@click.option(
    "--public-keys-dir",
    type=click.Path(path_type=Path, file_okay=False),
    envvar=env_var("public_keys_dir"),
    help="Agencies' public keys (agency import-key): required when the policies encrypt fields.",
)
@click.option(
    "--audit-key-file",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar=env_var("audit_key_file"),
    help="The audit secret (audit keygen): with it, one decision record per event goes to the audit topic.",
)
@click.option(
    "--web-port",
    type=click.IntRange(0, 65535),
    envvar=env_var("web_port"),
    help="Port of /metrics, /healthz, /readyz [default: 0 = off; e.g. 6066].",
)
def worker(
    bootstrap_servers: str | None,
    registry_url: str | None,
    topic_prefix: str | None,
    keys_file: Path | None,
    geography_file: Path | None,
    loglevel: str,
    instance_id: str | None,
    guarantee: str | None,
    public_keys_dir: Path | None,
    audit_key_file: Path | None,
    web_port: int | None,
) -> None:
    """Run a worker: consume the ingress topic, publish minimised views (scale by processes)."""
    from streams.assembly import (
        build_audit_writer,
        build_pipeline,
        hold_topics,
        load_policy_set,
        load_public_keys,
        output_topics,
    )
    from streams.audit.keys import AuditKeys, load_secret
    from streams.contracts.registry import HttpSchemaRegistry
    from streams.domain.geography import DEFAULT_GEOGRAPHY
    from streams.domain.geography_file import load_geography_file
    from streams.kafka.audit_io import AuditSink, tail_reader
    from streams.kafka.clients import consumer_config
    from streams.kafka.smallcell_io import build_small_cells, check_hold_partitions
    from streams.kafka.topics import check_one_partition_per_ingress, require_topics
    from streams.policy.pseudonyms import StaticKeyRing
    from streams.worker import build_app, run_worker

    settings = _settings(
        PROCESSOR,
        bootstrap_servers=bootstrap_servers,
        registry_url=registry_url,
        topic_prefix=topic_prefix,
        keys_file=keys_file,
        geography_file=geography_file,
        log_level=loglevel,
        instance_id=instance_id,
        processing_guarantee=guarantee,
        public_keys_dir=public_keys_dir,
        audit_key_file=audit_key_file,
        web_port=web_port,
    )
    geography = load_geography_file(settings.geography_file) if settings.geography_file else DEFAULT_GEOGRAPHY
    key_ring = StaticKeyRing.from_file(settings.keys_file) if settings.keys_file else StaticKeyRing.from_env()
    policy_set = load_policy_set(settings, geography=geography)
    registry = HttpSchemaRegistry(settings.registry_url)
    audit_keys = AuditKeys(load_secret(settings.audit_key_file)) if settings.audit_key_file else None
    pipeline = build_pipeline(
        settings,
        registry,
        key_ring,
        geography=geography,
        policy_set=policy_set,
        public_keys=load_public_keys(settings),
        audit_keys=audit_keys,
    )
    audit = None
    if audit_keys is not None:
        tail = tail_reader(consumer_config(settings), settings.audit_topic)
        audit = AuditSink(build_audit_writer(settings, registry, audit_keys), settings.audit_topic, tail)
    small_cells = build_small_cells(settings, registry, policy_set, audit_keys=audit_keys)
    partitions = require_topics(settings, output_topics(policy_set, geography), hold_topics(settings, policy_set))
    if small_cells is not None:
        check_hold_partitions(small_cells, partitions)
    if audit is not None:
        check_one_partition_per_ingress(settings.audit_topic, "audit", settings.ingress_topic, partitions)
    # Sizes end to end: fail fast unless every accepted ingress record can be dead-lettered whole.
    from streams.kafka.clients import producer_max_message_bytes
    from streams.kafka.topics import check_record_limits, topic_limits

    limits = topic_limits(
        settings.bootstrap_servers, [settings.ingress_topic, settings.dlq_topic], auth=settings.kafka_auth
    )
    check_record_limits(settings, limits, producer_max_message_bytes(settings))
    sys.argv = [sys.argv[0]]  # faust's Worker parses argv itself
    recipients = [p.recipient for p in policy_set.policies]
    app = build_app(settings, pipeline, partitions, recipients=recipients, audit=audit, small_cells=small_cells)
    run_worker(app, loglevel=settings.log_level)


# ---------------------------------------------------------------- demo
@main.command("demo")
@click.option("--count", "-n", type=int, default=10_000, show_default=True, envvar="SCREENING_DEMO_COUNT")
@click.option("--seed", type=int, default=1, show_default=True, envvar="SCREENING_DEMO_SEED")
@click.option(
    "--keep-running/--stop",
    default=False,
    envvar="SCREENING_DEMO_KEEP_RUNNING",
    help="Leave the local broker and registry running afterwards.",
)
def demo(count: int, seed: int, keep_running: bool) -> None:
    """The main job: broker up, topics, worker, N synthetic events, per-agency summary."""
    from streams.cli.demo import run_demo

    run_demo(count=count, seed=seed, keep_running=keep_running, echo=click.echo)


from streams.cli.agency import agency  # noqa: E402  (registers the `agency` group)
from streams.cli.audit import audit  # noqa: E402  (registers the `audit` group)
from streams.cli.dlq import dlq  # noqa: E402  (registers the `dlq` group)
from streams.cli.policy import policy  # noqa: E402  (registers the `policy` group)

main.add_command(policy)
main.add_command(dlq)
main.add_command(agency)
main.add_command(audit)

if __name__ == "__main__":
    main()
