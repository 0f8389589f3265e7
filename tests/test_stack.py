"""Stack logic: new card vs the same card still lying there; N copies count N; a card slid on top counts.

The tracker is fed ground-truth observations from simulated counter-scan sequences
(``models.synth.stack``), so these tests check the counting rules, not the identifier (the end-to-end count
with the real models is measured by ``tests/bench/bench_device.py``).
"""

from __future__ import annotations

import numpy as np
import pytest

from device.vision.stack import Observation, SeenCard, StackConfig, StackTracker


def _quad(cx=320.0, cy=240.0, h=360.0, dx=0.0, dy=0.0):
    w = h * 63 / 88
    x0, y0 = cx - w / 2 + dx, cy - h / 2 + dy
    return np.array([[x0, y0], [x0 + w, y0], [x0 + w, y0 + h], [x0, y0 + h]], np.float32)


def feed(tracker: StackTracker, frames: list[Observation]) -> list:
    events = []
    for f in frames:
        events += tracker.update(f)
    return events


def held(card_id: str, n: int, jitter: float = 1.5, seed: int = 0) -> list[Observation]:
    rng = np.random.default_rng(seed)
    return [Observation([SeenCard(card_id, _quad(dx=rng.normal(0, jitter), dy=rng.normal(0, jitter)))]) for _ in range(n)]


def entering(under: str | None = None) -> list[Observation]:
    """A card sliding in from the right: displaced, rejected by the gate (motion blur / out of view)."""
    out = []
    for f in (0.4, 0.2):
        others = [SeenCard(None, _quad(dx=640 * f))]
        cards = [SeenCard(under, _quad())] if under else []
        out.append(Observation(cards, others))
    return out


def empty(n: int = 3) -> list[Observation]:
    return [Observation() for _ in range(n)]


def test_same_card_lying_there_counts_once():
    t = StackTracker()
    frames = empty() + entering() + held("sv1-1", 6)
    # glare / blur frames and a hand passing over do not make it a new card
    frames += [Observation([], [SeenCard(None, _quad())])] * 2 + held("sv1-1", 8, seed=1)
    frames += [Observation([], [SeenCard(None, _quad(dx=15))])] + held("sv1-1", 5, seed=2)
    feed(t, frames)
    assert t.counts == {"sv1-1": 1}


def test_n_copies_one_after_another_count_n():
    t = StackTracker()
    frames = empty()
    for k in range(4):
        frames += entering() + held("sv1-7", 5, seed=k) + empty(2)
    ev = feed(t, frames)
    assert t.counts == {"sv1-7": 4}
    assert [e.kind for e in ev if e.kind != "removed"] == ["placed"] * 4


def test_card_slid_on_top_counts_and_same_card_on_top_too():
    t = StackTracker()
    frames = empty() + entering() + held("sv1-1", 5)
    frames += entering(under="sv1-1") + held("sv1-2", 5)          # another card slid on top
    frames += entering(under="sv1-2") + held("sv1-2", 5, seed=3)  # a copy of the same card slid on top
    ev = feed(t, frames)
    assert t.counts == {"sv1-1": 1, "sv1-2": 2}
    assert [e.kind for e in ev] == ["placed", "slid_on_top", "slid_on_top"]


def test_taking_the_top_card_off_reveals_without_counting():
    t = StackTracker()
    frames = empty() + entering() + held("sv1-1", 5) + entering(under="sv1-1") + held("sv1-2", 5)
    # top card slides away (displacement grows), the one below shows again
    frames += [Observation([SeenCard("sv1-1", _quad())], [SeenCard(None, _quad(dx=640 * f))]) for f in (0.2, 0.4)]
    frames += held("sv1-1", 5, seed=4)
    feed(t, frames)
    assert t.counts == {"sv1-1": 1, "sv1-2": 1}


def test_identity_flicker_counts_once_with_the_majority_identity():
    """A card lying still whose reading flickers between look-alike reprints is one card, not zero or two."""
    t = StackTracker(StackConfig(stable_frames=3))
    frames = empty()
    for k in range(8):
        frames += held("sv1-1" if k % 3 == 2 else "sv1-2", 1, seed=k)
    feed(t, frames)
    assert t.counts == {"sv1-2": 1}


def test_moving_card_never_counts():
    t = StackTracker(StackConfig(stable_frames=3))
    frames = empty()
    for k in range(8):  # slides across the mat: never at the same place twice
        frames.append(Observation([SeenCard("sv1-1", _quad(dx=-200 + 60 * k))]))
    feed(t, frames)
    assert t.counts == {}


