"""Options and settings shared by the command groups of ``screening-streams``.

Kept apart from ``streams.cli.main`` so that sub-command modules (``streams.cli.dlq``) can use them without
importing ``streams.cli.main``, which imports them in turn (and runs as ``python -m streams.cli``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from streams.settings import Settings, env_var, settings_from_env

F = TypeVar("F", bound=Callable[..., Any])


def settings(**overrides: Any) -> Settings:
    """Settings from the environment, with the given (non-None) command-line values on top."""
    return settings_from_env().with_(**overrides)


def common_options(func: F) -> F:
    """Options shared by commands that talk to Kafka and the registry."""
    options = [
        click.option("--bootstrap-servers", envvar=env_var("bootstrap_servers"), help="Kafka bootstrap servers."),
        click.option("--registry-url", envvar=env_var("registry_url"), help="Confluent-compatible registry base URL."),
        click.option("--topic-prefix", envvar=env_var("topic_prefix"), help="Prefix of every topic name."),
    ]
    for option in reversed(options):
        func = option(func)
    return func
