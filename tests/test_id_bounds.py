"""Every database id the API accepts — path, query or request body — is bounded to 64 bits, so an oversized
number is a 422, never a 500 from the database driver (schemathesis found both kinds)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from server.api.deps import MAX_DB_ID
from server.app import create_app
from server.db.migrate import upgrade
from server.db.models import Device
from server.db.session import Database
from tests.collection_fixtures import make_account, make_settings


def _unbounded(s: dict) -> bool:
    # Compared as floats: the OpenAPI document may carry 2**63 - 1 as 9.223372036854776e18.
    return "maximum" not in s or float(s["maximum"]) > float(MAX_DB_ID)


def _is_id(name: str) -> bool:
    return name == "id" or name.endswith("_id") or name.endswith("_ids")


def _integers(schema: dict, components: dict, seen=()):
    """(name, integer schema) for every integer property reachable from ``schema``."""
    if "$ref" in schema:
        ref = schema["$ref"].rsplit("/", 1)[-1]
        if ref in seen:
            return
        yield from _integers(components[ref], components, (*seen, ref))
        return
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key, []):
            yield from _integers(sub, components, seen)
    if schema.get("type") == "array" and "items" in schema:
        for name, s in _integers(schema["items"], components, seen):
            yield name, s
    for name, prop in schema.get("properties", {}).items():
        alts = [prop, *prop.get("anyOf", [])]
        alts += [a["items"] for a in list(alts) if a.get("type") == "array" and "items" in a]
        for s in alts:
            if s.get("type") == "integer":
                yield name, s
        yield from _integers(prop, components, seen)


def test_openapi_bounds_every_id_input(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    app = create_app(make_settings(url, tmp_path), Database(url))
    spec = app.openapi()
    components = spec.get("components", {}).get("schemas", {})
    unbounded = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for p in op.get("parameters", []):
                s = p.get("schema", {})
                for alt in [s, *s.get("anyOf", [])]:
                    if alt.get("type") == "integer" and _is_id(p["name"]) and _unbounded(alt):
                        unbounded.append(f"{method.upper()} {path} {p['in']} {p['name']}")
            body = op.get("requestBody", {}).get("content", {})
            for media in body.values():
                for name, s in _integers(media.get("schema", {}), components):
                    if _is_id(name) and _unbounded(s):
                        unbounded.append(f"{method.upper()} {path} body {name}")
    assert not unbounded, "unbounded id inputs:\n" + "\n".join(sorted(set(unbounded)))


def test_oversized_owner_ids_are_422(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    db = Database(url)
    admin = make_account(db, "root", admin=True)
    with db.session() as s:
        s.add(Device(id="pi-fuzz", name="fuzz"))
    with TestClient(create_app(make_settings(url, tmp_path), db)) as client:
        r = client.put("/api/v1/admin/devices/pi-fuzz/owner", headers=admin.headers,
                       json={"collection_id": 8191368602288369893559911841792, "user_id": 1})
        assert r.status_code == 422, r.text
        r = client.put("/api/v1/admin/devices/pi-fuzz/owner", headers=admin.headers,
                       json={"collection_id": admin.collection_id, "user_id": admin.user_id})
        assert r.status_code == 200, r.text
    db.dispose()
