"""``POST /api/v1/identify`` and ``scanemon-server identify --json`` on a tiny rendered catalog."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

pytest.importorskip("torch", reason="resolver needs torch")
pytest.importorskip("faiss", reason="resolver needs faiss-cpu")

from tests.test_resolver import checkpoint, tiny_catalog  # noqa: E402,F401  (shared fixtures)


@pytest.fixture
def settings(tiny_catalog, checkpoint, sqlite_url, tmp_path):  # noqa: F811
    from server.config import ResolverSettings, ServerSettings
    from server.db.migrate import upgrade

    upgrade(sqlite_url)
    return ServerSettings(database_url=sqlite_url, data_dir=tmp_path / "data",
                          resolver=ResolverSettings(catalog_dir=tiny_catalog, checkpoint=checkpoint, ocr=False))


@pytest.fixture
def client(settings):
    from fastapi.testclient import TestClient

    from server.app import create_app

    from server.accounts import create_user
    from server.auth import issue_token
    from server.db.session import Database

    db = Database(settings.database_url)
    with db.session() as s:
        token = issue_token(s, create_user(s, "scanner-user"), "identify", ["read"])
    with TestClient(create_app(settings, db)) as c:
        anonymous = c.post("/api/v1/identify", files={"image": ("x.jpg", b"\xff\xd8\xff", "image/jpeg")})
        assert anonymous.status_code == 401  # the resolver is not open to the world
        c.headers["Authorization"] = f"Bearer {token}"
        yield c


def _jpeg(img) -> bytes:
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()


def test_identify_crop_and_whole_photo(client, tiny_catalog):  # noqa: F811
    from models.synth.capture import CaptureConfig, augment_crop, simulate_capture

    rng = np.random.default_rng(5)
    ids = sorted(p.stem for p in tiny_catalog.glob("*.jpg"))
    cid = ids[3]
    card = cv2.imread(str(tiny_catalog / f"{cid}.jpg"))
    r = client.post("/api/v1/identify", files={"image": ("crop.jpg", _jpeg(augment_crop(card, rng, 0.5)), "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["cards"]) == 1
    top = body["cards"][0]
    assert set(top) >= {"card_id", "confidence", "candidates", "quad", "status"}
    assert any(c["card_id"] == cid for c in top["candidates"])
    cfg = CaptureConfig(mode="scanner_box", p_fingers=0, p_glare=0, p_motion_blur=0, p_defocus=0, backgrounds=["wood"])
    frame, _ = simulate_capture([card], [cid], rng, cfg)
    r = client.post("/api/v1/identify", files={"image": ("photo.jpg", _jpeg(frame), "image/jpeg")})
    assert r.status_code == 200, r.text
    assert r.json()["cards"] and len(r.json()["cards"][0]["quad"]) == 4


def test_identify_rejects_non_images(client):
    r = client.post("/api/v1/identify", files={"image": ("x.txt", b"definitely not an image at all", "text/plain")})
    assert r.status_code in (415, 422)


def test_cli_identify_json_lines(settings, tiny_catalog, tmp_path, capsys, monkeypatch):  # noqa: F811
    from server import cli

    monkeypatch.setenv("SCANEMON_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("SCANEMON_RESOLVER__CHECKPOINT", str(settings.resolver.checkpoint))
    monkeypatch.setenv("SCANEMON_RESOLVER__OCR", "false")
    img = tmp_path / "card.jpg"
    cid = sorted(p.stem for p in tiny_catalog.glob("*.jpg"))[0]
    img.write_bytes((tiny_catalog / f"{cid}.jpg").read_bytes())
    rc = cli.main(["--database-url", settings.database_url, "identify", "--json", "--catalog-dir", str(tiny_catalog), str(img)])
    assert rc == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(line) == {"image", "cards", "reject_reason", "ms"}
    c = line["cards"][0]
    assert set(c) == {"card_id", "decision", "score", "margin", "candidates", "quad"}
    assert c["decision"] in ("accept", "ambiguous") and c["card_id"] == cid
