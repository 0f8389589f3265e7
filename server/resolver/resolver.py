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
FEATURES = ("emb", "emb_gap", "log_inliers", "inlier_share", "inlier_ratio", "region", "footer", "footer_gap",
            "sibling_region", "device_top1", "device_listed")
# Hand-set starting point (used when no calibration file exists); calibrate.py replaces them.
DEFAULT_WEIGHTS = {"emb": 4.0, "emb_gap": 6.0, "log_inliers": 1.0, "inlier_share": 3.0, "inlier_ratio": 1.0,
                   "region": 25.0, "footer": 2.0, "footer_gap": 4.0, "sibling_region": 25.0, "device_top1": 0.5,
                   "device_listed": 1.0}


def sibling_region(pairs: dict[tuple[str, str], float], art: dict[str, str]) -> dict[str, float]:
    """Each contender's mean region win over the printings of its own illustration (``pairs``: the pairwise
    wins of ``verify.pairwise_region_scores``; ``art``: card_id -> illustration).

    Why apart from ``region``: that one averages a printing's wins over every contender, so when other
    illustrations are in the contest too, the few pixels that tell two reprints apart are diluted by however
    many there are. A contender without a sibling in the contest gets none (0)."""
    wins: dict[str, list[float]] = {}
    for (a, b), w in pairs.items():
        if art[a] == art[b]:
            wins.setdefault(a, []).append(w)
    return {c: float(np.mean(v)) for c, v in wins.items()}


@dataclass
class Calibration:
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    temperature: float = 1.0
    meta: dict = field(default_factory=dict)
    # Utility of "none of these" (the true card is not in the shortlist): lets absolute evidence (few inliers,
    # low similarity) lower the confidence, which a softmax over the shortlist alone could not.
    null_bias: float | None = None
    # Optional weights on the leading candidate's features in that utility (``null_bias + null_weights .
    # x_leader``). Why apart from ``weights``: those rank the shortlist; the null model says whether the thing
    # is in the catalog at all, and is fitted with scans of non-catalog objects too
    # (``models.server_model.calibrate.fit_null``) without moving the ranking.
    null_weights: dict[str, float] | None = None

    def vector(self) -> np.ndarray:
        return np.array([self.weights.get(f, 0.0) for f in FEATURES], np.float64)

    def null_vector(self) -> np.ndarray | None:
        if not self.null_weights:
            return None
        return np.array([self.null_weights.get(f, 0.0) for f in FEATURES], np.float64)

    @classmethod
    def load(cls, path: str | Path | None = None) -> "Calibration":
        p = Path(path) if path else CALIBRATION_FILE
        if not p.is_file():
            if path:
                raise FileNotFoundError(f"resolver calibration not found: {p}")
            log.warning("no resolver calibration at %s; using built-in weights", p)
            return cls()
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"resolver calibration {p}: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        if not isinstance(d, dict) or not isinstance(d.get("weights"), dict):
            raise ValueError(f"resolver calibration {p}: expected an object with \"weights\" (feature -> number)")
        for key in ("weights", "null_weights"):
            # a misspelt feature would silently weigh 0: refuse it instead
            unknown = sorted(set(d.get(key) or {}) - set(FEATURES))
            if unknown:
                raise ValueError(f"resolver calibration {p}: unknown feature(s) in {key}: {', '.join(unknown)} "
                                 f"(known: {', '.join(FEATURES)})")
        return cls(d["weights"], d.get("temperature", 1.0), d.get("meta", {}), d.get("null_bias"),
                   d.get("null_weights"))

    def save(self, path: str | Path) -> None:
        d = {"features": list(FEATURES), "weights": self.weights, "temperature": self.temperature,
             "null_bias": self.null_bias, "meta": self.meta}
        if self.null_weights:
            d["null_weights"] = self.null_weights
        Path(path).write_text(json.dumps(d, indent=1))


