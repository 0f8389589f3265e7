"""``scanemon-device`` CLI contract: identify JSON lines, bad input → error lines + non-zero exit, no
traceback; ``run`` over a directory source."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.vision.geometry import EVIDENCE_MARGIN

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "models/bundles/demo"
pytestmark = pytest.mark.skipif(not (BUNDLE / "manifest.json").is_file(), reason="demo bundle not built (make models)")


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "device.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def golden_images() -> list[Path]:
    exp = json.loads((BUNDLE / "golden/expected.json").read_text())
    return [BUNDLE / "golden" / n for n in sorted(exp)]


def test_identify_json_lines_contract():
    imgs = golden_images()[:2]
    r = cli("identify", "--bundle", str(BUNDLE), "--json", "--threads", "1", *map(str, imgs))
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
    assert [x["image"] for x in lines] == [str(p) for p in imgs]
    for obj in lines:
        assert set(obj["ms"]) >= {"detect", "embed", "match", "total"}
        assert obj["cards"], obj
        c = obj["cards"][0]
        assert c["decision"] in ("accept", "ambiguous", "no_card")
        assert {"card_id", "decision", "score", "margin", "candidates", "quad"} <= set(c)
        assert len(c["candidates"]) == 5 and all({"card_id", "score"} <= set(x) for x in c["candidates"])
        assert len(c["quad"]) == 4 and all(len(p) == 2 for p in c["quad"])
        assert -1.0 <= c["score"] <= 1.0


def _png_header(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def test_bad_inputs_give_error_lines_and_nonzero_exit(tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 50)
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_header(100_000, 100_000) + b"\x00" * 100)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    good = golden_images()[0]
    missing = tmp_path / "missing.jpg"
    args = [str(p) for p in (corrupt, huge, empty, text, missing, tmp_path, good)]
    r = cli("identify", "--bundle", str(BUNDLE), "--json", "--threads", "1", *args)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = {json.loads(x)["image"]: json.loads(x) for x in r.stdout.splitlines() if x.strip()}
    assert set(lines) == set(args)
    for p in args[:-1]:
        assert "error" in lines[p], lines[p]
    assert "too large" in lines[str(huge)]["error"]
    assert "not found" in lines[str(missing)]["error"]
    assert "error" not in lines[str(good)] and lines[str(good)]["cards"]


def test_broken_bundle_is_an_error_line(tmp_path):
    r = cli("identify", "--bundle", str(tmp_path), "--json", str(golden_images()[0]))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "error" in json.loads(r.stdout.splitlines()[0])


def test_no_card_frame_gives_reject_reason(tmp_path):
    p = tmp_path / "table.jpg"
    cv2.imwrite(str(p), np.full((480, 640, 3), (40, 80, 120), np.uint8))
    r = cli("identify", "--bundle", str(BUNDLE), "--json", str(p))
    obj = json.loads(r.stdout.splitlines()[0])
    assert r.returncode == 0 and obj["cards"] == [] and obj["reject_reason"] == "no_card"


def _run_frames(tmp_path, seq, ext: str):
    """``scanemon-device run --source dir:`` over ``seq`` written as image files, outbox in ``tmp_path``."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, f in enumerate(seq):
        cv2.imwrite(str(frames / f"{i:04d}{ext}"), f)
    cfg = tmp_path / "device.yaml"
    cfg.write_text(f"device_id: test-dev\noutbox:\n  path: {tmp_path / 'outbox.db'}\n")
    return cli("run", "--source", f"dir:{frames}", "--config", str(cfg), "--bundle", str(BUNDLE), "--threads", "1")


def test_run_over_directory_source_records_into_outbox(tmp_path):
    """``run --source dir:`` with a device config: the held golden card is counted once into the outbox."""
    img = cv2.imread(str(golden_images()[0]))
    blank = np.full_like(img, 90)
    seq = [blank] * 3 + [img] * 6 + [blank] * 3
    r = _run_frames(tmp_path, seq, ".jpg")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["frames"] == len(seq) and summary["counted"] == 1
    from device.outbox import Outbox

    with Outbox(tmp_path / "outbox.db", "test-dev") as ob:
        rows = ob.rows()
    assert len(rows) == 1


def _overexposed_golden() -> tuple[np.ndarray, str]:
    """golden_0 (a simulated scanner-box capture of a real sv1 scan) with blown-out highlights: the glare gate
    fails, softly (see tests/test_vision.py)."""
    exp = json.loads((BUNDLE / "golden/expected.json").read_text())
    img = cv2.imread(str(BUNDLE / "golden/golden_0.jpg"))
    return cv2.convertScaleAbs(img, alpha=1.8, beta=10), exp["golden_0.jpg"]


def _glare_decision(score: float, confidence: float | None) -> str:
    """What the demo bundle decides for a glared card: never accepted, unless its confidence rule judges glare
    (``accept_flags``, since bundle demo-8) and the card clears it."""
    th = json.loads((BUNDLE / "manifest.json").read_text())["thresholds"]
    judged = "glare" in (th.get("accept_flags") or []) and confidence is not None
    sure = judged and confidence >= th["accept_confidence"] and score >= th["confidence_min_score"]
    return "accept" if sure else "ambiguous"


def test_identify_glared_card_is_identified_with_its_quality_flag(tmp_path):
    img, card_id = _overexposed_golden()
    p = tmp_path / "glare.png"
    cv2.imwrite(str(p), img)
    r = cli("identify", "--bundle", str(BUNDLE), "--json", "--threads", "1", str(p))
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout.splitlines()[0])
    assert "reject_reason" not in obj and len(obj["cards"]) == 1, obj
    c = obj["cards"][0]
    assert c["quality_flag"] == "glare" and c["card_id"] == card_id
    assert c["decision"] == _glare_decision(c["score"], c.get("confidence"))
    assert {"card_id", "decision", "score", "margin", "candidates", "quad"} <= set(c)


def test_run_counts_a_glared_card_once_and_records_it_with_its_flag(tmp_path):
    from device.outbox import Outbox
    from device.protocol import Scan

    img, card_id = _overexposed_golden()
    blank = np.full_like(img, 90)
    seq = [blank] * 3 + [img] * 8 + [blank] * 3
    r = _run_frames(tmp_path, seq, ".png")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["counted"] == 1, summary
    assert "(glare)" in r.stdout  # the console line says what was wrong with the frame
    with Outbox(tmp_path / "outbox.db", "test-dev") as ob:
        rows = ob.rows()
    assert len(rows) == 1
    scan = Scan.model_validate_json(rows[0].payload)
    assert scan.quality_flag == "glare" and scan.candidates[0].card_id == card_id
    assert scan.device_confidence is not None and 0.0 <= scan.device_confidence <= 1.0  # demo bundle has a model
    assert scan.decision.value == _glare_decision(scan.score, scan.device_confidence)
    if scan.decision.value == "ambiguous":
        assert scan.card_id is None and scan.crop and scan.crop[:3] == b"\xff\xd8\xff"
        assert scan.crop_margin == EVIDENCE_MARGIN  # the outbox keeps the frame border the crop was cut with
    else:  # accepted: the card, and no crop (the server has nothing to resolve)
        assert scan.card_id == card_id and scan.crop is None
