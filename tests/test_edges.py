"""The learned edge snap (device.vision.edges) of the committed bundle, and its training code.

Captures here are drawn (no catalog needed): a bordered card face, bare or in a penny sleeve (a lighter,
translucent margin 3 % of the card's width at the sides and bottom, 6 % at the open top — the plastic's
edge is the outermost strong edge there, which the classical snap takes for the card's), warped into a
frame, blurred and noised, with the quad a few pixels off as the detector's 40×30 maps give it.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from device.vision.detector import refine_quad
from device.vision.edges import FILE, EdgeModel, feature_count, features, side_profiles

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "models/bundles/demo"
TRUE_QUAD = np.array([[210, 52], [452, 60], [446, 402], [204, 394]], np.float32)


def face(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w, h = 360, 504
    img = np.full((h, w, 3), (40, 200, 240), np.uint8)  # a yellow border
    art = cv2.GaussianBlur(rng.integers(0, 255, (220, w - 40, 3)).astype(np.uint8), (0, 0), 3)
    img[60:280, 20:w - 20] = cv2.normalize(art, None, 0, 255, cv2.NORM_MINMAX)
    img[300:470, 20:w - 20] = (225, 235, 240)
    cv2.putText(img, "Pikachu", (24, 44), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (20, 20, 20), 2)
    for y in range(320, 450, 26):
        cv2.line(img, (30, y), (w - 30, y), (30, 30, 30), 2)
    return img


def capture(seed: int, sleeve: bool, corner_error: float = 7.0) -> tuple[np.ndarray, np.ndarray]:
    """(frame, detector-like quad) of a drawn card at TRUE_QUAD."""
    rng = np.random.default_rng(seed)
    card = face(seed)
    h, w = card.shape[:2]
    m = cv2.getPerspectiveTransform(np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32), TRUE_QUAD)
    bg = cv2.GaussianBlur(rng.integers(60, 120, (480, 640, 3)).astype(np.uint8), (0, 0), 6)
    frame = bg.astype(np.float32)
    if sleeve:
        mx, top = 0.03 * w, 0.06 * w
        outer = np.array([[-mx, -top], [w + mx, -top], [w + mx, h + mx], [-mx, h + mx]], np.float32)
        poly = cv2.perspectiveTransform(outer[None], m)[0]
        mask = np.zeros((480, 640), np.float32)
        cv2.fillConvexPoly(mask, poly.astype(np.int32), 1.0, lineType=cv2.LINE_AA)
        frame = frame * (1 - 0.28 * mask[..., None]) + 235 * 0.28 * mask[..., None]
    warped = cv2.warpPerspective(card, m, (640, 480)).astype(np.float32)
    inside = cv2.warpPerspective(np.ones((h, w), np.float32), m, (640, 480))[..., None]
    frame = frame * (1 - inside) + warped * inside
    frame = cv2.GaussianBlur(frame, (0, 0), 0.7)
    frame = np.clip(frame + rng.normal(0, 3, frame.shape), 0, 255).astype(np.uint8)
    return frame, TRUE_QUAD + rng.uniform(-corner_error, corner_error, TRUE_QUAD.shape).astype(np.float32)


def corner_error(q: np.ndarray) -> float:
    return float(np.linalg.norm(q - TRUE_QUAD, axis=1).mean())


@pytest.fixture(scope="module")
def model() -> EdgeModel:
    m = EdgeModel.load(BUNDLE)
    assert m is not None, f"{BUNDLE}/{FILE} missing"
    return m


@pytest.mark.parametrize("sleeve", [False, True], ids=["bare", "sleeve"])
def test_edge_model_puts_the_corners_on_the_card_within_two_pixels(model, sleeve):
    before, after, classic = [], [], []
    for seed in range(8):
        frame, q = capture(seed, sleeve)
        out, info = model.refine(frame, q)
        before.append(corner_error(q))
        after.append(corner_error(out))
        classic.append(corner_error(refine_quad(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), q)))
        assert info["edges"] >= 3
    assert np.median(after) < 2.0, (after, before)
    assert np.median(after) < 0.4 * np.median(before)
    if sleeve:  # the classical snap takes the plastic's edge for the card's: the reason for the model
        assert np.median(classic) > 2 * np.median(after), (classic, after)


def test_edge_model_keeps_the_quad_where_there_is_no_card(model):
    rng = np.random.default_rng(5)
    flat = np.full((480, 640, 3), 90, np.uint8) + rng.integers(0, 3, (480, 640, 3)).astype(np.uint8)
    out, _ = model.refine(flat, TRUE_QUAD)
    # nothing to snap to: the result stays a card-sized outline near where it was
    assert corner_error(out) < 12
    assert abs(cv2.contourArea(out)) > 0.7 * abs(cv2.contourArea(TRUE_QUAD))


def test_one_side_snapped_moves_only_that_side_and_its_corners(model):
    """``refine(sides=…)``: the side asked for goes onto the card's edge, its two corners along the sides beside
    it; the other corners stay exactly where they were (``TFLiteDetector._on_top`` snaps only the inner side of a
    quad whose other sides lie on an outline snapped already). ``side_support`` sees an edge along the card's
    side and none along a line across the table below it."""
    frame, _ = capture(3, sleeve=False)
    q = TRUE_QUAD.copy()
    q[2:] += np.float32([0, 9])  # the bottom side (2: BR → BL) 9 px low
    out, info = model.refine(frame, q, sides=(2,))
    assert np.array_equal(out[:2], q[:2]) and info["edges"] == 2
    assert np.linalg.norm(out[2:] - TRUE_QUAD[2:], axis=1).max() < 2.5
    assert model.side_support(frame, TRUE_QUAD, sides=(2,))[0] > 0.8
    below = TRUE_QUAD.copy()
    below[2:] += np.float32([0, 40])  # on the table, 40 px below the card
    assert model.side_support(frame, below, sides=(2,))[0] < 0.3


def _white_on_white(seed: int, line: float) -> np.ndarray:
    """A white card lying over another white card, its bottom edge along TRUE_QUAD's bottom side: no step there,
    only the cut edge as a 2 px line ``line`` grey levels off the faces (a shadow below 0, a glint above)."""
    rng = np.random.default_rng(seed)
    frame = np.full((480, 640, 3), 90, np.float32)
    under = TRUE_QUAD + np.float32([[-30, 0], [30, 0], [30, 60], [-30, 60]])
    cv2.fillConvexPoly(frame, under.astype(np.int32), (222, 224, 226), lineType=cv2.LINE_AA)
    cv2.fillConvexPoly(frame, TRUE_QUAD.astype(np.int32), (224, 225, 226), lineType=cv2.LINE_AA)
    shade = np.zeros((480, 640), np.float32)
    cv2.line(shade, tuple(int(v) for v in TRUE_QUAD[2]), tuple(int(v) for v in TRUE_QUAD[3]), 1.0, 2, cv2.LINE_AA)
    frame += line * shade[..., None]
    frame = cv2.GaussianBlur(frame, (0, 0), 0.7)
    return np.clip(frame + rng.normal(0, 1.5, frame.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("line", [-90.0, 8.0], ids=["shadow", "glint"])
def test_a_seam_is_found_where_a_white_card_lies_on_a_white_card(model, line):
    """``seam``: a card's edge over a card of its colour is a thin line, not a step; it is found along the whole
    side and the side is moved onto it (within 1.5 px), where the edge model sees no card edge along most of it.
    Without the line (nothing but the two faces) there is no seam."""
    from device.vision.edges import seam

    frame = _white_on_white(4, line)
    q = TRUE_QUAD.copy()
    q[2:] += np.float32([0, 7])  # the bottom side 7 px low, as a card-shaped quad at the outline's end puts it
    found, ends = seam(frame, q, 2, model.radius, model.samples)
    assert found > 0.9
    a, b = TRUE_QUAD[2], TRUE_QUAD[3]
    d = (b - a) / np.linalg.norm(b - a)
    assert max(abs(float(d[0] * (e - a)[1] - d[1] * (e - a)[0])) for e in ends) < 1.5  # each end's distance off it
    assert model.side_support(frame, TRUE_QUAD, sides=(2,))[0] < 0.6
    found, _ = seam(_white_on_white(4, 0.0), q, 2, model.radius, model.samples)
    assert found < 0.3


def test_profiles_and_features_have_the_documented_shapes():
    frame, q = capture(0, False)
    pts, normals, step, vals = side_profiles(frame, q, radius=24, half=5, samples=16)
    assert pts.shape == (4, 16, 2) and normals.shape == (4, 2) and vals.shape == (4, 16, 2 * 29 + 1, 3)
    assert np.allclose(np.linalg.norm(normals, axis=1), 1)
    # outward: a step along the normal leaves the quad
    for i in range(4):
        p = pts[i, 8] + 5 * normals[i]
        assert cv2.pointPolygonTest(q.reshape(-1, 1, 2), (float(p[0]), float(p[1])), False) < 0
    assert features(vals, 5, 24).shape == (4, 16, 49, feature_count(5))


def test_the_convolution_form_scores_exactly_as_the_feature_form(model):
    """The device scores profiles with the first layer folded into a convolution (``profile_logits``); training
    uses explicit features (``features`` + ``logits``): both must give the same logits."""
    for seed, sleeve in ((0, False), (4, True)):
        frame, q = capture(seed, sleeve)
        vals = side_profiles(frame, q, model.radius, model.half, model.samples)[3]
        a = model.logits(features(vals, model.half, model.radius))
        assert np.allclose(model.profile_logits(vals), a, atol=1e-3 * max(1.0, float(np.abs(a).max())))
    assert side_profiles(frame, np.zeros((4, 2), np.float32), 24, 5, 16) is None


def test_a_broken_edge_file_is_refused_and_a_missing_one_means_the_classical_snap(tmp_path, model):
    assert EdgeModel.load(tmp_path) is None
    np.savez(tmp_path / FILE, w1=np.zeros((7, 4), np.float32))
    with pytest.raises(ValueError, match="missing array"):
        EdgeModel.load(tmp_path)
    np.savez(tmp_path / FILE, w1=np.zeros((7, 4), np.float32), b1=np.zeros(4), w2=np.zeros((4, 1)), b2=np.zeros(1),
             radius=24, half_window=5, samples=16)
    with pytest.raises(ValueError, match="half_window"):
        EdgeModel.load(tmp_path)
    model.save(tmp_path / FILE)
    again = EdgeModel.load(tmp_path)
    frame, q = capture(3, True)
    assert np.allclose(again.refine(frame, q)[0], model.refine(frame, q)[0])


def test_training_learns_where_the_edge_is():
    """models.detector.edges.train on profiles of drawn captures (the labelled side's crossing as target):
    the trained model finds the edge better than the prior (the detector's line) does."""
    from models.detector.edges import _targets, train

    vals, tgt = [], []
    rng = np.random.default_rng(0)
    for seed in range(24):
        frame, q = capture(100 + seed, bool(seed % 2), corner_error=8.0)
        pts, normals, step, v = side_profiles(frame, q, 12, 3, 8)
        t = _targets(pts, normals, step, TRUE_QUAD) + 12
        ok = np.isfinite(t) & (t >= 0) & (t <= 24)
        vals.append(v[ok])
        tgt.append(t[ok])
    vals, tgt = np.concatenate(vals), np.concatenate(tgt)
    m = train(vals, tgt, radius=12, half=3, hidden=16, steps=300, batch=128, lr=1e-2, seed=1)
    pred = m.logits(features(vals, 3, 12)).argmax(-1)
    assert np.median(np.abs(pred - tgt)) < 1.0
    assert np.mean(np.abs(pred - tgt)) < 0.5 * np.mean(np.abs(tgt - 12)), rng


def test_ship_puts_an_edge_model_into_a_bundle_and_refuses_a_broken_one(tmp_path, model):
    """models.detector.ship --edges: the bundle's manifest lists the file with its hash and the pipeline loads
    it; a file that is not an edge model never reaches the bundle."""
    import json

    from device.bundle import parse_manifest, sha256_file, write_bundle
    from device.vision.pipeline import VisionPipeline
    from models.detector import ship

    bundle = tmp_path / "bundle"
    raw = json.loads((BUNDLE / "manifest.json").read_text())
    fields = {k: v for k, v in raw.items() if k not in ("format", "files")}
    write_bundle(bundle, {rel: BUNDLE / rel for rel in raw["files"] if rel != FILE}, fields)  # an older bundle
    old = VisionPipeline.from_bundle(bundle, num_threads=1)
    assert old.detector.cnn.edges is None  # a bundle without one: the classical snap
    w = tmp_path / "edges.npz"
    model.save(w)
    assert ship.main(["--bundle", str(bundle), "--edges", str(w)]) == 0
    man = parse_manifest((bundle / "manifest.json").read_bytes())
    assert man.files[FILE].sha256 == sha256_file(bundle / FILE) == sha256_file(w)
    assert VisionPipeline.from_bundle(bundle, num_threads=1).detector.cnn.edges is not None
    bad = tmp_path / "bad.npz"
    np.savez(bad, w1=np.zeros((3, 3)))
    before = (bundle / "manifest.json").read_bytes()
    with pytest.raises(ValueError, match="missing array"):
        ship.main(["--bundle", str(bundle), "--edges", str(bad)])
    assert (bundle / "manifest.json").read_bytes() == before
