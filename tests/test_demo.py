"""``make demo`` end to end: real vision pipeline → outbox → relay → embedded broker → ingest → SQLite → collection."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_demo_scans_a_stack_into_the_collection(shared_data, tmp_path):
    if not (REPO / "models" / "bundles" / "demo" / "manifest.json").exists():
        pytest.skip("demo bundle not built (make models)")
    work = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "server.demo", "--pokemon-tcg-data", str(shared_data / "pokemon-tcg-data"),
         "--images", str(shared_data / "PTCGextension" / "cards"), "--dir", str(work), "--port", "0",
         "--mqtt-port", "0", "--cards", "4", "--exit-when-done"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    m = re.search(r"counted (\d+) cards .*outbox depth (\d+)", out)
    assert m, out[-3000:]
    counted, depth = int(m.group(1)), int(m.group(2))
    assert counted >= 1 and depth == 0
    db = sqlite3.connect(work / "scanemon.db")
    stored = db.execute("SELECT count(*) FROM scans WHERE device_id = 'demo-scanner'").fetchone()[0]
    in_collection = db.execute(
        "SELECT coalesce(sum(quantity), 0) FROM collection_items ci JOIN collections c ON c.id = ci.collection_id "
        "WHERE c.name = 'Counter stack'").fetchone()[0]
    accepted = db.execute("SELECT count(*) FROM scans WHERE device_id = 'demo-scanner' AND applied").fetchone()[0]
    assert stored == counted  # every counted card arrived exactly once
    assert in_collection == accepted
