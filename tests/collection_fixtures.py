"""Helpers for collection/web/security tests: a small real catalog (a few sets of pokemon-tcg-data),
users with tokens, and an app bound to a fresh database. Shared by test_collections, test_security,
test_web_browser, test_schemathesis and the collection bench.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from server.catalog.importer import import_catalog
from server.catalog.sources import PokemonTCGSource
from server.config import ServerSettings
from server.db.session import Database

DEFAULT_SETS = ("base1", "sv1")


class SubsetSource(PokemonTCGSource):
    """The real pokemon-tcg-data reader, limited to a few sets (fast test catalogs)."""

    def __init__(self, root, set_ids, images=None):
        super().__init__(root, images=images)
        self.set_ids = tuple(set_ids)

    def sets(self):
        return [s for s in super().sets() if s.id in self.set_ids]


def import_sets(url: str, shared_data: Path, set_ids=DEFAULT_SETS) -> None:
    from server.db.migrate import upgrade

    upgrade(url)
    db = Database(url)
    try:
        report = import_catalog(db, SubsetSource(shared_data / "pokemon-tcg-data", set_ids,
                                                 images=shared_data / "PTCGextension" / "cards"))
        assert not report.errors, report.errors
    finally:
        db.dispose()


class CatalogTemplates:
    """Import the small catalog once per test session, then clone it per test (file copy / PG TEMPLATE)."""

    def __init__(self, tmp: Path, shared_data: Path):
        self.tmp = tmp
        self.shared_data = shared_data
        self.sqlite_file: Path | None = None
        self.pg_template: str | None = None

    def sqlite(self, dest: Path) -> str:
        if self.sqlite_file is None:
            self.sqlite_file = self.tmp / "catalog-template.db"
            import_sets(f"sqlite:///{self.sqlite_file}", self.shared_data)
            # Fold the WAL into the main file so a plain copy is complete.
            import sqlite3

            con = sqlite3.connect(self.sqlite_file)
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            con.close()
        shutil.copy(self.sqlite_file, dest)
        return f"sqlite:///{dest}"

    def postgres(self, pg) -> str:
        import psycopg2

        if self.pg_template is None:
            name = f"tpl_{uuid.uuid4().hex[:10]}"
            import_sets(pg.create_database(name), self.shared_data)
            self.pg_template = name
        new = f"t_{uuid.uuid4().hex[:12]}"
        conn = psycopg2.connect(host="127.0.0.1", port=pg.port, user=pg.user, dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{new}" TEMPLATE "{self.pg_template}"')
        conn.close()
        return pg.url(new)


@dataclass
class Account:
    user_id: int
    username: str
    password: str
    token: str
    collection_id: int
    headers: dict = field(default_factory=dict)


def make_account(db: Database, username: str, *, password: str | None = None, admin: bool = False,
                 scopes=("read", "write", "review"), collection: str | None = None) -> Account:
    from server import accounts
    from server.auth import issue_token
    from server.db.models import Collection

    password = password or f"pw-{username}-secret"
    with db.session() as s:
        u = accounts.create_user(s, username, password, is_admin=admin)
        col = Collection(user_id=u.id, name=collection or f"{username}'s cards")
        s.add(col)
        s.flush()
        token = issue_token(s, u, "test", list(scopes) + (["admin"] if admin else []))
        return Account(u.id, username, password, token, col.id, {"Authorization": f"Bearer {token}"})


def make_settings(url: str, tmp: Path, **security) -> ServerSettings:
    sec = {"rate_limit_enabled": False, "session_secret": "test-secret-" + "x" * 20, **security}
    return ServerSettings(database_url=url, data_dir=tmp / "var", readyz_check_broker=False, security=sec)


def add_scan(db: Database, *, device_id: str, collection_id: int | None, status: str = "needs_review",
             card_id: str | None = None, candidates=None, crop: bytes | None = b"\xff\xd8\xff\xe0fakejpeg",
             seq: int = 1, scan_id: str | None = None, quality_flag: str | None = None) -> str:
    from server.db.models import Device, Scan

    scan_id = scan_id or str(uuid.uuid4())
    with db.session() as s:
        if s.get(Device, device_id) is None:
            s.add(Device(id=device_id, name=device_id))
            s.flush()
        s.add(Scan(scan_id=scan_id, device_id=device_id, seq=seq, captured_at=datetime.now(timezone.utc),
                   decision="ambiguous", card_id=card_id, candidates=candidates or [], crop=crop, status=status,
                   collection_id=collection_id, bundle_version="test-1", quality_flag=quality_flag))
    return scan_id


# --- pytest fixtures (import them into a test module: ``from tests.collection_fixtures import *``) -------

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def catalog_templates(tmp_path_factory, shared_data):
    return CatalogTemplates(tmp_path_factory.mktemp("catalog"), shared_data)


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request, tmp_path, catalog_templates) -> str:
    """A fresh, migrated database holding sets base1 + sv1, on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return catalog_templates.sqlite(tmp_path / "scanemon.db")
    return catalog_templates.postgres(request.getfixturevalue("pg_server"))


@pytest.fixture
def sqlite_catalog_url(tmp_path, catalog_templates) -> str:
    return catalog_templates.sqlite(tmp_path / "scanemon.db")


@dataclass
class Env:
    app: object
    db: Database
    client: object
    alice: Account
    bob: Account
    admin: Account
    settings: ServerSettings


def build_env(url: str, tmp: Path, **security) -> Env:
    from fastapi.testclient import TestClient

    from server.app import create_app

    settings = make_settings(url, tmp, **security)
    db = Database(url)
    alice = make_account(db, "alice")
    bob = make_account(db, "bob")
    admin = make_account(db, "root", admin=True)
    app = create_app(settings, db)
    return Env(app, db, TestClient(app), alice, bob, admin, settings)


@pytest.fixture
def env(catalog_url, tmp_path):
    e = build_env(catalog_url, tmp_path)
    with e.client:
        yield e
    e.db.dispose()


@pytest.fixture
def sqlite_env(sqlite_catalog_url, tmp_path):
    e = build_env(sqlite_catalog_url, tmp_path)
    with e.client:
        yield e
    e.db.dispose()