def _oracle_observations(seq, size=(640, 480)) -> list[Observation]:
    w, h = size
    out = []
    for _, label in seq.frames():
        cards, others = [], []
        for c in label["cards"]:
            q = np.array(c["quad"], np.float32)
            inside = (q[:, 0] >= 0).all() and (q[:, 1] >= 0).all() and (q[:, 0] < w).all() and (q[:, 1] < h).all()
            if c["visible"] >= 0.9 and inside and label["phase"] == "held":
                cards.append(SeenCard(c["card_id"], q))
            elif c["visible"] > 0.05:
                others.append(SeenCard(None, q))  # moving (blurred) or covered: the gate would reject it
        out.append(Observation(cards, others))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_simulated_sequences_counted_exactly(seed):
    from models.synth.stack import StackConfig as SimConfig, simulate_stack

    rng = np.random.default_rng(seed)
    images = {f"t{seed}-{i}": rng.integers(0, 255, (84, 60, 3), dtype=np.uint8) for i in range(5)}
    cfg = SimConfig(p_same_again=0.35, p_slide_on_top=0.35)
    seq = simulate_stack(images, 12, rng, cfg)
    t = StackTracker()
    feed(t, _oracle_observations(seq))
    assert t.counts == seq.counts


def test_card_slid_on_top_at_the_same_place_without_seen_motion_counts():
    """The new card covers the old one exactly and its slide was not seen: a sustained identity change."""
    t = StackTracker()
    feed(t, empty() + entering() + held("sv1-1", 5) + held("sv1-2", 5, seed=7))
    assert t.counts == {"sv1-1": 1, "sv1-2": 1}


def test_two_frame_misread_is_not_a_new_card():
    t = StackTracker()
    feed(t, empty() + entering() + held("sv1-1", 5) + held("sv1-9", 2, seed=3) + held("sv1-1", 5, seed=4))
    assert t.counts == {"sv1-1": 1}


def test_false_detection_elsewhere_does_not_keep_the_stack():
    """A printed playmat zone detected far from the card must not hide that the mat was cleared."""
    t = StackTracker()
    ghost = SeenCard(None, _quad(cx=80, cy=80, h=120))
    frames = empty() + entering() + held("sv1-1", 5)
    frames += [Observation([], [ghost]) for _ in range(3)]  # card taken away, ghost stays
    frames += entering() + held("sv1-1", 5, seed=5)
    feed(t, frames)
    assert t.counts == {"sv1-1": 2}


# ---------------------------------------------------------------------------- soft quality-gate failures


class _Result:
    """What the tracker reads from a pipeline CardResult: its score (and, for the appliance, its flag)."""

    def __init__(self, score: float, flag: str | None = None, decision: str = "accept"):
        self.score, self.quality_flag, self.decision = score, flag, decision


def held_flagged(card_id: str, n: int, flag: str | None = "glare", score: float = 0.8, seed: int = 0) -> list[Observation]:
    """A card lying still, identified in every frame; ``flag``: the soft gate failure it was identified despite."""
    rng = np.random.default_rng(seed)
    return [Observation([SeenCard(card_id, _quad(dx=rng.normal(0, 1.5), dy=rng.normal(0, 1.5)), _Result(score, flag), flag)])
            for _ in range(n)]


def test_card_with_glare_in_every_frame_counts_once():
    t = StackTracker()
    ev = feed(t, empty() + entering() + held_flagged("sv1-1", 12) + empty(3))
    placed = [e for e in ev if e.kind == "placed"]
    assert t.counts == {"sv1-1": 1} and len(placed) == 1
    assert placed[0].card.flag == "glare"


def test_glared_frames_wait_for_a_clean_frame_and_prefer_it():
    """Glare first, then the card is nudged and a clean frame comes: one count, recorded from the clean frame
    (its identity wins even though the glared frames read a look-alike)."""
    t = StackTracker(StackConfig(stable_frames=3, soft_patience_frames=3))
    frames = empty() + entering() + held_flagged("sv1-9", 4, score=0.9) + held_flagged("sv1-1", 3, flag=None, score=0.7)
    ev = feed(t, frames + held_flagged("sv1-1", 4, flag=None, seed=2))
    placed = [e for e in ev if e.kind == "placed"]
    assert t.counts == {"sv1-1": 1} and len(placed) == 1
    assert placed[0].card.flag is None and placed[0].card.card_id == "sv1-1"


