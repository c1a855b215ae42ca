"""Kafka edge: exactly-once runner, dispatch, topics, offsets, publishing, ACLs. Imports: the core, settings, errors."""
