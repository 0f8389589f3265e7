"""Capture simulator, fan mode: 2-5 overlapping cards (spread / fanned hand / pile) with per-card labels
(full face quad, visible fraction) and detector targets that treat covered cards the way the device does."""

from __future__ import annotations

import inspect

import cv2
import numpy as np
import pytest

from models.synth.capture import CaptureConfig, simulate_capture
from models.synth.dataset import pick_cards

CLEAN = dict(p_sleeve=0, p_toploader=0, p_glare=0, p_motion_blur=0, p_defocus=0, p_fingers=0,
             light_gradient=(0, 0), brightness=(1, 1), colour_temperature=(0, 0), noise_sigma=(0.5, 0.5),
             jpeg_quality=(95, 95))
COLOURS = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255), (255, 0, 255)]


def _flat_card(k: int) -> np.ndarray:
    """A card of one flat colour per index: which card is on top at a pixel is readable from the frame."""
    img = np.zeros((504, 360, 3), np.uint8)
    img[:] = COLOURS[k]
    return img


def _mask(quad, shape) -> np.ndarray:
    m = np.zeros(shape[:2], np.uint8)
    cv2.fillConvexPoly(m, np.round(np.asarray(quad) * 16).astype(np.int32), 1, cv2.LINE_8, 4)
    return m.astype(bool)


def _poly_iou(a, b) -> float:
    inter, _ = cv2.intersectConvexConvex(np.asarray(a, np.float32), np.asarray(b, np.float32))
    ua = abs(cv2.contourArea(np.asarray(a, np.float32))) + abs(cv2.contourArea(np.asarray(b, np.float32))) - inter
    return inter / ua if ua > 0 else 0.0


@pytest.mark.parametrize("layout", ["spread", "hand", "pile"])
def test_fan_frames_overlap_with_right_visibility(layout):
    cfg = CaptureConfig(mode="fan", fan_layouts=[layout], **CLEAN)
    seen_covered = 0
    for seed in range(6):
        n = 2 + seed % 4
        frame, lab = simulate_capture([_flat_card(k) for k in range(n)], [f"c{k}" for k in range(n)],
                                      np.random.default_rng(seed), cfg)
        cards = lab["cards"]
        assert len(cards) == n and lab["params"]["fan_layout"] == layout
        assert "overlap" in lab["params"]["distortions"]
        quads = [np.array(c["quad"], np.float32) for c in cards]
        # the full face quad of every card is labelled (a card's aspect, up to perspective), covered or not
        for q in quads:
            wd = np.linalg.norm(q[1] - q[0]) + np.linalg.norm(q[2] - q[3])
            ht = np.linalg.norm(q[3] - q[0]) + np.linalg.norm(q[2] - q[1])
            assert 0.45 < wd / ht < 1.1
        # the cards overlap: some pair of labelled quads intersects
        assert max(_poly_iou(quads[i], quads[j]) for i in range(n) for j in range(i + 1, n)) > 0.05
        # visibility = share of the face area whose pixels show the card's own colour (not covered by others)
        order = [c["index"] for c in lab["params"]["cards"]]  # drawing order, bottom first
        top = order[-1]
        assert cards[top]["visible"] > 0.97
        for i, c in enumerate(cards):
            face = _mask(quads[i], frame.shape)
            own = (np.abs(frame.astype(int) - np.array(COLOURS[i])).max(2) < 60).astype(np.uint8)
            own = cv2.dilate(own, np.ones((3, 3), np.uint8)).astype(bool) & face  # antialiased edge pixels too
            measured = own.sum() / abs(cv2.contourArea(quads[i]))
            assert abs(measured - c["visible"]) < 0.05, (layout, seed, i, measured, c["visible"])
            if i != top and c["visible"] < 0.9:
                seen_covered += 1
    assert seen_covered >= 3  # covered cards are the rule in fan frames, not an accident


