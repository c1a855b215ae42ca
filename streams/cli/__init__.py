"""Command line: main, policy, dlq, audit, agency, demo groups and shared options. On top: imports anything; none imports it."""
