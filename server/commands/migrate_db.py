"""``scanemon-server migrate-db --from sqlite:///… --to postgresql://…``: move an embedded install to PostgreSQL.

The target is migrated to the newest schema, must be empty, and is filled in one transaction in
foreign-key order; PostgreSQL sequences are moved past the copied ids; then the row count of every
table is compared and printed. Any mismatch (or a table the target lacks) fails the command and,
because the copy is one transaction, leaves the target as it was.
"""

from __future__ import annotations

import sys
import time

SKIP = {"alembic_version"}


def register(sub) -> None:
    p = sub.add_parser("migrate-db", help="copy a SQLite database into PostgreSQL, verifying row counts per table")
    p.add_argument("--from", dest="src", required=True, metavar="URL", help="source, e.g. sqlite:///var/scanemon.db")
    p.add_argument("--to", dest="dst", required=True, metavar="URL", help="target, e.g. postgresql+psycopg2://u@h/db")
    p.add_argument("--batch", type=int, default=5000, help="rows per INSERT batch")
    p.set_defaults(func=_run)


def copy_database(src_url: str, dst_url: str, *, batch: int = 5000, log=print) -> dict[str, tuple[int, int]]:
    """Copy every table; returns {table: (source rows, target rows)}. Raises RuntimeError on any problem."""
    from sqlalchemy import MetaData, func, inspect, select, text

    from server.db import models
    from server.db.migrate import current, upgrade
    from server.db.session import make_engine

    src_rev = current(src_url)
    upgrade(dst_url)
    dst_rev = current(dst_url)
    if src_rev != dst_rev:
        raise RuntimeError(f"source is at schema revision {src_rev}, target at {dst_rev}: "
                           f"run `scanemon-server --database-url {src_url} db upgrade` on the source first")
    src = make_engine(src_url)
    dst = make_engine(dst_url)
    try:
        src_meta = MetaData()
        src_meta.reflect(src)
        dst_meta = MetaData()
        dst_meta.reflect(dst)
        src_tables = {t for t in inspect(src).get_table_names() if t not in SKIP and not t.startswith("cards_fts")
                      and not t.startswith("sqlite_")}
        missing = sorted(src_tables - set(dst_meta.tables))
        if missing:
            raise RuntimeError(f"target lacks tables {missing}")
        order = [t for t in dst_meta.sorted_tables if t.name in src_tables]
        counts: dict[str, tuple[int, int]] = {}
        with dst.begin() as dconn, src.connect() as sconn:
            if dst.dialect.name == "postgresql":
                dconn.execute(text("SET LOCAL TIME ZONE 'UTC'"))  # SQLite keeps naive UTC datetimes
            for dt in order:
                n = dconn.execute(select(func.count()).select_from(dt)).scalar_one()
                if n:
                    raise RuntimeError(f"target table {dt.name} is not empty ({n} rows); migrate into a fresh database")
            for dt in order:
                # Read through the ORM table when we have one: its types decode JSON, dates and booleans exactly.
                st = models.Base.metadata.tables.get(dt.name)
                if st is None or not set(c.name for c in st.columns) <= set(src_meta.tables[dt.name].c.keys()):
                    st = src_meta.tables[dt.name]
                cols = [c.name for c in dt.columns if c.name in st.c and c.computed is None]
                t0 = time.perf_counter()
                copied = 0
                result = sconn.execution_options(stream_results=True).execute(
                    select(*[st.c[c] for c in cols]).order_by(*st.primary_key.columns))
                while True:
                    rows = result.fetchmany(batch)
                    if not rows:
                        break
                    dconn.execute(dt.insert(), [dict(zip(cols, r)) for r in rows])
                    copied += len(rows)
                if dst.dialect.name == "postgresql":
                    for pk in dt.primary_key.columns:
                        try:
                            is_int = pk.type.python_type is int
                        except NotImplementedError:
                            is_int = False
                        if is_int:
                            seq = dconn.execute(text("SELECT pg_get_serial_sequence(:t, :c)"),
                                                {"t": dt.name, "c": pk.name}).scalar()
                            if seq:
                                dconn.execute(text(f'SELECT setval(:s, coalesce((SELECT max("{pk.name}") FROM "{dt.name}"), 1), '
                                                   f'(SELECT max("{pk.name}") FROM "{dt.name}") IS NOT NULL)'), {"s": seq})
                log(f"  {dt.name}: {copied} rows in {time.perf_counter() - t0:.1f}s")
            # Verify inside the transaction: a mismatch rolls the whole copy back.
            bad = []
            for dt in order:
                n_src = sconn.execute(select(func.count()).select_from(src_meta.tables[dt.name])).scalar_one()
                n_dst = dconn.execute(select(func.count()).select_from(dt)).scalar_one()
                counts[dt.name] = (n_src, n_dst)
                if n_src != n_dst:
                    bad.append(dt.name)
            if bad:
                raise RuntimeError(f"row counts differ for {bad}: {[counts[b] for b in bad]}")
        return counts
    finally:
        src.dispose()
        dst.dispose()


def _run(args) -> int:
    from sqlalchemy.engine import make_url

    if make_url(args.dst).get_backend_name() != "postgresql":
        print("error: --to must be a postgresql:// URL", file=sys.stderr)
        return 2
    print(f"copying {make_url(args.src).render_as_string(hide_password=True)} → "
          f"{make_url(args.dst).render_as_string(hide_password=True)}")
    try:
        counts = copy_database(args.src, args.dst, batch=args.batch)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    width = max((len(t) for t in counts), default=5)
    print(f"{'table':<{width}}  {'source':>9}  {'target':>9}")
    for t, (a, b) in counts.items():
        print(f"{t:<{width}}  {a:>9}  {b:>9}  {'ok' if a == b else 'MISMATCH'}")
    print(f"verified {len(counts)} tables, {sum(a for a, _ in counts.values())} rows")
    return 0
