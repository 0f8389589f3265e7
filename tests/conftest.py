"""Shared fixtures: real Mosquitto and PostgreSQL started per test session/test, the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.services import Mosquitto, Postgres

SHARED_DATA = Path(os.environ.get("SCANEMON_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
POKEMON_TCG_DATA = SHARED_DATA / "pokemon-tcg-data"
SV1_IMAGES = SHARED_DATA / "PTCGextension" / "cards"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (or $SCANEMON_SHARED_DATA); tests that need it skip where it is absent."""
    if not POKEMON_TCG_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set SCANEMON_SHARED_DATA); skipping data-dependent test")
    return SHARED_DATA


@pytest.fixture
def mosquitto_factory(tmp_path):
    """Start brokers with custom settings: ``mosquitto_factory(passwords=..., acl=...)``. All stopped at teardown."""
    started: list[Mosquitto] = []

    def make(**kw) -> Mosquitto:
        try:
            m = Mosquitto(tmp_path / f"mosq{len(started)}", **kw)
        except FileNotFoundError as exc:
            pytest.skip(str(exc))
        started.append(m.start())
        return m

    yield make
    for m in started:
        m.kill()


@pytest.fixture
def mosquitto(mosquitto_factory) -> Mosquitto:
    """A private anonymous Mosquitto on a random port."""
    return mosquitto_factory()


@pytest.fixture(scope="session")
def pg_server():
    """One private PostgreSQL cluster for the test session (initdb + pg_ctl, random port)."""
    try:
        # Its own temp dir under /tmp: pytest's tmp tree is root-only, and the cluster runs as 'postgres'.
        pg = Postgres()
    except (FileNotFoundError, KeyError) as exc:
        pytest.skip(f"PostgreSQL not available: {exc}")
    pg.start()
    yield pg
    pg.cleanup()


@pytest.fixture
def postgres_url(pg_server) -> str:
    """A fresh, empty PostgreSQL database for this test."""
    return pg_server.create_database()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'scanemon.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """Runs the test once on SQLite (embedded default) and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'scanemon.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def migrated_db_url(db_url) -> str:
    from server.db.migrate import upgrade

    upgrade(db_url)
    return db_url
