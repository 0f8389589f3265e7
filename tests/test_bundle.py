"""Bundle format: write, sign, verify (every failure reason), archive, self-test; server store and download."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.bundle import (
    BundleError,
    generate_private_key,
    manifest_bytes,
    pack_bundle,
    parse_manifest,
    sign_bundle,
    structural_self_test,
    unpack_bundle,
    verify_bundle,
    write_bundle,
)

CARDS = ["sv1-1", "sv1-2", "sv1-3", "sv1-4"]


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    ok, buf = cv2.imencode(".png", rng.integers(0, 255, (88, 63, 3), dtype=np.uint8))
    assert ok
    return buf.tobytes()


def _npy(arr: np.ndarray) -> bytes:
    b = io.BytesIO()
    np.save(b, arr)
    return b.getvalue()


def bundle_files(seed: int = 0, dim: int = 16) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    return {
        "detector.tflite": b"TFL3" + rng.bytes(2048),
        "embedder.tflite": b"TFL3" + rng.bytes(4096),
        "catalog/embeddings.npy": _npy(rng.integers(-127, 127, (len(CARDS), dim), dtype=np.int8)),
        "catalog/ids.json": json.dumps(CARDS).encode(),
        "golden/a.png": _png(seed + 1),
        "golden/b.png": _png(seed + 2),
        "golden/expected.json": json.dumps({"a.png": "sv1-1", "b.png": "sv1-3"}).encode(),
    }


def manifest_fields(version: str = "2025.01.0", dim: int = 16) -> dict:
    return {
        "version": version, "catalog_version": "cat-2025-01", "catalog_source": "pokemon-tcg-data",
        "thresholds": {"accept_score": 0.82, "accept_margin": 0.06, "no_card_score": 0.35, "stack_iou": 0.5},
        "embedder": {"input_size": 224, "embedding_dim": dim, "normalization": "imagenet", "dtype": "int8"},
        "detector": {"input_size": 320, "score_threshold": 0.5},
    }


def make_bundle(out: Path, key, version: str = "2025.01.0", seed: int = 0) -> Path:
    write_bundle(out, bundle_files(seed), manifest_fields(version), signing_key=key)
    return out


@pytest.fixture
def key():
    return generate_private_key()


@pytest.fixture
def bundle(tmp_path, key) -> Path:
    return make_bundle(tmp_path / "b", key)


def test_write_and_verify_roundtrip(bundle, key):
    m = verify_bundle(bundle, key.public_key())
    assert m.version == "2025.01.0" and m.format == 1
    assert set(m.files) == set(bundle_files())
    assert m.thresholds.accept_score == 0.82 and m.thresholds.model_extra == {"stack_iou": 0.5}
    assert m.files["catalog/ids.json"].size == len(json.dumps(CARDS))
    assert (bundle / "manifest.json").read_bytes() == manifest_bytes(m)  # canonical bytes are what is signed
    ok, why = structural_self_test(bundle)
    assert ok, why


def _reason(bundle, key) -> str:
    with pytest.raises(BundleError) as ei:
        verify_bundle(bundle, key.public_key())
    return ei.value.reason


def test_missing_file(bundle, key):
    (bundle / "embedder.tflite").unlink()
    assert _reason(bundle, key) == "missing_file"


def test_wrong_hash_same_size(bundle, key):
    p = bundle / "catalog/embeddings.npy"
    data = bytearray(p.read_bytes())
    data[-1] ^= 0x01
    p.write_bytes(bytes(data))
    assert _reason(bundle, key) == "wrong_hash"


def test_wrong_size(bundle, key):
    with open(bundle / "detector.tflite", "ab") as f:
        f.write(b"x")
    assert _reason(bundle, key) == "wrong_size"


def test_bad_signature_other_key(bundle, key):
    sign_bundle(bundle, generate_private_key())
    assert _reason(bundle, key) == "bad_signature"


def test_bad_signature_tampered_manifest(bundle, key):
    # Loosen the thresholds without re-signing: the signature check must catch it.
    m = json.loads((bundle / "manifest.json").read_text())
    m["thresholds"]["accept_score"] = 0.1
    (bundle / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
    assert _reason(bundle, key) == "bad_signature"


def test_unsigned(tmp_path, key):
    write_bundle(tmp_path / "u", bundle_files(), manifest_fields())
    assert _reason(tmp_path / "u", key) == "missing_file"


def test_unknown_format(bundle, key):
    m = json.loads((bundle / "manifest.json").read_text())
    m["format"] = 2
    (bundle / "manifest.json").write_text(json.dumps(m))
    sign_bundle(bundle, key)  # properly signed, but a format this device does not know
    assert _reason(bundle, key) == "unknown_format"


def test_unexpected_file(bundle, key):
    (bundle / "catalog" / "extra.bin").write_bytes(b"surprise")
    assert _reason(bundle, key) == "unexpected_file"


def test_symlinked_file_refused(bundle, key, tmp_path):
    p = bundle / "detector.tflite"
    target = tmp_path / "elsewhere.tflite"
    target.write_bytes(p.read_bytes())
    p.unlink()
    p.symlink_to(target)
    assert _reason(bundle, key) == "unsafe_path"


def test_write_bundle_checks_consistency(tmp_path, key):
    files = bundle_files()
    files["catalog/ids.json"] = json.dumps(CARDS[:3]).encode()
    with pytest.raises(BundleError) as ei:
        write_bundle(tmp_path / "x", files, manifest_fields())
    assert ei.value.reason == "bad_content" and "rows" in str(ei.value)
    with pytest.raises(BundleError) as ei:
        write_bundle(tmp_path / "y", bundle_files(), manifest_fields(dim=32))
    assert "embedding_dim" in str(ei.value)
    files = bundle_files()
    del files["golden/expected.json"]
    with pytest.raises(BundleError):
        write_bundle(tmp_path / "z", files, manifest_fields())
    bad = manifest_fields()
    bad["thresholds"] = {"accept_score": 0.3, "accept_margin": 0.05, "no_card_score": 0.5}
    with pytest.raises(BundleError) as ei:
        write_bundle(tmp_path / "w", bundle_files(), bad)
    assert ei.value.reason == "invalid_manifest" and "no_card_score" in str(ei.value)
    with pytest.raises(BundleError):
        write_bundle(tmp_path / "v", {**bundle_files(), "../evil": b"x"}, manifest_fields())


def test_manifest_forbids_unknown_keys():
    m = json.loads(manifest_bytes(parse_manifest(json.dumps({**manifest_fields(), "format": 1, "created":
        "2025-01-01T00:00:00Z", "files": {f: {"sha256": "0" * 64, "size": 1} for f in bundle_files()}}).encode())))
    m["surprise"] = 1
    with pytest.raises(BundleError) as ei:
        parse_manifest(json.dumps(m).encode())
    assert ei.value.reason == "invalid_manifest"


def test_self_test_catches_undecodable_golden(tmp_path, key):
    files = bundle_files()
    files["golden/b.png"] = b"\x89PNG but not really"
    write_bundle(tmp_path / "g", files, manifest_fields(), signing_key=key)
    verify_bundle(tmp_path / "g", key.public_key())  # integrity is fine…
    ok, why = structural_self_test(tmp_path / "g")  # …but the self-test is not
    assert not ok and "golden/b.png" in why


def test_pack_is_deterministic_and_unpacks(bundle, key, tmp_path):
    sha1 = pack_bundle(bundle, tmp_path / "1.tar")
    sha2 = pack_bundle(bundle, tmp_path / "2.tar")
    assert sha1 == sha2
    unpack_bundle(tmp_path / "1.tar", tmp_path / "out")
    assert verify_bundle(tmp_path / "out", key.public_key()).version == "2025.01.0"


@pytest.mark.parametrize("member", ["../escape", "/abs/path", "link"])
def test_unpack_refuses_unsafe_members(tmp_path, member):
    tar_path = tmp_path / "evil.tar"
    with tarfile.open(tar_path, "w") as tar:
        info = tarfile.TarInfo(member)
        if member == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(BundleError) as ei:
        unpack_bundle(tar_path, tmp_path / "dest")
    assert ei.value.reason in ("unsafe_path", "bad_archive")
    assert not (tmp_path / "escape").exists()


# ------------------------------------------------------------------------------------------ server side


@pytest.fixture
def server(tmp_path, sqlite_url):
    """App with a migrated SQLite database, an admin token, a device token and a read-only token."""
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.auth import issue_token
    from server.config import ServerSettings
    from server.db.migrate import upgrade
    from server.db.models import User

    upgrade(sqlite_url)
    settings = ServerSettings(database_url=sqlite_url, data_dir=tmp_path / "var", readyz_check_broker=False)
    app = create_app(settings)
    with app.state.db.session() as s:
        admin = User(username="admin", is_admin=True)
        bob = User(username="bob")
        s.add_all([admin, bob])
        s.flush()
        tokens = {"admin": issue_token(s, admin, "admin", ["admin"]),
                  "device": issue_token(s, bob, "device:pi-1", ["device"]),
                  "read": issue_token(s, bob, "reader", ["read"])}
    with TestClient(app) as client:
        yield app, client, tokens


def test_store_build_and_download(tmp_path, key, server):
    from server.bundles import BundleStore, announcement, build

    app, client, tokens = server
    store = BundleStore(app.state.settings.data_dir / "bundles")
    src = tmp_path / "unsigned"
    write_bundle(src, bundle_files(), manifest_fields("2025.02.0"))
    info = build(src, store, key)
    assert not (src / "manifest.sig").exists()  # the input folder is left alone
    assert build(src, store, key).sha256 == info.sha256  # idempotent
    store.set_current(info.version)
    ann = announcement(info, "https://scanemon.example")
    assert ann.url == "https://scanemon.example/api/v1/bundles/2025.02.0/archive"

    url = "/api/v1/bundles/2025.02.0/archive"
    assert client.get(url).status_code == 401
    assert client.get(url, headers={"Authorization": f"Bearer {tokens['read']}"}).status_code == 403
    r = client.get(url, headers={"Authorization": f"Bearer {tokens['device']}"})
    assert r.status_code == 200 and r.headers["x-bundle-sha256"] == info.sha256
    import hashlib

    assert hashlib.sha256(r.content).hexdigest() == info.sha256
    # Resume: a Range request gets the tail.
    r2 = client.get(url, headers={"Authorization": f"Bearer {tokens['device']}", "Range": "bytes=1000-"})
    assert r2.status_code == 206 and r2.content == r.content[1000:]
    assert client.get("/api/v1/bundles/nope/archive",
                      headers={"Authorization": f"Bearer {tokens['device']}"}).status_code == 404
    cur = client.get("/api/v1/bundles/current", headers={"Authorization": f"Bearer {tokens['device']}"})
    assert cur.status_code == 200 and cur.json()["version"] == "2025.02.0"

    # Another bundle under the same version with different content is refused (devices key on versions).
    src2 = tmp_path / "other"
    write_bundle(src2, bundle_files(seed=5), manifest_fields("2025.02.0"))
    with pytest.raises(BundleError):
        build(src2, store, key)


def test_revoked_device_token_cannot_download(server, key, tmp_path):
    from datetime import datetime, timezone

    from sqlalchemy import select

    from server.bundles import BundleStore, build
    from server.db.models import ApiToken

    app, client, tokens = server
    write_bundle(tmp_path / "s", bundle_files(), manifest_fields("v1"))
    build(tmp_path / "s", BundleStore(app.state.settings.data_dir / "bundles"), key)
    with app.state.db.session() as s:
        s.scalar(select(ApiToken).where(ApiToken.name == "device:pi-1")).revoked_at = datetime.now(timezone.utc)
    r = client.get("/api/v1/bundles/v1/archive", headers={"Authorization": f"Bearer {tokens['device']}"})
    assert r.status_code == 401
