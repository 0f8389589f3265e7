"""The resolver: top-k by server embedding -> geometric + region re-rank -> calibrated confidence.

    crop ─► embed (both 180° orientations; the better one wins) ─► FAISS top-k
         ∪ device candidates ∪ printings sharing an illustration with the leaders (reprints)
         ─► per candidate: ORB/RANSAC inliers, aligned differential-region wins, footer-zone NCC
         ─► conditional-logit over the shortlist (weights fitted on simulated captures) = confidence
         ─► resolved (confidence >= threshold) or needs_review, with the shortlist.

The weights live in a small JSON (``models/server_model/checkpoints/resolver_calibration.json``) written by
``python -m models.server_model.calibrate``; built-in defaults are used when it is absent.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from server.resolver import verify as V
from server.resolver.detect import find_cards, rectify
from server.resolver.embedders import Embedder
from server.resolver.index import CardIndex

log = logging.getLogger(__name__)

CALIBRATION_FILE = Path(__file__).resolve().parents[2] / "models" / "server_model" / "checkpoints" / "resolver_calibration.json"
FEATURES = ("emb", "emb_gap", "log_inliers", "inlier_share", "inlier_ratio", "region", "footer", "footer_gap")
# Hand-set starting point (used when no calibration file exists); calibrate.py replaces them.
DEFAULT_WEIGHTS = {"emb": 4.0, "emb_gap": 6.0, "log_inliers": 1.0, "inlier_share": 3.0, "inlier_ratio": 1.0,
                   "region": 25.0, "footer": 2.0, "footer_gap": 4.0}


@dataclass
class Calibration:
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    temperature: float = 1.0
    meta: dict = field(default_factory=dict)
    # Utility of "none of these" (the true card is not in the shortlist): lets absolute evidence (few inliers,
    # low similarity) lower the confidence, which a softmax over the shortlist alone could not.
    null_bias: float | None = None

    def vector(self) -> np.ndarray:
        return np.array([self.weights.get(f, 0.0) for f in FEATURES], np.float64)

    @classmethod
    def load(cls, path: str | Path | None = None) -> "Calibration":
        p = Path(path) if path else CALIBRATION_FILE
        if not p.is_file():
            if path:
                raise FileNotFoundError(f"resolver calibration not found: {p}")
            log.warning("no resolver calibration at %s; using built-in weights", p)
            return cls()
        d = json.loads(p.read_text())
        return cls(d["weights"], d.get("temperature", 1.0), d.get("meta", {}), d.get("null_bias"))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"features": list(FEATURES), "weights": self.weights,
                                          "temperature": self.temperature, "null_bias": self.null_bias,
                                          "meta": self.meta}, indent=1))


@dataclass
class ResolverConfig:
    top_k: int = 10
    max_candidates: int = 24
    siblings_of: int = 3  # expand reprints of this many leading candidates
    max_siblings: int = 12
    max_contenders: int = 6
    accept_confidence: float = 0.9
    ocr: bool = False


@dataclass
class Resolution:
    card_id: str | None
    confidence: float
    status: str  # resolved | needs_review
    candidates: list[dict]  # [{card_id, score}] best first, score = calibrated probability
    quad: list[list[float]] | None = None
    ms: float = 0.0
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class Resolver:
    def __init__(self, embedder: Embedder, index: CardIndex, catalog: V.CatalogImages, card_meta: dict[str, dict],
                 calibration: Calibration | None = None, config: ResolverConfig | None = None):
        self.embedder, self.index, self.catalog, self.meta = embedder, index, catalog, card_meta
        self.calibration = calibration or Calibration()
        self.config = config or ResolverConfig()
        self.by_ill: dict[str, list[str]] = {}
        for cid, m in card_meta.items():
            if cid in index.pos:
                self.by_ill.setdefault(m.get("illustration_id") or cid, []).append(cid)

    # --- candidates ----------------------------------------------------------------------------------

    def shortlist(self, crop: np.ndarray, device_candidates: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        """(oriented canonical crop, its embedding, {card_id: embedding similarity}) for the shortlist."""
        c = V.to_canon(crop)
        views = [c, cv2.rotate(c, cv2.ROTATE_180)]
        emb = self.embedder.embed_images(views)
        scores, ids = self.index.search(emb, self.config.top_k)
        o = int(np.argmax(scores[:, 0]))
        e = emb[o]
        sims: dict[str, float] = {cid: float(s) for cid, s in zip(ids[o], scores[o])}
        for cid in device_candidates:
            if cid in self.index.pos and cid not in sims:
                sims[cid] = self._sim(cid, e)
        leaders = sorted(sims, key=lambda k: -sims[k])[: self.config.siblings_of]
        for lead in leaders:
            sib = [s for s in self.by_ill.get(self.meta.get(lead, {}).get("illustration_id") or lead, []) if s not in sims]
            if len(sib) > self.config.max_siblings:  # e.g. basic energy: hundreds of printings, keep the closest
                sib = sorted(sib, key=lambda s: -self._sim(s, e))[: self.config.max_siblings]
            for s in sib:
                sims[s] = self._sim(s, e)
        keep = sorted(sims, key=lambda k: -sims[k])[: self.config.max_candidates]
        # Device candidates always survive the cut: the device saw the card at full resolution.
        keep += [cid for cid in device_candidates if cid in sims and cid not in keep]
        return views[o], e, {k: sims[k] for k in keep}

    def _sim(self, cid: str, e: np.ndarray) -> float:
        v = self.index.vector(cid)
        return float(v @ e) if v is not None else 0.0

    # --- features ------------------------------------------------------------------------------------

    def features(self, crop_canon: np.ndarray, sims: dict[str, float]) -> tuple[list[str], np.ndarray, dict]:
        ids = [c for c in sims if c in self.catalog]
        if not ids:
            return [], np.zeros((0, len(FEATURES))), {}
        qf = V.extract(crop_canon)
        feats = {c: self.catalog.features(c) for c in ids}
        geo = {c: V.geometric(qf, feats[c]) for c in ids}
        best_inl = max(g.inliers for g in geo.values())
        best_emb = max(sims[c] for c in ids)
        # Contenders: the candidates geometry cannot separate (close inlier counts) + the embedding leader.
        order = sorted(ids, key=lambda c: (-geo[c].inliers, -sims[c]))
        contenders = [c for c in order if geo[c].inliers >= max(10, 0.6 * best_inl)][: self.config.max_contenders]
        if not contenders:
            contenders = sorted(ids, key=lambda c: -sims[c])[:2]
        # One alignment for all contenders (from the best-supported homography): contenders share the art and
        # layout, so comparing each against the *same* warped crop keeps alignment noise out of the contest.
        H = next((geo[c].H for c in contenders if geo[c].H is not None), None)
        q_al = V.align(qf.norm, H)
        aligned = {c: q_al for c in contenders}
        region = V.pairwise_region_scores(aligned, feats, contenders)
        fm = V.zone_mask("footer")
        footer = {c: (V.ncc(aligned[c], feats[c].norm, fm) if c in aligned else 0.0) for c in ids}
        best_footer = max(footer[c] for c in contenders)
        X = np.array([[sims[c], sims[c] - best_emb, np.log1p(geo[c].inliers), geo[c].inliers / max(best_inl, 1),
                       geo[c].ratio, region.get(c, 0.0), footer[c],
                       (footer[c] - best_footer) if c in aligned else -1.0] for c in ids], np.float64)
        detail = {"contenders": contenders, "inliers": {c: geo[c].inliers for c in ids}}
        return ids, X, detail

    def probabilities(self, X: np.ndarray) -> np.ndarray:
        """P(candidate is the card) for each row; with a null alternative the rows sum to <= 1."""
        t = max(self.calibration.temperature, 1e-6)
        z = X @ self.calibration.vector() / t
        nb = self.calibration.null_bias
        zz = np.append(z, nb / t) if nb is not None else z
        m = zz.max()
        e = np.exp(z - m)
        return e / (e.sum() + (np.exp(nb / t - m) if nb is not None else 0.0))

    # --- entry points --------------------------------------------------------------------------------

    def resolve_crop(self, crop: np.ndarray, device_candidates: Sequence[str] = (),
                     quad: list | None = None) -> Resolution:
        t0 = time.perf_counter()
        canon, _, sims = self.shortlist(crop, device_candidates)
        ids, X, detail = self.features(canon, sims)
        if not ids:
            return Resolution(None, 0.0, "needs_review", [], quad, (time.perf_counter() - t0) * 1000, {"reason": "no candidates"})
        p = self.probabilities(X)
        order = np.argsort(-p)
        top = ids[order[0]]
        conf = float(p[order[0]])
        if self.config.ocr and conf < self.config.accept_confidence and V.ocr_available():
            conf, top = self._ocr_tiebreak(canon, ids, p, order, conf, top, detail)
        status = "resolved" if conf >= self.config.accept_confidence else "needs_review"
        cands = [{"card_id": ids[i], "score": round(float(p[i]), 4)} for i in order[:10]]
        return Resolution(top, round(conf, 4), status, cands, quad, round((time.perf_counter() - t0) * 1000, 1), detail)

    def _ocr_tiebreak(self, canon, ids, p, order, conf, top, detail):
        """When the top contenders stay close, a legible collector number that matches exactly one wins."""
        read = V.ocr_numbers(canon)
        detail["ocr"] = read
        if not read:
            return conf, top
        near = [ids[i] for i in order[:4] if p[i] >= 0.1 * p[order[0]]]
        hits = [c for c in near if V.number_matches(read, self.meta.get(c, {}).get("number", ""))]
        if len(hits) == 1:
            share = sum(float(p[ids.index(c)]) for c in near)
            return max(conf, min(0.99, share)) if hits[0] == top else min(0.99, share), hits[0]
        return conf, top

    def identify_image(self, img: np.ndarray, max_cards: int = 9) -> list[Resolution]:
        """Whole photo or crop: every card found, resolved."""
        out = []
        for q in find_cards(img, max_cards):
            crop = rectify(img, q)
            out.append(self.resolve_crop(crop, quad=[[round(float(x), 1), round(float(y), 1)] for x, y in q]))
        return out


__all__ = ["Calibration", "FEATURES", "Resolution", "Resolver", "ResolverConfig"]
