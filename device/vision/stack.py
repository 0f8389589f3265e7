"""Stack logic for a fixed camera over a mat: when does a frame mean *one more card*?

Rules (the scan counter, not the identifier, decides what a placement is):

* a card must be seen **stable** — the same place (quad IoU ≥ ``stable_iou``) — for ``stable_frames``
  consecutive frames before it counts; its identity is the one with the most votes (summed calibrated
  confidences, or scores from a bundle without a confidence model) over those frames, so a frame misread as a
  look-alike reprint does not matter, and the frame recorded is that identity's most confident one; frames the
  quality gate rejects (moving, heavily blurred, half out of view) never count;
* readings are weighed by **tier** before votes: frames the device *accepted* (the calibrated rule, ≥ 99.9 %
  precise) outvote any number of frames it sent to the server as ambiguous — a card held still is misread the
  same way frame after frame (same pose, same blur), so repeated ambiguous readings are not independent
  evidence (a simulated stack, bundle demo-8, read sv7-110 as its same-art reprint sv7-162 in 4 of 7 frames,
  all ambiguous, and the 3 accepted frames were right); within a tier clean frames outvote soft-flagged ones;
  accepted frames of one window that name **different cards** leave the recorded reading ambiguous
  (``quality_flag`` disputed): the accept rule contradicted itself on that card, so the server decides;
* a card identified despite a **soft** gate failure (glare, slight blur, a sliver out of view:
  ``SeenCard.flag``) counts like any other, but a clean accepted frame is preferred: while a still window
  holds none its decision waits up to ``soft_patience_frames`` more frames for one (the identity is then voted
  by the best tier and that tier's result is recorded); a window that ends before (the card is taken away) is
  decided with what it has, so a card that only ever shows glare (or is always ambiguous) counts once;
* the **same card still lying there** (jitter, glare, a blurred frame, a hand passing) is not counted again;
* **N copies placed one after another** count N: between them the mat is empty (``empty_frames`` frames
  with no card at all) — or, without an empty gap, a copy arrives on top (next rule);
* a card **slid on top** counts: a different identity becomes stable (also at the very same place: a new
  identity sustained for ``switch_frames`` frames starts a new still window — counted there only when the device
  accepts the new identity or an arrival was seen: a card lying still and read for the server as a look-alike
  is the same card), or the same identity becomes
  stable again after an *arrival* was seen (a card quad far from the resting place, or an outline over it
  clearly bigger than the resting card: a copy sliding on top of the same card often merges with it into one
  detection whose centre barely moves; its frames break the still window, so the copy is decided anew);
* the mat is **cleared** after ``empty_frames`` frames with nothing identified and nothing where the top
  card lay (a false detection elsewhere, e.g. a printed playmat zone, does not keep a stack alive);
* a card **taken off the top** reveals the one below: when the revealed identity is the one under it in
  the current stack, nothing is counted (the stack shrinks).

``StackTracker.update(observation)`` returns the events of that frame. ``Observation.from_frame_result``
adapts a ``device.vision.pipeline.FrameResult``; tests feed ground-truth observations directly.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import numpy as np

from device.vision.geometry import card_height, quad_iou


@dataclass
class SeenCard:
    card_id: str | None  # None: detected but not identified (gate rejected / no_card)
    quad: np.ndarray
    result: object | None = None  # the pipeline's CardResult when identified
    flag: str | None = None  # soft quality-gate failure it was identified despite (glare, …); None = clean

    @property
    def height(self) -> float:
        return card_height(self.quad)

    @property
    def area(self) -> float:
        q = self.quad
        x, y = q[:, 0], q[:, 1]
        return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


@dataclass
class Observation:
    cards: list[SeenCard] = field(default_factory=list)  # identified cards (passed the gate, maybe softly)
    others: list[SeenCard] = field(default_factory=list)  # detections the gate rejected

    @property
    def empty(self) -> bool:
        return not self.cards and not self.others

    @classmethod
    def from_frame_result(cls, res) -> "Observation":
        cards = [SeenCard(c.card_id, np.asarray(c.quad, np.float32), c, getattr(c, "quality_flag", None))
                 for c in res.cards if c.decision != "no_card" and c.card_id]
        others = [SeenCard(None, np.asarray(q, np.float32)) for q, _ in res.rejected]
        others += [SeenCard(None, np.asarray(c.quad, np.float32)) for c in res.cards
                   if c.decision == "no_card" or not c.card_id]
        return cls(cards, others)


@dataclass
class StackEvent:
    kind: str  # placed | slid_on_top | removed (the whole stack left the mat)
    card_id: str | None
    frame: int
    card: SeenCard | None = None


TOP_TIER = 3  # accepted and clean (``tier``)
ACCEPTED_TIER = 2  # the lowest tier of a reading the device accepted


@dataclass
class _Tally:
    """Readings of one still window (or of one evidence tier of it), per identity."""

    votes: dict[str | None, float] = field(default_factory=dict)  # summed confidences (or scores)
    reads: dict[str | None, int] = field(default_factory=dict)  # how many readings
    best: dict[str | None, tuple[float, SeenCard]] = field(default_factory=dict)  # the most confident one

    def add(self, c: SeenCard, score: float) -> None:
        self.votes[c.card_id] = self.votes.get(c.card_id, 0.0) + score
        self.reads[c.card_id] = self.reads.get(c.card_id, 0) + 1
        if c.card_id not in self.best or score > self.best[c.card_id][0]:
            self.best[c.card_id] = (score, c)

    @property
    def leader(self) -> str | None:
        return max(self.votes, key=self.votes.get)


def _disputed(c: SeenCard) -> SeenCard:
    """``c`` with its reading turned ambiguous (``quality_flag`` disputed): the device accepted different cards
    in frames of one still window — a reprint contest decided one way and the other as the card lay still (bench
    stack seed 5010: base4-122 accepted as itself and as its same-art reprint base6-110 in alternate frames, each
    at confidence 0.98). An accept rule that contradicts itself on one card is no 99.9 % evidence: the server
    resolves the card from the crop. The tracker still counts the leading identity."""
    if getattr(c.result, "decision", None) != "accept":
        return c
    r = copy.copy(c.result)  # the window's readings keep their own decisions
    r.decision, r.quality_flag = "ambiguous", "disputed"
    return dataclasses.replace(c, result=r)


def tier(c: SeenCard) -> int:
    """How much one reading is worth: accepted and clean 3, accepted despite a soft flag 2, ambiguous and clean
    1, ambiguous and flagged 0. A reading without a decision (ground truth in tests) counts as accepted."""
    accepted = getattr(c.result, "decision", "accept") == "accept"
    return 2 * accepted + (c.flag is None)


@dataclass
class StackConfig:
    stable_frames: int = 3
    stable_iou: float = 0.8
    empty_frames: int = 2
    switch_frames: int = 3  # frames in a row with another identity at the same place: a new card on top
    arrival_shift: float = 0.15  # centre displacement (fraction of card height) that marks a moving card
    # a detection over the resting card with this much more area also marks one: a copy sliding on top of the
    # same card merges with it into one bigger outline whose centre barely moves (bench stack seeds 5014, 5021,
    # 5039: 1.14-1.22× the area, 0.06-0.10 of a height off; the same card lying still ≤ 1.06×; traced with
    # ``tests/bench/bench_device.py --trace SEED``)
    arrival_grow: float = 0.12
    # a still window without a clean accepted frame (only glare, slight blur, a sliver out of view, or readings
    # the device would send to the server) waits this many frames more for one before it is decided with what
    # it has
    soft_patience_frames: int = 3


class StackTracker:
    def __init__(self, config: StackConfig | None = None):
        self.cfg = config or StackConfig()
        self.stack: list[SeenCard] = []  # counted cards currently on the mat, bottom → top
        self.frame = -1
        self._cand: SeenCard | None = None
        self._cand_n = 0
        self._empty_n = 0
        self._arrival = False
        self._merged = False  # an outline over the resting card grew since the last decision (``_grown``)
        self._disp: list[float] = []  # displacements of moving cards since the last stable card
        self._all = _Tally()  # the readings of the current still window
        self._tiers: dict[int, _Tally] = {}  # the same per evidence tier (``tier``)
        self._streak: list[tuple[SeenCard, float]] = []  # consecutive frames disagreeing with the leader
        self._decided = False
        self.counts: dict[str, int] = {}

    # ------------------------------------------------------------------------------------------------

    def _top(self, obs: Observation) -> SeenCard | None:
        """The card on top: the largest identified one (a card on top hides the ones below)."""
        return max(obs.cards, key=lambda c: c.area) if obs.cards else None

    def _displaced(self, c: SeenCard, ref: SeenCard) -> bool:
        d = float(np.linalg.norm(c.quad.mean(0) - ref.quad.mean(0)))
        return d > self.cfg.arrival_shift * max(ref.height, 1.0)

    def _grown(self, c: SeenCard, ref: SeenCard) -> bool:
        """``c`` lies over the resting card ``ref`` with a clearly bigger outline: a card sliding onto it."""
        return c.area > (1.0 + self.cfg.arrival_grow) * ref.area and quad_iou(c.quad, ref.quad) >= 0.5

    def _resized(self, c: SeenCard, prev: SeenCard) -> bool:
        """The merged outline of a card sliding onto the resting one came or went since the previous frame
        (it crossed ``arrival_grow`` over the resting card, and grew or shrank by that much, or the smaller of the
        two outlines is one of the card lying still: at most half that over it): not one card lying still, so the
        still window starts again. A card's outline that only jitters around the threshold, or one read noisily
        with no stack below, keeps its window. The second way: bench stack seed 5014 with bundle demo-12, a copy
        slid onto the same card at the same place grew the outline from 1.01× to 1.12× in one frame (a ratio of
        1.11), and its frames continued the window already decided."""
        anchor = self.stack[-1] if self.stack else None
        if anchor is None:
            return False
        grown = self._grown(c, anchor)
        if grown == self._grown(prev, anchor):
            return False
        r = c.area / max(prev.area, 1e-6)
        low = prev if grown else c
        return (r > 1.0 + self.cfg.arrival_grow or r < 1.0 / (1.0 + self.cfg.arrival_grow)
                or low.area <= (1.0 + 0.5 * self.cfg.arrival_grow) * anchor.area)

    def update(self, obs: Observation) -> list[StackEvent]:
        self.frame += 1
        events: list[StackEvent] = []
        # a still window waiting for a clean frame that this frame ends is decided with what it has, before this
        # frame's evidence touches the stack (a card that only ever showed glare still counts, once)
        if not self._decided and not self._continues(obs):
            self._close(events)
        if obs.empty or self._cleared(obs):
            self._empty_n += 1
            if self._empty_n >= self.cfg.empty_frames and self.stack:
                events.append(StackEvent("removed", self.stack[-1].card_id, self.frame))
                self.stack = []
                self._arrival = self._merged = False
                self._disp = []
            if obs.empty or not obs.others:
                self._cand = None
                self._new_window()
                return events
        else:
            self._empty_n = 0
        anchor = self.stack[-1] if self.stack else None
        # arrival evidence: any detection (identified or not) away from the resting place
        everything = obs.cards + obs.others
        if anchor is not None:
            moved = [c for c in everything if self._displaced(c, anchor)]
            if moved:
                self._arrival = True
                self._disp.append(max(float(np.linalg.norm(c.quad.mean(0) - anchor.quad.mean(0))) for c in moved))
            # a merged outline says something joined the resting card, not which way it moved: it only tells
            # a copy slid on top from the same card still lying there (``_decide``)
            self._merged = self._merged or any(self._grown(c, anchor) for c in everything)
        top = self._top(obs)
        if top is None or self._elsewhere(obs, top):
            self._cand = None  # nothing stable this frame (moving / rejected / two cards)
            self._new_window()
            return events
        # stability is geometric (same place, frame after frame); the identity is voted over the window,
        # so one frame read as a look-alike reprint does not reset the count. A card slid on top at the very
        # same place keeps the geometry: a *sustained* change of identity (``switch_frames`` frames in a row
        # disagreeing with the window's leader) starts a new window instead.
        conf = getattr(top.result, "confidence", None)
        score = max(float(conf if conf is not None else (getattr(top.result, "score", 1.0) or 1.0)), 0.0)
        if self._cand is None or quad_iou(top.quad, self._cand.quad) < self.cfg.stable_iou or self._resized(top, self._cand):
            self._new_window()
        elif tier(top) == 0:
            pass  # an ambiguous flagged reading (matched nothing, glare, pieces): neither for nor against a switch
        elif self._all.votes and top.card_id != self._all.leader:
            self._streak.append((top, score))
            last = self._streak[-self.cfg.switch_frames:]
            # all of them disagreeing with the leader, and two at least agreeing with each other: a card slid on
            # top at the same place may be misread as its same-art reprint once (simulated stack seed 5009:
            # gym1-63, gym2-64, gym1-63 never made three alike). The new window's decision still tells a new card
            # from the same one lying there (``_decide``)
            ids = [c.card_id for c, _ in last]
            if len(last) == self.cfg.switch_frames and max(ids.count(i) for i in ids) >= 2:
                self._close(events)
                self._new_window()
                for c, sc in last[:-1]:
                    self._vote(c, sc)
        else:
            self._streak = []
        self._cand = top
        self._vote(top, score)
        if self._decided or not self._ready():
            return events
        self._decide(events)
        return events

    def _close(self, events: list[StackEvent]) -> None:
        """A window that ends before it was ready (still waiting for a clean accepted frame) is decided with
        what it has — when it was stable long enough and the identity it would count was read at least twice:
        one reading among frames matching nothing (a card still moving) is no card lying still, and it would
        count a misread that the next window then counts again."""
        if (not self._decided and self._cand is not None and self._cand_n >= self.cfg.stable_frames
                and self._all.reads.get(self._tiers[max(self._tiers)].leader, 0) >= 2):
            self._decide(events)

    def _ready(self) -> bool:
        if self._cand_n < self.cfg.stable_frames:
            return False
        # one clean accepted frame in a window that began with frames matching nothing (the card still sliding
        # in) is not yet a card lying still: wait for a second one (simulated stack seed 5015: a lone accepted
        # frame named the same-art reprint, the next three named the card)
        top = self._tiers.get(TOP_TIER)
        return ((top is not None and max(top.reads.values()) >= min(2, self.cfg.stable_frames))
                or self._cand_n >= self.cfg.stable_frames + self.cfg.soft_patience_frames)

    def _cleared(self, obs: Observation) -> bool:
        """The mat counts as cleared when nothing identified is seen and nothing lies where the top card lay
        (a false detection elsewhere on a printed playmat must not keep a stack alive)."""
        anchor = self.stack[-1] if self.stack else None
        # a detection that matched no catalog card (``low_score``, sent to the server for a second look) is a
        # card only where the top card lay: elsewhere on an empty mat it is a print or a shadow (a simulated
        # stack was never cleared by one such frame between its empty frames, and the next card was counted as
        # slid on a stack that had gone)
        if anchor is None:
            return not obs.cards
        unmatched = [c for c in obs.cards if c.flag == "low_score"]
        return len(unmatched) == len(obs.cards) and all(quad_iou(c.quad, anchor.quad) < 0.3 for c in obs.others + unmatched)

    @staticmethod
    def _elsewhere(obs: Observation, top: SeenCard) -> bool:
        """Other detections away from the top card (not the covered card below it): something is moving."""
        return any(c is not top and quad_iou(c.quad, top.quad) < 0.5 for c in obs.cards + obs.others)

    def _continues(self, obs: Observation) -> bool:
        """Whether ``obs`` extends the current still window (the checks of ``update``, without its side effects)."""
        if obs.empty or self._cleared(obs):
            return False
        top = self._top(obs)
        if top is None or self._cand is None or self._elsewhere(obs, top):
            return False
        return quad_iou(top.quad, self._cand.quad) >= self.cfg.stable_iou and not self._resized(top, self._cand)

    def _decide(self, events: list[StackEvent]) -> None:
        """A stable card: decide what it means. Identity = the most voted one of the window's best evidence
        tier (accepted over ambiguous, clean over flagged), and the recorded result is that identity's most
        confident reading in the tier."""
        self._decided = True
        chosen = self._tiers[max(self._tiers)]
        c = chosen.best[chosen.leader][1]
        if len({cid for t, tally in self._tiers.items() if t >= ACCEPTED_TIER for cid in tally.votes}) > 1:
            c = _disputed(c)
        if not self.stack:
            events.append(self._count("placed", c))
        elif c.card_id == self.stack[-1].card_id and not (self._arrival or self._merged):
            self.stack[-1] = c  # the same card still lying there
        elif (len(self.stack) >= 2 and c.card_id == self.stack[-2].card_id
              and (self._departing() or not (self._arrival or c.card_id == self.stack[-1].card_id))):
            self.stack.pop()  # top card taken off: the one below shows again
            self.stack[-1] = c
        elif (not (self._arrival or self._merged) and max(self._tiers) < ACCEPTED_TIER
              and self._may_be_misread(c, self.stack[-1].card_id)):
            # nothing arrived since the last count, only readings the device would not accept name another card,
            # and the most confident of them holds the card lying there possible (among its candidates): that
            # card, misread (bench stack seed 5033: sm11-237 read as its same-name neighbour sm11-214, ambiguous,
            # four frames in a row while lying still). A card slid on top unseen still counts once the device
            # accepts it, or when its reading does not even list the card below (seed 5001 with bundle demo-12:
            # a card slid on in one merged outline, no arrival seen, read ambiguous as itself five times)
            pass
        else:
            events.append(self._count("slid_on_top", c))
        self._arrival = self._merged = False
        self._disp = []

    @staticmethod
    def _may_be_misread(c: SeenCard, resting: str | None) -> bool:
        """Whether a reading naming another card could be the resting card misread: it lists the resting card
        among its candidates (the pipeline's top-k). A reading without candidates (a result that does not carry
        them) cannot rule it out."""
        cands = getattr(c.result, "candidates", None)
        return cands is None or any(cid == resting for cid, _ in cands)

    def _new_window(self) -> None:
        self._cand_n, self._all, self._tiers, self._streak, self._decided = 0, _Tally(), {}, [], False

    def _vote(self, c: SeenCard, score: float) -> None:
        self._cand_n += 1
        self._all.add(c, score)
        self._tiers.setdefault(tier(c), _Tally()).add(c, score)

    def _departing(self) -> bool:
        """The last moving card went away from the resting place (its displacement grew at the end): a card
        was taken off rather than put on."""
        return len(self._disp) >= 2 and self._disp[-1] > self._disp[-2]

    def _count(self, kind: str, c: SeenCard) -> StackEvent:
        self.stack.append(c)
        if c.card_id:
            self.counts[c.card_id] = self.counts.get(c.card_id, 0) + 1
        return StackEvent(kind, c.card_id, self.frame, c)