def test_fan_mode_picks_two_to_five_cards_and_default_frames_unchanged():
    ids = [f"c{i}" for i in range(50)]
    ks = {len(pick_cards(np.random.default_rng(s), ids, CaptureConfig(mode="fan"))) for s in range(60)}
    assert ks == {2, 3, 4, 5}
    # the default (free) mode draws exactly as before: the fan options are not consulted
    for seed in range(5):
        a = simulate_capture([_flat_card(0), _flat_card(1)], ["a", "b"], np.random.default_rng(seed), CaptureConfig())
        b = simulate_capture([_flat_card(0), _flat_card(1)], ["a", "b"], np.random.default_rng(seed),
                             CaptureConfig(fan_cards=(3, 4), fan_layouts=["pile"]))
        assert np.array_equal(a[0], b[0]) and a[1] == b[1]


def test_fan_targets_covered_card_kernel_is_its_visible_part():
    """Detector targets of a fan frame. A card on top keeps its kernel = its quad shrunk by KERNEL_SHRINK. A
    covered card's kernel is its *visible part* shrunk about that part's centroid — what the real photos'
    boxes (visible part) give, so the device reconstructs the visible part, and a kernel cut into a
    non-convex shape reads as ``occluded`` at the gate; it never reaches over a card above it. A mostly
    covered card (< 45 % visible) has no kernel. The face map is every card's face."""
    from device.vision.detector import KERNEL_SHRINK, OUTPUT_STRIDE, letterbox
    from models.detector.data import OUT_SIZE, shrink, targets_from_quads

    cfg = CaptureConfig(mode="fan", size=(320, 240), scale_range=(0.5, 0.8), **CLEAN)
    offsets: list[float] = []
    free_cells = 0
    for seed in range(16):
        n = 2 + seed % 3
        frame, lab = simulate_capture([_flat_card(k) for k in range(n)], [f"c{k}" for k in range(n)],
                                      np.random.default_rng(seed), cfg)
        _, s, off = letterbox(frame)
        z = [c["index"] for c in lab["params"]["cards"]]  # bottom first
        y, w = targets_from_quads(lab["cards"], z, s, off)
        assert y.shape == (3, OUT_SIZE[1], OUT_SIZE[0]) and w.min() == 1
        quads = [np.array(c["quad"], np.float32) for c in lab["cards"]]
        covered = {i for a, i in enumerate(z) for j in z[a + 1:]
                   if cv2.intersectConvexConvex(quads[i], quads[j])[0] > 1.0}
        margin = 1.5 * OUTPUT_STRIDE / s  # 1.5 output cells, in frame pixels
        cells: dict[int, list] = {i: [] for i in range(n)}
        for cy in range(OUT_SIZE[1]):
            for cx in range(OUT_SIZE[0]):
                # cell centre in frame pixel-centre coordinates (see targets_from_quads)
                pt = ((cx + 0.5) * OUTPUT_STRIDE - off[0]) / s - 0.5, ((cy + 0.5) * OUTPUT_STRIDE - off[1]) / s - 0.5
                d_face = [cv2.pointPolygonTest(q.reshape(-1, 1, 2), pt, True) for q in quads]
                on = [i for i in z if d_face[i] > 0]
                if not on:
                    continue
                t = on[-1]  # the card on top at this cell
                cells[t].append((cx, cy))
                if any(abs(d) < margin for d in d_face):
                    continue  # near some card's edge: coverage is fractional there
                assert y[0, cy, cx] > 200  # face: any card
                if t in covered:
                    continue
                d_k = cv2.pointPolygonTest(shrink(quads[t]).reshape(-1, 1, 2), pt, True)
                if abs(d_k) < margin:
                    continue
                if d_k > 0:
                    assert y[1, cy, cx] > 200, (seed, cx, cy, t)
                else:  # the edge band of an uncovered card: no kernel, no other card's kernel either
                    assert y[1, cy, cx] < 55, (seed, cx, cy, t)
                free_cells += 1
        for i in covered:
            c = np.array(cells[i], np.float32)
            mass = np.array([y[1, cy, cx] for cx, cy in cells[i]], np.float32) / 255
            if lab["cards"][i]["visible"] < 0.45:
                assert mass.sum() < 0.1 * max(len(c), 1), (seed, i)  # no kernel (up to edge cells)
                continue
            if len(c) < 20:
                continue
            # the kernel is the visible part shrunk about its centroid: ~KERNEL_SHRINK² of its area, same centre
            assert 0.6 * KERNEL_SHRINK ** 2 < mass.sum() / len(c) < 1.4 * KERNEL_SHRINK ** 2, (seed, i, mass.sum() / len(c))
            centre = (mass[:, None] * c).sum(0) / mass.sum()
            offsets.append(float(np.linalg.norm(centre - c.mean(0))))  # output cells
    # (the quad's own shrink cut by the card above sits off the visible part's centre: median ≈ 0.75 cells)
    assert len(offsets) >= 5 and free_cells >= 200
    assert max(offsets) < 0.6 and np.median(offsets) < 0.35, offsets


