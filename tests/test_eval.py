"""Evaluation harness: the hash baseline really identifies, the adapters speak their wire formats,
the report is written with numbers."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.eval.identifiers import HashIdentifier, HttpIdentifier, SubprocessIdentifier, detect_quads, order_quad
from models.eval.report import box_iou, quad_iou, write_report
from models.synth.capture import CaptureConfig
from models.synth.dataset import write_captures

CLEAN = dict(p_sleeve=0, p_toploader=0, p_glare=0, p_motion_blur=0, p_defocus=0, p_fingers=0, p_neighbours=0,
             light_gradient=(0, 0.1), brightness=(0.95, 1.05), colour_temperature=(-0.03, 0.03), noise_sigma=(0.5, 1.5),
             jpeg_quality=(85, 95), backgrounds=["cloth", "noise"])


@pytest.fixture(scope="module")
def small_catalog(tmp_path_factory, shared_data):
    """40 rendered printings incl. reprints (base1 + base4), plus clean scanner-box captures of them."""
    from models.synth.catalog import load_cards, render_catalog

    root = tmp_path_factory.mktemp("eval")
    cards, idx = load_cards(shared_data / "pokemon-tcg-data", None, ["base1", "base4"])
    by_ill = {}
    for c in cards:
        by_ill.setdefault(c.illustration_id, []).append(c)
    pairs = [c for g in by_ill.values() if len(g) > 1 for c in g][:20]
    chosen = pairs + [c for c in cards if c not in pairs][:20]
    render_catalog(chosen, idx, root / "catalog", progress=False)
    cfg = CaptureConfig(mode="scanner_box", **CLEAN)
    write_captures(root / "catalog", root / "captures", 16, 11, cfg, progress=False)
    return root


def test_geometry_helpers():
    sq = [[0, 0], [10, 0], [10, 10], [0, 10]]
    assert quad_iou(sq, sq) == pytest.approx(1.0)
    assert quad_iou(sq, [[5, 0], [15, 0], [15, 10], [5, 10]]) == pytest.approx(1 / 3, abs=1e-3)
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 5)) == pytest.approx(0.5)
    # A landscape-ordered card is reordered to portrait (first edge short).
    q = order_quad(np.array([[0, 0], [88, 0], [88, 63], [0, 63]], np.float32))
    assert np.linalg.norm(q[1] - q[0]) < np.linalg.norm(q[2] - q[1])


def test_classical_detector_finds_a_card_on_plain_background():
    frame = np.full((480, 640, 3), (60, 90, 40), np.uint8)
    card = np.full((252, 180, 3), 230, np.uint8)
    cv2.rectangle(card, (15, 20), (165, 120), (40, 40, 200), -1)
    quad = np.array([[220, 100], [400, 120], [380, 370], [200, 350]], np.float32)
    H = cv2.getPerspectiveTransform(np.array([[0, 0], [180, 0], [180, 252], [0, 252]], np.float32), quad)
    warped = cv2.warpPerspective(card, H, (640, 480))
    mask = cv2.warpPerspective(np.full((252, 180), 255, np.uint8), H, (640, 480))
    frame[mask > 0] = warped[mask > 0]
    found = detect_quads(frame)
    assert found and max(quad_iou(q, quad) for q in found) > 0.85


def _illustrations(root: Path) -> dict[str, str]:
    return {r["card_id"]: r["illustration_id"] for r in map(json.loads, (root / "catalog" / "index.jsonl").read_text().splitlines())}


def test_hash_baseline_identifies_clean_captures(small_catalog):
    ill = _illustrations(small_catalog)
    ident = HashIdentifier(small_catalog / "catalog", quad_source="labels")
    rows = [json.loads(x) for x in (small_catalog / "captures" / "labels.jsonl").read_text().splitlines()]
    exact = same_art = top3 = 0
    for r in rows:
        img = cv2.imread(str(small_catalog / "captures" / r["image"]))
        truth = r["cards"][0]["card_id"]
        cards = ident.identify(img, {"quads": [r["cards"][0]["quad"]]})
        exact += cards[0].card_id == truth
        same_art += ill[cards[0].card_id] == ill[truth]
        top3 += truth in [c for c, _ in cards[0].candidates[:3]]
        assert cards[0].score >= cards[0].candidates[-1][1]
    # The hash finds the artwork every time; telling base1 from its base4 reprint (set symbol + number only)
    # is beyond a global hash -- exactly the near-duplicate gap the learned embedder must close.
    assert same_art == len(rows) and top3 >= 0.9 * len(rows) and exact >= 0.6 * len(rows)
    # With its own classical detector on these clean scanner-box frames it still mostly finds the artwork.
    det = HashIdentifier(small_catalog / "catalog", quad_source="detector")
    hits = sum(any(ill[c.card_id] == ill[r["cards"][0]["card_id"]] for c in det.identify(cv2.imread(str(small_catalog / "captures" / r["image"]))))
               for r in rows)
    assert hits >= 0.5 * len(rows)


def test_subprocess_adapter_reads_device_json_lines(small_catalog):
    cmd = [sys.executable, "-m", "models.eval.baseline_cli", "--catalog", str(small_catalog / "catalog"), "--json"]
    ident = SubprocessIdentifier(cmd)
    paths = sorted((small_catalog / "captures" / "images").glob("*.jpg"))[:3]
    res = ident.identify_paths(paths)
    assert len(res) == 3
    direct = HashIdentifier(small_catalog / "catalog")
    for p, (cards, ms) in zip(paths, res):
        ref = direct.identify(cv2.imread(str(p)))
        assert [c.card_id for c in cards] == [c.card_id for c in ref]
        assert "total" in ms and "detect" in ms


def test_http_adapter_posts_multipart(small_catalog):
    backend = HashIdentifier(small_catalog / "catalog")
    seen = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server API
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen["ctype"] = self.headers["Content-Type"]
            start = body.index(b"\r\n\r\n") + 4
            end = body.rindex(b"\r\n--")
            img = cv2.imdecode(np.frombuffer(body[start:end], np.uint8), cv2.IMREAD_COLOR)
            cards = backend.identify(img)
            out = {"cards": [{"card_id": c.card_id, "confidence": c.score, "quad": c.quad,
                              "candidates": [{"card_id": i, "score": s} for i, s in c.candidates]} for c in cards]}
            data = json.dumps(out).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    srv = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        ident = HttpIdentifier(f"http://127.0.0.1:{srv.server_port}/api/v1/identify")
        p = sorted((small_catalog / "captures" / "images").glob("*.jpg"))[0]
        img = cv2.imread(str(p))
        cards, ms = ident.identify_timed(img)
        assert seen["ctype"].startswith("multipart/form-data; boundary=")
        assert [c.card_id for c in cards] == [c.card_id for c in backend.identify(img)]
        assert ms["total"] > 0
    finally:
        srv.shutdown()


def test_report_written_with_numbers(small_catalog, tmp_path):
    ident = HashIdentifier(small_catalog / "catalog", quad_source="labels")
    s = write_report(ident, small_catalog / "captures", small_catalog / "catalog", tmp_path / "rep")
    md = (tmp_path / "rep" / "REPORT.md").read_text()
    for f in ("pr_curve.png", "calibration.png", "latency.png", "by_distortion.png", "detector_iou.png", "metrics.json"):
        assert (tmp_path / "rep" / f).stat().st_size > 0
        assert f == "metrics.json" or f in md
    assert s["expected_cards"] == 16 and 0.6 <= s["top1"] <= 1.0 and s["name_top1"] >= 0.9 and s["top3_hit"] >= 0.9
    # Every printing-level miss is a reprint confusion, and the report says so.
    assert set(s["errors"]) <= {"same_illustration"}
    assert s["detector_mean_iou"] == pytest.approx(1.0)
    assert "| printing (card_id) |" in md and "%" in md
    assert json.loads((tmp_path / "rep" / "metrics.json").read_text())["top1"] == s["top1"]


def test_photo_detector_eval(shared_data, tmp_path):
    photos = shared_data / "TensorFlow-Object-Detection-API-Tutorial-Train-Multiple-Objects-Windows-10" / "images" / "test"
    if not photos.is_dir():
        pytest.skip(f"playing-card photos not found at {photos}")
    from models.eval.report import evaluate_photos

    class Det(HashIdentifier):
        def __init__(self):  # detector only: no catalog needed
            self.quad_source = "detector"

    r = evaluate_photos(Det(), photos)
    assert r["images"] > 50 and r["gt_boxes"] > 100 and 0 < r["mean_best_iou"] <= 1


def test_eval_cli_end_to_end(shared_data, tmp_path):
    from models.eval.__main__ import main

    out = tmp_path / "report"
    rc = main(["--catalog", str(tmp_path / "cat"), "--sets", "base1", "--captures", str(tmp_path / "cap"), "--n", "8",
               "--out", str(out), "--photos", str(tmp_path / "none")])
    assert rc == 0
    md = (out / "REPORT.md").read_text()
    assert "sheet_printings.png" in md and "sheet_captures.png" in md
    assert (out / "sheet_printings.png").is_file() and (out / "sheet_captures.png").is_file()
    assert Path(tmp_path / "cap" / "labels.jsonl").is_file()
