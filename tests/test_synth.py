"""Renderer, capture simulator and stack sequences: real properties, small inputs."""

from __future__ import annotations

import json
from collections import defaultdict

import cv2
import numpy as np
import pytest

from models.synth.capture import CaptureConfig, augment_crop, simulate_capture
from models.synth.render import art_rect, build_set_index, layout_family, number_rect, render_card, set_symbol
from models.synth.stack import StackConfig, simulate_stack

# Tests needing ../shared/data take the `shared_data` fixture (tests/conftest.py), which skips with a clear
# message when it is absent.


@pytest.fixture(scope="module")
def catalog(shared_data):
    from server.catalog.sources import PokemonTCGSource

    src = PokemonTCGSource(shared_data / "pokemon-tcg-data")
    idx = build_set_index(src.sets())
    cards = [c for sid in ("base1", "base4", "sv1", "sv3pt5") for c in src.cards(sid)]
    return cards, idx


def _reprint_pair(cards, idx):
    by = defaultdict(list)
    for c in cards:
        if c.supertype == "Pokémon":
            by[c.illustration_id].append(c)
    for g in by.values():
        for a in g:
            for b in g:
                if a.set_id != b.set_id and layout_family(a, idx) == layout_family(b, idx) \
                        and a.number != b.number and (a.rarity == b.rarity):
                    return a, b
    pytest.fail("no reprint pair in base1/base4")


def test_render_shape_and_determinism(catalog):
    cards, idx = catalog
    c = cards[0]
    a, b = render_card(c, idx), render_card(c, idx)
    assert a.shape == (504, 360, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    small = render_card(c, idx, size=(250, 350))
    assert small.shape == (350, 250, 3)


def test_layout_families_cover_four_kinds(catalog):
    cards, idx = catalog
    fams = {layout_family(c, idx) for c in cards}
    assert {"vintage", "modern", "full_art", "trainer", "energy"} <= fams


def test_reprints_share_art_but_differ_in_number_region(catalog):
    cards, idx = catalog
    a, b = _reprint_pair(cards, idx)
    ia, ib = render_card(a, idx, finish="normal"), render_card(b, idx, finish="normal")
    x0, y0, x1, y1 = art_rect(a, idx)
    assert art_rect(b, idx) == (x0, y0, x1, y1)
    # The art window is pixel-identical away from the set-symbol corner (vintage puts the symbol below it).
    assert np.array_equal(ia[y0:y1, x0:x1], ib[y0:y1, x0:x1])
    nx0, ny0, nx1, ny1 = number_rect(a, idx)
    diff = np.abs(ia[ny0:ny1, nx0:nx1].astype(int) - ib[ny0:ny1, nx0:nx1].astype(int)).sum()
    assert diff > 1000, "number/total and set symbol must differ between reprints"


def test_set_symbols_are_distinct_and_deterministic():
    syms = [set_symbol(s, 32)[0] for s in ("base1", "base4", "sv1", "sv2", "swsh1", "xy1")]
    assert np.array_equal(set_symbol("sv1", 32)[0], syms[2])
    for i in range(len(syms)):
        for j in range(i + 1, len(syms)):
            assert not np.array_equal(syms[i], syms[j])


def test_holo_and_reverse_holo_differ_where_expected(catalog):
    cards, idx = catalog
    c = next(c for c in cards if layout_family(c, idx) == "vintage")
    n, h, r = (render_card(c, idx, finish=f) for f in ("normal", "holo", "reverse_holo"))
    x0, y0, x1, y1 = art_rect(c, idx)
    inside = lambda im: im[y0:y1, x0:x1].astype(int)  # noqa: E731
    assert np.abs(inside(h) - inside(n)).mean() > 10  # holo: sheen on the art
    assert np.array_equal(inside(r), inside(n))  # reverse holo: art untouched …
    mask = np.ones(n.shape[:2], bool)
    mask[y0:y1, x0:x1] = False
    assert np.abs(r.astype(int) - n.astype(int))[mask].mean() > 10  # … sheen everywhere else


def test_real_scan_used_when_present(shared_data):
    from server.catalog.sources import PokemonTCGSource

    PTCG = shared_data / "pokemon-tcg-data"
    images = shared_data / "PTCGextension" / "cards"
    if not images.is_dir():
        pytest.skip(f"real scans not found at {images}")
    c = PokemonTCGSource(PTCG, images=images).cards("sv1")[10]
    assert c.image_path
    img = render_card(c)
    scan = cv2.resize(cv2.imread(c.image_path), (360, 504), interpolation=cv2.INTER_LINEAR)
    assert img.shape == scan.shape and np.abs(img.astype(int) - scan.astype(int)).mean() < 3


def _synthetic_card(seed: int) -> np.ndarray:
    """A card-sized image with four distinct coloured quadrants (to check label orientation)."""
    img = np.zeros((504, 360, 3), np.uint8)
    cols = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255)]
    rng = np.random.default_rng(seed)
    for k, (x, y) in enumerate([(0, 0), (180, 0), (180, 252), (0, 252)]):
        img[y:y + 252, x:x + 180] = cols[(k + seed) % 4]
    img[240:264] = rng.integers(0, 255, 3)
    return img


