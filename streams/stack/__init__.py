"""Local stack: fetch Kafka and Apicurio with mvn, run them on loopback. Imports: errors."""
