"""Collection listing benchmark (``make bench-collection``): p50/p95/p99 of
``GET /api/v1/collections/{id}/items`` with a filter and a full-text search on a 50,000-item collection,
on a real PostgreSQL started here (tests/services.Postgres), through the whole app (middleware, auth,
serialisation) in-process.

    .venv/bin/python tests/bench/bench_collection.py [--items 50000] [--requests 600] [--sets all|sv1,base1,...]

Needs ../shared/data/pokemon-tcg-data (the full catalog: 19,783 cards). Goal (issue 7): p99 <= 50 ms for
filter + search. Prints one line per query kind and the overall p99.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.conftest import SHARED_DATA  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs)) - 1))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--requests", type=int, default=600, help="timed requests per query kind")
    ap.add_argument("--sets", default="all", help="'all' or comma-separated set ids to import")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json-out", default=None, help="also write the figures as JSON (for make bench's report)")
    args = ap.parse_args()

    root = SHARED_DATA / "pokemon-tcg-data"
    if not root.is_dir():
        print(f"skip: catalog not found at {root}")
        return 0
    from fastapi.testclient import TestClient
    from sqlalchemy import select, text

    from server.app import create_app
    from server.catalog.importer import import_catalog
    from server.catalog.sources import PokemonTCGSource
    from server.db.migrate import upgrade
    from server.db.models import Card, CollectionItem
    from server.db.session import Database
    from tests.collection_fixtures import SubsetSource, make_account, make_settings
    from tests.services import Postgres

    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="scanemon-bench-coll-"))
    pg = Postgres()
    pg.start()
    try:
        url = pg.create_database("bench")
        upgrade(url)
        db = Database(url)
        t = time.perf_counter()
        source = PokemonTCGSource(root) if args.sets == "all" else SubsetSource(root, args.sets.split(","))
        rep = import_catalog(db, source)
        print(f"catalog: {rep.cards} cards in {rep.sets} sets ({time.perf_counter() - t:.0f}s)")
        acct = make_account(db, "bench", collection="big")
        other = make_account(db, "other", collection="noise")
        with db.session() as s:
            cards = s.execute(select(Card.id, Card.name, Card.set_id)).all()
        # Distinct stacks: (card, condition, finish, language); the other user gets 20k items of noise.
        conds, finishes, langs = ["NM"] * 6 + ["LP", "LP", "MP", "HP", "DMG"], ["normal"] * 3 + ["holo", "reverse_holo"], ["en"] * 8 + ["ja", "de"]
        t = time.perf_counter()
        for acc, n in ((acct, args.items), (other, 20_000)):
            seen, rows = set(), []
            while len(rows) < n:
                key = (rng.choice(cards)[0], rng.choice(conds), rng.choice(finishes), rng.choice(langs))
                if key in seen:
                    continue
                seen.add(key)
                rows.append({"collection_id": acc.collection_id, "card_id": key[0], "condition": key[1], "finish": key[2],
                             "language": key[3], "quantity": rng.randint(1, 4), "notes": ""})
            with db.session() as s:
                for i in range(0, len(rows), 5000):
                    s.execute(CollectionItem.__table__.insert(), rows[i:i + 5000])
        with db.engine.connect() as c:
            c.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
        print(f"items: {args.items} in the benchmarked collection + 20000 elsewhere ({time.perf_counter() - t:.0f}s)")

        with db.session() as s:
            owned = s.execute(select(Card.name, Card.set_id).join(CollectionItem, CollectionItem.card_id == Card.id)
                              .where(CollectionItem.collection_id == acct.collection_id)).all()
        app = create_app(make_settings(url, tmp), db)
        client = TestClient(app)
        client.__enter__()
        path = f"/api/v1/collections/{acct.collection_id}/items"
        h = acct.headers

        def word(name: str) -> str:
            w = [x for x in name.replace("-", " ").split() if x.isalpha()] or ["a"]
            return w[0][: rng.randint(3, 6)].lower()

        def kind_set_and_q():
            name, set_id = rng.choice(owned)
            return {"set": set_id, "q": word(name)}

        def kind_q_cond_sorted():
            name, _ = rng.choice(owned)
            return {"q": word(name), "condition": "NM", "sort": "name"}

        def kind_type_finish():
            return {"type": rng.choice(["Fire", "Water", "Grass", "Psychic", "Lightning"]), "finish": "holo",
                    "sort": "set"}

        def kind_set_q_page2():
            for _ in range(50):
                name, set_id = rng.choice(owned)
                first = client.get(path, params={"set": set_id, "limit": 20}, headers=h).json()
                if first["next_cursor"]:
                    return {"set": set_id, "limit": 20, "cursor": first["next_cursor"]}
            return {"set": set_id}

        kinds = {"filter set + search q": kind_set_and_q, "search q + condition, sort name": kind_q_cond_sorted,
                 "type + finish, sort set": kind_type_finish, "filter set, keyset page 2": kind_set_q_page2}
        all_ms: list[float] = []
        main_p99 = None
        by_kind: dict[str, dict] = {}
        for label, make in kinds.items():
            params = [make() for _ in range(args.requests + 50)]
            ms, hits = [], 0
            for i, p in enumerate(params):
                t0 = time.perf_counter()
                r = client.get(path, params=p, headers=h)
                dt = (time.perf_counter() - t0) * 1000
                assert r.status_code == 200, r.text
                if i >= 50:  # warm-up excluded
                    ms.append(dt)
                    hits += bool(r.json()["items"])
            all_ms += ms
            p99 = pct(ms, 99)
            if main_p99 is None:
                main_p99 = p99
            print(f"{label:34s} n={len(ms)} p50={statistics.median(ms):6.1f} ms  p95={pct(ms, 95):6.1f} ms  "
                  f"p99={p99:6.1f} ms  non-empty={hits / len(ms):.0%}")
            by_kind[label] = {"n": len(ms), "p50_ms": round(statistics.median(ms), 2), "p95_ms": round(pct(ms, 95), 2),
                              "p99_ms": round(p99, 2)}
        print(f"{'all kinds':34s} n={len(all_ms)} p50={statistics.median(all_ms):6.1f} ms  p95={pct(all_ms, 95):6.1f} ms  "
              f"p99={pct(all_ms, 99):6.1f} ms")
        goal = "PASS" if main_p99 <= 50 else "FAIL"
        print(f"goal p99 <= 50 ms for filter + search on {args.items} items: {goal} ({main_p99:.1f} ms)")
        if args.json_out:
            Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json_out).write_text(json.dumps({
                "items": args.items, "database": url.split("://")[0], "by_kind": by_kind,
                "all": {"n": len(all_ms), "p50_ms": round(statistics.median(all_ms), 2),
                        "p99_ms": round(pct(all_ms, 99), 2)},
                "filter_search_p99_ms": round(main_p99, 2), "goal_met": main_p99 <= 50}, indent=2))
        client.__exit__(None, None, None)
        db.dispose()
        return 0 if goal == "PASS" else 1
    finally:
        pg.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
