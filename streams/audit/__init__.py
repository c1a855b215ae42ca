"""The audit trail: one decision record per ingress record, keyed with an audit-only secret, chained, indexed.

May import: streams.policy, streams.contracts, streams.domain, streams.errors (pure core: no Kafka client;
the index is an embedded SQLite file, the reading of the topic lives in streams.cli.audit).
"""
