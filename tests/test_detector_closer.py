"""The detector's closer look (``TFLiteDetector.closer``): a detection that may be several cards gets a second,
zoomed inference whose pieces replace it; one card stays one card, and a card that fills the frame costs nothing."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from device.vision.detector import Detection, TFLiteDetector
from device.vision.edges import EdgeModel
from models.vision_eval import box_iou

BUNDLE = Path(__file__).resolve().parents[1] / "models" / "bundles" / "demo"
PHOTOS = "TensorFlow-Object-Detection-API-Tutorial-Train-Multiple-Objects-Windows-10/images"


def _cnn(**kw) -> TFLiteDetector:
    return TFLiteDetector(str(BUNDLE / "detector.tflite"), 1, edges=EdgeModel.load(BUNDLE), **kw)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)


def _on_a_table(shared_data: Path, placed: dict[str, tuple[int, int]], seed: int = 6) -> np.ndarray:
    """A 640×480 frame of a plain mottled table with real sv1 scans laid on it, 150×210 px, top-left corners at
    ``placed`` (in that order: a later card lies over an earlier one)."""
    rng = np.random.default_rng(seed)
    frame = cv2.GaussianBlur(rng.integers(60, 120, (480, 640, 3), dtype=np.uint8), (0, 0), 3)
    for cid, (x, y) in placed.items():
        img = cv2.imread(str(shared_data / "PTCGextension" / "cards" / cid / f"{cid}.png"), cv2.IMREAD_COLOR)
        frame[y:y + 210, x:x + 150] = cv2.resize(img, (150, 210), interpolation=cv2.INTER_AREA)
    return frame


def _nothing_in_its_parts(pipe, frame: np.ndarray, quad: np.ndarray):
    """A CNN outline that reads as no card and holds none in its equal parts or at its ends: (passed, match)."""
    t = pipe._gate(frame, Detection(quad, 0.9, "cnn", 1.0, {}))
    whole = pipe._read(frame, t)[0]
    assert whole.score < pipe.thresholds.no_card_score
    assert pipe._cut(frame, t, whole) is None and pipe._ends(frame, t, whole) is None
    return t, whole


def _a_card(pipe, frame: np.ndarray, quad: np.ndarray, card_id: str):
    """A CNN outline that reads as ``card_id``, well enough to be a card: (passed, match)."""
    t = pipe._gate(frame, Detection(quad, 0.9, "cnn", 1.0, {}))
    m = pipe._read(frame, t)[0]
    assert m.card_ids[0] == card_id and m.score >= pipe.thresholds.no_card_score
    return t, m


def _photo(shared_data: Path, split: str, name: str) -> tuple[np.ndarray, list]:
    """A real playing-card photo and its labelled boxes (skips where the shared data is absent)."""
    from models.detector.data import photo_boxes

    img = cv2.imread(str(shared_data / PHOTOS / split / name))
    if img is None:
        pytest.skip(f"{name} not in the shared data")
    return img, photo_boxes(split)[name]


def _box_ious(dets: list[Detection], gts: list) -> list[float]:
    """Each labelled box's best IoU with the detections' bounding boxes."""
    boxes = [(d.quad[:, 0].min(), d.quad[:, 1].min(), d.quad[:, 0].max(), d.quad[:, 1].max()) for d in dets]
    return [max([box_iou(b, g) for b in boxes], default=0.0) for g in gts]


def _each_golden_card_named(pipe) -> dict:
    """Every golden image read by ``pipe``: exactly one card named, the golden one. Returns the results by image."""
    import json

    expected = json.loads((BUNDLE / "golden" / "expected.json").read_text())
    out = {}
    for name, card_id in expected.items():
        out[name] = res = pipe.process(cv2.imread(str(BUNDLE / "golden" / name)))
        named = [c for c in res.cards if c.decision != "no_card"]
        assert len(named) == 1 and named[0].card_id == card_id, name
    return out


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


def test_the_demo_bundle_looks_closer():
    import json

    spec = json.loads((BUNDLE / "manifest.json").read_text())["detector"]
    assert spec["closer"] >= 1


def test_only_a_blob_that_is_no_card_shape_is_taken_apart(monkeypatch):
    """The rule on top of the zoomed pass: a card-shaped detection stays one card (its halves have nearly a
    card's aspect too, so pieces could be either), one piece never replaces a detection, and a blob of two
    overlapping cards is replaced by the cards the zoomed pass finds in it."""
    det = _cnn(closer=4, closer_min_zoom=1.0)
    frame = np.full((480, 640, 3), 90, np.uint8)
    card = Detection(_rect(300, 200, 350, 270))  # 50 × 70: a card
    halves = [Detection(_rect(300, 200, 350, 235)), Detection(_rect(300, 235, 350, 270))]
    looked = []
    monkeypatch.setattr(det, "_pieces", lambda *a: looked.append(1) or halves)
    assert _same(det._look_closer(frame, card, 0.25), [card]) and not looked  # not even looked at: no cost
    pair = Detection(_rect(300, 200, 375, 270))  # two cards, the second over the first's right half
    cards = [Detection(_rect(300, 200, 350, 270)), Detection(_rect(325, 200, 375, 270))]
    monkeypatch.setattr(det, "_pieces", lambda *a: cards)
    assert _same(det._look_closer(frame, pair, 0.25), cards)
    monkeypatch.setattr(det, "_pieces", lambda *a: cards[:1])
    assert _same(det._look_closer(frame, pair, 0.25), [pair])
    monkeypatch.setattr(det, "_pieces", lambda *a: cards)
    assert _same(det._look_closer(frame, pair, 2.0), [pair])  # the first pass saw it as large already: no gain


def test_a_card_filling_the_frame_costs_one_inference():
    """Scanner-box frames (the golden images: one card at the box's fixed distance) run the model once."""
    det = _cnn(closer=4)
    calls = []
    run = det._run
    det._run = lambda x: calls.append(1) or run(x)
    for p in sorted((BUNDLE / "golden").glob("*.jpg")):
        calls.clear()
        dets = det.detect(cv2.imread(str(p)))
        assert len(dets) == 1 and len(calls) == 1, p.name


# the photos whose pair demo-13's first pass returns as one blob and its closer look parts (demo-11's: 2595, 2651,
# 2654; demo-12's: 2636, 2651, 2677, 2686 — demo-13 no longer parts 2636's pair, docs/device-vision.md)
@pytest.mark.parametrize("name", ["IMG_2594.JPG", "IMG_2595.JPG", "IMG_2651.JPG", "IMG_2654.JPG", "IMG_2677.JPG",
                                  "IMG_2686.JPG"])
def test_overlapping_real_cards_come_apart(shared_data, name):
    """Real photos of overlapping or touching playing cards that the first pass sees as one blob: the closer look
    returns more cards, and their boxes fit the labelled ones (visible parts) better."""
    img, gts = _photo(shared_data, "test", name)

    def mean_iou(dets):
        return float(np.mean(_box_ious(dets, gts)))

    once = _cnn(closer=0).detect(img)
    closer = _cnn(closer=4).detect(img)
    assert len(once) < len(gts) <= len(closer) + 1
    assert any(d.info.get("split") for d in closer)
    assert mean_iou(closer) > mean_iou(once) + 0.1


@pytest.mark.parametrize("pinched", [False, True])
def test_a_card_taken_apart_by_mistake_is_read_whole(pinched):
    """When the closer look takes one card apart (a finger across it, its text box), or the first pass cuts its
    kernel at a neck (``pinched``, ``split_kernels``), no piece reads as a catalog card, and the whole does: the
    pipeline reads and reports the whole (``VisionPipeline._reunite``)."""
    from device.vision.pipeline import VisionPipeline

    pipe = VisionPipeline.from_bundle(BUNDLE, 1)
    detect = pipe.detector.detect

    def cut_in_two(frame):
        dets = detect(frame)
        out = []
        for d in dets:
            if pinched:
                d.info["pinched"] = True
            q = d.quad
            mid_l, mid_r = (q[0] + q[3]) / 2, (q[1] + q[2]) / 2
            for half in (np.array([q[0], q[1], mid_r, mid_l]), np.array([mid_l, mid_r, q[2], q[3]])):
                out.append(Detection(half.astype(np.float32), d.score, "cnn", 1.0, {"split": True, "whole": d}))
        return out

    pipe.detector.detect = cut_in_two
    _each_golden_card_named(pipe)


def test_a_zoomed_pass_fits_only_the_cards_it_looks_at(shared_data, monkeypatch):
    """``decode_maps(around=…)``: a zoomed pass skips fitting the neighbours it sees at the crop's border, and
    keeps exactly the pieces it kept when it fitted everything (real photo, every first-pass detection)."""
    import device.vision.detector as detector_mod

    img = cv2.imread(str(shared_data / PHOTOS / "test" / "IMG_2557.JPG"))
    if img is None:
        pytest.skip("IMG_2557.JPG not in the shared data")
    det = _cnn(closer=0)
    fits = []
    fit = detector_mod.fit_quad
    monkeypatch.setattr(detector_mod, "fit_quad", lambda *a, **k: fits.append(1) or fit(*a, **k))
    everything, looked = 0, 0
    for d in det.detect(img):
        q = d.quad
        poly = q.reshape(-1, 1, 2)
        fits.clear()
        all_dets = det._zoomed(img, q, 0.15)
        everything += len(fits)
        fits.clear()
        near = det._zoomed(img, q, 0.15, around=q)
        looked += len(fits)

        def inside(ds):
            return [x.quad.tolist() for x in ds
                    if cv2.pointPolygonTest(poly, tuple(float(v) for v in x.quad.mean(0)), False) >= 0]

        assert inside(near) == inside(all_dets)
    assert looked < everything


def test_the_photo_report_can_draw_every_photo(shared_data, tmp_path):
    """``models.vision_eval --photo-dump DIR``: every TEST photo drawn, one ``photos.jsonl`` row per photo, and the
    rows add up to the report's figures (so a moved mean can be traced to the photos that moved it)."""
    import json

    from device.vision.pipeline import VisionPipeline
    from models.vision_eval import photo_eval

    if not (shared_data / PHOTOS / "test").is_dir():
        pytest.skip("playing-card photos not in the shared data")
    rep = photo_eval(VisionPipeline.from_bundle(BUNDLE, 1), dump_dir=str(tmp_path))
    rows = [json.loads(line) for line in (tmp_path / "photos.jsonl").read_text().splitlines()]
    assert len(rows) == rep["images"] == len(list(tmp_path.glob("*.png")))
    ious = [x for r in rows for x in r["iou"]]
    assert len(ious) == rep["gt_boxes"]
    assert abs(float(np.mean(ious)) - rep["mean_iou"]) < 1e-3
    assert sum(r["false_positives"] for r in rows) == rep["false_positives"]


def test_a_pinched_whole_must_read_as_an_accept_to_replace_its_pieces():
    """A kernel cut at its neck is two touching cards far more often than one card, so its uncut outline replaces
    the pieces only when it reads as well as an accept; the closer look's whole needs only to read better than
    every piece. The same halves and whole of a golden card, read by the real pipeline, with an accept floor
    above the whole's own reading: the pinched whole stays out, the closer look's whole comes in."""
    import dataclasses

    from device.vision import geometry as G
    from device.vision.pipeline import VisionPipeline

    pipe = VisionPipeline.from_bundle(BUNDLE, 1)
    frame = cv2.imread(str(BUNDLE / "golden" / "golden_0.jpg"))
    det = pipe.detector.detect(frame)[0]
    q = det.quad
    mid_l, mid_r = (q[0] + q[3]) / 2, (q[1] + q[2]) / 2
    whole_read = pipe._read(frame, pipe._gate(frame, det))[0].score
    for pinched, taken in ((True, False), (False, True)):
        whole = Detection(q.copy(), det.score, "cnn", 1.0, {"pinched": True} if pinched else {})
        todo, best = [], {}
        for half in (np.array([q[0], q[1], mid_r, mid_l]), np.array([mid_l, mid_r, q[2], q[3]])):
            passed = pipe._gate(frame, Detection(half.astype(np.float32), det.score, "cnn", 1.0, {"whole": whole}))
            todo.append(passed)
            best[len(todo) - 1] = pipe._read(frame, passed)
        assert max(b[0].score for b in best.values()) < whole_read  # the whole reads better than every half
        pipe.thresholds = dataclasses.replace(pipe.thresholds, accept_confidence=0.9,
                                              confidence_min_score=whole_read + 0.01)
        pipe._reunite(frame, {id(whole): whole}, todo, best)
        assert (sorted(best) == [2]) is taken and len(best) == (1 if taken else 2)
        if taken:
            assert G.quad_iou(best[2][1], q) > 0.9


def test_cards_laid_edge_to_edge_seen_as_one_are_cut_apart(shared_data):
    """Two real sv1 scans side by side, touching, under one outline (what both of the detector's looks return for
    such a pair: a landscape card's shape): the cut gives two parts that read as the two cards, flagged
    ``pieces`` (read, never accepted). A single card that matched nothing is not cut: its halves read as
    nothing (``VisionPipeline._cut``)."""
    from device.vision.matcher import Match
    from device.vision.pipeline import VisionPipeline

    pipe = VisionPipeline.from_bundle(BUNDLE, 1)
    rng = np.random.default_rng(3)
    frame = cv2.GaussianBlur(rng.integers(60, 120, (480, 640, 3), dtype=np.uint8), (0, 0), 3)
    ids = ["sv1-25", "sv1-81"]
    for k, cid in enumerate(ids):
        img = cv2.imread(str(shared_data / "PTCGextension" / "cards" / cid / f"{cid}.png"), cv2.IMREAD_COLOR)
        frame[120:330, 170 + 150 * k:320 + 150 * k] = cv2.resize(img, (150, 210), interpolation=cv2.INTER_AREA)
    pair = pipe._gate(frame, Detection(_rect(170, 120, 470, 330), 0.9, "cnn", 1.0, {}))
    whole = pipe._read(frame, pair)[0]
    assert whole.score < pipe.thresholds.no_card_score  # the pair reads as no card
    parts = pipe._cut(frame, pair, whole)
    assert parts is not None and len(parts) == 2
    assert sorted(read[0].card_ids[0] for _, read in parts) == ids
    assert all(passed.flag == "pieces" for passed, _ in parts)
    one = pipe._gate(frame, Detection(_rect(170, 120, 320, 330), 0.9, "cnn", 1.0, {}))
    assert pipe._read(frame, one)[0].card_ids[0] == ids[0]
    assert pipe._cut(frame, one, Match(["x"], [0.2])) is None


def test_two_shifted_cards_seen_as_one_are_read_at_its_ends(shared_data):
    """A real sv1 scan lying over part of another, under one outline that has neither a card's aspect nor two
    cards' side by side (what merged hand-held and row detections look like): cutting it in equal parts gives no
    card, but a card-shaped quad at its end reads the card on top, flagged ``pieces``; a card-shaped outline is
    never read at its ends (``VisionPipeline._ends``)."""
    from device.vision.geometry import quad_iou
    from device.vision.matcher import Match
    from device.vision.pipeline import VisionPipeline

    pipe = VisionPipeline.from_bundle(BUNDLE, 1)
    rng = np.random.default_rng(4)
    frame = cv2.GaussianBlur(rng.integers(60, 120, (480, 640, 3), dtype=np.uint8), (0, 0), 3)
    under, top = "sv1-25", "sv1-81"
    for cid, x in ((under, 170), (top, 260)):  # the second lies over 60 % of the first
        img = cv2.imread(str(shared_data / "PTCGextension" / "cards" / cid / f"{cid}.png"), cv2.IMREAD_COLOR)
        frame[120:330, x:x + 150] = cv2.resize(img, (150, 210), interpolation=cv2.INTER_AREA)
    pair = pipe._gate(frame, Detection(_rect(170, 120, 410, 330), 0.9, "cnn", 1.0, {}))
    whole = pipe._read(frame, pair)[0]
    assert whole.score < pipe.thresholds.no_card_score  # the outline reads as no card
    assert pipe._cut(frame, pair, whole) is None  # its halves have no card's aspect
    ends = pipe._ends(frame, pair, whole)
    assert ends is not None and all(passed.flag == "pieces" for passed, _ in ends)
    read_top = [(passed, read) for passed, read in ends if read[0].card_ids[0] == top]
    assert read_top and quad_iou(read_top[0][0].quad, _rect(260, 120, 410, 330)) > 0.8
    one = pipe._gate(frame, Detection(_rect(260, 120, 410, 330), 0.9, "cnn", 1.0, {}))
    assert pipe._ends(frame, one, Match(["x"], [0.2])) is None


def test_a_piece_of_a_closer_look_that_still_holds_two_cards_is_cut(shared_data):
    """Three real sv1 scans laid edge to edge: a closer look (or a kernel cut at its neck) can part them into the
    first card and a piece that still holds the other two side by side — a landscape card's outline that reads as
    nothing. That piece is cut like a first-pass detection, and its parts stay pieces of the same whole, so
    ``_reunite`` weighs them against it: here they read better than the three cards' outline, which stays out."""
    from device.vision.pipeline import VisionPipeline, _replace

    pipe = VisionPipeline.from_bundle(BUNDLE, 1)
    rng = np.random.default_rng(5)
    frame = cv2.GaussianBlur(rng.integers(60, 120, (480, 640, 3), dtype=np.uint8), (0, 0), 3)
    ids = ["sv1-25", "sv1-81", "sv1-131"]
    for k, cid in enumerate(ids):
        img = cv2.imread(str(shared_data / "PTCGextension" / "cards" / cid / f"{cid}.png"), cv2.IMREAD_COLOR)
        frame[130:305, 100 + 125 * k:225 + 125 * k] = cv2.resize(img, (125, 175), interpolation=cv2.INTER_AREA)
    whole = Detection(_rect(100, 130, 475, 305), 0.9, "cnn", 1.0, {})
    first = pipe._gate(frame, Detection(_rect(100, 130, 225, 305), 0.9, "cnn", 1.0, {"whole": whole}))
    rest = pipe._gate(frame, Detection(_rect(225, 130, 475, 305), 0.9, "cnn", 1.0, {"whole": whole}))
    assert rest.whole is whole
    rest_read = pipe._read(frame, rest)
    assert rest_read[0].score < pipe.thresholds.no_card_score  # two cards under one outline read as nothing
    parts = pipe._cut(frame, rest, rest_read[0])
    assert parts is not None and sorted(read[0].card_ids[0] for _, read in parts) == sorted(ids[1:])
    assert all(passed.flag == "pieces" and passed.whole is whole for passed, _ in parts)
    todo, best = [first], {0: pipe._read(frame, first)}
    _replace(todo, best, [], parts)
    pipe._reunite(frame, {id(whole): whole}, todo, best)
    assert sorted(best[i][0].card_ids[0] for i in best) == sorted(ids)


def test_a_card_whose_outline_took_in_the_pile_under_it_is_read_inside_it(shared_data):
    """A real sv1 scan lying on another, shifted a little (a pile, a fanned hand): the outline that takes in the
    edges of the card below reads as nothing, and neither its equal parts nor its ends are a card. Moved in at a
    corner, the outline fits the card on top, which is read — flagged ``pieces`` (never accepted) and the way up
    the detection was. An outline that matched a card is never looked inside (``VisionPipeline._inside``)."""
    from device.vision.geometry import quad_iou
    from device.vision.pipeline import VisionPipeline

    pipe = VisionPipeline.from_bundle(BUNDLE, 1)
    under, top = "sv1-25", "sv1-81"
    frame = _on_a_table(shared_data, {under: (200, 110), top: (225, 140)})
    pile, whole = _nothing_in_its_parts(pipe, frame, _rect(200, 110, 375, 350))  # the pile's outline
    inside = pipe._inside(frame, pile, whole)
    assert inside is not None and len(inside) == 1
    passed, read = inside[0]
    assert read[0].card_ids[0] == top and passed.flag == "pieces"
    assert quad_iou(passed.quad, _rect(225, 140, 375, 350)) > 0.85
    assert np.linalg.norm(read[1][0] - [225, 140]) < 15  # the top-left corner stays top left: read upright
    one, read_one = _a_card(pipe, frame, _rect(225, 140, 375, 350), top)
    assert pipe._inside(frame, one, read_one) is None


def test_a_card_the_detector_saw_only_part_of_is_read_grown_to_a_card(shared_data):
    """The outline of a real sv1 scan's top 60 % (the detector cut it where fingers cross it, or at a full-art
    card's text box) reads as nothing and holds no card at its ends; carried on across its long sides to a card's
    aspect it is the card, which is read — flagged ``pieces`` (never accepted). A card-shaped outline that matched a
    card is never grown (``VisionPipeline._grow``)."""
    from device.vision.geometry import quad_iou
    from device.vision.pipeline import VisionPipeline

    pipe = VisionPipeline.from_bundle(BUNDLE, 1)
    cid = "sv1-100"
    frame = _on_a_table(shared_data, {cid: (240, 130)})
    piece, whole = _nothing_in_its_parts(pipe, frame, _rect(240, 130, 389, 256))  # the card's top 60 %
    grown = pipe._grow(frame, piece, whole)
    assert grown is not None and len(grown) == 1
    passed, read = grown[0]
    assert read[0].card_ids[0] == cid and passed.flag == "pieces"
    assert quad_iou(passed.quad, _rect(240, 130, 389, 339)) > 0.9
    card, read_card = _a_card(pipe, frame, _rect(240, 130, 389, 339), cid)
    assert pipe._grow(frame, card, read_card) is None


# TRAIN photos whose pair of overlapping cards the first pass and the zoomed pass both see as one blob (white card
# over white card, offset sideways: a near-square outline); the rule was developed on the TRAIN split
@pytest.mark.parametrize("name", ["IMG_2596.JPG", "IMG_2599.JPG", "IMG_2622.JPG"])
def test_a_card_lying_over_another_is_found_on_top_of_their_blob(shared_data, name, monkeypatch):
    """Two overlapping real playing cards under one outline, even zoomed in: the card on top is found at the end
    of the outline where an edge runs across it, the covered card as the rest beyond that edge (its visible part,
    as the photos' boxes label it), and each labelled box is matched; without the look for a card on top one of
    them is missed (``TFLiteDetector._on_top``)."""
    img, gts = _photo(shared_data, "train", name)
    det = _cnn(closer=4)
    found = det.detect(img)
    assert min(_box_ious(found, gts)) > 0.8
    assert sum(bool(d.info.get("on_top")) for d in found) == 1 and sum(bool(d.info.get("covered")) for d in found) == 1
    monkeypatch.setattr(det, "_on_top", lambda frame, first: [])
    assert min(_box_ious(det.detect(img), gts)) < 0.5


# TRAIN photos of a white card over a white card whose edge the edge model does not see: only a thin shadow or glint
# runs there (``edges.seam``); and single court cards, whose picture frame is such a line a sixth of the card in
@pytest.mark.parametrize("name", ["IMG_2617.JPG", "IMG_2619.JPG", "IMG_2632.JPG", "IMG_2687.JPG"])
def test_a_card_on_top_is_found_at_a_seam_the_edge_model_does_not_see(shared_data, name, monkeypatch):
    """Both cards of the pair matched at box IoU > 0.8 (the card on top ending at the seam); without the seam
    one of them is missed (< 0.5)."""
    import device.vision.detector as detector

    img, gts = _photo(shared_data, "train", name)
    det = _cnn(closer=4)
    found = det.detect(img)
    assert min(_box_ious(found, gts)) > 0.8 and sum(bool(d.info.get("on_top")) for d in found) == 1
    monkeypatch.setattr(detector, "seam", lambda *a, **k: (0.0, None))
    assert min(_box_ious(det.detect(img), gts)) < 0.5


@pytest.mark.parametrize("name", ["IMG_2464.JPG", "IMG_2453.JPG", "cam_image14.jpg"])
def test_a_court_cards_picture_frame_is_no_card_on_top(shared_data, name, monkeypatch):
    """A single court card seen at a slant (its outline no card's shape): its picture frame is a seam, but what
    lies beyond it is too thin to be a card under it (``ON_TOP_SEAM_MIN_REST``): one card, box IoU > 0.9. Were any
    rest enough, the frame would part it."""
    import device.vision.detector as detector

    img, gts = _photo(shared_data, "train", name)
    det = _cnn(closer=4)
    found = det.detect(img)
    assert len(found) == 1 and _box_ious(found, gts)[0] > 0.9 and "on_top" not in found[0].info
    monkeypatch.setattr(detector, "ON_TOP_SEAM_MIN_REST", 0.0)
    assert any(d.info.get("on_top") for d in det.detect(img))


@pytest.mark.parametrize("under,top", [("sv1-1", "sv1-2"), ("sv1-100", "sv1-150")])
def test_the_card_on_top_is_where_an_edge_runs_across_the_outline(shared_data, under, top):
    """A real sv1 scan lying over half of another: of the card-shaped quads at the outline's ends, the one whose
    inner side is the top card's edge is the card; the covered card's rest is so small a part of a card that the
    gate calls it occluded. A blank blob of the same outline (nothing runs across it) holds no card on top."""
    from device.vision.detector import GateConfig, geometry_reject
    from device.vision.geometry import quad_iou

    frame = _on_a_table(shared_data, {under: (200, 120), top: (275, 120)})
    det = _cnn(closer=4)
    first = Detection(_rect(200, 120, 425, 330), 0.9, "cnn", 1.0, {})
    found = det._on_top(frame, first)
    assert len(found) == 2 and quad_iou(found[0].quad, _rect(275, 120, 425, 330)) > 0.9
    assert found[0].info["whole"] is first and found[1].info["covered"]
    assert geometry_reject(found[1], frame.shape, GateConfig()) == "occluded"
    blank = np.full_like(frame, 90)
    blank[120:330, 200:425] = 235
    assert det._on_top(blank, first) == []


def _parted(whole: Detection, top: np.ndarray, rest: np.ndarray, visible: float) -> list[Detection]:
    """``whole`` parted as ``TFLiteDetector._on_top`` parts a pile: the card on top and the covered card's rest."""
    return [Detection(top.astype(np.float32), whole.score, "cnn", 1.0, {"top_margin": 0.0, "on_top": 0.8,
                                                                       "whole": whole}),
            Detection(rest.astype(np.float32), whole.score, "cnn", visible, {"top_margin": 0.0, "covered": True,
                                                                            "whole": whole})]


@pytest.mark.parametrize("top_part,top_left_out", [(0.6, False), (0.15, False), (0.6, True)])
def test_one_card_parted_as_a_pile_is_read_whole(top_part, top_left_out):
    """One card whose outline the detector parted into a card on top and a covered rest (a tilted card's art
    window or text box edge where a card on top would end): when the card on top reads worse than the whole
    (its top 60 %), fails the gate (its top 15 %: too small) or is not among the frame's detections (a frame's
    ``max_cards`` cut it off), the pipeline reads and reports the whole card, and no covered card is left among
    the rejects (``VisionPipeline._gate_all``, ``_reunite``)."""
    from device.vision.pipeline import VisionPipeline

    pipe = VisionPipeline.from_bundle(BUNDLE, 1)
    detect = pipe.detector.detect

    def part(frame):
        d = detect(frame)[0]
        q = d.quad
        cut_l, cut_r = q[0] + top_part * (q[3] - q[0]), q[1] + top_part * (q[2] - q[1])
        parts = _parted(d, np.array([q[0], q[1], cut_r, cut_l]), np.array([cut_l, cut_r, q[2], q[3]]), 0.4)
        return parts[1:] if top_left_out else parts

    pipe.detector.detect = part
    for name, res in _each_golden_card_named(pipe).items():
        assert not res.rejected, name


def test_the_card_on_top_of_a_pile_is_read_and_the_covered_card_rejected(shared_data):
    """A real sv1 scan lying over half of another, parted by ``TFLiteDetector._on_top``: the card on top reads
    better than the pile's outline, so the pipeline reports it, and the covered card's rest as ``occluded``."""
    from device.vision.pipeline import VisionPipeline

    pipe = VisionPipeline.from_bundle(BUNDLE, 1)
    frame = _on_a_table(shared_data, {"sv1-1": (200, 120), "sv1-2": (275, 120)})
    whole = Detection(_rect(200, 120, 425, 330), 0.9, "cnn", 1.0, {"top_margin": 1.0})
    pipe.detector.detect = lambda f: _parted(whole, _rect(275, 120, 425, 330), _rect(200, 120, 275, 330), 0.5)
    res = pipe.process(frame)
    assert [c.card_id for c in res.cards if c.decision != "no_card"] == ["sv1-2"]
    assert [reason for _, reason in res.rejected] == ["occluded"]
