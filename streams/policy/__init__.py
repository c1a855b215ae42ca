"""The policy engine: load, validate, compile and apply per-recipient policies; pseudonyms, derived contracts, explain.

May import: streams.contracts, streams.domain, streams.errors. It knows nothing of Kafka: records in, views out.
"""
