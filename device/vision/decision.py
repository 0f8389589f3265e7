"""Decision from the match: accept | ambiguous | no_card, with thresholds from the bundle manifest.

* ``no_card``: the best score is below ``no_card_score`` — whatever is under the camera is not a catalog card.
* ``accept``: best score ≥ ``accept_score`` **and** margin (top-1 − top-2) ≥ ``accept_margin``.
* ``ambiguous``: everything in between; the scan carries the rectified crop for the server's resolver.
  A card that passed the quality gate only softly (glare, slight blur, a sliver out of view: ``soft=True``)
  is never accepted, however well it matches: its crop is worse evidence than the calibration saw, and the
  server can look again.

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

    @classmethod
    def from_manifest(cls, manifest: dict) -> "Thresholds":
        t = manifest["thresholds"]
        return cls(float(t["accept_score"]), float(t["accept_margin"]), float(t["no_card_score"]))


def decide(match: Match, th: Thresholds, soft: bool = False) -> str:
    if match.score < th.no_card_score:
        return "no_card"
    if not soft and match.score >= th.accept_score and match.margin >= th.accept_margin:
        return "accept"
    return "ambiguous"
