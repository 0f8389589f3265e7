"""The device's reprint re-ranking (device.vision.reprints) and the patches it reads (models.reprints).

Faces here are drawn (no catalog needed): one illustration printed three times, two with the same frame and a
different collector number (a reprint contest), one in another frame (left to the embedder). Captures are
the faces warped into a frame, blurred and noised, with the quad a few pixels off, as a detector gives it.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.vision.matcher import Match
from device.vision.reprints import CANVAS, FILE, SIGMA, RerankConfig, Reprints
from models import reprints as RP

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "models/bundles/demo"


def face(number: str, frame_colour=(40, 200, 240), seed: int = 3) -> np.ndarray:
    """A card face at CANVAS: textured art, a name line, and the collector number in the footer."""
    rng = np.random.default_rng(seed)  # the same seed: the same illustration
    w, h = CANVAS
    img = np.full((h, w, 3), frame_colour, np.uint8)
    art = cv2.GaussianBlur(rng.integers(0, 255, (220, w - 40, 3)).astype(np.uint8), (0, 0), 3)
    img[60:280, 20:w - 20] = cv2.normalize(art, None, 0, 255, cv2.NORM_MINMAX)
    cv2.putText(img, "Pikachu", (24, 40), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (20, 20, 20), 2)
    for y in range(310, 440, 26):
        cv2.line(img, (30, y), (w - 30, y), (30, 30, 30), 2)
    cv2.putText(img, f"{number}/197", (40, 480), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (10, 10, 10), 1)
    return img


def capture(card: np.ndarray, rng: np.random.Generator, corner_error: float = 4.0):
    """(frame, quad as a detector reports it): the card at ~370 px tall, blurred, noised, corners off."""
    quad = np.array([[200, 50], [464, 58], [458, 428], [194, 420]], np.float32)
    h, w = card.shape[:2]
    m = cv2.getPerspectiveTransform(np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32), quad)
    frame = cv2.warpPerspective(card, m, (640, 480), borderValue=(70, 90, 70))
    frame = cv2.GaussianBlur(frame, (0, 0), 0.8)
    frame = np.clip(frame + rng.normal(0, 3, frame.shape), 0, 255).astype(np.uint8)
    return frame, quad + rng.uniform(-corner_error, corner_error, quad.shape).astype(np.float32)


@pytest.fixture(scope="module")
def contest(tmp_path_factory):
    """A catalog folder with the three printings + the patches built from it."""
    d = tmp_path_factory.mktemp("catalog")
    printings = {"sv3-66": face("066"), "sv3-211": face("211"), "base1-5": face("5", frame_colour=(200, 60, 60))}
    rows = []
    for cid, img in printings.items():
        cv2.imwrite(str(d / f"{cid}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        rows.append(json.dumps({"card_id": cid, "illustration_id": "ill-pikachu"}))
    rows.append(json.dumps({"card_id": "other-1", "illustration_id": "ill-other"}))
    cv2.imwrite(str(d / "other-1.jpg"), face("1", seed=9))
    (d / "index.jsonl").write_text("\n".join(rows) + "\n")
    ids = ["base1-5", "other-1", "sv3-211", "sv3-66"]
    return printings, ids, RP.build(d, ids)


def test_patches_cover_the_numbers_of_near_identical_printings_only(contest):
    printings, ids, arrays = contest
    rp = Reprints(arrays, ids)
    # one contest: the two printings in the same frame; the other frame and the singleton are left out
    assert sorted(ids[r] for r in rp.member_row) == ["sv3-211", "sv3-66"]
    boxes = rp.group_boxes(0) * int(rp.group_scale[0])
    # the difference is the collector number at the foot, nowhere in the art
    assert all(y0 >= 440 for y0, _, _, _ in boxes), boxes
    # a printing is stored exactly enough to be told apart: its rebuilt patch is close to its face
    g = cv2.cvtColor(printings["sv3-66"], cv2.COLOR_BGR2GRAY).astype(np.float32)
    m66 = next(m for m, r in enumerate(rp.member_row) if ids[r] == "sv3-66")
    y0, y1, x0, x1 = rp.group_boxes(0)[0]
    rebuilt = rp.templates(m66)[0]
    want = cv2.GaussianBlur(g[y0:y1, x0:x1], (0, 0), SIGMA)
    assert float(np.abs(rebuilt - want).mean()) < 6.0


@pytest.mark.parametrize("true_id", ["sv3-66", "sv3-211"])
def test_rerank_puts_the_printing_whose_number_the_card_shows_first(contest, true_id):
    printings, ids, arrays = contest
    rp = Reprints(arrays, ids)
    other = "sv3-211" if true_id == "sv3-66" else "sv3-66"
    # an embedding that cannot tell them apart (equal catalog rows) and a match with the wrong one first
    matrix = np.tile(np.array([0.9, np.sqrt(1 - 0.81), 0, 0], np.float32), (len(ids), 1))  # cosine 0.9
    matrix[ids.index("other-1")] = [0.6, 0.8, 0, 0]
    query = np.array([1.0, 0, 0, 0], np.float32)
    rng = np.random.default_rng(hash(true_id) % 1000)
    wins = 0
    for k in range(6):
        frame, quad = capture(printings[true_id], rng)
        m = Match([other, true_id, "base1-5", "other-1"], [0.90, 0.90, 0.89, 0.60])
        out, detail = rp.rerank(m, frame, quad, matrix, query, RerankConfig())
        assert detail is not None and set(detail["patch"]) == {true_id, other}
        wins += out.card_ids[0] == true_id
        # the contest's best gets the contest's best embedding score (from the catalog rows); the loser drops
        # by its patch deficit
        assert out.scores[0] == pytest.approx(0.90)
        assert out.card_ids[:2] in ([true_id, other], [other, true_id], [true_id, "base1-5"], [other, "base1-5"])
        # other illustrations keep their places in the list the server gets
        assert set(out.card_ids) == {true_id, other, "base1-5", "other-1"}
    assert wins == 6


def test_an_embedding_that_ranks_another_printing_first_leaves_the_verdict_tied(contest):
    """The patches read the card's number right, but the embedding puts the other printing ahead by 0.02: the
    verdict is disputed, the two best are left tied (margin 0: never accepted); when the embedding agrees or
    the rule is off (dispute None), the patches' margin stands."""
    from device.vision.decision import unreadable_contest

    printings, ids, arrays = contest
    rp = Reprints(arrays, ids)
    query = np.array([1.0, 0, 0, 0], np.float32)

    def rows(cos: dict[str, float]) -> np.ndarray:
        m = np.tile(np.array([0.5, np.sqrt(0.75), 0, 0], np.float32), (len(ids), 1))
        for cid, c in cos.items():
            m[ids.index(cid)] = [c, np.sqrt(1 - c * c), 0, 0]
        return m

    frame, quad = capture(printings["sv3-66"], np.random.default_rng(5))
    m = Match(["sv3-211", "sv3-66", "base1-5"], [0.92, 0.90, 0.89])
    against = rows({"sv3-211": 0.92, "sv3-66": 0.90})
    out, detail = rp.rerank(m, frame, quad, against, query, RerankConfig())
    assert detail["disputed"] and out.contest and out.margin == pytest.approx(0.0)
    assert out.card_ids[:2] == ["sv3-66", "sv3-211"]  # the patches' choice stays first, tied
    assert unreadable_contest(out.contest, out.margin, 370.0, 120.0)
    # the same card without the rule: the patches' verdict for sv3-66, with a margin
    out, detail = rp.rerank(m, frame, quad, against, query, RerankConfig(dispute=None))
    assert not detail["disputed"] and out.card_ids[0] == "sv3-66" and out.margin > 0.005
    # an embedding that agrees with the patches (or leads by less than dispute) disputes nothing
    for cos in ({"sv3-211": 0.90, "sv3-66": 0.92}, {"sv3-211": 0.903, "sv3-66": 0.90}):
        out, detail = rp.rerank(m, frame, quad, rows(cos), query, RerankConfig())
        assert not detail["disputed"] and out.card_ids[0] == "sv3-66" and out.margin > 0.005