CLEAN = dict(p_sleeve=0, p_toploader=0, p_glare=0, p_motion_blur=0, p_defocus=0, p_fingers=0, p_neighbours=0,
             light_gradient=(0, 0), brightness=(1, 1), colour_temperature=(0, 0), noise_sigma=(0.5, 0.5), jpeg_quality=(95, 95))


def test_capture_is_deterministic_from_seed():
    card = _synthetic_card(0)
    cfg = CaptureConfig()
    f1, l1 = simulate_capture([card, card], ["a", "b"], np.random.default_rng(7), cfg)
    f2, l2 = simulate_capture([card, card], ["a", "b"], np.random.default_rng(7), cfg)
    f3, _ = simulate_capture([card, card], ["a", "b"], np.random.default_rng(8), cfg)
    assert np.array_equal(f1, f2) and l1 == l2
    assert not np.array_equal(f1, f3)
    assert f1.shape == (480, 640, 3)


@pytest.mark.parametrize("mode,size", [("free", (640, 480)), ("scanner_box", (1280, 720))])
def test_quad_lands_on_card_with_correct_orientation(mode, size):
    card = _synthetic_card(0)
    cfg = CaptureConfig(mode=mode, size=size, max_tilt_deg=35, scale_range=(0.5, 0.8), **CLEAN)
    for seed in range(6):
        frame, lab = simulate_capture([card], ["x"], np.random.default_rng(seed), cfg)
        c = lab["cards"][0]
        q = np.array(c["quad"], np.float32)
        if c["visible"] < 0.999:
            continue  # partly outside the frame: colours near the corners are not all in view
        # Quadrant centres of the card face, mapped through the labelled quad, must show the quadrant colours.
        H = cv2.getPerspectiveTransform(np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32), q)
        for (u, v), col in zip([(0.25, 0.25), (0.75, 0.25), (0.75, 0.75), (0.25, 0.75)],
                               [(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255)]):
            x, y = cv2.perspectiveTransform(np.array([[[u, v]]], np.float32), H)[0, 0]
            px = frame[int(round(y)), int(round(x))].astype(int)
            assert np.abs(px - np.array(col)).max() < 40, (seed, (u, v), px, col)
        assert mode != "scanner_box" or abs(lab["params"]["cards"][0]["rot"]) <= 10


def test_grid_mode_many_cards_and_visibility():
    cards = [_synthetic_card(i) for i in range(9)]
    cfg = CaptureConfig(mode="grid", size=(1280, 720), **{**CLEAN, "p_fingers": 0})
    frame, lab = simulate_capture(cards, [f"c{i}" for i in range(9)], np.random.default_rng(3), cfg)
    assert len(lab["cards"]) == 9
    assert all(c["visible"] > 0.9 for c in lab["cards"])
    # Pairwise the card faces don't overlap in a grid.
    from models.eval.report import quad_iou

    qs = [c["quad"] for c in lab["cards"]]
    assert max(quad_iou(qs[i], qs[j]) for i in range(9) for j in range(i + 1, 9)) < 0.05


