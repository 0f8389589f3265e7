"""The device's calibrated confidence (device.vision.confidence) and its accept rule (models.confidence)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from device.vision.confidence import FEATURES, ConfidenceModel, features
from device.vision.decision import Thresholds, decide
from device.vision.matcher import Match

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "models" / "bundles" / "demo"


def synthetic_records(n: int, seed: int) -> list[dict]:
    """Cards whose top-1 is right with a probability that rises with score, margin and sharpness (logistic in
    them, with the margin's log), contests' patch verdicts weighing less than embedding gaps: what the model has
    to learn."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        contest = rng.random() < 0.3
        score, margin = rng.uniform(0.4, 1.0), rng.exponential(0.03)
        sharp = rng.uniform(20, 2000)
        z = (25 * (score - 0.6) + (60 if contest else 150) * margin + 1.5 * math.log(max(margin, 1e-4))
             + 0.8 * math.log1p(sharp))
        right = rng.random() < 1 / (1 + math.exp(-z))
        out.append({"card_id": "a", "top1": "a" if right else "b", "score": score, "margin": margin,
                    "reprint_contest": contest, "height": rng.uniform(150, 400), "sharpness": sharp, "glare": 0.0})
    return out


def test_fit_is_calibrated_and_ranks_better_than_the_score():
    from models.confidence import feature_rows, fit

    train, test = synthetic_records(6000, 0), synthetic_records(4000, 1)
    y = np.array([r["top1"] == r["card_id"] for r in train], float)
    model = fit(feature_rows(train), y)
    p = model(feature_rows(test))
    yt = np.array([r["top1"] == r["card_id"] for r in test])
    for lo, hi in ((0.2, 0.5), (0.5, 0.8), (0.8, 0.95)):  # calibrated: predicted ≈ observed per bin
        m = (p >= lo) & (p < hi)
        assert m.sum() > 100 and abs(p[m].mean() - yt[m].mean()) < 0.06
    # the confidence's top quarter holds fewer wrong cards than the score's top quarter
    q = len(test) // 4
    score = np.array([r["score"] for r in test])
    assert (~yt[np.argsort(-p)[:q]]).sum() < (~yt[np.argsort(-score)[:q]]).sum()


def test_rule_meets_the_target_and_keeps_out_confident_negatives():
    from models.confidence import calibrate_rule

    cards = synthetic_records(8000, 2)
    # non-catalog objects: matched one card far better than the rest (a sure match by margin) at a low score
    negs = [{"score": 0.55 + 0.01 * i, "margin": 0.2, "reprint_contest": False, "height": 300.0, "sharpness": 500.0,
             "glare": 0.0} for i in range(5)]
    r = calibrate_rule(cards, negs, 0.999)
    model = ConfidenceModel.from_manifest({"thresholds": {"confidence": r["confidence"]}})
    assert r["confidence_min_score"] > 0.59  # above every negative's score: their confidence alone is high
    acc = [model(features(c["score"], c["margin"], c["reprint_contest"], c["height"], c["sharpness"], c["glare"]))
           >= r["accept_confidence"] and c["score"] >= r["confidence_min_score"] for c in cards]
    acc = np.array(acc)
    right = np.array([c["top1"] == c["card_id"] for c in cards])
    assert acc.sum() > 0.3 * len(cards) and (acc & ~right).sum() <= 0.001 * acc.sum()
    assert r["calibrated_coverage"] == round(acc.mean(), 4)


def test_the_threshold_is_chosen_over_the_cards_the_device_may_accept():
    """Contest reads on small cards and tied contests are never accepted (``decide``): wrong ones among them must
    not raise the confidence threshold for every other card, and they count as not accepted."""
    from models.confidence import calibrate_rule, eligible

    cards = synthetic_records(8000, 2)
    # wrong contest reads off small cards that look like sure ones: copies of the surest right contests
    sure = sorted((c for c in cards if c["reprint_contest"] and c["top1"] == c["card_id"]), key=lambda c: -c["margin"])
    small = [dict(c, top1="b", height=155.0) for c in sure[:12]]
    tie = dict(small[0], top1="b", height=300.0, margin=0.0)
    assert eligible(small + [tie], 160.0).sum() == 0 and eligible(small + [tie]).tolist() == [True] * 12 + [False]
    both = calibrate_rule(cards + small + [tie], [], 0.999)
    ruled = calibrate_rule(cards + small + [tie], [], 0.999, min_contest_height=160.0)
    assert ruled["accept_confidence"] < both["accept_confidence"]


def test_manifest_round_trip_and_broken_models_are_refused():
    m = ConfidenceModel(tuple(0.1 * i for i in range(len(FEATURES))), -1.0, (0.0,) * len(FEATURES),
                        (1.0,) * len(FEATURES))
    back = ConfidenceModel.from_manifest({"thresholds": {"confidence": m.to_manifest()}})
    x = features(0.8, 0.02, False, 300, 400, 0.0)
    assert back(x) == pytest.approx(m(x), abs=1e-6) and 0 < m(x) < 1
    assert ConfidenceModel.from_manifest({"thresholds": {}}) is None
    bad = m.to_manifest() | {"features": ["score"]}
    with pytest.raises(ValueError, match="features"):
        ConfidenceModel.from_manifest({"thresholds": {"confidence": bad}})
    with pytest.raises(ValueError, match="expected"):
        ConfidenceModel((1.0,), 0.0, (0.0,), (1.0,))
    with pytest.raises(ValueError, match="scale"):
        ConfidenceModel((0.0,) * len(FEATURES), 0.0, (0.0,) * len(FEATURES), (0.0,) * len(FEATURES))
    # the bundle manifest refuses a broken model and an accept_confidence without one
    from device.bundle import Thresholds as ManifestThresholds

    with pytest.raises(ValueError, match="confidence"):
        ManifestThresholds(accept_score=0.6, accept_margin=0.01, no_card_score=0.4, accept_confidence=0.9)
    with pytest.raises(ValueError, match="features"):
        ManifestThresholds(accept_score=0.6, accept_margin=0.01, no_card_score=0.4, confidence=bad)


def test_decide_on_confidence():
    th = Thresholds(accept_score=0.8, accept_margin=0.05, no_card_score=0.4, accept_confidence=0.95,
                    confidence_min_score=0.6)
    low_margin = Match(["a", "b"], [0.7, 0.69])  # the threshold rule would not accept it
    assert decide(low_margin, th, confidence=0.97) == "accept"
    assert decide(low_margin, th, confidence=0.9) == "ambiguous"
    assert decide(Match(["a", "b"], [0.55, 0.2]), th, confidence=0.99) == "ambiguous"  # below the score floor
    assert decide(low_margin, th, confidence=0.99, soft=True) == "ambiguous"
    assert decide(Match(["a", "b"], [0.3, 0.2]), th, confidence=0.99) == "no_card"
    assert decide(low_margin, th) == "ambiguous"  # no confidence given: the thresholds decide
    # a soft gate failure is never accepted, unless the bundle's confidence rule was calibrated with such cards
    assert decide(low_margin, th, confidence=0.99, flag="glare") == "ambiguous"
    glare_ok = Thresholds(0.8, 0.05, 0.4, accept_confidence=0.95, confidence_min_score=0.6, accept_flags=("glare",))
    assert decide(low_margin, glare_ok, confidence=0.99, flag="glare") == "accept"
    assert decide(low_margin, glare_ok, confidence=0.9, flag="glare") == "ambiguous"
    assert decide(low_margin, glare_ok, confidence=0.99, flag="too_blurry") == "ambiguous"
    assert decide(low_margin, glare_ok, confidence=0.99, soft=True) == "ambiguous"  # a flag not named: never


def test_a_tied_reprint_contest_is_never_accepted():
    """Margin 0 in a contest: the patch boxes and the pixels where the two best printings differ spoke for different
    printings (``Reprints.rerank``), so the order left is the embedding's — no verdict, however confident."""
    th = Thresholds(accept_score=0.8, accept_margin=0.05, no_card_score=0.4, accept_confidence=0.95,
                    confidence_min_score=0.6, accept_reprint_margin=0.0)
    tied = Match(["a-1", "b-2", "c"], [0.95, 0.95, 0.6], contest=True)
    assert decide(tied, th, confidence=0.999) == "ambiguous"
    assert decide(tied, th) == "ambiguous"  # the threshold rule too, whatever its reprint margin
    decided = Match(["a-1", "b-2", "c"], [0.95, 0.94, 0.6], contest=True)
    assert decide(decided, th, confidence=0.999) == "accept"
    # a tie between two different illustrations is an embedding gap of 0: the confidence judges it as ever
    assert decide(Match(["a", "b"], [0.9, 0.9]), th, confidence=0.999) == "accept"


def test_a_reprint_verdict_on_a_small_card_is_not_accepted_by_the_confidence_rule_either():
    th = Thresholds(accept_score=0.8, accept_margin=0.05, no_card_score=0.4, accept_confidence=0.95,
                    confidence_min_score=0.6, accept_reprint_margin=0.01, reprint_min_height=160.0)
    contest = Match(["a-1", "b-2", "c"], [0.95, 0.9, 0.6], contest=True)
    assert decide(contest, th, height=150.0, confidence=0.999) == "ambiguous"
    assert decide(contest, th, height=170.0, confidence=0.999) == "accept"
    assert decide(contest, th, confidence=0.999) == "accept"  # no height given: large enough
    # an embedding gap on a small card is the confidence's to judge (it has the height as a feature)
    assert decide(Match(["a", "b"], [0.95, 0.9]), th, height=150.0, confidence=0.999) == "accept"


def test_demo_bundle_reports_a_confidence_that_agrees_with_its_decision():
    """The committed bundle carries a model; the pipeline's cards carry its confidence (CLI JSON too)."""
    import cv2

    from device.bundle import golden_expected
    from device.vision.pipeline import VisionPipeline

    man = json.loads((BUNDLE / "manifest.json").read_text())
    th = man["thresholds"]
    if "accept_confidence" not in th:
        pytest.skip("the demo bundle predates the confidence model")
    pipe = VisionPipeline.from_bundle(BUNDLE, num_threads=1)
    seen = 0
    for name, cid in golden_expected(BUNDLE).items():
        res = pipe.process(cv2.imread(str(BUNDLE / "golden" / name)))
        for c in res.cards:
            assert c.confidence is not None and 0.0 <= c.confidence <= 1.0
            assert c.to_json()["confidence"] == round(c.confidence, 4)
            if c.decision == "accept":
                assert c.confidence >= th["accept_confidence"] and c.score >= th["confidence_min_score"]
            seen += 1
    assert seen >= 4


def test_glare_never_raises_the_confidence():
    """Where glared captures happen to be easy ones, an unconstrained fit learns that glare helps; the fit holds
    such a weight at 0 (models.confidence.SIGNS)."""
    from models.confidence import feature_rows, fit

    recs = synthetic_records(4000, 3)
    rng = np.random.default_rng(4)
    for r in recs:  # glare on right cards only: a spurious cue
        r["glare"] = float(rng.uniform(0.2, 0.6)) if r["top1"] == r["card_id"] and rng.random() < 0.3 else 0.0
    x = feature_rows(recs)
    y = np.array([r["top1"] == r["card_id"] for r in recs], float)
    model = fit(x, y)
    assert model.weights[FEATURES.index("glare")] == 0.0
    base = features(0.8, 0.02, False, 300, 400, 0.0)
    glared = features(0.8, 0.02, False, 300, 400, 0.6)
    assert model(glared) <= model(base) + 1e-12


def test_broken_records_and_unknown_flags_are_refused_with_the_line(tmp_path):
    from device.bundle import Thresholds as ManifestThresholds
    from models.confidence import load_records

    f = tmp_path / "records.jsonl"
    f.write_text('{"kind": "card", "score": 0.9}\n{not json\n')
    with pytest.raises(ValueError, match="line 2"):
        load_records(f)
    with pytest.raises(ValueError, match="accept_flags: fingers"):
        ManifestThresholds(accept_score=0.6, accept_margin=0.01, no_card_score=0.4, accept_flags=["glare", "fingers"])


def test_replay_decides_evaluation_records_again_with_a_bundles_rule(tmp_path):
    """``models.confidence --replay``: each identified card decided again by ``decide`` with the bundle's
    thresholds and model — the recorded decisions when the bundle is the one that wrote them (a low_score card is
    the pipeline's, sent to the server), another count with stricter thresholds."""
    from models.confidence import main, replay

    man = json.loads((BUNDLE / "manifest.json").read_text())
    sure = {"score": 0.97, "margin": 0.3, "reprint_contest": False, "height": 380.0, "sharpness": 900.0, "glare": 0.0}
    recs = [
        {"set": "box", "card_id": "a", "top1": "a", "identified": True, "decision": "accept"} | sure,
        {"set": "box", "card_id": "b", "top1": "c", "identified": True, "decision": "accept"} | sure,
        # a tied reprint contest and a confident detection that matched nothing: neither is accepted
        {"set": "box", "card_id": "d", "top1": "d", "identified": True, "decision": "ambiguous"} | sure | {
            "reprint_contest": True, "margin": 0.0},
        {"set": "box", "card_id": "e", "top1": "f", "identified": True, "decision": "ambiguous"} | sure | {
            "score": 0.3, "margin": 0.01, "quality_flag": "low_score"},
        {"set": "row", "card_id": "g", "found": False, "identified": False},
    ]
    out = replay(recs, man)
    assert out["box"] == {"cards": 4, "accepted": 2, "wrong": 1, "wrong_contests": 0, "changed": 0,
                          "accept_rate": 0.5, "precision": 0.5}
    assert out["row"]["cards"] == 1 and out["row"]["accepted"] == 0 and out["row"]["precision"] is None
    strict = json.loads(json.dumps(man))
    strict["thresholds"]["confidence_min_score"] = 0.99  # nothing clears the score floor
    assert replay(recs, strict)["box"]["accepted"] == 0 and replay(recs, strict)["box"]["changed"] == 2
    # the command line: evaluation records in, one summary per set out
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main(["--records", str(path), "--replay", str(BUNDLE)]) == 0