def test_glared_card_taken_away_before_the_patience_ends_still_counts_once():
    t = StackTracker(StackConfig(stable_frames=3, soft_patience_frames=5))
    ev = feed(t, empty() + entering() + held_flagged("sv1-1", 4) + empty(3) + entering() + held("sv1-2", 5))
    assert t.counts == {"sv1-1": 1, "sv1-2": 1}
    assert [e.kind for e in ev if e.kind != "removed"] == ["placed", "placed"]


def test_glare_coming_and_going_on_a_lying_card_does_not_recount():
    t = StackTracker()
    frames = empty() + entering() + held("sv1-1", 5)
    for k in range(3):  # the light changes: glared frames, then clean ones again, same place
        frames += held_flagged("sv1-1", 7, seed=10 + k) + held("sv1-1", 4, seed=20 + k)
    feed(t, frames)
    assert t.counts == {"sv1-1": 1}


def test_copies_with_glare_count_n():
    t = StackTracker()
    frames = empty()
    for k in range(3):
        frames += entering() + held_flagged("sv1-7", 5, seed=k) + empty(2)
    feed(t, frames)
    assert t.counts == {"sv1-7": 3}


def test_observation_keeps_the_soft_flag_of_pipeline_cards():
    from device.vision.pipeline import CardResult, FrameResult

    c = CardResult(_quad(), "ambiguous", "sv1-1", 0.8, 0.1, [("sv1-1", 0.8)], None, {"glare": 0.5}, "glare")
    obs = Observation.from_frame_result(FrameResult([c], [], None, {}))
    assert [s.flag for s in obs.cards] == ["glare"] and obs.others == []


# ---------------------------------------------------------------------------- accepted vs ambiguous readings


def read(card_id: str, decision: str, confidence: float, seed: int) -> Observation:
    rng = np.random.default_rng(seed)
    r = _Result(confidence, None, decision)
    r.confidence = confidence
    return Observation([SeenCard(card_id, _quad(dx=rng.normal(0, 1.5), dy=rng.normal(0, 1.5)), r)])


def test_accepted_frames_outvote_repeated_ambiguous_misreadings():
    """The bench's stack seed 5009: a card held still read once as itself (accepted) and then, frame after frame,
    as its same-art reprint (ambiguous, for the server). The repeated misreading is one error seen several times,
    not several votes: the window waits for an accepted frame, whose identity counts and whose reading is recorded."""
    t = StackTracker(StackConfig(stable_frames=3, soft_patience_frames=3))
    frames = [read("sv7-162", "ambiguous", 0.9, i) for i in range(3)]  # still window: no accepted frame yet, waits
    frames += [read("sv7-110", "accept", 0.97, 3)] + [read("sv7-162", "ambiguous", 0.85, i) for i in range(4, 7)]
    ev = feed(t, empty() + entering() + frames + empty(3))
    placed = [e for e in ev if e.kind == "placed"]
    assert t.counts == {"sv7-110": 1} and len(placed) == 1
    assert placed[0].card.result.decision == "accept" and placed[0].card.result.confidence == 0.97


def test_a_card_only_ever_ambiguous_counts_once_by_its_votes():
    t = StackTracker(StackConfig(stable_frames=3, soft_patience_frames=3))
    frames = [read("sv7-162", "ambiguous", 0.6, 0), read("sv7-110", "ambiguous", 0.7, 1)]
    frames += [read("sv7-162", "ambiguous", 0.6, i) for i in range(2, 10)]
    ev = feed(t, empty() + entering() + frames + empty(3))
    placed = [e for e in ev if e.kind == "placed"]
    assert t.counts == {"sv7-162": 1} and len(placed) == 1 and placed[0].card.result.decision == "ambiguous"


# ---------------------------------------------------------------------------- what the detector makes of a slide


def merged(card_id: str | None, grow: float) -> Observation:
    """A copy sliding onto the resting card, detected with it as one outline ``grow``× as tall, its centre
    barely moved (0.07 of a height: below ``arrival_shift``), matching nothing (the device's low_score)."""
    q = _quad(h=360 * grow, dy=0.07 * 360)
    r = _Result(0.35, "low_score", "ambiguous")
    return Observation([SeenCard(card_id, q, r, "low_score")])


def test_a_copy_slid_onto_the_same_card_as_one_merged_outline_counts():
    """Simulated stack seeds 5014/5021/5039: the copy and the card under it merged into one detection whose
    centre moved less than arrival_shift; before, the copy was taken for the same card still lying there."""
    t = StackTracker()
    frames = empty() + entering() + held("sv4-203", 6)
    for k in range(2):  # two more copies, one after the other
        frames += [merged("sv1-128", 1.13), merged("sm1-137", 1.15)] + held("sv4-203", 6, seed=k + 1)
    feed(t, frames)
    assert t.counts == {"sv4-203": 3}


