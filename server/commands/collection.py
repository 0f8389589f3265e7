"""``scanemon-server collection``: CSV import/export of a collection and price-feed import."""

from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("collection", help="collection CSV import/export, price feeds")
    cs = p.add_subparsers(dest="collection_command", required=True)
    e = cs.add_parser("export", help="write a collection as CSV")
    e.add_argument("collection_id", type=int)
    e.add_argument("--format", default="generic", choices=("generic", "tcgplayer", "moxfield", "deckbox"))
    e.add_argument("-o", "--output", help="file (default stdout)")
    e.set_defaults(func=_export)
    i = cs.add_parser("import", help="add a CSV to a collection (quantities add up)")
    i.add_argument("collection_id", type=int)
    i.add_argument("file")
    i.add_argument("--format", default="generic", choices=("generic", "tcgplayer", "moxfield", "deckbox"))
    i.set_defaults(func=_import)
    pr = cs.add_parser("import-prices", help="import a price feed (CSV/JSON)")
    pr.add_argument("file")
    pr.add_argument("--format", choices=("csv", "json"), help="default: from the file suffix")
    pr.add_argument("--adapter", default="generic", help="generic or tcgplayer (see server/prices.py)")
    pr.add_argument("--source", default="import", help="feed name stored with each price")
    pr.set_defaults(func=_import_prices)


def _db(args):
    from server.cli import settings_from_args
    from server.db.session import Database

    return Database(settings_from_args(args).database_url)


def _export(args) -> int:
    from server.collection_io import export_csv

    db = _db(args)
    with db.session() as s:
        text = export_csv(s, args.collection_id, args.format)
    db.dispose()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _import(args) -> int:
    from server.collection_io import import_csv
    from server.db.models import Collection

    db = _db(args)
    with db.session() as s:
        if s.get(Collection, args.collection_id) is None:
            print(f"error: no collection {args.collection_id}", file=sys.stderr)
            return 1
        report = import_csv(s, args.collection_id, Path(args.file).read_text(encoding="utf-8-sig"), args.format)
    db.dispose()
    for e in report.errors:
        print(f"error: {args.file}: {e}", file=sys.stderr)
    print(f"rows={report.rows} added={report.added} copies={report.copies} errors={len(report.errors)}")
    return 1 if report.errors else 0


def _import_prices(args) -> int:
    from server.prices import import_prices

    fmt = args.format or ("json" if args.file.lower().endswith(".json") else "csv")
    db = _db(args)
    with db.session() as s:
        report = import_prices(s, Path(args.file).read_bytes(), fmt=fmt, adapter=args.adapter, source=args.source)
    db.dispose()
    for e in report.errors[:50]:
        print(f"error: {args.file}: {e}", file=sys.stderr)
    print(f"rows={report.rows} stored={report.stored} unknown_cards={report.unknown_cards} errors={len(report.errors)}")
    return 1 if report.errors else 0
