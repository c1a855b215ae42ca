"""Domain rules of the screening system: NIR, geography, validation and the synthetic event generator.

May import: streams.errors. Never a Kafka client, faust or click.
"""
