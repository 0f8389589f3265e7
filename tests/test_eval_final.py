"""Final-answer path end to end (device pipeline → wire → stored scan → resolver) on simulated captures of the
real sv1 scans. Real TFLite device models, real server embedder + FAISS + verification; nothing mocked.

The resolver's catalog here is set sv1 only (258 real scans, rendered into a temp folder), so its index builds
in seconds; the device bundle still matches the whole catalog. Accuracy targets are measured by
``python -m models.eval.final`` (``make eval-final``), not here: the floors below only catch a broken path.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="resolver needs torch (pip install -e '.[resolver]')")
pytest.importorskip("open_clip", reason="resolver needs open_clip_torch")
pytest.importorskip("faiss", reason="resolver needs faiss-cpu")

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "models/bundles/demo"
SEED = 4242  # not the report's seed (900000)


@pytest.fixture(scope="module")
def system(shared_data, tmp_path_factory):
    if not (BUNDLE / "manifest.json").is_file():
        pytest.skip("demo bundle not built (make models)")
    from models.eval.final import FinalAnswerSystem
    from models.synth.catalog import load_cards, render_catalog

    images = shared_data / "PTCGextension" / "cards"
    if not images.is_dir():
        pytest.skip(f"real sv1 scans not found at {images}; skipping the final-answer test")
    root = tmp_path_factory.mktemp("final")
    cards, set_index = load_cards(shared_data / "pokemon-tcg-data", images, ["sv1"])
    assert all(c.image_path for c in cards), "sv1 cards must come from the real scans"
    render_catalog(cards, set_index, root / "catalog", progress=False)
    return FinalAnswerSystem.build(BUNDLE, root / "catalog", root / "data", threads=1), root / "catalog"


def test_final_answers_on_sv1_captures(system):
    from models.eval.final import frame_records, summarize
    from models.synth.capture import CaptureConfig
    from models.synth.dataset import make_frame

    sysm, catalog = system
    ids = sorted(sysm.resolver.index.ids)
    assert len(ids) == 258
    cfg = CaptureConfig(size=(640, 480), mode="scanner_box")
    recs = []
    for i in range(12):
        frame, labels = make_frame(str(catalog), ids, SEED, i, cfg)
        recs += frame_records(sysm, frame, labels, reprint_ids=set())
    assert len(recs) == 12  # scanner box: one fully visible card per frame
    scanned = [r for r in recs if r["device_decision"] in ("accept", "ambiguous")]
    assert len(scanned) >= 10, [r["device_decision"] for r in recs]
    for r in scanned:  # every scan gets a final answer ...
        assert r["final"] is not None
        if r["device_decision"] == "ambiguous":  # ... from the resolver when the device hesitated
            assert r["resolver_ms"] is not None and r["resolver_top"], r
            assert r["status"] in ("resolved", "needs_review")
        else:
            assert r["status"] == "accepted" and r["final"] == r["device_top1"] and r["resolver_ms"] is None
    s = summarize(recs)
    assert s["final_top1"] >= 0.75, s  # device alone is ~90 % on these; a broken path falls far below
    assert (s["device_accept_precision"] or 1.0) >= 0.9, s  # None: nothing accepted


def test_resolver_gets_the_device_crop_and_candidates(system):
    """A device card forced through the ambiguous branch: the stored scan carries a JPEG crop and the device's
    top-5 (no card_id), and the resolver, searching the catalog itself, names the true card."""
    from models.synth.capture import CaptureConfig
    from models.synth.dataset import make_frame

    sysm, catalog = system
    ids = sorted(sysm.resolver.index.ids)
    cfg = CaptureConfig(size=(640, 480), mode="scanner_box")
    hits, tried = 0, 0
    for i in range(100, 106):
        frame, labels = make_frame(str(catalog), ids, SEED, i, cfg)
        res = sysm.pipeline.process(frame)
        if not res.cards:
            continue
        card = dataclasses.replace(res.cards[0], decision="ambiguous")
        row = sysm._stored_scan(card)
        assert row.crop[:3] == b"\xff\xd8\xff" and row.card_id is None
        assert [c["card_id"] for c in row.candidates] == [c for c, _ in card.candidates]
        fc = sysm.decide(card)
        assert fc.resolver_ms is not None and fc.final is not None and 0.0 <= fc.confidence <= 1.0
        tried += 1
        hits += fc.final == labels["cards"][0]["card_id"]
    assert tried >= 5
    assert hits >= tried - 1, f"resolver named {hits}/{tried} device crops correctly"


def test_summary_counts_misses_and_wilson():
    from models.eval.final import cause, summarize, wilson

    recs = [
        {"card_id": "a", "reprint": True, "device_decision": "accept", "device_top1": "a", "device_top5": ["a"],
         "status": "accepted", "final": "a"},
        {"card_id": "b", "reprint": True, "device_decision": "ambiguous", "device_top1": "c", "device_top5": ["c", "b"],
         "status": "resolved", "final": "b", "resolver_ms": 100.0, "resolver_top": ["b", "c"]},
        {"card_id": "d", "reprint": False, "device_decision": "missed", "status": "no_scan", "final": None},
        {"card_id": "e", "reprint": False, "device_decision": "ambiguous", "device_top1": "f", "device_top5": ["f", "e"],
         "status": "needs_review", "final": "f", "resolver_ms": 300.0, "resolver_top": ["f", "g"]},
    ]
    s = summarize(recs)
    assert s["final_top1"] == 0.5 and s["final_top1_reprints"] == 1.0 and s["final_top1_scanned"] == round(2 / 3, 4)
    assert s["device_top1"] == 0.25 and s["needs_review"] == 1 and s["resolver_ms_median"] == 200.0
    assert cause(recs[3]) == "resolver: true card not in its top-5 (device top-5 had it)"
    lo, hi = wilson(995, 1000)
    assert lo < 0.995 < hi and wilson(0, 0) is None
    assert np.isclose(wilson(1000, 1000)[1], 1.0)


def test_scan_the_outbox_refuses_has_no_final_answer(system):
    """A card id outside ``device.protocol.CARD_ID_RE`` (a bundle built from a broken catalog) makes the
    appliance's scan invalid: the evaluation must count that as a miss, not crash or resolve it anyway."""
    from models.synth.capture import CaptureConfig
    from models.synth.dataset import make_frame

    sysm, catalog = system
    frame, _ = make_frame(str(catalog), sorted(sysm.resolver.index.ids), SEED, 200,
                          CaptureConfig(size=(640, 480), mode="scanner_box"))
    card = sysm.pipeline.process(frame).cards[0]
    for decision in ("ambiguous", "accept"):
        bad = dataclasses.replace(card, decision=decision, card_id="ex10 bad id",
                                  candidates=[("ex10 bad id", 0.9)] + list(card.candidates[1:]))
        fc = sysm.decide(bad)
        assert fc.status == "protocol_error" and fc.final is None and fc.resolver_ms is None
        assert "ex10 bad id" in fc.error


