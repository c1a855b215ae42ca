"""The policy engine: load and validate per-recipient policies, compile them, apply them.

It knows nothing of Kafka: records in, views out.
"""