def test_a_merged_outline_that_grows_from_a_slightly_large_one_still_restarts_the_window():
    """Bench stack seed 5014 with bundle demo-12: the resting card's outline read 1.01× its area, then the copy
    sliding onto it merged into one 1.12× outline and went back to 1.02× — it crossed ``arrival_grow`` over the
    resting card both ways, but changed by less than 12 % from the frame before, so its frames continued the
    window already decided and the copy was never counted. An outline no bigger than the card lying still (≤ 1.06×) on the other side of the
    crossing now restarts the window too."""
    def outline(card_id: str | None, area: float, dy: float = 0.0, flag: str | None = None) -> Observation:
        q = _quad(h=360 * float(np.sqrt(area)), dy=dy * 360)
        r = _Result(0.35, flag, "ambiguous") if flag else None
        return Observation([SeenCard(card_id, q, r, flag)])

    t = StackTracker()
    frames = empty() + entering() + held("sv4-203", 6) + [outline("sv4-203", 1.02)]
    frames += [outline("sv4-203", 1.125, 0.03, "low_score"), outline("swsh6-205", 1.13, 0.03, "low_score")]
    frames += [outline("sv4-203", 1.02)] + held("sv4-203", 6, seed=1)  # and back: 1.13× → 1.02×, a ratio of 0.90
    feed(t, frames)
    assert t.counts == {"sv4-203": 2}


def test_the_same_card_still_lying_there_is_not_a_merged_arrival():
    t = StackTracker()
    frames = empty() + entering() + held("sv4-203", 6) + [merged("sv4-203", 1.03)] * 2 + held("sv4-203", 6, seed=1)
    feed(t, frames)
    assert t.counts == {"sv4-203": 1}


def test_an_unmatched_detection_elsewhere_does_not_keep_a_taken_stack_alive():
    """Seed 5038: between two cards one frame of the empty mat held a detection matching nothing away from the
    resting place; the stack was never cleared and the next card counted as slid on top of it."""
    t = StackTracker()
    far = Observation([SeenCard("swsh5-109", _quad(cx=100, cy=100, h=120), _Result(0.32, "low_score", "ambiguous"),
                                "low_score")])
    ev = feed(t, empty() + entering() + held("xy4-101", 6) + [Observation(), far] * 2 + held("sm5-149", 6))
    assert [e.kind for e in ev] == ["placed", "removed", "placed"]
    assert t.counts == {"xy4-101": 1, "sm5-149": 1}


def test_one_accepted_frame_after_frames_matching_nothing_waits_for_a_second():
    """Seed 5015: the card still sliding in matched nothing for two frames (same place already), then one
    accepted frame named its same-art reprint, and the next ones the card: one accepted frame is not yet a
    card lying still."""
    t = StackTracker(StackConfig(stable_frames=3, soft_patience_frames=3))
    junk = [read("ru1-3", "ambiguous", 0.1, 0), read("xy1-28", "ambiguous", 0.1, 1)]
    for o in junk:
        o.cards[0].flag = "low_score"
    frames = junk + [read("ex3-85", "accept", 0.97, 2)] + [read("pop3-10", "accept", 0.95, i) for i in range(3, 7)]
    ev = feed(t, empty() + entering() + frames + empty(3))
    placed = [e for e in ev if e.kind == "placed"]
    assert t.counts == {"pop3-10": 1} and len(placed) == 1


def test_a_card_slid_on_top_at_the_same_place_counts_despite_one_reprint_misreading():
    """Seed 5009: the new card slid onto the stack at the very same place (one still window by geometry) read
    as junk while moving, then gym1-63, gym2-64 (its same-art reprint), gym1-63, gym1-63: never three alike in a
    row, so the old switch rule kept the window of the card below and the new card was never counted."""
    t = StackTracker(StackConfig(stable_frames=3, soft_patience_frames=3))
    below = [read("pop9-6", "accept", 0.99, i) for i in range(6)]
    junk = [read("bw4-74", "ambiguous", 0.1, 6), read("pgo-16", "ambiguous", 0.25, 7)]
    for o in junk:
        o.cards[0].flag = "low_score"
    top = [read("gym1-63", "ambiguous", 0.88, 8), read("gym2-64", "ambiguous", 0.44, 9),
           read("gym1-63", "accept", 0.95, 10), read("gym1-63", "accept", 0.95, 11)]
    ev = feed(t, empty() + entering() + below + junk + top + empty(3))
    assert t.counts == {"pop9-6": 1, "gym1-63": 1}
    assert [e.kind for e in ev if e.kind != "removed"] == ["placed", "slid_on_top"]