def _grown_down(quad: np.ndarray, frac: float) -> np.ndarray:
    """The quad with its bottom side moved out by ``frac`` of its height: the outline of a card lying on another
    whose strip shows below it (the detector outlines both as one)."""
    q = quad.copy()
    q[2] += (quad[2] - quad[1]) * frac
    q[3] += (quad[3] - quad[0]) * frac
    return q


@pytest.mark.parametrize("true_id", ["sv3-66", "sv3-211"])
def test_patches_not_found_where_the_quad_put_them_are_looked_for_again_wider(contest, true_id):
    """A quad that took in a strip of the card below (7 % of a height): the numbers sit ≈ 30 px above where the
    quad says, beyond ``search``. The first read fits poorly; located again within ``wide_search`` the patches
    fit and name the card — without the second look (``min_fit`` 0) the fit stays low."""
    printings, ids, arrays = contest
    rp = Reprints(arrays, ids)
    other = "sv3-211" if true_id == "sv3-66" else "sv3-66"
    matrix = np.tile(np.array([0.9, np.sqrt(1 - 0.81), 0, 0], np.float32), (len(ids), 1))
    query = np.array([1.0, 0, 0, 0], np.float32)
    rng = np.random.default_rng(11)
    for _ in range(3):
        frame, quad = capture(printings[true_id], rng, corner_error=2.0)
        quad = _grown_down(quad, 0.07)
        m = Match([other, true_id, "base1-5"], [0.90, 0.90, 0.89])
        first, _ = rp.rerank(m, frame, quad, matrix, query, RerankConfig(min_fit=0.0))
        assert first.patch_fit < 0.6
        out, detail = rp.rerank(m, frame, quad, matrix, query, RerankConfig(min_fit=0.6))
        assert out.patch_fit >= 0.6 and not detail["unfound"]
        assert out.card_ids[0] == true_id and out.margin > 0.005


