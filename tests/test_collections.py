"""Collections API on SQLite and PostgreSQL: items, filters, search, keyset pages, bulk edits, smart folders,
analytics, prices and valuation, CSV round trips, share links, review queue, tokens, devices, CLI and the
SQLite → PostgreSQL migration."""

from __future__ import annotations

import csv
import io
import json
from datetime import date, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from server.collections_service import apply_scan
from server.db.models import AuditLog, CollectionItem, Device, HardExample, Scan
from tests.collection_fixtures import *  # noqa: F401,F403 - fixtures
from tests.collection_fixtures import add_scan


def add(env, acct, card_id, **kw):
    r = env.client.post(f"/api/v1/collections/{acct.collection_id}/items", json={"card_id": card_id, **kw},
                        headers=acct.headers)
    assert r.status_code == 201, r.text
    return r.json()


def items(env, acct, **params):
    r = env.client.get(f"/api/v1/collections/{acct.collection_id}/items", params=params, headers=acct.headers)
    assert r.status_code == 200, r.text
    return r.json()


def test_items_filters_search_sort_and_keyset_pages(env):
    a = env.alice
    add(env, a, "sv1-1", quantity=2)  # Pineco, Grass, Common
    add(env, a, "sv1-1", quantity=1)  # same stack: quantities add
    add(env, a, "sv1-1", condition="LP", finish="reverse_holo")  # another stack
    add(env, a, "base1-4", finish="holo", language="ja", notes="first!", price_paid="120.50",
        acquired_at="2024-05-01")  # Charizard
    add(env, a, "base1-58")  # Pikachu
    add(env, a, "sv1-2")  # Heracross
    page = items(env, a, with_total="true")
    assert page["total"] == 5 and page["next_cursor"] is None
    pineco = [i for i in page["items"] if i["card_id"] == "sv1-1" and i["condition"] == "NM"][0]
    assert pineco["quantity"] == 3
    char = [i for i in page["items"] if i["card_id"] == "base1-4"][0]
    assert char["card"]["name"] == "Charizard" and char["price_paid"] in ("120.50", "120.5") and char["language"] == "ja"

    assert {i["card_id"] for i in items(env, a, set="base1")["items"]} == {"base1-4", "base1-58"}
    assert {i["card_id"] for i in items(env, a, q="pika")["items"]} == {"base1-58"}
    assert {i["card_id"] for i in items(env, a, q="char", set="base1")["items"]} == {"base1-4"}
    assert {i["card_id"] for i in items(env, a, type="Grass")["items"]} == {"sv1-1", "sv1-2"}
    assert [i["card_id"] for i in items(env, a, condition="LP")["items"]] == ["sv1-1"]
    assert [i["card_id"] for i in items(env, a, finish="holo")["items"]] == ["base1-4"]
    assert {i["card_id"] for i in items(env, a, rarity="Common", set="sv1")["items"]} == {"sv1-1"}
    assert items(env, a, q="zzzznothing")["items"] == []

    # Keyset pagination: every sort, both orders, pages of 2 visit each item exactly once, in order.
    for sort in ("added", "name", "set", "rarity", "quantity", "condition", "updated", "acquired", "price_paid"):
        for order in ("asc", "desc"):
            seen, cursor = [], None
            while True:
                params = {"sort": sort, "order": order, "limit": 2}
                if cursor:
                    params["cursor"] = cursor
                p = items(env, a, **params)
                seen += p["items"]
                cursor = p["next_cursor"]
                if not cursor:
                    break
            assert len(seen) == 5 and len({i["id"] for i in seen}) == 5, (sort, order)
            full = items(env, a, sort=sort, order=order, limit=50)["items"]
            assert [i["id"] for i in seen] == [i["id"] for i in full], (sort, order)
    names = [i["card"]["name"] for i in items(env, a, sort="name")["items"]]
    assert names == sorted(names)
    r = env.client.get(f"/api/v1/collections/{a.collection_id}/items", params={"cursor": "garbage!"}, headers=a.headers)
    assert r.status_code == 400


