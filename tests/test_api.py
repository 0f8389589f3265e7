"""API skeleton: sets, card search (tsvector / FTS5), card detail, health and readiness."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.catalog.importer import import_catalog
from server.catalog.sources import PokemonTCGSource
from server.config import MqttSettings, ServerSettings
from server.db.session import Database
from tests.test_catalog import small_catalog


@pytest.fixture
def client(shared_data, tmp_path, migrated_db_url, mosquitto):
    db = Database(migrated_db_url)
    import_catalog(db, PokemonTCGSource(small_catalog(shared_data, tmp_path),
                                        images=shared_data / "PTCGextension" / "cards"))
    settings = ServerSettings(database_url=migrated_db_url, mqtt=MqttSettings(port=mosquitto.port))
    with TestClient(create_app(settings, db)) as c:
        c.broker = mosquitto
        yield c


def test_sets(client):
    r = client.get("/api/v1/sets")
    assert r.status_code == 200
    assert [s["id"] for s in r.json()] == ["base1", "base2", "sv1"]  # release order


def test_search_prefix_and_accents(client):
    r = client.get("/api/v1/cards", params={"q": "chari"}).json()
    assert {c["id"] for c in r["items"]} == {"base1-4"}
    r = client.get("/api/v1/cards", params={"q": "pika"}).json()
    assert {c["name"] for c in r["items"]} == {"Pikachu"}
    assert r["total"] == len(r["items"]) >= 1
    # artist words are searchable too, and punctuation is harmless
    r = client.get("/api/v1/cards", params={"q": "Mitsuhiro Arita\")*"}).json()
    assert "base1-4" in {c["id"] for c in r["items"]}


def test_filters_and_pagination(client):
    r = client.get("/api/v1/cards", params={"set": "sv1", "page_size": 10, "page": 2}).json()
    assert r["total"] == 258 and len(r["items"]) == 10 and r["page"] == 2
    r = client.get("/api/v1/cards", params={"set": "base1", "rarity": "Rare Holo"}).json()
    assert r["total"] == 16
    r = client.get("/api/v1/cards", params={"set": "base1", "type": "Fire"}).json()
    assert r["total"] > 0 and all("Fire" in c["types"] for c in r["items"])
    assert client.get("/api/v1/cards", params={"page_size": 1000}).status_code == 422


def test_card_detail(client):
    r = client.get("/api/v1/cards/sv1-11")
    assert r.status_code == 200
    body = r.json()
    assert body["name"] == "Skiddo" and body["set"]["name"] == "Scarlet & Violet"
    assert body["has_local_image"] is True
    assert body["facts"]["attacks"][0]["name"] == "Vine Whip"
    assert client.get("/api/v1/cards/nope-1").status_code == 404


def test_health_and_readiness_follow_the_broker(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200, r.json()
    assert r.json()["checks"]["broker"]["ok"] is True
    client.broker.kill()
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["broker"]["ok"] is False
    assert r.json()["checks"]["database"]["ok"] is True


def test_openapi_lists_endpoints(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/v1/sets", "/api/v1/cards", "/api/v1/cards/{card_id}", "/healthz", "/readyz"} <= set(paths)


def test_mqtt_url_sets_the_broker_connection(monkeypatch):
    """SCANEMON_MQTT_URL names the broker in one setting (beside SCANEMON_DATABASE_URL), percent-decoded."""
    import pytest
    from pydantic import ValidationError

    from server.config import ServerSettings

    monkeypatch.setenv("SCANEMON_MQTT_URL", "mqtt://srv:p%40ss@mqtt.example:1884")
    m = ServerSettings().mqtt
    assert (m.host, m.port, m.username, m.password, m.embedded) == ("mqtt.example", 1884, "srv", "p@ss", False)
    monkeypatch.setenv("SCANEMON_MQTT_URL", "mqtt://10.0.0.5")
    m = ServerSettings().mqtt
    assert (m.host, m.port, m.username) == ("10.0.0.5", 1883, None)
    for bad in ("http://h:1883", "mqtt://h:notaport", "mqtt://:1883"):
        monkeypatch.setenv("SCANEMON_MQTT_URL", bad)
        with pytest.raises(ValidationError, match="mqtt_url"):
            ServerSettings()
