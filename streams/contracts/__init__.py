"""Avro contracts: schemas and class lint, Confluent framing, fastavro codec, registry client. Imports: errors."""
