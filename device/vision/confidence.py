"""Calibrated confidence of a device match: the probability that its top-1 is the card under the camera.

A logistic model over what the device knows about one card when it decides — the match (top-1 score, margin,
whether the margin is a reprint contest's patch verdict), the card's size in the frame and its crop's sharpness
and glare — fitted at bundle build time on the calibration captures (``models.confidence``) and stored in the
manifest (``thresholds.confidence``). Why one number instead of more thresholds: an axis-aligned rule (score ≥ s
and margin ≥ m) must be strict on both to keep out a few bad matches, while a match with a huge margin and a
modest score is nearly always right, and a match read off a blurred crop is worth less than the same margin
off a sharp one, which no margin threshold can say. The accept rule then is one threshold on it
(``accept_confidence``, chosen for the target precision, ``device.vision.decision``).

Runs on the device: numpy only, a dot product per card.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# One name per feature, in the order of the weights. Margins are split by meaning: an embedding gap (plain) and
# a patch verdict (contest) are different quantities and get a weight each.
# Each margin enters twice, as it is and as its log: most of the tail's bad matches have a tiny margin, where
# only the log still tells 0.0005 from 0.005. A contest's score, sharpness and size get weights
# of their own: both contenders share the illustration, so a high score says little about which printing it is,
# while the patches' verdict depends on how sharp and how large the card is.
FEATURES = ("score", "plain_margin", "contest_margin", "log_plain_margin", "log_contest_margin", "contest",
            "log_height", "log_sharpness", "glare", "contest_score", "contest_log_sharpness", "contest_log_height")
MIN_MARGIN = 1e-4  # the log's floor: a margin of 0 (a tie) is as bad as one of 0.0001


def features(score: float, margin: float, contest: bool, height: float, sharpness: float | None,
             glare: float | None) -> np.ndarray:
    """The feature vector of one card (``FEATURES`` order). ``sharpness``/``glare``: the quality gate's crop
    measures (``quality`` of a card result); missing ones count as an ordinary crop (0 glare, sharpness 100)."""
    c = 1.0 if contest else 0.0
    lm = math.log(max(margin, MIN_MARGIN))
    lh = math.log(max(height, 1.0))
    ls = math.log1p(max(100.0 if sharpness is None else float(sharpness), 0.0))
    return np.array([score, margin * (1.0 - c), margin * c, lm * (1.0 - c), lm * c, c, lh, ls,
                     0.0 if glare is None else float(glare), score * c, ls * c, lh * c], np.float64)


@dataclass(frozen=True)
class ConfidenceModel:
    """``p = sigmoid(w · (x − mean) / scale + bias)``; the standardisation is part of the model so that the
    weights of features of very different ranges (a margin of 0.01, a log height of 6) stay comparable."""

    weights: tuple[float, ...]
    bias: float
    mean: tuple[float, ...]
    scale: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(FEATURES)
        if not (len(self.weights) == len(self.mean) == len(self.scale) == n):
            raise ValueError(f"confidence model: expected {n} weights/mean/scale ({', '.join(FEATURES)}), got "
                             f"{len(self.weights)}/{len(self.mean)}/{len(self.scale)}")
        if not all(math.isfinite(v) for v in (*self.weights, self.bias, *self.mean, *self.scale)):
            raise ValueError("confidence model: non-finite parameter")
        if any(s <= 0 for s in self.scale):
            raise ValueError("confidence model: scale must be > 0")

    @classmethod
    def from_manifest(cls, manifest: dict) -> "ConfidenceModel | None":
        """``thresholds.confidence`` of a manifest (None: an older bundle without one)."""
        d = manifest.get("thresholds", {}).get("confidence")
        if d is None:
            return None
        if list(d.get("features", [])) != list(FEATURES):
            raise ValueError(f"confidence model: features {d.get('features')} are not this device's {list(FEATURES)}")
        return cls(tuple(map(float, d["weights"])), float(d["bias"]), tuple(map(float, d["mean"])),
                   tuple(map(float, d["scale"])))

    def to_manifest(self) -> dict:
        return {"features": list(FEATURES), "weights": [round(w, 6) for w in self.weights],
                "bias": round(self.bias, 6), "mean": [round(m, 6) for m in self.mean],
                "scale": [round(s, 6) for s in self.scale]}

    def logit(self, x: np.ndarray) -> np.ndarray:
        """Logits of feature rows ``x`` (n × len(FEATURES), or one row)."""
        z = (np.asarray(x, np.float64) - np.asarray(self.mean)) / np.asarray(self.scale)
        return z @ np.asarray(self.weights) + self.bias

    def __call__(self, x: np.ndarray) -> float | np.ndarray:
        """Confidence in [0, 1] of one feature row (a float) or of several (an array)."""
        p = 1.0 / (1.0 + np.exp(-np.clip(self.logit(x), -50, 50)))
        return float(p) if np.ndim(p) == 0 else p