def test_a_card_lying_still_misread_as_another_for_the_server_is_not_a_new_card():
    """Bench stack seed 5033: a card slid onto the stack was read (ambiguous) as itself twice, then four frames in a
    row as its same-name neighbour, still ambiguous, without moving. The sustained switch starts a new still
    window; with no arrival seen since the card was counted and no reading the device would accept, that window is
    the same card misread — not one more card. An accepted identity at the same place still counts (the unseen
    slide of ``test_card_slid_on_top_at_the_same_place_without_seen_motion_counts``)."""
    t = StackTracker(StackConfig(stable_frames=3, soft_patience_frames=3))
    below = [read("swsh10-205", "accept", 0.95, i) for i in range(5)]
    top = [read("sm11-237", "ambiguous", 0.74, 10 + i) for i in range(2)]
    misread = [read("sm11-214", "ambiguous", 0.69, 20 + i) for i in range(4)]
    ev = feed(t, empty() + entering() + below + entering("swsh10-205") + top + misread + empty(3))
    assert t.counts == {"swsh10-205": 1, "sm11-237": 1}
    assert [e.kind for e in ev if e.kind != "removed"] == ["placed", "slid_on_top"]


def read_listing(card_id: str, candidates: list[str], seed: int) -> Observation:
    """An ambiguous reading (for the server) whose candidates (the pipeline's top-k) are ``candidates``."""
    obs = read(card_id, "ambiguous", 0.7, seed)
    obs.cards[0].result.candidates = [(c, 0.7 - 0.01 * k) for k, c in enumerate(candidates)]
    return obs


@pytest.mark.parametrize("lists_the_card_below", [False, True])
def test_a_card_slid_on_unseen_and_read_ambiguous_counts_unless_its_reading_lists_the_card_below(lists_the_card_below):
    """Bench stack seed 5001 with bundle demo-12: a card slid onto the stack in one merged outline (no arrival
    seen), then read ambiguous as itself frame after frame — a different card, whose candidates never list the
    card below. That is one more card. Read as a card whose candidates do list the card below (seed 5033: a
    same-name neighbour), it stays the card lying there, misread."""
    t = StackTracker(StackConfig(stable_frames=3, soft_patience_frames=3))
    below = [read("bw5-19", "accept", 0.9, i) for i in range(5)]
    cands = ["swsh12pt5-18", "swsh9-153", "col1-8"] + (["bw5-19"] if lists_the_card_below else [])
    new = [read_listing("swsh12pt5-18", cands, 10 + i) for i in range(6)]
    feed(t, empty() + entering() + below + new + empty(3))
    expected = {"bw5-19": 1} if lists_the_card_below else {"bw5-19": 1, "swsh12pt5-18": 1}
    assert t.counts == expected


def test_accepts_naming_different_cards_in_one_window_go_to_the_server():
    """The bench's stack seed 5010: a card lying still accepted as itself and as its same-art reprint in alternate
    frames (a reprint contest deciding one way, then the other, each at 0.98). The tracker counts the leading
    identity, but the reading it records goes out ambiguous, flagged ``disputed``: the server resolves it from the
    crop. A window whose accepts agree keeps its accept."""
    from device.vision.pipeline import CardResult

    def reading(card_id: str, other: str, seed: int) -> Observation:
        rng = np.random.default_rng(seed)
        r = CardResult(_quad(), "accept", card_id, 0.9, 0.02, [(card_id, 0.9), (other, 0.88)], reprint_contest=True,
                       confidence=0.978)
        return Observation([SeenCard(card_id, _quad(dx=rng.normal(0, 1.5), dy=rng.normal(0, 1.5)), r)])

    for ids, decision, flag in ((["base6-110", "base4-122", "base6-110"], "ambiguous", "disputed"),
                                (["base4-122"] * 3, "accept", None)):
        t = StackTracker(StackConfig(stable_frames=3))
        frames = [reading(cid, "base4-122" if cid == "base6-110" else "base6-110", i) for i, cid in enumerate(ids)]
        ev = feed(t, empty() + entering() + frames + empty(3))
        placed = [e for e in ev if e.kind == "placed"]
        assert len(placed) == 1 and t.counts == {ids[0]: 1}
        assert placed[0].card.result.decision == decision and placed[0].card.result.quality_flag == flag
        assert all(f.cards[0].result.decision == "accept" for f in frames)  # the frames' own readings untouched
