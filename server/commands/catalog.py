"""``scanemon-server catalog import``."""

from __future__ import annotations

import sys
import time


def register(sub) -> None:
    p = sub.add_parser("catalog", help="card catalog")
    csub = p.add_subparsers(dest="catalog_command", required=True)
    imp = csub.add_parser("import", help="import/update sets and printings (idempotent)")
    imp.add_argument("--source", default="pokemon-tcg-data", help="catalog source plugin")
    imp.add_argument("--pokemon-tcg-data", dest="root", required=True, metavar="PATH",
                     help="checkout of github.com/PokemonTCG/pokemon-tcg-data")
    imp.add_argument("--images", metavar="DIR", help="local card images, <DIR>/<id>/<id>.png or <DIR>/<id>.png")
    imp.add_argument("--fail-fast", action="store_true", help="stop at the first broken set")
    imp.add_argument("--no-migrate", action="store_true", help="do not upgrade the schema first")
    imp.set_defaults(func=_import)


def _import(args) -> int:
    from server.catalog.importer import import_catalog
    from server.catalog.sources import SOURCES, CatalogError
    from server.cli import settings_from_args
    from server.db.migrate import upgrade
    from server.db.session import Database

    settings = settings_from_args(args)
    if not args.no_migrate:
        upgrade(settings.database_url)
    try:
        source = SOURCES[args.source](args.root, images=args.images)
    except CatalogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    db = Database(settings.database_url)
    t = time.perf_counter()
    report = import_catalog(db, source, fail_fast=args.fail_fast)
    db.dispose()
    for err in report.errors:
        print(f"error: {err}", file=sys.stderr)
    print(f"{report.line()} seconds={time.perf_counter() - t:.1f}")
    return 1 if report.errors else 0
