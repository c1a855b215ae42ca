"""Command line: main, policy, dlq, audit, agency, demo groups. On top: imports anything; none imports it."""
