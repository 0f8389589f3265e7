"""``make demo`` end to end: real vision pipeline → outbox → relay → broker → ingest → database → resolver
(ambiguous reprints) → collection, and the server's results back on the device. Once one-box (SQLite +
embedded amqtt), once against PostgreSQL and Mosquitto (``SCANEMON_DATABASE_URL`` / ``SCANEMON_MQTT_URL``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]


def _run_demo(shared_data: Path, work: Path, env: dict[str, str]) -> str:
    if not (REPO / "models" / "bundles" / "demo" / "manifest.json").exists():
        pytest.skip("demo bundle not built (make models)")
    proc = subprocess.run(
        [sys.executable, "-m", "server.demo", "--pokemon-tcg-data", str(shared_data / "pokemon-tcg-data"),
         "--images", str(shared_data / "PTCGextension" / "cards"), "--dir", str(work), "--port", "0",
         "--mqtt-port", "0", "--exit-when-done"],
        cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, **env})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    return out


def _check(out: str, database_url: str) -> None:
    from server.demo import DEMO_STACK

    m = re.search(r"counted (\d+) cards \(stack truth: (\d+)\).*outbox depth (\d+)", out)
    assert m, out[-3000:]
    counted, truth, depth = map(int, m.groups())
    assert truth == len(DEMO_STACK) and depth == 0
    assert counted == truth, out[-3000:]  # the duplicate copy and the cards slid on top all count

    engine = sa.create_engine(database_url)
    with engine.connect() as c:
        by_status = dict(c.execute(sa.text(
            "SELECT status, count(*) FROM scans WHERE device_id = 'demo-scanner' GROUP BY status")).all())
        qty = dict(c.execute(sa.text(
            "SELECT ci.card_id, sum(ci.quantity) FROM collection_items ci JOIN collections c ON c.id = ci.collection_id "
            "WHERE c.name = 'Counter stack' GROUP BY ci.card_id")).all())
        applied = c.execute(sa.text("SELECT count(*) FROM scans WHERE device_id = 'demo-scanner' AND applied")).scalar()
    engine.dispose()
    assert sum(by_status.values()) == counted  # every counted card arrived exactly once
    assert by_status.get("pending", 0) == 0  # the resolver decided every ambiguous scan
    decided = by_status.get("resolved", 0) + by_status.get("needs_review", 0)
    assert decided >= 1, by_status  # the reprints went to the server
    m = re.search(r"device results received (\d+)", out)
    assert m and int(m.group(1)) == decided  # each decision came back to the device over MQTT
    assert sum(qty.values()) == applied
    assert qty.get("sv1-11") == 2, qty  # two copies placed one after the other: two in the collection


def test_demo_one_box_sqlite_and_embedded_broker(shared_data, tmp_path):
    work = tmp_path / "demo"
    out = _run_demo(shared_data, work, {"SCANEMON_DATABASE_URL": "", "SCANEMON_MQTT_URL": ""})
    assert "embedded amqtt" in out
    _check(out, f"sqlite:///{work / 'scanemon.db'}")


def test_demo_on_postgresql_and_mosquitto(shared_data, tmp_path, postgres_url, mosquitto):
    out = _run_demo(shared_data, tmp_path / "demo", {
        "SCANEMON_DATABASE_URL": postgres_url, "SCANEMON_MQTT_URL": f"mqtt://{mosquitto.host}:{mosquitto.port}"})
    assert "external" in out and "embedded amqtt" not in out
    _check(out, postgres_url)
