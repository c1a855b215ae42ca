"""Avro contracts on the wire: schema loading and class lint, Confluent framing, fastavro codec, registry client.

May import: streams.errors. Never a Kafka client, faust or click.
"""
