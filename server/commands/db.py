"""``scanemon-server db upgrade|downgrade|current``."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("db", help="database schema migrations (Alembic)")
    dsub = p.add_subparsers(dest="db_command", required=True)
    up = dsub.add_parser("upgrade", help="migrate to the newest schema (or --revision)")
    up.add_argument("--revision", default="head")
    up.set_defaults(func=_upgrade)
    down = dsub.add_parser("downgrade", help="migrate down to --revision")
    down.add_argument("--revision", required=True)
    down.set_defaults(func=_downgrade)
    cur = dsub.add_parser("current", help="print the current revision")
    cur.set_defaults(func=_current)


def _url(args) -> str:
    from server.cli import settings_from_args

    return settings_from_args(args).database_url


def _upgrade(args) -> int:
    from server.db.migrate import current, upgrade

    url = _url(args)
    upgrade(url, args.revision)
    print(f"database at revision {current(url)}")
    return 0


def _downgrade(args) -> int:
    from server.db.migrate import current, downgrade

    url = _url(args)
    downgrade(url, args.revision)
    print(f"database at revision {current(url)}")
    return 0


def _current(args) -> int:
    from server.db.migrate import current

    print(current(_url(args)) or "empty")
    return 0
