"""Dead letters: parse, summarise, select and render DLQ records; plan bounded, ledgered replays.

May import: streams.kafka (record type), the pure core, errors. Never decodes a raw value to fields.
"""
