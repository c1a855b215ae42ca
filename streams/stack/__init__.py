"""The local stack: fetch Kafka and Apicurio with mvn and run them on loopback (settings, fetch, lifecycle).

May import: streams.errors only.
"""