def test_row_layout_lays_cards_edge_to_edge():
    """``row``: cards next to each other along their width or their height — neighbours touch, overlap a little
    (≤ 12 % of the span) or leave a small gap, so most cards stay scannable (≥ 90 % visible), and a pair's
    outline has a card's shape when they lie side by side (what the detector has to keep apart)."""
    cfg = CaptureConfig(mode="fan", fan_layouts=["row"], max_tilt_deg=0, **CLEAN)
    along = set()
    scannable = total = 0
    for seed in range(12):
        n = 2 + seed % 4
        frame, lab = simulate_capture([_flat_card(k) for k in range(n)], [f"c{k}" for k in range(n)],
                                      np.random.default_rng(seed), cfg)
        assert lab["params"]["fan_layout"] == "row"
        quads = [np.array(c["quad"], np.float32) for c in lab["cards"]]
        centres = np.array([q.mean(0) for q in quads])
        for i in range(n - 1):
            q = quads[i]
            width = 0.5 * (np.linalg.norm(q[1] - q[0]) + np.linalg.norm(q[2] - q[3]))
            height = 0.5 * (np.linalg.norm(q[3] - q[0]) + np.linalg.norm(q[2] - q[1]))
            d = float(np.linalg.norm(centres[i + 1] - centres[i]))
            # the next card sits one width or one height away (0.88-1.06 of it, a little slack for the turns)
            ok_w, ok_h = 0.84 * width < d < 1.1 * width, 0.84 * height < d < 1.1 * height
            assert ok_w or ok_h, (seed, i, d, width, height)
            along.add("width" if ok_w else "height")
            assert _poly_iou(quads[i], quads[i + 1]) < 0.15
        for c in lab["cards"]:
            total += 1
            scannable += c["visible"] >= 0.9
            assert c["visible"] > 0.8
    assert along == {"width", "height"}
    assert scannable >= 0.6 * total


def test_empty_items_are_negatives_on_mats_the_tests_do_not_use():
    """Hard negatives for the detector (``models.detector.data.empty_item``): no card anywhere in the targets,
    on background variants the capture sets and ``test_vision``'s empty frames never draw (those use 0…5), so
    that test still checks mats the detector has not seen empty."""
    from models.detector import data
    from models.synth.capture import N_VARIANTS

    rng = np.random.default_rng(3)
    for _ in range(8):
        x, y, w = data.empty_item(rng)
        assert x.shape == (120, 160, 3) and x.dtype == np.uint8
        assert y.shape == (3, data.OUT_SIZE[1], data.OUT_SIZE[0]) and not y.any() and w.min() == 1
    assert inspect.signature(data.empty_item).parameters["first_variant"].default >= N_VARIANTS