def test_a_verdict_read_off_patches_not_found_on_the_card_is_left_tied(contest):
    """The card's footer is covered (a thumb over the number): nothing the patches look for is on the card
    within the wide search either. Its verdict is left tied — never accepted — though its order stays."""
    from device.vision.decision import unreadable_contest

    printings, ids, arrays = contest
    rp = Reprints(arrays, ids)
    matrix = np.tile(np.array([0.9, np.sqrt(1 - 0.81), 0, 0], np.float32), (len(ids), 1))
    query = np.array([1.0, 0, 0, 0], np.float32)
    card = printings["sv3-66"].copy()
    # the footer under a thumb: skin, soft and mottled
    thumb = np.full(card[445:].shape, (150, 120, 110), np.uint8)
    card[445:] = thumb + np.random.default_rng(2).integers(0, 30, thumb.shape).astype(np.uint8)
    frame, quad = capture(card, np.random.default_rng(4))
    m = Match(["sv3-211", "sv3-66", "base1-5"], [0.90, 0.90, 0.89])
    out, detail = rp.rerank(m, frame, quad, matrix, query, RerankConfig(min_fit=0.6))
    assert detail["unfound"] and out.patch_fit < 0.6
    assert out.contest and out.margin == pytest.approx(0.0)
    assert unreadable_contest(out.contest, out.margin, 370.0, 120.0)
    # the readable card: found, with a margin
    frame, quad = capture(printings["sv3-66"], np.random.default_rng(4))
    out, detail = rp.rerank(m, frame, quad, matrix, query, RerankConfig(min_fit=0.6))
    assert not detail["unfound"] and out.patch_fit >= 0.6 and out.card_ids[0] == "sv3-66" and out.margin > 0.005


def test_no_contest_leaves_the_match_alone(contest):
    _, ids, arrays = contest
    rp = Reprints(arrays, ids)
    m = Match(["other-1", "base1-5"], [0.8, 0.5])
    out, detail = rp.rerank(m, np.zeros((480, 640, 3), np.uint8), np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32),
                            np.eye(len(ids), 4, dtype=np.float32), np.ones(4, np.float32))
    assert detail is None and out is m


def test_broken_patch_file_is_refused_with_its_name(contest, tmp_path):
    _, ids, arrays = contest
    (tmp_path / "catalog").mkdir()
    assert Reprints.load(tmp_path, ids) is None  # an older bundle without the file: embedding ranking alone
    bad = dict(arrays)
    del bad["residual"]
    np.savez(tmp_path / FILE, **bad)
    with pytest.raises(ValueError, match="reprints.npz: missing array 'residual'"):
        Reprints.load(tmp_path, ids)
    with pytest.raises(ValueError, match="beyond the catalog"):
        Reprints(arrays, ids[:1])


