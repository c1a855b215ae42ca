"""One-shot preparation of the compose stack's broker, as the admin (the `setup` service).

What ``screening-streams broker up`` does for the no-Docker broker (streams.stack.registry.
prepare_broker), with the service principals' passwords taken from the environment instead of
made up: it creates (or refreshes) the SCRAM-SHA-512 credential of every principal, the
registry's kafkasql topics (unlimited retention) and the registry's ACLs. The `setup` service
then runs ``screening-streams topics`` and ``screening-streams acl apply``, also as the admin.

* The admin: ``SCREENING_KAFKA_USERNAME`` (must be ``admin``) / ``SCREENING_KAFKA_PASSWORD``.
* Service principals: ``SCREENING_KAFKA_{PROCESSOR,SYSTEM,OPERATOR,REGISTRY}_PASSWORD`` (see
  :data:`SERVICE_PASSWORDS`), each at least 16 URL-safe characters and none the admin's.
* Agencies (one principal per agency of the policies): a random password made on the first run
  and kept in ``<SCREENING_SETUP_DIR>/credentials/agency-<agency>.json`` (0600, the file to give
  that agency); later runs reuse it.

Every step is idempotent: ``docker compose up`` runs it each time, so an agency added to the
policies gets its principal, topic and ACL on the next ``up``.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from streams.credentials import (
    ADMIN,
    OPERATOR,
    PROCESSOR,
    PRODUCER,
    REGISTRY,
    KafkaAuth,
    auth_from_env,
    stack_credentials_file,
    write_credentials_file,
)
from streams.errors import ScreeningStreamsError

#: principal -> the variable holding its password.
SERVICE_PASSWORDS = {
    PROCESSOR: "SCREENING_KAFKA_PROCESSOR_PASSWORD",
    PRODUCER: "SCREENING_KAFKA_SYSTEM_PASSWORD",
    OPERATOR: "SCREENING_KAFKA_OPERATOR_PASSWORD",
    REGISTRY: "SCREENING_KAFKA_REGISTRY_PASSWORD",
}
#: Safe inside JAAS quotes (the registry's sasl.jaas.config) and in a --add-scram list.
PASSWORD = re.compile(r"[A-Za-z0-9_-]{16,}")


class SetupError(ScreeningStreamsError):
    """The environment does not describe a deployment setup can prepare."""


def admin_auth(environ: Mapping[str, str]) -> KafkaAuth:
    """The admin's credentials from the environment; refused unless they are the admin's SASL ones."""
    auth = auth_from_env(environ)
    if not auth.sasl or auth.username != ADMIN:
        raise SetupError(f"setup runs as the SASL user {ADMIN!r} (SCREENING_KAFKA_USERNAME/SCREENING_KAFKA_PASSWORD)")
    return auth


def service_credentials(environ: Mapping[str, str], admin: KafkaAuth) -> dict[str, KafkaAuth]:
    """Each service principal's credentials, its password from its variable (named on error, never shown)."""
    out = {}
    for user, variable in SERVICE_PASSWORDS.items():
        password = environ.get(variable, "")
        if not PASSWORD.fullmatch(password):
            raise SetupError(f"{variable} must be 16 or more of A-Z a-z 0-9 _ - (the password of {user})")
        if password == admin.password:
            raise SetupError(f"{variable} is the admin's password: give {user} its own")
        out[user] = KafkaAuth(admin.security_protocol, admin.mechanism, user, password, admin.ca_file, source=variable)
    return out


def main(environ: Mapping[str, str] | None = None) -> int:
    """Users, registry topics and registry ACLs on the broker at KAFKA_BOOTSTRAP_SERVERS."""
    from streams.assembly import load_policy_set
    from streams.kafka.acl import agency_users
    from streams.settings import settings_from_env
    from streams.stack.registry import prepare_broker

    env = os.environ if environ is None else environ
    try:
        admin = admin_auth(env)
        state_dir = Path(env.get("SCREENING_SETUP_DIR") or "/setup")
        for user, auth in service_credentials(env, admin).items():
            # prepare_broker reads every principal's password from its file: these follow the environment.
            write_credentials_file(stack_credentials_file(state_dir, user), auth)
        settings = settings_from_env(env)
        agencies = agency_users(load_policy_set(settings))
        prepare_broker(settings.bootstrap_servers, admin, state_dir, agencies)
    except ScreeningStreamsError as exc:
        print(f"setup: {exc}", file=sys.stderr)
        return 2
    services = len(SERVICE_PASSWORDS)
    print(f"setup: SCRAM users of {services} services and {len(agencies)} agencies, registry topics and ACLs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
