"""Catalog import from the real pokemon-tcg-data on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import shutil

import pytest
from sqlalchemy import func, select

from server.catalog.importer import import_catalog
from server.catalog.sources import CatalogError, PokemonTCGSource
from server.db.models import Card, CardSet, CatalogMeta
from server.db.session import Database


def small_catalog(shared_data, tmp_path, sets=("base1", "sv1", "base2")):
    """A copy of a few real sets (keeps the fast tests fast)."""
    src = shared_data / "pokemon-tcg-data"
    root = tmp_path / "ptcg"
    (root / "cards" / "en").mkdir(parents=True)
    (root / "sets").mkdir()
    all_sets = json.loads((src / "sets" / "en.json").read_text())
    (root / "sets" / "en.json").write_text(json.dumps([s for s in all_sets if s["id"] in sets]))
    for s in sets:
        shutil.copy(src / "cards" / "en" / f"{s}.json", root / "cards" / "en" / f"{s}.json")
    return root


def test_full_catalog_import_is_complete_and_idempotent(shared_data, migrated_db_url):
    db = Database(migrated_db_url)
    source = PokemonTCGSource(shared_data / "pokemon-tcg-data", images=shared_data / "PTCGextension" / "cards")
    first = import_catalog(db, source)
    assert (first.sets, first.cards, first.inserted, first.errors) == (170, 19783, 19783, [])
    second = import_catalog(db, source)
    assert (second.changed, second.unchanged) == (0, 19783)
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Card)) == 19783
        assert s.scalar(select(func.count()).select_from(CardSet)) == 170
        c = s.get(Card, "sv1-11")
        assert (c.name, c.number, c.printed_total, c.rarity, c.supertype) == ("Skiddo", "11", 198, "Common", "Pokémon")
        assert c.types == ["Grass"] and c.hp == 60 and c.national_dex == [672] and c.artist == "Tika Matsuno"
        assert c.image_path and c.image_path.endswith("sv1-11.png")
        assert c.image_url_large.endswith("11_hires.png")
        assert s.scalar(select(func.count()).select_from(Card).where(Card.image_path.is_not(None))) == 258
        meta = s.get(CatalogMeta, "pokemon-tcg-data")
        assert meta.cards == 19783 and meta.version == source.version()
    db.dispose()


def test_reimport_updates_changed_records(shared_data, tmp_path, migrated_db_url):
    root = small_catalog(shared_data, tmp_path)
    db = Database(migrated_db_url)
    import_catalog(db, PokemonTCGSource(root))
    path = root / "cards" / "en" / "base1.json"
    cards = json.loads(path.read_text())
    cards[0]["rarity"] = "Rare Holo Test"
    path.write_text(json.dumps(cards))
    rep = import_catalog(db, PokemonTCGSource(root))
    assert (rep.inserted, rep.updated) == (0, 1)
    with db.session() as s:
        assert s.get(Card, cards[0]["id"]).rarity == "Rare Holo Test"
    db.dispose()


def test_broken_record_names_file_and_record_and_leaves_set_untouched(shared_data, tmp_path, migrated_db_url):
    root = small_catalog(shared_data, tmp_path)
    path = root / "cards" / "en" / "sv1.json"
    cards = json.loads(path.read_text())
    del cards[57]["name"]  # a broken record in the middle of the set
    path.write_text(json.dumps(cards))
    db = Database(migrated_db_url)
    rep = import_catalog(db, PokemonTCGSource(root))
    assert len(rep.errors) == 1
    assert "sv1.json" in rep.errors[0] and cards[57]["id"] in rep.errors[0]
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Card).where(Card.set_id == "sv1")) == 0  # not half-applied
        assert s.scalar(select(func.count()).select_from(Card).where(Card.set_id == "base1")) == 102
    db.dispose()


def test_invalid_json_file_is_reported(shared_data, tmp_path):
    root = small_catalog(shared_data, tmp_path)
    (root / "cards" / "en" / "base2.json").write_text('[{"id": "base2-1",')
    with pytest.raises(CatalogError, match=r"base2\.json.*invalid JSON"):
        PokemonTCGSource(root).cards("base2")


def test_reprints_share_illustration(shared_data):
    src = PokemonTCGSource(shared_data / "pokemon-tcg-data")
    base1 = {c.number: c for c in src.cards("base1")}
    base4 = {c.name: c for c in src.cards("base4")}  # Base Set 2 reprints Base Set art
    assert base1["4"].illustration_id == base4["Charizard"].illustration_id
    assert base1["4"].illustration_id != base1["2"].illustration_id


def test_cli_import_twice(shared_data, tmp_path):
    from server.cli import main

    root = small_catalog(shared_data, tmp_path)
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert main(["--database-url", url, "catalog", "import", "--pokemon-tcg-data", str(root)]) == 0
    assert main(["--database-url", url, "catalog", "import", "--pokemon-tcg-data", str(root / "missing")]) == 1