def test_item_edit_merges_stacks_and_bulk_is_one_transaction(env):
    a = env.alice
    x = add(env, a, "sv1-1", quantity=2)
    y = add(env, a, "sv1-1", quantity=3, condition="LP")
    z = add(env, a, "sv1-2")
    # Editing y's condition to NM collides with x: merged, quantities add.
    r = env.client.patch(f"/api/v1/collections/{a.collection_id}/items/{y['id']}", json={"condition": "NM"},
                         headers=a.headers)
    assert r.status_code == 200 and r.json()["id"] == x["id"] and r.json()["quantity"] == 5

    other = env.client.post("/api/v1/collections", json={"name": "binder"}, headers=a.headers).json()
    bulk = f"/api/v1/collections/{a.collection_id}/items/bulk"
    # One unknown id: nothing happens at all.
    r = env.client.post(bulk, json={"action": "move", "item_ids": [x["id"], 999999], "target_collection_id": other["id"]},
                        headers=a.headers)
    assert r.status_code == 404
    assert items(env, a, with_total="true")["total"] == 2
    r = env.client.post(bulk, json={"action": "set_condition", "item_ids": [x["id"], z["id"]], "condition": "HP"},
                        headers=a.headers)
    assert r.status_code == 200 and r.json()["affected"] == 2
    assert {i["condition"] for i in items(env, a)["items"]} == {"HP"}
    r = env.client.post(bulk, json={"action": "move", "item_ids": [x["id"], z["id"]], "target_collection_id": other["id"]},
                        headers=a.headers)
    assert r.status_code == 200
    assert items(env, a)["items"] == []
    moved = env.client.get(f"/api/v1/collections/{other['id']}/items", headers=a.headers).json()["items"]
    assert sorted((i["card_id"], i["quantity"]) for i in moved) == [("sv1-1", 5), ("sv1-2", 1)]
    # Moving into someone else's collection is refused.
    r = env.client.post(f"/api/v1/collections/{other['id']}/items/bulk",
                        json={"action": "move", "item_ids": [moved[0]["id"]], "target_collection_id": env.bob.collection_id},
                        headers=a.headers)
    assert r.status_code == 404
    r = env.client.post(f"/api/v1/collections/{other['id']}/items/bulk",
                        json={"action": "delete", "item_ids": [i["id"] for i in moved]}, headers=a.headers)
    assert r.json()["affected"] == 2
    assert env.client.get(f"/api/v1/collections/{other['id']}", headers=a.headers).json()["cards"] == 0


def test_smart_folders_are_live(env):
    a = env.alice
    add(env, a, "base1-4", finish="holo")
    r = env.client.post("/api/v1/smart-folders", json={"name": "Fire holos", "filter": {"type": "Fire", "finish": "holo"}},
                        headers=a.headers)
    assert r.status_code == 201, r.text
    fid = r.json()["id"]
    assert [i["card_id"] for i in env.client.get(f"/api/v1/smart-folders/{fid}/items", headers=a.headers).json()["items"]] == ["base1-4"]
    add(env, a, "base1-2", finish="holo")  # Blastoise: Water, not in the folder
    add(env, a, "base1-24", finish="holo")  # Charmeleon? (Fire) — appears without editing the folder
    got = {i["card_id"] for i in env.client.get(f"/api/v1/smart-folders/{fid}/items", headers=a.headers).json()["items"]}
    assert "base1-4" in got and "base1-2" not in got
    # Folder bound to a collection of someone else: refused.
    r = env.client.post("/api/v1/smart-folders", json={"name": "x", "collection_id": env.bob.collection_id},
                        headers=a.headers)
    assert r.status_code == 404
    r = env.client.post("/api/v1/smart-folders", json={"name": "x", "filter": {"bogus": 1}}, headers=a.headers)
    assert r.status_code == 422


