"""Non-catalog card faces for the detector (playing cards, backs; rounded corners) and cards' drop shadows."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from models.synth.capture import CaptureConfig, _shadow, simulate_capture
from models.synth.foreign import KINDS, SIZE, foreign_card
from tests.test_synth_overlap import CLEAN


def test_foreign_faces_are_cards_with_rounded_corners():
    rng = np.random.default_rng(3)
    for kind in KINDS:
        c = foreign_card(rng, kind)
        assert c.shape == (SIZE[1], SIZE[0], 4) and c.dtype == np.uint8
        a = c[..., 3]
        assert a[0, 0] == 0 and a[-1, -1] == 0 and a[0, -1] == 0 and a[-1, 0] == 0  # the corners are cut
        assert (a[SIZE[1] // 2, :] == 255).all() and (a[:, SIZE[0] // 2] == 255).all()  # the edges are not
        assert 0.97 < (a > 127).mean() < 0.999
    # the same generator state draws the same face
    assert np.array_equal(foreign_card(np.random.default_rng(5)), foreign_card(np.random.default_rng(5)))
    # pips of a 7 and a court card's picture differ from a blank card: there is a face to see
    assert foreign_card(np.random.default_rng(1), "pips")[..., :3].std() > 10


def test_rounded_corner_shows_what_lies_under_it():
    """A BGRA card keeps its alpha through the capture: at a rounded corner the background shows, inside the
    face the card does."""
    card = np.dstack([np.zeros((504, 360, 3), np.uint8), np.full((504, 360), 255, np.uint8)])
    from models.synth.foreign import rounded_alpha

    card[..., 3] = rounded_alpha(360, 504, 40)
    cfg = CaptureConfig(mode="scanner_box", scanner_box_rotation_deg=0, scanner_box_tilt_deg=0, backgrounds=["noise"],
                        **CLEAN)
    frame, lab = simulate_capture([card], ["x"], np.random.default_rng(0), cfg)
    q = np.array(lab["cards"][0]["quad"], np.float32)
    tl, c = q[0], q.mean(0)
    inward = (c - tl) / np.linalg.norm(c - tl)
    corner_px = frame[tuple(np.round(tl + 2 * inward).astype(int)[::-1])]
    centre_px = frame[tuple(np.round(c).astype(int)[::-1])]
    assert centre_px.max() < 30  # the black card face
    assert corner_px.max() > 40  # the (non-black) background through the cut corner


def test_default_capture_draws_the_frames_it_drew_before():
    """p_shadow defaults to 0 and a BGR card keeps an opaque alpha: every mode draws, seed for seed, the frames
    it drew before this session's simulator changes (hashes recorded with commit 82b98c3's simulator), so earlier
    datasets and evaluations keep their frames."""
    import hashlib

    cards = []
    for k in range(5):
        img = np.zeros((504, 360, 3), np.uint8)
        img[:] = (40 * k, 255 - 40 * k, 120)
        img[100:200, 50:300] = (250, 250, 250)
        cards.append(img)
    recorded = {"free": "d6fd6abd4673584f", "grid": "5cfc475944321ca2", "scanner_box": "490f6b28527a509a",
                "fan": "85d0bb8b94e82164"}
    for mode, digest in recorded.items():
        frame, _ = simulate_capture(cards, [f"c{k}" for k in range(5)], np.random.default_rng(7),
                                    CaptureConfig(mode=mode, backgrounds=["wood", "cloth", "playmat", "noise"]))
        assert hashlib.sha256(frame.tobytes()).hexdigest()[:16] == digest, mode


def test_shadow_darkens_beside_the_card_only():
    frame = np.full((200, 200, 3), 220, np.uint8)
    quad = np.array([[60, 50], [140, 50], [140, 160], [60, 160]], np.float32)
    alpha = np.ones((504, 360), np.float32)
    _shadow(frame, alpha, quad, np.random.default_rng(0))
    assert frame[5, 5].tolist() == [220, 220, 220]  # far from the card: untouched
    assert frame[100, 100].max() < 200  # under the card (hidden by it once it is drawn)
    ring = np.concatenate([frame[45:49, 60:140].reshape(-1, 3), frame[162:166, 60:140].reshape(-1, 3),
                           frame[50:160, 55:59].reshape(-1, 3), frame[50:160, 141:145].reshape(-1, 3)])
    assert (ring < 219).sum() >= 20  # the shadow reaches past the edge on the side away from the light


def test_an_evaluation_can_draw_shadows_and_refuses_a_probability_above_one():
    """``models.vision_eval --p-shadow P``: every capture set's config carries it (rows too), 0 is the config the
    sets always had (their frames seed for seed), and a value outside 0..1 is refused by name before anything runs."""
    from models.vision_eval import capture_config, main

    for mode in ("free", "grid", "scanner_box", "fan", "row"):
        assert capture_config(mode, p_shadow=0.6).p_shadow == 0.6
        assert capture_config(mode, p_shadow=0.0) == capture_config(mode)
    assert capture_config("row", p_shadow=0.6).fan_layouts == ["row"]
    with pytest.raises(SystemExit) as e:
        main(["--bundle", "models/bundles/demo", "--p-shadow", "1.5"])
    assert e.value.code == 2


def test_detector_data_with_foreign_faces_has_no_orientation_target(tmp_path):
    """Foreign frames supervise face and kernel like any capture but not the top half (playing cards look the
    same both ways up)."""
    from models.detector.data import sim_item

    cfg = CaptureConfig(size=(320, 240), mode="fan", p_shadow=1.0)
    x, y, w = sim_item((None, None, 11, 3, cfg, True))
    assert x.shape == (120, 160, 3)
    assert (w[2] == 0).all() and (w[:2] == 1).all()
    assert (y[0] > 127).sum() > 20 and (y[1] > 127).sum() > 5  # cards and their kernels are there
    cv2.imwrite(str(tmp_path / "x.png"), x)  # a real image, not an empty array


def test_free_rect_is_the_largest_rectangle_clear_of_every_card():
    from models.synth.capture import TABLE_CLEAR, _free_rect

    # one card box in the middle-left of a 400 × 300 photo: the largest clear rectangle is right of it
    box = (100.0, 50.0, 200.0, 190.0)
    x0, y0, x1, y1 = _free_rect(400, 300, [box])
    assert (x0, y0, x1, y1) == (int(200 + TABLE_CLEAR * 100), 0, 400, 300)
    # two boxes, one on each side: the band between them, or below both, whichever is larger
    r = _free_rect(400, 300, [(0.0, 0.0, 120.0, 100.0), (280.0, 0.0, 400.0, 100.0)])
    assert r == (0, math.ceil(100 + TABLE_CLEAR * 100), 400, 300)
    assert _free_rect(100, 100, [(0.0, 0.0, 100.0, 100.0)]) is None


def test_table_backgrounds_are_the_train_photos_surfaces(shared_data):
    """Background ``table``: crops of the real playing-card TRAIN photos clear of every labelled card (never the
    TEST photos, which measure the detector); a capture config opts in, so the default frames are unchanged."""
    from models.detector.data import photo_boxes
    from models.synth.capture import _table_regions, background, sample_background

    regions = _table_regions()
    if not regions:
        pytest.skip("playing-card TRAIN photos not in the shared data")
    train = photo_boxes("train")
    assert {p.name for p, _ in regions} <= set(train) and not {p.name for p, _ in regions} & set(photo_boxes("test"))
    grow = 0.08
    for path, (x0, y0, x1, y1) in regions:
        for bx0, by0, bx1, by1 in train[path.name]:  # clear of each card's box, grown
            gx, gy = grow * (bx1 - bx0), grow * (by1 - by0)
            assert x1 <= bx0 - gx + 1 or x0 >= bx1 + gx - 1 or y1 <= by0 - gy + 1 or y0 >= by1 + gy - 1
    img = background("table", 3, (320, 240))
    assert img.shape == (240, 320, 3) and img.std() > 3  # a texture, not a flat fill
    assert not np.array_equal(img, background("table", 4, (320, 240)))
    # opt-in: the default list does not draw it
    assert "table" not in CaptureConfig().backgrounds
    _, info = sample_background(np.random.default_rng(0), CaptureConfig(backgrounds=["table"]))
    assert info["kind"] == "table" and 0 <= info["variant"] < len(regions)
