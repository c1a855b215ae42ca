"""Options and settings shared by the command groups of ``screening-streams``.

Kept apart from ``streams.cli.main`` so that sub-command modules (``streams.cli.dlq``) can use them without
importing ``streams.cli.main``, which imports them in turn (and runs as ``python -m streams.cli``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

from streams.credentials import stack_credentials_file
from streams.settings import Settings, env_var, settings_from_env
from streams.stack.settings import StackSettings

F = TypeVar("F", bound=Callable[..., Any])


def settings(principal: str | None = None, **overrides: Any) -> Settings:
    """Settings from the environment, with the given (non-None) command-line values on top.

    ``principal`` is the SCRAM user the command runs as by default: unless the environment
    names credentials (``SCREENING_KAFKA_USERNAME``/``_PASSWORD`` or
    ``SCREENING_KAFKA_CREDENTIALS_FILE``), the local stack's file of that user is used when it
    exists (``broker up`` writes one per principal under the stack's state directory).
    """
    fallback = None
    if principal is not None:
        fallback = stack_credentials_file(StackSettings.from_env(os.environ).state_dir, principal)
    return settings_from_env(credentials=fallback).with_(**overrides)


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