def test_prices_analytics_and_valuation(env):
    a = env.alice
    add(env, a, "base1-4", finish="holo", quantity=2, price_paid="100")
    add(env, a, "sv1-1", quantity=3)
    add(env, a, "sv1-2")
    today = date.today()
    d1, d2 = (today - timedelta(days=10)).isoformat(), (today - timedelta(days=1)).isoformat()
    feed = ("card_id,finish,low,mid,market,date\n"
            f"base1-4,holo,200,250,300,{d1}\n"
            f"base1-4,holo,210,260,350.50,{d2}\n"
            f"sv1-1,normal,0.05,0.10,0.20,{d2}\n"
            f"nope-1,normal,1,1,1,{d2}\n"
            f"sv1-2,normal,abc,,,{d2}\n")
    r = env.client.post("/api/v1/prices/import", files={"file": ("feed.csv", feed, "text/csv")}, headers=a.headers)
    assert r.status_code == 403  # only admins import feeds
    r = env.client.post("/api/v1/prices/import", files={"file": ("feed.csv", feed, "text/csv")}, headers=env.admin.headers)
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["stored"] == 3 and rep["unknown_cards"] == 1 and rep["error_count"] == 1 and "line 6" in rep["errors"][0]
    # Re-import is an upsert, JSON works too.
    r = env.client.post("/api/v1/prices/import", params={"format": "json"}, headers=env.admin.headers,
                        files={"file": ("f.json", json.dumps([{"card_id": "sv1-1", "finish": "normal", "market": "0.25",
                                                               "date": d2}]), "application/json")})
    assert r.json()["stored"] == 1
    hist = env.client.get("/api/v1/prices/base1-4", headers=a.headers).json()
    assert [h["market"] for h in hist] in (["350.50", "300.00"], ["350.5", "300"])

    v = env.client.get(f"/api/v1/collections/{a.collection_id}/value", headers=a.headers).json()
    assert v["market"] == pytest.approx(2 * 350.50 + 3 * 0.25)
    assert v["priced_cards"] == 5 and v["unpriced_cards"] == 1 and v["paid"] == pytest.approx(200)
    assert v["by_set"][0]["set_id"] == "base1"
    assert [p["date"] for p in v["history"]] == [d1, d2]
    assert v["history"][0]["market"] == pytest.approx(600) and v["history"][1]["market"] == pytest.approx(701.75)

    an = env.client.get(f"/api/v1/collections/{a.collection_id}/analytics", headers=a.headers).json()
    assert an["cards"] == 6 and an["stacks"] == 3 and an["distinct_cards"] == 3
    assert an["by_finish"] == {"holo": 2, "normal": 4}
    sets = {s["set_id"]: s for s in an["sets"]}
    assert sets["base1"]["owned"] == 1 and sets["base1"]["cards_in_set"] == 102
    assert sets["base1"]["completion_pct"] == pytest.approx(1.0)
    assert sets["sv1"]["owned"] == 2 and sets["base1"]["value"] == pytest.approx(701.0)


def test_tcgplayer_price_adapter(env):
    feed = ("Product Name,Set Name,Number,Printing,TCG Low Price,TCG Mid Price,TCG Market Price,Date\n"
            "Charizard,Base,4/102,Holofoil,$280.00,$300.00,$320.00,2025-01-02\n"
            "Pineco,Scarlet & Violet,001/198,Reverse Holofoil,0.10,0.20,0.30,2025-01-02\n")
    r = env.client.post("/api/v1/prices/import", params={"adapter": "tcgplayer"}, headers=env.admin.headers,
                        files={"file": ("tcg.csv", feed, "text/csv")})
    assert r.status_code == 200 and r.json()["stored"] == 2, r.text
    p = env.client.get("/api/v1/prices/sv1-1", headers=env.alice.headers).json()
    assert p[0]["finish"] == "reverse_holo"


