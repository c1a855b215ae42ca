"""Unit tests of the ``dlq`` command group's wiring (streams.cli.dlq), without Kafka."""

from __future__ import annotations

import subprocess
import sys

import click
from click.testing import CliRunner

from streams.cli.dlq import dlq
from streams.cli.main import main


def test_dlq_group_is_registered_with_list_show_replay() -> None:
    """``screening-streams dlq`` exists and offers list, show and replay."""
    assert main.commands["dlq"] is dlq
    assert set(dlq.commands) == {"list", "show", "replay"}


def test_every_dlq_flag_and_the_geography_flag_fall_back_to_an_environment_variable() -> None:
    """House rule: every CLI flag has envvar=, including --geography-file of the worker."""
    commands: list[click.Command] = [*dlq.commands.values(), main.commands["worker"]]
    for command in commands:
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden and param.name != "help":
                assert param.envvar, f"{command.name} {param.opts} has no envvar"
    geography = next(p for p in main.commands["worker"].params if p.name == "geography_file")
    assert isinstance(geography, click.Option) and geography.envvar == "SCREENING_GEOGRAPHY_FILE"


def test_offset_without_partition_is_a_usage_error_before_any_kafka_call() -> None:
    """A DLQ offset means nothing without its partition: usage error (exit 2), Kafka never contacted."""
    for command in ("list", "show", "replay"):
        result = CliRunner().invoke(
            main, ["dlq", command, "--offset", "3", "--bootstrap-servers", "192.0.2.1:1"], catch_exceptions=False
        )
        assert result.exit_code == 2 and "--offset needs --partition" in result.output


def test_replay_defaults_to_three_replays_and_no_force() -> None:
    """--max-replays defaults to 3; --force, --again and --dry-run default to off."""
    defaults = {p.name: p.default for p in dlq.commands["replay"].params}
    assert defaults["max_replays"] == 3
    assert defaults["force"] is False and defaults["again"] is False and defaults["dry_run"] is False


def test_module_entry_point_loads_the_dlq_group() -> None:
    """``python -m streams.cli`` (how workers are started) imports cleanly with the dlq group registered."""
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "dlq", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "replay" in done.stdout
