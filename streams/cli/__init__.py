"""The command line: the click groups (main, policy, dlq, demo) and their shared options.

On top of every layer: may import anything in streams; nothing imports it.
"""
