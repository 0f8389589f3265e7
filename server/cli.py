"""``scanemon-server``: one entry point, subcommands registered by modules in ``server/commands``.

Each command module exposes ``register(subparsers)`` and sets ``func`` on its parser; adding a command
never means editing a central switchboard beyond the COMMANDS tuple below.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = ("db", "catalog", "serve", "ingest", "identify", "resolver", "users", "bundle", "collection", "migrate_db")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scanemon-server", description="Scanemon server")
    parser.add_argument("--config", help="YAML settings file (environment variables SCANEMON_* win over it)")
    parser.add_argument("--database-url", help="override database_url")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"server.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"server.commands.{name}":
                continue  # not built yet / optional
            raise
        mod.register(sub)
    return parser


def settings_from_args(args):
    from server.config import load_settings

    overrides = {}
    if getattr(args, "database_url", None):
        overrides["database_url"] = args.database_url
    return load_settings(args.config, **overrides)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)
    from device.configfile import ConfigFileError

    try:
        return int(args.func(args) or 0)
    except ConfigFileError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
