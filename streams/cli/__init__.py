"""Command line: main, policy, dlq, audit, demo groups and shared options. On top: imports anything; none imports it."""
