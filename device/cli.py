"""``scanemon-device``: one entry point, subcommands registered by modules in ``device/commands``.

Each command module exposes ``register(subparsers)`` and sets ``func`` on its parser (the same pattern as
``server/cli.py``); adding a command means adding a module and its name to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = ("identify", "run", "selftest", "bundle", "relay", "status")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scanemon-device", description="Scanemon card-scanning appliance")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"device.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"device.commands.{name}":
                continue  # not built yet / optional
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from device.configfile import ConfigFileError

    try:
        return int(args.func(args) or 0)
    except ConfigFileError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