def test_fingers_and_overlap_reduce_visibility():
    card = _synthetic_card(1)
    cfg = CaptureConfig(mode="scanner_box", **{**CLEAN, "p_fingers": 1.0})
    vis = [simulate_capture([card], ["x"], np.random.default_rng(s), cfg)[1]["cards"][0]["visible"] for s in range(8)]
    assert min(vis) < 0.99 and all(0.3 < v <= 1 for v in vis)


def test_config_forbids_unknown_fields():
    with pytest.raises(Exception):
        CaptureConfig(tilt=3)
    assert CaptureConfig.model_fields["max_tilt_deg"].description


def test_augment_crop_shape_and_determinism():
    card = _synthetic_card(2)
    a = augment_crop(card, np.random.default_rng(1))
    b = augment_crop(card, np.random.default_rng(1))
    assert a.shape == card.shape and np.array_equal(a, b)
    assert 2 < np.abs(a.astype(int) - card.astype(int)).mean() < 80


def test_stack_sequence_events_and_counts():
    imgs = {f"c{i}": _synthetic_card(i) for i in range(4)}
    cfg = StackConfig(p_same_again=0.4, p_slide_on_top=0.4)
    seq = simulate_stack(imgs, 12, np.random.default_rng(5), cfg)
    placed = [e for e in seq.events if e["event"] in ("placed", "slid_on_top")]
    removed = [e for e in seq.events if e["event"] == "removed"]
    assert len(placed) == 12 == sum(seq.counts.values()) == len(removed)
    assert any(e["event"] == "slid_on_top" for e in seq.events)
    ids = [e["card_id"] for e in placed]
    assert any(a == b for a, b in zip(ids, ids[1:])), "expected a repeated copy with p_same_again=0.4"
    frames = list(seq.frames())
    assert len(frames) == len(seq.plan) and frames[0][1]["cards"] == []
    # At a placement event frame the placed card is on screen, held.
    for e in placed:
        lab = frames[e["frame"]][1]
        assert lab["phase"] == "held" and lab["cards"][-1]["card_id"] == e["card_id"]
    again = list(simulate_stack(imgs, 12, np.random.default_rng(5), cfg).frames())
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(frames[:5], again[:5]))


def test_cli_catalog_and_captures(tmp_path, shared_data):
    from models.synth.__main__ import main

    PTCG = shared_data / "pokemon-tcg-data"
    cat = tmp_path / "cat"
    assert main(["catalog", "--pokemon-tcg-data", str(PTCG), "--out", str(cat), "--sets", "base1", "--limit", "12"]) == 0
    assert len(list(cat.glob("*.jpg"))) == 12 and (cat / "index.jsonl").is_file()
    cap = tmp_path / "cap"
    assert main(["captures", "--catalog", str(cat), "--n", "6", "--seed", "3", "--out", str(cap), "--multi"]) == 0
    rows = [json.loads(x) for x in (cap / "labels.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all((cap / r["image"]).is_file() and len(r["cards"]) >= 2 for r in rows)
    st = tmp_path / "stack"
    assert main(["stack", "--catalog", str(cat), "--cards", "3", "--seed", "1", "--out", str(st)]) == 0
    assert sum(json.loads((st / "counts.json").read_text()).values()) == 3


def test_lit_placements_get_a_lamp_spot_and_nothing_else_changes():
    imgs = {f"c{i}": _synthetic_card(i) for i in range(3)}
    plain = list(simulate_stack(imgs, 4, np.random.default_rng(7), StackConfig()).frames())
    lit = list(simulate_stack(imgs, 4, np.random.default_rng(7), StackConfig(lit_placements=(1,))).frames())
    assert len(plain) == len(lit)
    brighter = 0
    for (a, la), (b, lb) in zip(plain, lit):
        assert [c["card_id"] for c in la["cards"]] == [c["card_id"] for c in lb["cards"]]
        if np.array_equal(a, b):
            continue
        brighter += 1
        assert b.astype(int).sum() > a.astype(int).sum()  # a white spot added, nothing else moved
    assert brighter >= 4  # the second placement's frames (slide in, hold, slide out)
    assert brighter < len(plain) - 4  # and only those