@pytest.mark.skipif(not (BUNDLE / FILE).is_file(), reason="demo bundle without reprint patches")
def test_demo_bundle_carries_patches_and_the_settings_they_were_calibrated_with():
    from device.bundle import parse_manifest
    from device.vision.pipeline import VisionPipeline

    man = parse_manifest((BUNDLE / "manifest.json").read_bytes())
    assert FILE in man.files
    cfg = RerankConfig(**man.thresholds.model_extra["reprints"])
    pipe = VisionPipeline.from_bundle(BUNDLE, 1)
    assert pipe.reprints is not None and len(pipe.reprints) > 1000 and pipe.rerank == cfg
    assert (BUNDLE / FILE).stat().st_size <= 8 * 1024 * 1024


def test_quad_gap():
    from device.vision.geometry import quad_gap

    def rect(x0, y0, x1, y1):
        return np.float32([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])

    a = rect(0, 0, 100, 140)
    assert quad_gap(a, rect(103, 0, 203, 140)) == pytest.approx(3.0)
    assert quad_gap(a, rect(90, 10, 190, 150)) == 0.0  # overlapping
    assert quad_gap(a, rect(110, 150, 210, 290)) == pytest.approx(np.hypot(10, 10), rel=1e-4)  # corner to corner


def test_a_reprint_verdict_on_a_card_against_another_is_not_accepted(shared_data):
    """Two rendered cards whose printings are decided by a reprint contest (Base Set and Base Set 2 share the
    illustrations): 60 px apart both are accepted; laid edge to edge (2 px) both are still named right but flagged
    ``touching`` and left ambiguous — the neighbour's edge can pull a quad's corners a few pixels, which decides
    patches that small (``VisionPipeline._touching``)."""
    from device.vision.pipeline import VisionPipeline
    from models.synth.catalog import load_cards
    from models.synth.render import render_card

    pipe = VisionPipeline.from_bundle(BUNDLE, 1)
    cards, set_index = load_cards(shared_data / "pokemon-tcg-data", shared_data / "PTCGextension/cards",
                                  sets=["base1", "base4"])
    by_id = {c.id: c for c in cards}
    ids = ["base1-7", "base1-9"]
    faces = [cv2.resize(render_card(by_id[c], set_index, (240, 336)), (200, 280), interpolation=cv2.INTER_AREA)
             for c in ids]
    rng = np.random.default_rng(3)
    table = cv2.GaussianBlur(rng.integers(60, 120, (480, 640, 3), dtype=np.uint8), (0, 0), 3)
    for gap, decision, flag in ((60, "accept", None), (2, "ambiguous", "touching")):
        frame = table.copy()
        for k, f in enumerate(faces):
            x = 100 + k * (200 + gap)
            frame[100:380, x:x + 200] = f
        cards_read = sorted(pipe.process(frame).cards, key=lambda c: c.quad[:, 0].mean())
        assert [c.card_id for c in cards_read] == ids
        assert all(c.reprint_contest and c.decision == decision and c.quality_flag == flag for c in cards_read), gap


