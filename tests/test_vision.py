"""Device vision: geometry, detector decoding + classical fallback, quality gate, matcher, decision,
runtime, the demo bundle end to end, and TFLite ↔ PyTorch embedder parity.

Accuracy and speed targets are measured by ``tests/bench/bench_device.py`` / ``models.vision_eval``, not here.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.vision import geometry as G
from device.vision.decision import Thresholds, decide
from device.vision.detector import (INPUT_SIZE, KERNEL_SHRINK, OUTPUT_STRIDE, ContourDetector, Detection, GateConfig,
                                    crop_reject, decode_maps, geometry_reject, letterbox, refine_quad)
from device.vision.matcher import CatalogMatcher, Match, quantize_int8

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "models/bundles/demo"
CHECKPOINT = ROOT / "models/embedder/demo_embedder.pt"
needs_bundle = pytest.mark.skipif(not (BUNDLE / "manifest.json").is_file(),
                                  reason="demo bundle not built (make models)")


def card_image(seed: int = 0, size=(240, 336)) -> np.ndarray:
    """A synthetic card face: coloured border, art block, text lines (no catalog data needed)."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = np.full((h, w, 3), (40, 200, 240), np.uint8)
    cv2.rectangle(img, (10, 10), (w - 10, h - 10), tuple(int(v) for v in rng.integers(60, 200, 3)), -1)
    cv2.rectangle(img, (20, 40), (w - 20, h // 2), tuple(int(v) for v in rng.integers(0, 255, 3)), -1)
    for k in range(5):
        cv2.circle(img, tuple(int(v) for v in rng.integers(30, 200, 2)), int(rng.integers(5, 30)),
                   tuple(int(v) for v in rng.integers(0, 255, 3)), -1)
    for y in range(h // 2 + 20, h - 30, 18):
        cv2.line(img, (25, y), (w - 25, y), (20, 20, 20), 2)
    return img


def place(card: np.ndarray, quad: np.ndarray, size=(640, 480), bg=(60, 90, 60)) -> np.ndarray:
    frame = np.full((size[1], size[0], 3), bg, np.uint8)
    h, w = card.shape[:2]
    m = cv2.getPerspectiveTransform(np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32), quad.astype(np.float32))
    warped = cv2.warpPerspective(card, m, size)
    mask = cv2.warpPerspective(np.full((h, w), 255, np.uint8), m, size)
    frame[mask > 128] = warped[mask > 128]
    return frame


QUAD = np.array([[220, 90], [400, 100], [395, 350], [210, 340]], np.float32)


# ----------------------------------------------------------------------------------------- geometry


def test_order_and_portrait_quad():
    pts = QUAD[[2, 0, 3, 1]]
    q = G.portrait_quad(G.order_quad(pts))
    assert np.allclose(q, QUAD)
    landscape = np.array([[0, 0], [300, 0], [300, 200], [0, 200]], np.float32)
    p = G.portrait_quad(landscape)
    assert np.linalg.norm(p[1] - p[0]) < np.linalg.norm(p[3] - p[0])


def test_rectify_recovers_card_and_views_have_model_sizes():
    card = card_image(1)
    frame = place(card, QUAD)
    crop = G.rectify(frame, QUAD)
    assert crop.shape[:2] == (G.CANONICAL_SIZE[1], G.CANONICAL_SIZE[0])
    ref = cv2.resize(card, G.CANONICAL_SIZE, interpolation=cv2.INTER_AREA)
    assert np.abs(crop.astype(int) - ref.astype(int))[10:-10, 10:-10].mean() < 25
    g, s = G.embedder_views(crop)
    assert g.shape == (G.GLOBAL_SIZE[1], G.GLOBAL_SIZE[0], 3) and s.shape == (G.STRIP_SIZE[1], G.STRIP_SIZE[0], 3)


def test_quad_iou():
    assert G.quad_iou(QUAD, QUAD) == pytest.approx(1.0, abs=1e-4)
    assert G.quad_iou(QUAD, QUAD + 1000) == 0.0
    assert G.box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)


# ----------------------------------------------------------------------------------------- detector


def _maps_for(quads: list[np.ndarray], frame_size=(640, 480)) -> tuple[np.ndarray, float, tuple]:
    _, s, off = letterbox(np.zeros((frame_size[1], frame_size[0], 3), np.uint8))
    ow, oh = INPUT_SIZE[0] // OUTPUT_STRIDE, INPUT_SIZE[1] // OUTPUT_STRIDE
    up = 8
    maps = np.zeros((3, oh * up, ow * up), np.float32)
    r = s / OUTPUT_STRIDE * up
    for q in quads:
        qi = q + np.array(off) / s
        c = qi.mean(0)
        cv2.fillConvexPoly(maps[0], np.round(qi * r).astype(np.int32), 1.0)
        cv2.fillConvexPoly(maps[1], np.round((c + (qi - c) * KERNEL_SHRINK) * r).astype(np.int32), 1.0)
        cv2.fillConvexPoly(maps[2], np.round(np.array([qi[0], qi[1], (qi[1] + qi[2]) / 2, (qi[0] + qi[3]) / 2]) * r).astype(np.int32), 1.0)
    small = np.stack([cv2.resize(m, (ow, oh), interpolation=cv2.INTER_AREA) for m in maps])
    return small, s, off


def test_decode_maps_recovers_several_cards_and_orientation():
    q2 = QUAD + np.array([200, 20], np.float32)
    rot = np.roll(QUAD - np.array([150, 0], np.float32), 2, axis=0)  # a card lying upside down
    maps, s, off = _maps_for([QUAD, q2, rot])
    dets = decode_maps(maps, s, off)
    assert len(dets) == 3
    for gt in (QUAD, q2, rot):
        best = max(dets, key=lambda d: G.quad_iou(d.quad, gt))
        assert G.quad_iou(best.quad, gt) > 0.85
        assert np.linalg.norm(best.quad[0] - gt[0]) < 25  # TL is the card's own TL (orientation)


def test_refine_quad_snaps_to_edges():
    frame = place(card_image(2), QUAD)
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    noisy = QUAD + np.array([[6, -5], [-5, 6], [5, 5], [-6, -4]], np.float32)
    ref = refine_quad(gray, noisy)
    assert np.abs(ref - QUAD).max() < np.abs(noisy - QUAD).max()
    assert np.abs(ref - QUAD).max() < 3.5


def test_contour_detector_finds_card():
    frame = place(card_image(3), QUAD)
    dets = ContourDetector().detect(frame)
    assert dets, "no card found"
    assert max(G.quad_iou(d.quad, QUAD) for d in dets) > 0.85


def test_quality_gate_reasons():
    cfg = GateConfig()
    ok = Detection(QUAD.copy())
    assert geometry_reject(ok, (480, 640, 3), cfg) is None
    assert geometry_reject(Detection(QUAD + np.array([300, 0], np.float32)), (480, 640, 3), cfg) == "partially_out_of_view"
    small = (QUAD - QUAD.mean(0)) * 0.2 + 200
    assert geometry_reject(Detection(small), (480, 640, 3), cfg) == "too_small"
    assert geometry_reject(Detection(QUAD.copy(), solidity=0.5), (480, 640, 3), cfg) == "occluded"
    crop = G.rectify(place(card_image(4), QUAD), QUAD)
    assert crop_reject(crop, cfg)[0] is None
    assert crop_reject(cv2.GaussianBlur(crop, (0, 0), 6), cfg)[0] == "too_blurry"
    glare = crop.copy()
    cv2.circle(glare, (96, 134), 100, (255, 255, 255), -1)
    assert crop_reject(glare, cfg)[0] == "glare"


# ----------------------------------------------------------------------------------------- matcher / decision


def test_matcher_topk_over_quantized_catalog():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(2000, 192)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids = [f"c-{i}" for i in range(2000)]
    m = CatalogMatcher(quantize_int8(emb), ids)
    q = emb[1234] + 0.01 * rng.normal(size=192).astype(np.float32)
    r = m.topk(q, 5)
    assert r.card_ids[0] == "c-1234" and len(r.card_ids) == 5
    assert r.scores == sorted(r.scores, reverse=True)
    assert 0.9 < r.score <= 1.0001 and r.margin > 0.3


def test_decision_rule():
    th = Thresholds(accept_score=0.8, accept_margin=0.05, no_card_score=0.4)
    assert decide(Match(["a", "b"], [0.9, 0.8]), th) == "accept"
    assert decide(Match(["a", "b"], [0.9, 0.88]), th) == "ambiguous"
    assert decide(Match(["a", "b"], [0.7, 0.2]), th) == "ambiguous"
    assert decide(Match(["a", "b"], [0.3, 0.2]), th) == "no_card"


# ----------------------------------------------------------------------------------------- bundle / runtime


@needs_bundle
def test_demo_bundle_is_consistent_and_small():
    from device.bundle import check_contents, parse_manifest, structural_self_test

    man = parse_manifest((BUNDLE / "manifest.json").read_bytes())
    check_contents(BUNDLE, man)
    ok, msg = structural_self_test(BUNDLE)
    assert ok, msg
    ids = json.loads((BUNDLE / "catalog/ids.json").read_text())
    assert len(ids) == 19_783
    assert (BUNDLE / "embedder.tflite").stat().st_size <= 5 * 1024 * 1024
    t = man.thresholds
    assert t.no_card_score <= t.accept_score


@needs_bundle
def test_runtime_threads_and_int8_graph():
    from device.vision.runtime import TFLiteModel

    m = TFLiteModel(str(BUNDLE / "embedder.tflite"), num_threads=1)
    assert m.num_threads == 1
    ops = {o["op_name"] for o in m.interp._get_ops_details()}
    assert "CONV_2D" in ops
    assert all(d["dtype"] == np.int8 for d in m.inputs), "full-integer model expected (int8 I/O)"


@needs_bundle
def test_pipeline_identifies_golden_images():
    from device.bundle import golden_expected
    from device.vision.pipeline import VisionPipeline

    pipe = VisionPipeline.from_bundle(BUNDLE, num_threads=1)
    expected = golden_expected(BUNDLE)
    hits = 0
    for name, card_id in expected.items():
        res = pipe.process(cv2.imread(str(BUNDLE / "golden" / name)))
        assert set(res.ms) == {"detect", "embed", "match", "total"}
        assert res.cards, f"{name}: no card ({res.reject_reason})"
        hits += res.cards[0].candidates[0][0] == card_id
        assert card_id in [c for c, _ in res.cards[0].candidates], f"{name}: {card_id} not in top-5"
    assert hits >= len(expected) - 1


@needs_bundle
def test_pipeline_several_cards_and_no_card():
    from device.vision.pipeline import VisionPipeline

    pipe = VisionPipeline.from_bundle(BUNDLE, num_threads=1)
    blank = np.full((480, 640, 3), 90, np.uint8)
    res = pipe.process(blank)
    assert res.cards == [] and res.reject_reason == "no_card"


@pytest.mark.skipif(not CHECKPOINT.is_file(), reason=f"PyTorch embedder checkpoint {CHECKPOINT.name} absent: "
                    "parity test needs the exact weights the demo bundle was exported from")
@needs_bundle
def test_tflite_matches_pytorch_embeddings(shared_data):
    """Exported int8 embedder vs the float PyTorch model: cosine ≥ 0.98 on 200 simulated captures."""
    torch = pytest.importorskip("torch")
    from device.vision.embedder import Embedder
    from models.embedder.data import capture_crop
    from models.embedder.model import CardEmbedder, STRIP_WEIGHT, combine
    from models.synth.catalog import load_cards
    from models.synth.render import render_card

    model = CardEmbedder.from_compact(torch.load(CHECKPOINT, map_location="cpu", weights_only=True))
    emb = Embedder(str(BUNDLE / "embedder.tflite"), STRIP_WEIGHT, num_threads=1)
    cards, set_index = load_cards(shared_data / "pokemon-tcg-data", shared_data / "PTCGextension/cards",
                                  sets=["sv1", "base1", "swsh1"])
    rng = np.random.default_rng(0)
    cos = []
    for i in range(200):
        card = cards[int(rng.integers(len(cards)))]
        crop = capture_crop(render_card(card, set_index, (240, 336)), rng)
        g, s = G.embedder_views(crop)
        t = emb.embed_views(g, s)
        with torch.no_grad():
            x = [torch.from_numpy(v[None, ..., ::-1].astype(np.float32).transpose(0, 3, 1, 2) / 255.0) for v in (g, s)]
            p = combine(*model(*x), STRIP_WEIGHT).numpy()[0]
        cos.append(float(np.dot(t, p) / np.linalg.norm(t) / np.linalg.norm(p)))
    print(f"parity: min cosine {min(cos):.4f}, mean {np.mean(cos):.4f}, 5th percentile {np.percentile(cos, 5):.4f}")
    assert min(cos) >= 0.98, f"min cosine {min(cos):.4f}, mean {np.mean(cos):.4f}"
