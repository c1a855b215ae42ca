"""``python -m streams.cli``: the ``screening-streams`` command (how workers are started)."""

from streams.cli.main import main

main()