@pytest.mark.parametrize("fmt", ["generic", "tcgplayer", "moxfield"])
def test_csv_round_trip_loses_nothing(env, fmt):
    a = env.alice
    add(env, a, "base1-4", finish="holo", language="ja", condition="LP", quantity=2, notes='quoted, "notes"',
        price_paid="99.99", acquired_at="2023-02-03")
    add(env, a, "sv1-1", finish="reverse_holo", condition="DMG", quantity=7, language="de")
    add(env, a, "sv1-1", quantity=1)
    add(env, a, "base1-58", finish="first_edition", condition="MP", language="fr")
    add(env, a, "sv1-2", finish="foil", condition="HP")
    r = env.client.get(f"/api/v1/collections/{a.collection_id}/export", params={"format": fmt}, headers=a.headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    text = r.text
    header = next(csv.reader(io.StringIO(text)))
    assert {"generic": "card_id", "tcgplayer": "Printing", "moxfield": "Tradelist Count"}[fmt] in header
    new = env.client.post("/api/v1/collections", json={"name": f"copy-{fmt}"}, headers=a.headers).json()
    r = env.client.post(f"/api/v1/collections/{new['id']}/import", params={"format": fmt}, headers=a.headers,
                        files={"file": ("c.csv", text, "text/csv")})
    assert r.status_code == 200 and r.json()["error_count"] == 0, r.text

    def stacks(cid):
        out = env.client.get(f"/api/v1/collections/{cid}/items", params={"limit": 100}, headers=a.headers).json()["items"]
        return sorted((i["card_id"], i["condition"], i["finish"], i["language"], i["quantity"], i["notes"],
                       i["acquired_at"], i["price_paid"] and float(i["price_paid"])) for i in out)

    assert stacks(new["id"]) == stacks(a.collection_id)


def test_import_reports_bad_rows(env):
    a = env.alice
    text = "card_id,quantity,condition\nsv1-1,2,NM\nnot-a-card,1,NM\nsv1-2,x,NM\nsv1-3,1,SUPERB\n"
    r = env.client.post(f"/api/v1/collections/{a.collection_id}/import", headers=a.headers,
                        files={"file": ("c.csv", text, "text/csv")})
    rep = r.json()
    assert rep["added"] == 1 and rep["error_count"] == 3
    assert [e.split(":")[0] for e in rep["errors"]] == ["line 3", "line 4", "line 5"]


def test_share_link_is_read_only_and_revocable(env):
    a = env.alice
    add(env, a, "base1-4", price_paid="10", notes="private note")
    r = env.client.post(f"/api/v1/collections/{a.collection_id}/share", headers=a.headers)
    assert r.status_code == 201
    token = r.json()["token"]
    anon = env.client.get(f"/api/v1/shared/{token}/items")
    assert anon.status_code == 200
    it = anon.json()["items"][0]
    assert it["card_id"] == "base1-4" and it["price_paid"] is None and it["notes"] == ""
    assert env.client.get(f"/shared/{token}").status_code == 200
    # A new link replaces the old; revoking kills it.
    token2 = env.client.post(f"/api/v1/collections/{a.collection_id}/share", headers=a.headers).json()["token"]
    assert env.client.get(f"/api/v1/shared/{token}").status_code == 404
    assert env.client.get(f"/api/v1/shared/{token2}").status_code == 200
    assert env.client.delete(f"/api/v1/collections/{a.collection_id}/share", headers=a.headers).status_code == 204
    assert env.client.get(f"/api/v1/shared/{token2}").status_code == 404
    # Bob cannot share Alice's collection.
    assert env.client.post(f"/api/v1/collections/{a.collection_id}/share", headers=env.bob.headers).status_code == 404


def test_review_confirm_correct_reject(env, tmp_path):
    a = env.alice
    s1 = add_scan(env.db, device_id="pi-a", collection_id=a.collection_id, card_id="base1-4",
                  candidates=[{"card_id": "base1-4", "score": 0.61}, {"card_id": "base1-24", "score": 0.58}])
    s2 = add_scan(env.db, device_id="pi-a", collection_id=a.collection_id, seq=2, quality_flag="glare",
                  candidates=[{"card_id": "sv1-1", "score": 0.5}, {"card_id": "sv1-2", "score": 0.49}])
    s3 = add_scan(env.db, device_id="pi-a", collection_id=a.collection_id, seq=3, crop=None)
    add_scan(env.db, device_id="pi-b", collection_id=env.bob.collection_id, seq=1, card_id="sv1-1")
    q = env.client.get("/api/v1/review", headers=a.headers).json()
    assert [i["scan_id"] for i in q["items"]] == [s1, s2, s3]
    assert q["items"][0]["suggested_card"]["name"] == "Charizard" and q["items"][0]["candidates"][1]["score"] == 0.58
    # why a crop may be poor: the device's soft quality-gate failure travels to the reviewer
    assert [i["quality_flag"] for i in q["items"]] == [None, "glare", None]
    assert env.client.get(f"/api/v1/review/{s1}/crop", headers=a.headers).content.startswith(b"\xff\xd8")

    r = env.client.post(f"/api/v1/review/{s1}/confirm", json={"finish": "holo"}, headers=a.headers)
    assert r.status_code == 200 and r.json()["status"] == "confirmed" and r.json()["item_id"]
    assert env.client.post(f"/api/v1/review/{s1}/confirm", headers=a.headers).status_code == 409

    r = env.client.post(f"/api/v1/review/{s2}/correct", json={"card_id": "sv1-2", "condition": "LP"}, headers=a.headers)
    assert r.status_code == 200 and r.json()["hard_example_id"]
    assert env.client.post(f"/api/v1/review/{s3}/reject", headers=a.headers).json()["status"] == "rejected"
    assert env.client.get("/api/v1/review", headers=a.headers).json()["items"] == []

    got = sorted((i["card_id"], i["finish"], i["condition"], i["quantity"]) for i in items(env, a)["items"])
    assert got == [("base1-4", "holo", "NM", 1), ("sv1-2", "normal", "LP", 1)]
    with env.db.session() as s:
        ex = s.scalar(select(HardExample))
        assert ex.card_id == "sv1-2" and ex.scan_id == s2 and ex.crop_path
        assert [c["card_id"] for c in ex.candidates] == ["sv1-1", "sv1-2"]
    crop = Path(env.settings.data_dir) / ex.crop_path
    assert crop.read_bytes().startswith(b"\xff\xd8")
    assert json.loads(crop.with_suffix(".json").read_text())["card_id"] == "sv1-2"


def test_apply_scan_counts_once_and_uses_device_collection(env):
    a = env.alice
    with env.db.session() as s:
        s.add(Device(id="pi-z", name="z", user_id=a.user_id, collection_id=a.collection_id))
    sid = add_scan(env.db, device_id="pi-z", collection_id=None, status="pending", card_id="sv1-1")
    with env.db.session() as s:
        scan = s.scalar(select(Scan).where(Scan.scan_id == sid))
        first = apply_scan(s, scan, status="resolved")
        second = apply_scan(s, scan, status="resolved")
        assert first is not None and second is None
        assert scan.collection_id == a.collection_id and scan.applied
    with env.db.session() as s:
        assert s.scalar(select(func.sum(CollectionItem.quantity)).where(
            CollectionItem.collection_id == a.collection_id)) == 1


def test_tokens_scopes_and_revocation(env):
    a = env.alice
    r = env.client.post("/api/v1/me/tokens", json={"name": "ro", "scopes": ["read"]}, headers=a.headers)
    assert r.status_code == 201
    ro = {"Authorization": f"Bearer {r.json()['token']}"}
    assert env.client.get("/api/v1/collections", headers=ro).status_code == 200
    assert env.client.post("/api/v1/collections", json={"name": "n"}, headers=ro).status_code == 403
    assert env.client.post("/api/v1/me/tokens", json={"name": "x", "scopes": ["admin"]}, headers=a.headers).status_code == 403
    assert env.client.post("/api/v1/me/tokens", json={"name": "x", "scopes": ["write"]}, headers=ro).status_code == 403
    assert env.client.delete(f"/api/v1/me/tokens/{r.json()['id']}", headers=env.bob.headers).status_code == 404
    assert env.client.delete(f"/api/v1/me/tokens/{r.json()['id']}", headers=a.headers).status_code == 204
    assert env.client.get("/api/v1/collections", headers=ro).status_code == 401
    me = env.client.get("/api/v1/me", headers=a.headers).json()
    assert me["username"] == "alice" and me["via"] == "token"
    # Admin creates users; others cannot.
    assert env.client.post("/api/v1/users", json={"username": "carol", "password": "longenough"},
                           headers=a.headers).status_code == 403
    assert env.client.post("/api/v1/users", json={"username": "carol", "password": "longenough"},
                           headers=env.admin.headers).status_code == 201


def test_devices_bound_to_user_and_collection(env):
    a = env.alice
    with env.db.session() as s:
        s.add(Device(id="pi-1", name="desk"))
    r = env.client.put("/api/v1/admin/devices/pi-1/owner", json={"user_id": a.user_id, "collection_id": a.collection_id},
                       headers=env.admin.headers)
    assert r.status_code == 200
    assert [d["id"] for d in env.client.get("/api/v1/me/devices", headers=a.headers).json()] == ["pi-1"]
    assert env.client.get("/api/v1/me/devices", headers=env.bob.headers).json() == []
    other = env.client.post("/api/v1/collections", json={"name": "box"}, headers=a.headers).json()
    r = env.client.patch("/api/v1/me/devices/pi-1", json={"collection_id": other["id"]}, headers=a.headers)
    assert r.json()["collection_id"] == other["id"]
    assert env.client.patch("/api/v1/me/devices/pi-1", json={"collection_id": env.bob.collection_id},
                            headers=a.headers).status_code == 404
    assert env.client.patch("/api/v1/me/devices/pi-1", json={"name": "mine"}, headers=env.bob.headers).status_code == 404


def test_mutations_are_audited(env):
    a = env.alice
    add(env, a, "sv1-1")
    env.client.post("/api/v1/collections", json={"name": ""}, headers=a.headers)  # 422, still audited
    with env.db.session() as s:
        rows = list(s.scalars(select(AuditLog).order_by(AuditLog.id)))
    assert [(r.method, r.path, r.status, r.user_id) for r in rows][-2:] == [
        ("POST", f"/api/v1/collections/{a.collection_id}/items", 201, a.user_id),
        ("POST", "/api/v1/collections", 422, a.user_id)]


def test_cli_users_collection_and_prices(sqlite_catalog_url, tmp_path, capsys, monkeypatch):
    from server.cli import main

    url = ["--database-url", sqlite_catalog_url]
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-password\n"))
    assert main([*url, "users", "create", "dana", "--password-stdin"]) == 0
    assert main([*url, "users", "token", "dana", "--scopes", "read,write"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert token.startswith("smn_")
    assert main([*url, "users", "bind-device", "pi-9", "dana"]) == 0
    csv_in = tmp_path / "in.csv"
    csv_in.write_text("card_id,quantity,condition,finish,language\nsv1-1,4,LP,holo,en\n")
    assert main([*url, "collection", "import", "1", str(csv_in)]) == 0
    out = tmp_path / "out.csv"
    assert main([*url, "collection", "export", "1", "--format", "tcgplayer", "-o", str(out)]) == 0
    assert "Lightly Played" in out.read_text() and "Holofoil" in out.read_text()
    prices = tmp_path / "p.csv"
    prices.write_text("card_id,finish,low,mid,market,date\nsv1-1,holo,1,2,3,2025-01-01\n")
    assert main([*url, "collection", "import-prices", str(prices)]) == 0
    assert "stored=1" in capsys.readouterr().out


def test_migrate_sqlite_to_postgres_verifies_counts(sqlite_env, postgres_url, capsys):
    from server.cli import main

    e = sqlite_env
    add(e, e.alice, "sv1-1", quantity=3, notes="ünïcode ✓", price_paid="1.25", acquired_at="2024-01-02")
    add(e, e.alice, "base1-4", finish="holo")
    add_scan(e.db, device_id="pi-m", collection_id=e.alice.collection_id, candidates=[{"card_id": "sv1-1", "score": 0.4}])
    e.db.dispose()
    assert main(["migrate-db", "--from", e.settings.database_url, "--to", postgres_url]) == 0
    out = capsys.readouterr().out
    assert "MISMATCH" not in out and "collection_items" in out and "cards" in out
    # The copy works as a live database: same data, sequences past the copied ids.
    from server.app import create_app
    from fastapi.testclient import TestClient
    from server.db.session import Database
    from tests.collection_fixtures import make_settings

    db = Database(postgres_url)
    with TestClient(create_app(make_settings(postgres_url, Path(e.settings.data_dir)), db)) as c:
        got = c.get(f"/api/v1/collections/{e.alice.collection_id}/items", headers=e.alice.headers).json()["items"]
        assert {(i["card_id"], i["quantity"], i["notes"]) for i in got} == {("sv1-1", 3, "ünïcode ✓"), ("base1-4", 1, "")}
        assert c.post(f"/api/v1/collections/{e.alice.collection_id}/items", json={"card_id": "sv1-2"},
                      headers=e.alice.headers).status_code == 201
        assert c.get("/api/v1/review", headers=e.alice.headers).json()["items"][0]["candidates"][0]["card_id"] == "sv1-1"
    db.dispose()
    # A second run into the now non-empty target refuses.
    assert main(["migrate-db", "--from", e.settings.database_url, "--to", postgres_url]) == 1


def test_nul_characters_are_a_client_error(migrated_db_url):
    """PostgreSQL rejects NUL in text; the API must answer 422, not 500 (found by schemathesis)."""
    from fastapi.testclient import TestClient

    from server.accounts import create_user
    from server.app import create_app
    from server.auth import issue_token
    from server.config import ServerSettings
    from server.db.session import Database

    db = Database(migrated_db_url)
    with db.session() as s:
        token = issue_token(s, create_user(s, "nul-user"), "t", ["read", "write"])
    settings = ServerSettings(database_url=migrated_db_url, readyz_check_broker=False)
    with TestClient(create_app(settings, db), raise_server_exceptions=False) as c:
        r = c.post("/api/v1/collections", json={"name": "bad\u0000name"}, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code in (201, 200, 422), r.text  # SQLite stores it; PostgreSQL must not 500
        r = c.post("/api/v1/collections", json={"name": "good name"}, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code in (200, 201), r.text
        # inside JSONB (a smart folder's filter) PostgreSQL refuses "\u0000" and lone surrogates (schemathesis again)
        pg = migrated_db_url.startswith("postgresql")
        # JSON escapes: a lone surrogate cannot be sent as UTF-8. NUL: refused by PostgreSQL's JSONB, stored by
        # SQLite; the lone surrogate: refused by validation, whose 422 echoes it (that echo was the 500).
        for bad, status, says in (("\\u0000g", 422 if pg else 201, "rejected by the database" if pg else None),
                                  ("\\ud863x", 422, "valid string")):
            r = c.post("/api/v1/smart-folders", content='{"name": "f", "filter": {"set": "%s"}}' % bad,
                       headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            assert r.status_code == status, r.text
            if says:
                assert says in r.text
        r = c.post("/api/v1/smart-folders", json={"name": "f", "filter": {"set": "sv1"}},
                   headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 201, r.text