@dataclass
class ResolverConfig:
    top_k: int = 10
    max_candidates: int = 24
    siblings_of: int = 3  # expand reprints of this many leading candidates
    max_siblings: int = 12
    max_contenders: int = 6
    accept_confidence: float = 0.9
    # a scan the device matched to nothing (quality_flag low_score) needs more: see worker.required_confidence
    low_score_accept_confidence: float = 0.999
    ocr: bool = False
    wide_top_k: int = 40  # second, wider search when "none of these" dominates (0 = off)
    wide_if_null: float = 0.5  # ... i.e. when P(none of these) is at least this
    pool_same_art: bool = True  # same-illustration candidates share their best geometric evidence
    match_blur: bool = True  # compare regions against catalog faces blurred like the crop (verify.estimate_blur)


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

    def embed_views(self, crop: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """The crop in canonical size, upright and turned 180°, and the server embeddings of both.

        Search and keypoints see the crop at most at the device crop's resolution (``V.search_res``): the
        embedder and the calibration were fitted on such crops; the finer pixels of a larger crop serve the
        region comparison (``features(..., fine=...)``)."""
        c = V.to_canon(V.search_res(crop))
        views = [c, cv2.rotate(c, cv2.ROTATE_180)]
        return views, self.embedder.embed_images(views)

    def shortlist(self, crop: np.ndarray, device_candidates: Sequence[str] = (), *, top_k: int | None = None,
                  both: bool = False, max_candidates: int | None = None,
                  embedded: tuple[list[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        """(oriented canonical crop, its embedding, {card_id: embedding similarity}) for the shortlist.

        ``both``: take the nearest neighbours of both 180° orientations (similarity = the better of the
        two), for the wide second search when the first shortlist failed verification. ``embedded``: the
        crop's ``embed_views`` when already computed (the wide search reuses the first search's)."""
        views, emb = embedded if embedded is not None else self.embed_views(crop)
        scores, ids = self.index.search(emb, top_k or self.config.top_k)
        o = int(np.argmax(scores[:, 0]))
        e = emb[o]
        sims: dict[str, float] = {cid: float(s) for cid, s in zip(ids[o], scores[o])}
        if both:
            for cid, sc in zip(ids[1 - o], scores[1 - o]):
                if cid and float(sc) > sims.get(cid, -2.0):
                    sims[cid] = float(sc)
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
        keep = sorted(sims, key=lambda k: -sims[k])[: max_candidates or self.config.max_candidates]
        # Device candidates always survive the cut: the device saw the card at full resolution.
        keep += [cid for cid in device_candidates if cid in sims and cid not in keep]
        return views[o], e, {k: sims[k] for k in keep}

    def _sim(self, cid: str, e: np.ndarray) -> float:
        v = self.index.vector(cid)
        return float(v @ e) if v is not None else 0.0

    # --- features ------------------------------------------------------------------------------------

    def features(self, crop_canon: np.ndarray, sims: dict[str, float], fine: np.ndarray | None = None,
                 surround: V.Surround | None = None, device_candidates: Sequence[str] = ()) -> tuple[list[str], np.ndarray, dict]:
        """``fine``: the same view of the crop from its full resolution, for the region comparisons.
        ``surround``: the same view with the frame around the card (a crop sent with a margin), which the
        homography alignment warps from, so a card foot the device's quad cut off is still compared.
        ``device_candidates``: the device's top-5, best first (its ranking is a feature)."""
        ids = [c for c in sims if c in self.catalog]
        if not ids:
            return [], np.zeros((0, len(FEATURES))), {}
        qf = V.extract(crop_canon)
        if fine is not None:
            qf = V.Features(V.gray_canon(fine), kp=qf.kp, des=qf.des)
        feats = {c: self.catalog.features(c) for c in ids}
        if self.config.pool_same_art:
            # Printings of one illustration share the art, so their keypoint evidence differs only by RANSAC
            # chance (and a few footer keypoints): a reprint must not win on inlier noise. Geometry is checked
            # for the illustration's leading printing (the next one too when that fails), every printing gets
            # the illustration's best evidence, and the region and footer comparisons decide between them.
            groups: dict[str, list[str]] = {}
            for c in sorted(ids, key=lambda c: -sims[c]):
                groups.setdefault(self.meta.get(c, {}).get("illustration_id") or c, []).append(c)
            geo, inl, ratio = {}, {}, {}
            for members in groups.values():
                for j, c in enumerate(members[:2]):
                    if j and geo[members[0]].inliers >= 15:
                        break
                    geo[c] = V.geometric(qf, feats[c])
                checked = [geo[c] for c in members if c in geo]
                best = max(checked, key=lambda g: g.inliers)
                best_ratio = max(g.ratio for g in checked)
                for c in members:
                    geo.setdefault(c, V.Geometric(best.inliers, best.matches, None))  # no homography of its own
                    inl[c], ratio[c] = best.inliers, best_ratio
        else:
            geo = {c: V.geometric(qf, feats[c]) for c in ids}
            inl = {c: geo[c].inliers for c in ids}
            ratio = {c: geo[c].ratio for c in ids}
        best_inl = max(inl.values())
        best_emb = max(sims[c] for c in ids)
        # Contenders: the candidates geometry cannot separate (close inlier counts) + the embedding leader.
        order = sorted(ids, key=lambda c: (-inl[c], -sims[c]))
        contenders = [c for c in order if inl[c] >= max(10, 0.6 * best_inl)]
        if len(contenders) > self.config.max_contenders:
            # The leading illustration's printings are the contest that matters: with pooled evidence a large
            # group of another art (same Pokémon, similar layout) must not crowd one of them out of the cut.
            lead = self.meta.get(contenders[0], {}).get("illustration_id") or contenders[0]
            first = [c for c in contenders if (self.meta.get(c, {}).get("illustration_id") or c) == lead]
            first = first[: max(self.config.max_contenders, self.config.max_siblings)]
            rest = [c for c in contenders if c not in first]
            contenders = first + rest[: max(0, self.config.max_contenders - len(first))]
        if not contenders:
            contenders = sorted(ids, key=lambda c: -sims[c])[:2]
        # One alignment for all contenders (from the best-supported homography): contenders share the art and
        # layout, so comparing each against the *same* warped crop keeps alignment noise out of the contest.
        ref = max((c for c in contenders if geo[c].H is not None), key=lambda c: geo[c].inliers, default=None)
        H = geo[ref].H if ref is not None else None
        wide = surround is not None and H is not None
        q_al = surround.align("norm", H) if wide else V.align(qf.norm, H)
        aligned = {c: q_al for c in contenders}
        # Compare with the catalog faces blurred as much as this crop is (defocus, motion, low resolution).
        sigma = 0.0
        if ref is not None and self.config.match_blur:
            sigma = V.estimate_blur(surround.align("gray", H) if wide else V.align(qf.gray, H), feats[ref].gray)
        norms = {c: feats[c].norm_at(sigma) for c in contenders}
        # the crop as the device rectified it competes with the homography's alignment patch by patch: a
        # homography fitted on the art can be far off at the card's foot
        views = [q_al] if H is None else [q_al, qf.norm]
        pairs: dict[tuple[str, str], float] = {}
        region = V.pairwise_region_scores(views, feats, contenders, norms, grow=int(round(sigma)), pairs_out=pairs)
        sibling = sibling_region(pairs, {c: self.meta.get(c, {}).get("illustration_id") or c for c in ids})
        fm = V.zone_mask("footer")
        footer = {c: (V.ncc(aligned[c], norms[c], fm) if c in aligned else 0.0) for c in ids}
        best_footer = max(footer[c] for c in contenders)
        X = np.array([[sims[c], sims[c] - best_emb, np.log1p(inl[c]), inl[c] / max(best_inl, 1),
                       ratio[c], region.get(c, 0.0), footer[c],
                       (footer[c] - best_footer) if c in aligned else -1.0,
                       sibling.get(c, 0.0),
                       # the device's ranking (not its scores): it saw the whole frame; on hand-held crops with
                       # bad corners its top-1 is right more often than the server's own evidence
                       float(bool(device_candidates) and c == device_candidates[0]),
                       float(c in device_candidates)] for c in ids], np.float64)
        detail = {"contenders": contenders, "inliers": {c: geo[c].inliers for c in ids}, "blur_sigma": sigma}
        return ids, X, detail

    def probabilities(self, X: np.ndarray) -> np.ndarray:
        """P(candidate is the card) for each row; with a null alternative the rows sum to <= 1."""
        t = max(self.calibration.temperature, 1e-6)
        z = X @ self.calibration.vector() / t
        nb = self.calibration.null_bias
        nv = self.calibration.null_vector()
        if nb is not None and nv is not None and len(z):
            nb = nb + float(X[int(np.argmax(z))] @ nv)
        zz = np.append(z, nb / t) if nb is not None else z
        m = zz.max()
        e = np.exp(z - m)
        return e / (e.sum() + (np.exp(nb / t - m) if nb is not None else 0.0))

    # --- entry points --------------------------------------------------------------------------------

    def resolve_crop(self, crop: np.ndarray, device_candidates: Sequence[str] = (),
                     quad: list | None = None, margin: float = 0.0) -> Resolution:
        """``device_candidates``: the device's shortlist, always verified (the device saw the card at full
        resolution). Its scores are deliberately not a feature (fitted as one they lowered held-out top-1 in a
        development run); its ranking is (``device_top1``, ``device_listed``: on hand-held crops the device's
        top-1 is right more often than the server's own evidence, docs/resolver.md). ``margin``: the crop's
        border around the card (``Scan.crop_margin``)."""
        t0 = time.perf_counter()
        embedded = self.embed_views(V.split_margin(crop, margin)[0])
        canon, ids, X, detail = self.evidence(crop, device_candidates, embedded=embedded, margin=margin)
        if not ids:
            return Resolution(None, 0.0, "needs_review", [], quad, (time.perf_counter() - t0) * 1000, {"reason": "no candidates"})
        p = self.probabilities(X)
        if self.config.wide_top_k > self.config.top_k and 1.0 - float(p.sum()) >= self.config.wide_if_null:
            # "None of these" is the likeliest reading: typically a crop whose corners the device got wrong
            # (shifted, zoomed, turned), so neither the device's top-5 nor the embedding's top-10 holds the card.
            # Search wider (both orientations) and keep the wider answer only when it is more confident.
            canon2, ids2, X2, detail2 = self.evidence(crop, device_candidates, embedded=embedded, wide=True,
                                                      margin=margin)
            if ids2:
                p2 = self.probabilities(X2)
                if float(p2.max()) > float(p.max()):
                    canon, ids, X, detail, p = canon2, ids2, X2, detail2, p2
                detail["wide"] = True
        order = np.argsort(-p)
        top = ids[order[0]]
        conf = float(p[order[0]])
        if self.config.ocr and conf < self.config.accept_confidence and V.ocr_available():
            conf, top = self._ocr_tiebreak(canon, ids, p, order, conf, top, detail)
        status = "resolved" if conf >= self.config.accept_confidence else "needs_review"
        cands = [{"card_id": ids[i], "score": round(float(p[i]), 4)} for i in order[:10]]
        return Resolution(top, round(conf, 4), status, cands, quad, round((time.perf_counter() - t0) * 1000, 1), detail)

    def evidence(self, crop: np.ndarray, device_candidates: Sequence[str] = (), *, wide: bool = False,
                 embedded: tuple[list[np.ndarray], np.ndarray] | None = None,
                 margin: float = 0.0) -> tuple[np.ndarray, list[str], np.ndarray, dict]:
        """(oriented canonical crop, shortlist ids, their feature rows, detail) for one crop (with its
        ``margin``): what the calibrated logit scores (``resolve_crop``) and what the calibration is fitted on."""
        card, padded = V.split_margin(crop, margin)
        embedded = embedded if embedded is not None else self.embed_views(card)
        kw = dict(top_k=self.config.wide_top_k, both=True,
                  max_candidates=self.config.wide_top_k + self.config.max_siblings) if wide else {}
        canon, _, sims = self.shortlist(card, device_candidates, embedded=embedded, **kw)
        turned = canon is embedded[0][1]
        surround = V.Surround.of(padded, margin, turned) if padded is not None else None
        ids, X, detail = self.features(canon, sims, self._fine(card, turned), surround, list(device_candidates))
        return canon, ids, X, detail

    @staticmethod
    def _fine(crop: np.ndarray, turned: bool) -> np.ndarray | None:
        """The crop at canonical size from all its pixels (None when it has no more than the search view)."""
        if crop.shape[0] <= V.SEARCH_HEIGHT:
            return None
        c = V.to_canon(crop)
        return cv2.rotate(c, cv2.ROTATE_180) if turned else c

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
