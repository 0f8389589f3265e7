"""``make bench``'s plumbing: a real (small) benchmark run is recorded with its command and machine, and
the report turns it into a row; benchmarks not run are listed as missing, failures record nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.bench import report, results

REPO = Path(__file__).resolve().parents[1]


def test_a_recorded_faiss_run_becomes_a_report_row(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "RESULTS", tmp_path)
    raw = tmp_path / "raw" / "faiss.json"
    rc = results.run("faiss", raw, [sys.executable, str(REPO / "tests/bench/bench_faiss.py"), "--sizes", "3000",
                                    "--queries", "50", "--threads", "1", "--json-out", str(raw)], "make bench-faiss")
    assert rc == 0
    rec = json.loads((tmp_path / "faiss.json").read_text())
    assert rec["command"].startswith(Path(sys.executable).name) or "python" in rec["command"]
    assert "tests/bench/bench_faiss.py --sizes 3000" in rec["command"]
    assert rec["machine"]["cores"] and rec["machine"]["arch"]
    assert rec["raw"]["rows"][0]["vectors"] == 3000

    rep = report.build(tmp_path)
    faiss_rows = [r for r in rep["rows"] if r["bench"] == "faiss"]
    assert len(faiss_rows) == 1
    row = faiss_rows[0]
    assert row["what"].startswith("3,000 vectors") and "recall@10" in row["figure"]
    assert row["target"] == "make bench-faiss" and rec["command"] == row["command"]
    assert "ingest" in {m["name"] for m in rep["missing"]}  # not run: said so
    md = report.markdown(rep)
    assert "| FAISS | 3,000 vectors" in md and "Not run yet:" in md and report.DATA_NOTE in md


def test_a_failing_benchmark_records_nothing_and_clears_stale_figures(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "RESULTS", tmp_path)
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps({"stale": True}))
    rc = results.run("ingest", raw, [sys.executable, "-c", "raise SystemExit(3)"], None)
    assert rc == 3
    assert not (tmp_path / "ingest.json").exists() and not raw.exists()