def test_frame_size_option_draws_the_same_scene_at_more_pixels(tmp_path):
    """``--frame-size`` (the appliance's picamera2 default is 1280x960): the same seed gives the same cards at
    the same relative place, with every label scaled to the frame; malformed sizes are refused with the reason."""
    import cv2

    from models.eval import frame_size
    from models.synth.capture import CaptureConfig
    from models.synth.dataset import make_frame

    assert frame_size("1280x960") == (1280, 960) and frame_size("640X480") == (640, 480)
    for bad in ("1280", "1280x", "axb", "10x10"):
        with pytest.raises(ValueError, match="frame size"):
            frame_size(bad)
    rng = np.random.default_rng(0)
    ids = [f"card-{i}" for i in range(5)]
    for i in ids:
        cv2.imwrite(str(tmp_path / f"{i}.jpg"), rng.integers(0, 256, (504, 360, 3), dtype=np.uint8))
    small, ls = make_frame(str(tmp_path), ids, 77, 0, CaptureConfig(size=(640, 480), mode="scanner_box"))
    big, lb = make_frame(str(tmp_path), ids, 77, 0, CaptureConfig(size=(1280, 960), mode="scanner_box"))
    assert small.shape[:2] == (480, 640) and big.shape[:2] == (960, 1280)
    assert [c["card_id"] for c in ls["cards"]] == [c["card_id"] for c in lb["cards"]]
    np.testing.assert_allclose(np.array(lb["cards"][0]["quad"]) / 2, np.array(ls["cards"][0]["quad"]), atol=2.0)


def test_best_threshold_accept_rate_is_the_largest_clean_set():
    """The bound of retuning the device's thresholds: the most cards a (score, margin) cut keeps at the wanted
    precision, ties at the cut kept together, as a share of every card."""
    from models.eval.final import best_threshold_accept_rate

    def rec(i, right, score, margin):
        return {"card_id": f"c{i}", "device_top1": f"c{i}" if right else "x", "device_score": score,
                "device_margin": margin}

    recs = [rec(i, True, 0.9, 0.5 + i / 100) for i in range(6)]
    recs += [rec(6, False, 0.9, 0.45), rec(7, True, 0.9, 0.40), rec(8, True, 0.9, 0.45), rec(9, False, 0.2, 0.9)]
    recs += [{"card_id": "missed", "device_top1": None}]
    # the wrong card at 0.9 margin has a low score: a score cut drops it; the wrong one at 0.45 ties with a right
    # one, so the margin cut must stay above 0.45: the 6 cards above it, of 11
    assert best_threshold_accept_rate(recs) == round(6 / 11, 4)
    assert best_threshold_accept_rate(recs, precision=0.8) > round(6 / 11, 4)
    assert best_threshold_accept_rate([]) is None
    # reprint contests decided by patches have a margin threshold of their own: their small margins (a glyph's
    # correlation) count above their own cut, not against the embedding margins' one
    contest = [rec(10 + k, True, 0.9, 0.02 + k / 100) | {"device_reprint_contest": True} for k in range(4)]
    contest.append(rec(14, False, 0.9, 0.01) | {"device_reprint_contest": True})
    assert best_threshold_accept_rate(recs + contest) == round(10 / 16, 4)
    plain = [{k: v for k, v in r.items() if k != "device_reprint_contest"} for r in contest]
    assert best_threshold_accept_rate(recs + plain) == round(6 / 16, 4)
