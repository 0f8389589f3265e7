"""Decision from the match: accept | ambiguous | no_card, with thresholds from the bundle manifest.

* ``no_card``: the best score is below ``no_card_score`` — whatever is under the camera is not a catalog card.
* ``accept``: best score ≥ ``accept_score`` **and** margin (top-1 − top-2) ≥ ``accept_margin`` — or, when the
  two best are printings of one reprint contest decided by their difference patches (``Match.contest``),
  margin ≥ ``accept_reprint_margin``: that margin measures something else (a glyph's correlation, not an
  embedding gap), so one threshold for both would be too loose for one kind or too strict for the other.
  A reprint verdict also needs the card at least ``reprint_min_height`` frame pixels tall: the patches are a
  collector number and a set symbol, 5 px tall on a card 375 px tall; on a card half that size (a binder page of
  nine) they are a blur whose verdict is noise however large its margin, and such cards set the reprint margin
  for everyone when they may be accepted (bundle demo-6 calibration: a 0.036 margin on a grid card, wrong).
  The height rule holds under the confidence rule too: its model has the card's height as a feature but
  weighs it next to nothing for contests (bundle demo-12, all evaluation sets at seeds 900000 and 910000: of its
  contest accepts on cards under 160 px 141 of 147 were right, on cards over 180 px all but 2 of 538;
  docs/device-vision.md, sixteenth session).
  A bundle with a calibrated confidence model and ``accept_confidence`` (``device.vision.confidence``) accepts
  on that instead: ``confidence ≥ accept_confidence`` and ``score ≥ confidence_min_score`` replace the score and
  margin thresholds, which the confidence weighs together (``models.confidence`` says why the score
  floor stays; a bundle with the model but no ``accept_confidence`` reports the confidence and keeps the
  thresholds, and software older than the model ignores both and keeps them too).
* A reprint contest whose two verdicts disagree is never accepted: the patch boxes ranked one printing first, the
  pixels where the two best differ the other (``Reprints.rerank`` then leaves them tied, margin 0), so the order is
  the embedding's, which cannot tell printings of one illustration apart. The confidence model saw too few such
  ties to learn it (it weighs a contest's margin lightly): bundle demo-12 accepted 6 of the 454 ties of all
  evaluation sets at seeds 900000 and 910000, 2 of them wrong (docs/device-vision.md, sixteenth session).
  The same tie stands for a verdict the embedding disputes — it ranks another printing of the contest first by
  ``RerankConfig.dispute`` or more (``Reprints.rerank``; seventeenth session): the patches then keep their order
  but give no margin — and for a verdict whose patches were not found on the card (``RerankConfig.min_fit``;
  twenty-second session).
* ``ambiguous``: everything in between; the scan carries the rectified crop for the server's resolver.
  A card that passed the quality gate only softly (glare, slight blur, a sliver out of view: ``soft=True``)
  is never accepted, however well it matches: its crop is worse evidence than the calibration saw, and the
  server can look again — except for the flags in the bundle's ``accept_flags`` under the confidence rule,
  whose calibration held such cards (glare since bundle demo-8: the model has the glare fraction as a feature,
  and glared cards that clear its threshold were all right in calibration and evaluation).

The thresholds are calibrated at bundle build time (``models.build_bundle``) on held-out simulated captures
for a target auto-accept precision.
"""

from __future__ import annotations

from dataclasses import dataclass

from device.vision.matcher import Match


@dataclass(frozen=True)
class Thresholds:
    accept_score: float
    accept_margin: float
    no_card_score: float
    accept_reprint_margin: float | None = None  # None (an older bundle): accept_margin for every match
    reprint_min_height: float = 0.0  # frame px; 0 (an older bundle): any size
    accept_confidence: float | None = None  # None: the score / margin thresholds decide accepts
    confidence_min_score: float = 0.0  # with accept_confidence: the top-1 score an accept needs besides
    # soft gate failures the confidence rule still judges (its calibration held such cards); others never accept
    accept_flags: tuple[str, ...] = ()

    @property
    def accept_floor(self) -> float:
        """The top-1 score below which no match is accepted, whatever its margin or confidence."""
        return self.confidence_min_score if self.accept_confidence is not None else self.accept_score

    @classmethod
    def from_manifest(cls, manifest: dict) -> "Thresholds":
        t = manifest["thresholds"]
        rm = t.get("accept_reprint_margin")
        ac = t.get("accept_confidence")
        return cls(float(t["accept_score"]), float(t["accept_margin"]), float(t["no_card_score"]),
                   None if rm is None else float(rm), float(t.get("reprint_min_height", 0.0)),
                   None if ac is None else float(ac), float(t.get("confidence_min_score", 0.0)),
                   tuple(t.get("accept_flags") or ()))


def unreadable_contest(contest: bool, margin: float, height: float | None, min_height: float) -> bool:
    """A reprint contest whose verdict is no verdict: tied (its two patch verdicts disagreed) or read off a card
    shorter than ``min_height`` frame px (``height`` None: large enough). ``decide`` never accepts one, and the
    calibration chooses its threshold without them (``models.confidence.eligible``)."""
    return contest and (margin <= 0.0 or (height is not None and height < min_height))


def decide(match: Match, th: Thresholds, soft: bool = False, height: float | None = None,
           confidence: float | None = None, flag: str | None = None) -> str:
    """``height``: the card's height in the frame (px, ``geometry.card_height``); None = large enough.
    ``confidence``: the match's calibrated confidence (None: the bundle has no model). ``flag``: the soft gate
    failure (implies ``soft``); one of the bundle's ``accept_flags`` leaves the card to the confidence rule."""
    soft = soft or flag is not None
    if match.score < th.no_card_score:
        return "no_card"
    if unreadable_contest(match.contest, match.margin, height, th.reprint_min_height):
        return "ambiguous"  # whichever rule decides
    if th.accept_confidence is not None and confidence is not None:
        ok = confidence >= th.accept_confidence and match.score >= th.confidence_min_score
        judged = not soft or (flag is not None and flag in th.accept_flags)
        return "accept" if ok and judged else "ambiguous"
    contest = match.contest and th.accept_reprint_margin is not None
    margin = th.accept_reprint_margin if contest else th.accept_margin
    if not soft and match.score >= th.accept_score and match.margin >= margin:
        return "accept"
    return "ambiguous"
