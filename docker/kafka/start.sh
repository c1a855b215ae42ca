#!/usr/bin/env bash
# Entrypoint of the compose `kafka` service (apache/kafka image), in front of the image's own
# /etc/kafka/docker/run. It does what streams/stack/security.py does for the no-Docker broker:
#
# 1. builds the SASL login settings (JAAS) from the admin's password, so that the password is
#    the only secret the service is given: SCREENING_KAFKA_ADMIN_PASSWORD, or the file named by
#    SCREENING_KAFKA_ADMIN_PASSWORD_FILE (a Docker secret);
# 2. on the first start only (no meta.properties in the log dir), formats the storage itself with
#    the admin's SCRAM-SHA-512 credential (`kafka-storage.sh format --add-scram`): the image's
#    wrapper formats without extra arguments, so it would leave a cluster nobody can administer.
#    The image then finds the storage "already formatted", as on any restart, and carries on;
# 3. writes /opt/kafka/config/admin.properties (0600), the admin's client settings, for the
#    healthcheck and for `docker compose exec kafka ... --command-config` commands.
#
# `start.sh --print-properties` prints the server.properties the environment renders to (the
# image's own KAFKA_* -> property rule) and exits; tests/unit/test_compose.py uses it.
set -euo pipefail

if [[ -n "${SCREENING_KAFKA_ADMIN_PASSWORD_FILE:-}" ]]; then
  password=$(<"$SCREENING_KAFKA_ADMIN_PASSWORD_FILE")
else
  password=${SCREENING_KAFKA_ADMIN_PASSWORD:-}
fi
unset SCREENING_KAFKA_ADMIN_PASSWORD
# The password goes inside JAAS quotes and a --add-scram [name=...,password=...] list: keep it to
# URL-safe characters (what `openssl rand -hex` and Python's token_urlsafe make).
if [[ ! $password =~ ^[A-Za-z0-9_-]{16,}$ ]]; then
  echo "kafka: the admin password must be 16 or more of A-Z a-z 0-9 _ - (SCREENING_KAFKA_ADMIN_PASSWORD)" >&2
  exit 2
fi

scram=org.apache.kafka.common.security.scram.ScramLoginModule
plain=org.apache.kafka.common.security.plain.PlainLoginModule
# The broker listener is also the inter-broker one: the broker logs in to itself as the admin.
export KAFKA_LISTENER_NAME_BROKER_SCRAM___SHA___512_SASL_JAAS_CONFIG="$scram required username=\"admin\" password=\"$password\";"
# Server side only: SCRAM credentials live in the cluster metadata, not in JAAS.
export KAFKA_LISTENER_NAME_HOST_SCRAM___SHA___512_SASL_JAAS_CONFIG="$scram required;"
# Controller listener: PLAIN, the admin the only user (the broker role logs in as it).
export KAFKA_LISTENER_NAME_CONTROLLER_PLAIN_SASL_JAAS_CONFIG="$plain required username=\"admin\" password=\"$password\" user_admin=\"$password\";"

# server.properties from KAFKA_* variables, as kafka.docker.KafkaDockerWrapper renders them:
# strip KAFKA_, lower case, "_" -> ".", then "..." -> "-" and ".." -> "_".
render_properties() {
  local name key
  for name in $(compgen -e); do
    [[ $name == KAFKA_* ]] || continue
    case $name in
      KAFKA_VERSION | KAFKA_HEAP_OPTS | KAFKA_LOG4J_OPTS | KAFKA_OPTS | KAFKA_JMX_OPTS | \
        KAFKA_JVM_PERFORMANCE_OPTS | KAFKA_GC_LOG_OPTS | KAFKA_LOG4J_ROOT_LOGLEVEL | \
        KAFKA_LOG4J_LOGGERS | KAFKA_TOOLS_LOG4J_LOGLEVEL | KAFKA_JMX_HOSTNAME | KAFKA_JMX_PORT) continue ;;
    esac
    key=${name//KAFKA_/}
    key=${key,,}
    key=${key//_/.}
    key=${key//.../-}
    key=${key//../_}
    printf '%s=%s\n' "$key" "${!name}"
  done | sort
}

if [[ ${1:-} == --print-properties ]]; then
  render_properties
  exit 0
fi

umask 077
cat >/opt/kafka/config/admin.properties <<PROPS
security.protocol=${SCREENING_KAFKA_CLIENT_PROTOCOL:-SASL_PLAINTEXT}
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=$scram required username="admin" password="$password";
PROPS
if [[ -n "${SCREENING_KAFKA_CLIENT_TRUSTSTORE:-}" ]]; then
  printf 'ssl.truststore.location=%s\nssl.truststore.type=PEM\n' "$SCREENING_KAFKA_CLIENT_TRUSTSTORE" >>/opt/kafka/config/admin.properties
fi

log_dir=${KAFKA_LOG_DIRS:?KAFKA_LOG_DIRS is required}
if [[ ! -e $log_dir/meta.properties ]]; then
  echo "===> First start: formatting $log_dir with the admin's SCRAM-SHA-512 credential"
  render_properties >/tmp/format.properties
  # Its output is shown without any line about SCRAM material (as streams.stack.security.redact_scram).
  if ! out=$(/opt/kafka/bin/kafka-storage.sh format --cluster-id "${CLUSTER_ID:?CLUSTER_ID is required}" \
    -c /tmp/format.properties --add-scram "SCRAM-SHA-512=[name=admin,password=$password]" 2>&1); then
    rm -f /tmp/format.properties
    grep -viE 'scram|salt|password|iterations' <<<"$out" >&2 || true
    exit 1
  fi
  grep -viE 'scram|salt|password|iterations' <<<"$out" || true
  rm -f /tmp/format.properties
fi
unset password
umask 022
exec /etc/kafka/docker/run