def test_the_dispute_study_counts_agreements_and_gaps():
    """``models.eval.disputes.table``: per capture set, contests where embedding and patches agree or not, who was
    right, accepts and wrong ones; the disagreements by embedding gap. A card outside the contenders is left out."""
    from models.eval.disputes import table

    def row(s, truth, emb, patch, decision="ambiguous"):
        return {"set": s, "truth": truth, "emb": emb, "patch": patch, "decision": decision}

    rows = [row("box", "a", {"a": 0.9, "b": 0.89}, {"a": 0.7, "b": 0.5}, "accept"),  # agree, right, accepted
            row("box", "a", {"a": 0.9, "b": 0.885}, {"a": 0.5, "b": 0.7}, "accept"),  # disputed by 0.015, wrong
            row("row", "b", {"a": 0.9, "b": 0.898}, {"a": 0.5, "b": 0.7}),  # gap 0.002, patches right
            row("row", "z", {"a": 0.9, "b": 0.8}, {"a": 0.5, "b": 0.7}),  # the card is no contender
            row("grid", "a", {"a": 0.9, "b": 0.6}, {"a": 0.5, "b": 0.7})]  # the embedding far ahead, patches wrong
    t = table(rows)
    assert t["sets"]["box agree"] == {"reads": 1, "patches_right": 1, "embedding_right": 1, "accepted": 1,
                                      "accepted_wrong": 0}
    assert t["sets"]["box disagree"]["accepted_wrong"] == 1 and t["sets"]["box disagree"]["embedding_right"] == 1
    assert t["gaps"]["0.010-0.020"] == {"reads": 1, "embedding_right": 1, "patches_right": 0, "accepted": 1,
                                        "accepted_wrong": 1}
    assert t["gaps"]["0.000-0.005"]["patches_right"] == 1 and sum(g["reads"] for g in t["gaps"].values()) == 3
    # the patches' order alone: 2 of the 4 reads right; weighing the embedding in (k = 0.5) rights the last one
    assert t["weighted_top1"]["0.0"] == pytest.approx(0.5) and t["weighted_top1"]["0.5"] == pytest.approx(0.75)


def test_a_card_slid_onto_another_is_read_where_its_number_is(shared_data):
    """Bench stack seed 5009 drawn again: sv7-110 (Orthworm ex; our render shares its art with sv7-162, the
    collector number tells them apart) lying on pop9-6, whose edge shows beside it. The detector outlines both as
    one, and where that outline puts the number the patches fit neither printing: read so, the card was sv7-162
    six times of six. Looked for again within ``wide_search`` they name sv7-110; where they still fit poorly the
    verdict is tied, so the other printing is never accepted."""
    from device.vision.pipeline import VisionPipeline
    from models.synth.catalog import load_cards
    from models.synth.render import render_card

    pipe = VisionPipeline.from_bundle(BUNDLE, 1)
    cards, set_index = load_cards(shared_data / "pokemon-tcg-data", shared_data / "PTCGextension/cards",
                                  sets=["sv7", "pop9"])
    by_id = {c.id: c for c in cards}
    faces = {c: render_card(by_id[c], set_index, (360, 504)) for c in ("pop9-6", "sv7-110")}

    def lay(frame: np.ndarray, face: np.ndarray, quad: np.ndarray) -> None:
        h, w = face.shape[:2]
        m = cv2.getPerspectiveTransform(np.float32([[0, 0], [w, 0], [w, h], [0, h]]), quad)
        inside = cv2.warpPerspective(np.full((h, w), 255, np.uint8), m, (640, 480)) > 127
        frame[inside] = cv2.warpPerspective(face, m, (640, 480))[inside]

    below = np.float32([[185, 58], [442, 62], [437, 422], [179, 418]])  # the corners of seed 5009, frame 28
    top = np.float32([[207, 40], [463, 64], [429, 423], [173, 398]])
    rng = np.random.default_rng(0)
    before, after = [], []
    for _ in range(6):
        frame = cv2.GaussianBlur(rng.integers(30, 90, (480, 640, 3), dtype=np.uint8), (0, 0), 3)
        lay(frame, faces["pop9-6"], below + rng.uniform(-6, 6, 2).astype(np.float32))
        lay(frame, faces["sv7-110"], top)
        frame = np.clip(cv2.GaussianBlur(frame, (0, 0), 0.8) + rng.normal(0, 3, frame.shape), 0, 255).astype(np.uint8)
        for cfg, out in ((RerankConfig(min_fit=0.0), before), (RerankConfig(), after)):
            pipe.rerank = cfg
            (card,) = pipe.process(frame).cards
            out.append(card)
    assert all(c.card_id == "sv7-162" and c.patch_fit < 0.65 for c in before)  # the old read: the number not found
    assert sum(c.card_id == "sv7-110" for c in after) >= 5
    assert not any(c.card_id == "sv7-162" and c.decision == "accept" for c in after)
    assert all(c.patch_fit >= 0.75 or c.margin == 0.0 for c in after)
    # what `scanemon-device identify --json` prints says why a contest went to the server
    contests = [c for c in after if c.reprint_contest]
    assert contests and all(c.to_json()["patch_fit"] == round(c.patch_fit, 4) for c in contests)
