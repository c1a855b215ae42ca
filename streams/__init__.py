"""screening-streams: minimise screening test results per recipient on Kafka."""

__version__ = "0.1.0"
