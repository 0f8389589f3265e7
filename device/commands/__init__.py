"""Subcommands of ``scanemon-device`` (one module each, ``register(subparsers)``; see ``device/cli.py``)."""
