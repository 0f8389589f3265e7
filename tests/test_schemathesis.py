"""Schemathesis over the OpenAPI spec against a live uvicorn server: no request may cause a server error.

Bounded: ``--max-time`` per database (SCANEMON_SCHEMATHESIS_SECONDS, default 50 s), so the whole test
takes about two minutes. Runs with an admin token so every operation is reachable; the summary is
written to var/schemathesis/<db>.txt and printed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.collection_fixtures import *  # noqa: F401,F403 - fixtures
from tests.collection_fixtures import add_scan, make_account, make_settings
from tests.services import free_port

ROOT = Path(__file__).resolve().parents[1]
SECONDS = int(os.environ.get("SCANEMON_SCHEMATHESIS_SECONDS", "50"))



def test_schemathesis_finds_no_server_errors(catalog_url, tmp_path, request):
    st = Path(sys.executable).with_name("schemathesis")
    if not st.exists():
        pytest.skip("schemathesis not installed (pip install schemathesis)")
    import uvicorn

    from server.app import create_app
    from server.db.session import Database

    db = Database(catalog_url)
    admin = make_account(db, "fuzz", admin=True)
    from server.collections_service import add_to_stack

    with db.session() as s:
        for cid in ("sv1-1", "sv1-2", "base1-4"):
            add_to_stack(s, admin.collection_id, cid, 2)
    scan_id = add_scan(db, device_id="pi-fuzz", collection_id=admin.collection_id, card_id="sv1-1",
                       candidates=[{"card_id": "sv1-1", "score": 0.5}])
    from sqlalchemy import select

    from server.db.models import CollectionItem, Device, SmartFolder

    with db.session() as s:
        s.get(Device, "pi-fuzz").user_id = admin.user_id
        item_id = s.scalar(select(CollectionItem.id).limit(1))
        folder = SmartFolder(user_id=admin.user_id, name="f", filter={"set": "sv1"})
        s.add(folder)
        s.flush()
        folder_id = folder.id
    # Real ids for path parameters, so fuzzing reaches the handlers instead of bouncing off 404s.
    config = tmp_path / "schemathesis.toml"
    config.write_text("[parameters]\n" + "".join(f'"path.{k}" = {v!r}\n'.replace("'", '"') for k, v in {
        "collection_id": admin.collection_id, "item_id": item_id, "folder_id": folder_id, "scan_id": scan_id,
        "card_id": "sv1-1", "device_id": "pi-fuzz"}.items()))
    app = create_app(make_settings(catalog_url, tmp_path), db)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    while not server.started:
        time.sleep(0.05)
    out_dir = ROOT / "var" / "schemathesis"
    out_dir.mkdir(parents=True, exist_ok=True)
    name = request.node.callspec.id
    try:
        proc = subprocess.run(
            [str(st), "--config-file", str(config), "run", f"http://127.0.0.1:{port}/openapi.json", "-H", f"Authorization: Bearer {admin.token}",
             "--checks", "not_a_server_error", "--max-time", str(SECONDS), "--max-examples", "40", "--seed", "7",
             "--workers", "1", "--request-timeout", "20", "--suppress-health-check", "all",
             # Revoking the fuzzer's own token or changing its password would end the run early.
             "--exclude-path", "/api/v1/me/tokens/{token_id}", "--exclude-path", "/api/v1/me/password",
             "--report", "junit", "--report-junit-path", str(out_dir / f"{name}.xml")],
            capture_output=True, text=True, timeout=SECONDS + 240, env={**os.environ, "NO_COLOR": "1"},
            cwd=tmp_path)  # schemathesis keeps a .schemathesis/ cache in its working directory
    finally:
        server.should_exit = True
        t.join(10)
        db.dispose()
    summary = proc.stdout + proc.stderr
    (out_dir / f"{name}.txt").write_text(summary)
    print(summary[-4000:])
    assert proc.returncode == 0, summary[-6000:]
