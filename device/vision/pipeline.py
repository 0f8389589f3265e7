"""Frame → identified cards, with milliseconds per stage.

detect (CNN, contour fallback) → geometry gate → rectify → crop gate (blur, glare) → embed → match the
whole catalog → decision. Up to ``max_cards`` (9) cards per frame.

A *soft* gate failure (``detector.soft_failure``: a sliver out of view, glare, slight blur on a confidently
detected card) does not throw the card away: it is identified, never accepted, and reported as
``ambiguous`` with its crop and ``quality_flag`` = the reason, so the server's resolver decides. Hard
failures (mostly out of view, too small, occluded, heavy blur / glare) stay in ``rejected``; so does a soft
card whose match is below ``no_card_score`` (nothing identifiable left: the gate's reason says more than
``no_card``). A clean, confident CNN detection that matches nothing (below ``no_card_score``) is sent as
``ambiguous`` with ``quality_flag`` = low_score (``GateConfig.unmatched_to_server``): a card whose corners
the detector got wrong must not vanish. A quad read landscape also tries its two quarter-turn readings; a
contour-fallback detection (the CNN saw no card there) is ``no_card`` unless it matches as well as an accept.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from device.vision.confidence import ConfidenceModel, features as confidence_features
from device.vision.decision import Thresholds, decide
from device.vision.detector import (CombinedDetector, ContourDetector, Detection, GateConfig, TFLiteDetector,
                                    crop_reject, geometry_reject, inside_fraction, side_ratio, soft_failure)
from device.vision.edges import EdgeModel
from device.vision.embedder import Embedder
from device.vision.geometry import (CARD_ASPECT, EVIDENCE_MARGIN, card_height, evidence_size, is_landscape, order_quad,
                                    portrait_quad, quad_gap, quad_iou, quads_from_a_side, rectify)
from device.vision.matcher import CatalogMatcher, Match
from device.vision.reprints import RerankConfig, Reprints

TOP_K = 5
MAX_SEPARATE = 2  # default zoomed second passes for merged cards per frame (VisionPipeline._split)
MAX_CUT = 3  # detections a frame that may be cut into cards laid edge to edge (VisionPipeline._cut)
CUT_ASPECT_TOL = 0.1  # how far from a card's aspect the parts of such a cut may be
ENDS_ASPECT_TOL = 0.04  # an outline this close to a card's aspect is one card, never read at its ends (_ends)
ENDS_REACH = (0.55, 0.92)  # how far across the outline a card at one of its ends may reach (_ends)
GROW_REACH = (1.08, 2.0)  # how far past the outline, across it, a card the outline is a piece of may reach (_grow)
# how far one side of an outline, or the two sides at one of its corners, is moved in to find the card inside it,
# as a fraction of the outline across that side (_inside)
INSIDE_DEPTHS = (0.12, 0.2)
# a reprint verdict read off a quad closer than this (× the card's height) to another card is flagged touching
TOUCH_GAP = 0.01


class _Passed(NamedTuple):
    """A detection that passed the gate (hard or soft), waiting to be embedded."""

    quad: np.ndarray
    crop: np.ndarray
    quality: dict
    unsure: bool  # orientation unsure: the upside-down reading competes
    flag: str | None  # soft gate failure, None = clean
    source: str  # cnn | contour
    score: float  # the detection's confidence
    whole: Detection | None = None  # the detection this is a piece of (closer look, or a pinched kernel cut)


@dataclass
class CardResult:
    quad: np.ndarray
    decision: str
    card_id: str | None
    score: float
    margin: float
    candidates: list[tuple[str, float]]
    crop: np.ndarray | None = None
    quality: dict = field(default_factory=dict)
    # the soft gate failure this card passed with (glare | too_blurry | partially_out_of_view), or low_score (a
    # confident detection matching nothing), None when clean: such a card is never accepted, and the console
    # and the server see why
    quality_flag: str | None = None
    # ambiguous cards: the card rectified at its own resolution in the frame (geometry.evidence_size) with
    # geometry.EVIDENCE_MARGIN of the frame around it, the crop the server's resolver gets instead of the
    # embedder's ``crop``
    evidence: np.ndarray | None = None
    # the margin is a reprint contest's patch verdict (Match.contest), not an embedding gap
    reprint_contest: bool = False
    # calibrated probability that card_id is right (device.vision.confidence); None: the bundle has no model
    confidence: float | None = None
    # a reprint contest's read: how well its patches were found on the card (Match.patch_fit)
    patch_fit: float | None = None

    def to_json(self) -> dict:
        d = {"card_id": self.card_id, "decision": self.decision, "score": round(self.score, 4),
             "margin": round(self.margin, 4),
             "candidates": [{"card_id": c, "score": round(s, 4)} for c, s in self.candidates],
             "quad": [[round(float(x), 1), round(float(y), 1)] for x, y in self.quad]}
        if self.quality_flag:
            d["quality_flag"] = self.quality_flag
        if self.reprint_contest:
            d["reprint_contest"] = True
            if self.patch_fit is not None:  # under the bundle's min_fit the verdict was left tied
                d["patch_fit"] = round(self.patch_fit, 4)
        if self.confidence is not None:
            d["confidence"] = round(self.confidence, 4)
        return d

    @property
    def crop_margin(self) -> float:
        """The margin of what ``crop_jpeg`` encodes (``Scan.crop_margin``)."""
        return EVIDENCE_MARGIN if self.evidence is not None else 0.0

    def crop_jpeg(self, quality: int = 85) -> bytes | None:
        """The JPEG an ambiguous scan carries: ``evidence`` (with its ``crop_margin``) when there is one, else
        ``crop``."""
        img = self.evidence if self.evidence is not None else self.crop
        if img is None:
            return None
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        return buf.tobytes() if ok else None


@dataclass
class FrameResult:
    cards: list[CardResult]
    rejected: list[tuple[np.ndarray, str]]
    reject_reason: str | None
    ms: dict[str, float]

    def to_json(self) -> dict:
        d: dict = {"cards": [c.to_json() for c in self.cards]}
        if self.reject_reason:
            d["reject_reason"] = self.reject_reason
        if self.rejected:
            d["rejected"] = [{"quad": [[round(float(x), 1), round(float(y), 1)] for x, y in q], "reject_reason": r}
                             for q, r in self.rejected]
        d["ms"] = {k: round(v, 2) for k, v in self.ms.items()}
        return d


def load_manifest(bundle_dir: str | Path, public_key: str | None = None) -> dict:
    """The bundle manifest as a dict; verified against ``public_key`` (fleet key PEM) when given."""
    d = Path(bundle_dir)
    if public_key:
        from device.bundle import verify_bundle

        return verify_bundle(d, public_key).model_dump(mode="json")
    return json.loads((d / "manifest.json").read_text(encoding="utf-8"))


def _short_side_first(quad: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``quad`` ordered so that q[0]→q[1] and q[3]→q[2] are its short sides, with its mean short and long side."""
    q = order_quad(quad)
    sides = [float(np.linalg.norm(q[(i + 1) % 4] - q[i])) for i in range(4)]
    if sides[0] + sides[2] > sides[1] + sides[3]:
        q = np.roll(q, -1, axis=0)
        sides = sides[1:] + sides[:1]
    return q, 0.5 * (sides[0] + sides[2]), 0.5 * (sides[1] + sides[3])


def _moved_in(q: np.ndarray, depths: dict[int, float]) -> np.ndarray:
    """Quad ``q`` with each side j of ``depths`` (j runs q[j] → q[j+1]) moved in towards the side across from it
    by that fraction of the way."""
    out = q.copy()
    for j, depth in depths.items():
        out[j] += depth * (q[(j + 3) % 4] - q[j])
        out[(j + 1) % 4] += depth * (q[(j + 2) % 4] - q[(j + 1) % 4])
    return out


def _replace(todo: list[_Passed], best: dict, old: list[int], new: list[tuple[_Passed, tuple]]) -> None:
    """Detections ``old`` of a frame replaced by the (passed, read) pairs ``new`` (pieces of them, or their whole)."""
    for i in old:
        del best[i]
    for passed, read in new:
        todo.append(passed)
        best[len(todo) - 1] = read


class VisionPipeline:
    def __init__(self, detector, embedder: Embedder, matcher: CatalogMatcher, thresholds: Thresholds,
                 gate: GateConfig | None = None, max_cards: int = 9, bundle_version: str = "",
                 reprints: Reprints | None = None, rerank: RerankConfig | None = None,
                 confidence: ConfidenceModel | None = None, max_separate: int = MAX_SEPARATE):
        self.detector = detector
        self.confidence = confidence
        self.max_separate = max_separate  # zoomed second passes for merged cards per frame; 0 = none
        self.reprints = reprints
        self.rerank = rerank or RerankConfig()
        self.embedder = embedder
        self.matcher = matcher
        self.thresholds = thresholds
        self.gate = gate or GateConfig()
        self.max_cards = max_cards
        self.bundle_version = bundle_version
        # the CNN detector in use, if any (the contour detector is then only its fallback); its zoomed pass and
        # edge snap serve the second looks (``_split``, ``_merge``)
        self._cnn: TFLiteDetector | None = (detector if isinstance(detector, TFLiteDetector)
                                            else getattr(detector, "cnn", None))

    @classmethod
    def from_bundle(cls, bundle_dir: str | Path, num_threads: int | None = None, public_key: str | None = None,
                    detector: str = "auto", gate: GateConfig | None = None) -> "VisionPipeline":
        """detector: auto (CNN + contour cross-check) | cnn | contour."""
        d = Path(bundle_dir)
        man = load_manifest(d, public_key)
        emb_spec = man.get("embedder", {})
        det_spec = man.get("detector", {})
        cnn = None
        if detector in ("auto", "cnn") and (d / "detector.tflite").is_file():
            cnn = TFLiteDetector(str(d / "detector.tflite"), num_threads,
                                 kernel_thresh=float(det_spec.get("kernel_threshold", 0.5)), edges=EdgeModel.load(d),
                                 closer=int(det_spec.get("closer", 0)),
                                 closer_min_zoom=float(det_spec.get("closer_min_zoom", 1.0)))
        if detector == "cnn" and cnn is None:
            raise FileNotFoundError(f"{d}/detector.tflite")
        det = ContourDetector() if detector == "contour" else CombinedDetector(cnn)
        emb = Embedder(str(d / "embedder.tflite"), float(emb_spec.get("strip_weight", 0.4)), num_threads)
        th = Thresholds.from_manifest(man)
        g = gate or GateConfig(**{k: v for k, v in (man.get("thresholds", {}).get("gate") or {}).items()
                                  if k in GateConfig.model_fields})
        matcher = CatalogMatcher.load(d)
        rr = man.get("thresholds", {}).get("reprints") or {}
        return cls(det, emb, matcher, th, g, bundle_version=str(man.get("version", "")),
                   reprints=Reprints.load(d, matcher.ids),
                   rerank=RerankConfig(**rr), confidence=ConfidenceModel.from_manifest(man))

    # ------------------------------------------------------------------------------------------------

    def identify_crop(self, crop: np.ndarray) -> tuple[Match, float, float]:
        """Embed + match one canonical crop → (match, ms embed, ms match)."""
        t0 = time.perf_counter()
        e = self.embedder.embed(crop)
        t1 = time.perf_counter()
        m = self.matcher.topk(e, TOP_K)
        t2 = time.perf_counter()
        return m, (t1 - t0) * 1e3, (t2 - t1) * 1e3

    def identify_quad(self, frame: np.ndarray, quad: np.ndarray) -> Match:
        """The card under ``quad`` identified as ``process`` does (embedding match, then the reprint check),
        without detection or gate: for evaluating identification with known corners."""
        crop = rectify(frame, quad)
        e = self.embedder.embed(crop)
        return self._rerank(self.matcher.topk(e, TOP_K), frame, quad, e)

    def _rerank(self, m: Match, frame: np.ndarray, quad: np.ndarray, e: np.ndarray) -> Match:
        if self.reprints is None:
            return m
        return self.reprints.rerank(m, frame, quad, self.matcher.matrix, e, self.rerank)[0]

    def _gate(self, frame: np.ndarray, det: Detection, rejected: list | None = None) -> _Passed | None:
        """The quality gate for one detection: its ``_Passed`` (flagged when it failed softly), or None (a
        reject, appended to ``rejected`` with its reason)."""
        flag = None
        reason = geometry_reject(det, frame.shape, self.gate)
        if reason:
            if not soft_failure(reason, det, frame.shape, {}, self.gate):
                if rejected is not None:
                    rejected.append((det.quad, reason))
                return None
            flag = reason
        crop = rectify(frame, det.quad)
        reason, quality = crop_reject(crop, self.gate)
        if reason:
            if not soft_failure(reason, det, frame.shape, quality, self.gate):
                if rejected is not None:
                    rejected.append((det.quad, reason))
                return None
            flag = flag or reason
        if flag == "partially_out_of_view":
            quality["inside"] = round(inside_fraction(det.quad, frame.shape), 3)
        unsure = det.source == "contour" or det.info.get("top_margin", 1.0) < 0.15
        return _Passed(det.quad, crop, quality, unsure, flag, det.source, det.score, det.info.get("whole"))

    @staticmethod
    def _readings(frame: np.ndarray, t: _Passed) -> list[tuple[np.ndarray, np.ndarray]]:
        """(quad, crop) of each reading of a passed detection that competes for it. Orientation unsure: the
        upside-down reading (the better match wins). A quad read landscape (top side longer than the left side) is
        most likely a portrait card turned a quarter by the top map (3 of the 9 real-sv1 no_card losses at seed
        900000): the two quarter-turn readings too."""
        out = [(t.quad, t.crop)]
        for r in ([2] if t.unsure else []) + ([1, 3] if is_landscape(t.quad) else []):
            q2 = np.roll(t.quad, r, axis=0)
            out.append((q2, rectify(frame, q2)))
        return out

    def _read(self, frame: np.ndarray, t: _Passed) -> tuple[Match, np.ndarray, np.ndarray, np.ndarray]:
        """(match, quad, crop, embedding) of one passed detection: its best reading, re-ranked (``process`` does
        the same for all detections of a frame in one batch)."""
        reads = []
        for quad, crop in self._readings(frame, t):
            e = self.embedder.embed(crop)
            reads.append((self.matcher.topk(e, TOP_K), quad, crop, e))
        m, quad, crop, e = max(reads, key=lambda x: x[0].score)
        return self._rerank(m, frame, quad, e), quad, crop, e

    def _piece(self, frame: np.ndarray, quad: np.ndarray, score: float, info: dict, unsure: bool = True,
               whole: Detection | None = None) -> _Passed | None:
        """A quad the pipeline drew itself — a part, an end or the inside of an outline, the outline of pieces —
        as a detection: edge-snapped, gated and flagged ``pieces`` (read, never accepted: the confidence was never
        calibrated on such quads; the server gets the crop; the gate's own soft flag stays in the quality).
        ``unsure``: both readings (a quad with no top side of its own); ``whole``: the detection it is a piece of
        (``_reunite``). None when the gate rejects it."""
        det = Detection(quad, score, "cnn", 1.0, info)
        if self._cnn is not None:
            self._cnn.snap(frame, det)
        passed = self._gate(frame, det)
        return None if passed is None else passed._replace(unsure=unsure, flag="pieces", whole=whole)

    def _split(self, frame: np.ndarray, t: _Passed, whole: Match):
        """Pieces of a detection that is several touching or overlapping cards (``TFLiteDetector.separate``), read
        as cards: [(passed, read)] of the pieces that pass the gate (a sliver of a card under another is a
        too_small reject) when one of them at least matches better than the whole did, else None. One piece: the
        same card seen closer, with finer corners (the hand-held cards of ``models.eval.final`` that matched
        nothing: median quad IoU 0.79 with the truth, accepted ones 0.99), which replaces the detection when it
        reads better. Only for a CNN detection that cannot be accepted as it reads (score below the accept floor,
        ``Thresholds.accept_floor``), and split into several only when it matched nothing (score below
        no_card_score): the zoomed pass costs one more inference."""
        th = self.thresholds
        if (self._cnn is None or t.source != "cnn" or (t.whole is not None and not t.whole.info.get("pinched"))
                or whole.score >= max(th.no_card_score, th.accept_floor)):
            return None  # (a piece of the detector's own closer look: that was this same zoomed pass)
        pieces = self._cnn.separate(frame, t.quad, score=t.score)
        if not pieces or (len(pieces) >= 2 and whole.score >= th.no_card_score):
            return None  # a card that matched something is split only when it matched nothing
        out = []
        for det in pieces:
            passed = self._gate(frame, det)
            if passed is not None:
                out.append((passed, self._read(frame, passed)))
        if not any(read[0].score > whole.score for _, read in out):
            return None
        return out

    def _cut(self, frame: np.ndarray, t: _Passed, whole: Match) -> list[tuple[_Passed, tuple]] | None:
        """Cards laid edge to edge that both of the detector's looks saw as one: two portrait cards side by side
        make a landscape card's outline (126 × 88 mm), two or more along their length a long strip. When a CNN
        detection matched nothing and cutting it across its long side into k equal parts (k = 2–4, the one
        whose parts have a card's aspect) gives parts that each read better than the whole and one of which
        matches a catalog card (≥ no_card_score), the parts (edge-snapped: the cut need not lie on the seam)
        replace it. Flagged ``pieces`` like ``_merge``'s outline: read, never accepted (the calibration never saw such
        quads); the server gets the crops. Half of one card reads as nothing, so single cards stay whole.
        Costs k warps + embeds + matches, only for detections that matched nothing. A piece of the detector's
        closer look or of a pinched kernel (``t.whole``) is cut too — a row of three or more cards comes apart
        there into pieces that still hold two — and its parts stay pieces of that whole for ``_reunite``."""
        th = self.thresholds
        if self._cnn is None or t.source != "cnn" or whole.score >= th.no_card_score:
            return None
        q, short, long_ = _short_side_first(t.quad)  # cut along q[0]→q[3]
        k = min(range(2, 5), key=lambda n: abs(min(short, long_ / n) / max(short, long_ / n) - CARD_ASPECT))
        if abs(min(short, long_ / k) / max(short, long_ / k) - CARD_ASPECT) > CUT_ASPECT_TOL:
            return None
        out = []
        for j in range(k):
            a, b = j / k, (j + 1) / k
            piece = np.float32([q[0] + a * (q[3] - q[0]), q[1] + a * (q[2] - q[1]),
                                q[1] + b * (q[2] - q[1]), q[0] + b * (q[3] - q[0])])
            passed = self._piece(frame, portrait_quad(order_quad(piece)), t.score, {"cut": k}, whole=t.whole)
            if passed is None:
                return None
            read = self._read(frame, passed)
            if read[0].score <= whole.score:
                return None
            out.append((passed, read))
        if max(r[0].score for _, r in out) < th.no_card_score:
            return None
        return out

    def _from_a_side(self, frame: np.ndarray, t: _Passed, whole: Match, reach: tuple[float, float],
                     key: str) -> list[tuple[_Passed, tuple]]:
        """Card-shaped quads that share one side with outline ``t`` — that side the card's width or its height —
        and reach ``reach`` of the way across it (below 1: a card at one of its ends, ``_ends``; above: the card
        the outline is a piece of, ``_grow``), edge-snapped, read (both ways up: a quad of its own has no top) and
        kept when they match a catalog card better than the outline did: [(passed, read)], ``info[key]`` = the
        side. None of them for an outline of a card's shape, or one that matched a card."""
        th = self.thresholds
        if (self._cnn is None or t.source != "cnn" or whole.score >= th.no_card_score
                or abs(side_ratio(t.quad) - CARD_ASPECT) <= ENDS_ASPECT_TOL):
            return []
        got = []
        for i, quad in quads_from_a_side(t.quad, reach):
            passed = self._piece(frame, portrait_quad(order_quad(quad)), t.score, {key: i}, whole=t.whole)
            if passed is None:
                continue
            read = self._read(frame, passed)
            if read[0].score > whole.score and read[0].score >= th.no_card_score:
                got.append((passed, read))
        return got

    def _ends(self, frame: np.ndarray, t: _Passed, whole: Match) -> list[tuple[_Passed, tuple]] | None:
        """A card the detector merged with what lies against it (another card shifted against it or lying partly
        over it, a non-catalog card) into one outline of neither one card's nor two cards' shape (``_cut``'s equal
        parts). A card-shaped quad at each end of the outline, along each of its sides (the side the card's width
        or its height, the card reaching 55–92 % of the way across), edge-snapped and read; the best that match a
        card better than the whole (at most two, apart) replace it, flagged ``pieces`` (never accepted). Only for
        a CNN detection that matched nothing and is no card's shape (a non-catalog card has one): up to eight
        reads (frames of non-catalog objects, whose detections match nothing, pay for them: +12 ms a frame median,
        ``tests/bench/bench_device.py --foreign``). Pieces of a closer look or a pinched kernel too, as ``_cut``."""
        got = self._from_a_side(frame, t, whole, ENDS_REACH, "end")
        out: list[tuple[_Passed, tuple]] = []
        for passed, read in sorted(got, key=lambda pr: -pr[1][0].score):
            if len(out) < 2 and all(quad_iou(passed.quad, o.quad) < 0.3 for o, _ in out):
                out.append((passed, read))
        return out or None

    def _grow(self, frame: np.ndarray, t: _Passed, whole: Match) -> list[tuple[_Passed, tuple]] | None:
        """A card the detector saw only part of — cut across by the fingers holding it, or at the line where a
        full-art card's art runs into its text box — so that the outline, a piece of the card, matched nothing
        (simulated hand-held real sv1 scans, seed 780000: 9 of the 30 cards read wrong were read through a quad
        lying ≥ 90 % on the card and covering 51–68 % of it; docs/device-vision.md). The outline carried on past
        one of its sides, across, until it has a card's aspect (the side the card's width or its height, the card
        reaching 1.08–2× as far across as the outline: ``GROW_REACH``), edge-snapped and read; the best that
        matches a card better than the piece replaces it, flagged ``pieces`` (never accepted). Only for a CNN
        detection that matched nothing and is no card's shape, after ``_ends`` found nothing at its ends: up to
        eight reads (``_grown_or_inside``)."""
        got = self._from_a_side(frame, t, whole, GROW_REACH, "grown")
        if not got:
            return None
        return [max(got, key=lambda pr: pr[1][0].score)]

    def _inside(self, frame: np.ndarray, t: _Passed, whole: Match) -> list[tuple[_Passed, tuple]] | None:
        """A card whose outline took in what lies around it — the edges of the cards under it in a pile or a
        fanned hand, a neighbour's border, a shadow — so that the outline, card-shaped or not, matched nothing
        (simulated fans: most wrong reads had corners 20 px or more off, on quads still overlapping the card by
        IoU 0.6–0.9). The outline with one side, or the two sides at one corner, moved in by ``INSIDE_DEPTHS``
        of the outline across them (16 quads), each edge-snapped and read the way up the detection was; the best
        that matches a catalog card better than the outline did replaces it, flagged ``pieces`` (never accepted:
        the calibration never saw such quads; the server gets the crop). Only for a CNN detection that matched
        nothing, after ``_cut`` and ``_ends`` found nothing (``_grown_or_inside``); the candidates' embeddings are
        matched in one product and only the best is re-ranked. Frames of non-catalog objects, whose outlines all
        match nothing, pay for it: 33 → 94 ms a frame median (``tests/bench/bench_device.py --threads 1 --frames
        200 --stacks 0 --foreign``, docs/device-vision.md, eighteenth session): 16 edge snaps, gates and 16–32
        embeddings an outline."""
        th = self.thresholds
        if self._cnn is None or t.source != "cnn" or whole.score >= th.no_card_score:
            return None
        q = np.asarray(t.quad, np.float32)  # TL, TR, BR, BL of the card as the detection has it: keeps its top
        cands = [_moved_in(q, dict.fromkeys(sides, depth)) for depth in INSIDE_DEPTHS
                 for i in range(4) for sides in ((i,), (i, (i + 1) % 4))]  # side i; sides i, i+1 (their corner)
        passed_all = [p for qq in cands
                      if (p := self._piece(frame, qq, t.score, {"inside": True}, t.unsure, t.whole)) is not None]
        variants = [(k, quad, crop) for k, p in enumerate(passed_all) for quad, crop in self._readings(frame, p)]
        if not variants:
            return None
        embs = np.stack([self.embedder.embed(crop) for _, _, crop in variants])
        matches = self.matcher.topk_many(embs, TOP_K)
        j = max(range(len(variants)), key=lambda v: matches[v].score)
        if matches[j].score <= whole.score or matches[j].score < th.no_card_score:
            return None
        k, quad, crop = variants[j]
        return [(passed_all[k], (self._rerank(matches[j], frame, quad, embs[j]), quad, crop, embs[j]))]

    def _grown_or_inside(self, frame: np.ndarray, t: _Passed, whole: Match) -> list[tuple[_Passed, tuple]] | None:
        """The better read of ``_grow`` (the outline a piece of the card) and ``_inside`` (the outline took in
        more than the card): either may find some card reading a little better than the outline where the other
        finds the card itself. Both run only for an outline that matched nothing and that ``_ends`` did not read."""
        found = [p for p in (self._grow(frame, t, whole), self._inside(frame, t, whole)) if p]
        return max(found, key=lambda parts: parts[0][1][0].score) if found else None

    def _merge(self, frame: np.ndarray, todo: list[_Passed], best: dict) -> list[tuple[list[int], _Passed, tuple]]:
        """Cards the detector cut into pieces (a full-art card whose art runs into a mat of its colours: a
        simulated stack's card was read in 2-3 pieces in most of its frames and never counted; a real sv1 scan held
        in the hand cut at its text box): when CNN detections of the frame that match no catalog card together
        outline one card (the minimum-area rectangle around them has a card's aspect and they fill it), that
        outline, edge-snapped, is read as a card. All such pieces of the frame together first, then pairs of them
        (a frame holding two cards cut up, or a cut card beside another piece of nothing), the fullest outline
        first. Returns [(indices of the pieces, passed, read)] of the outlines that match a card better than
        each of their pieces did. Costs one warp + embed + match per card-shaped outline, only in frames with
        such pieces."""
        low = [i for i in best if todo[i].source == "cnn" and best[i][0].score < self.thresholds.no_card_score]
        out = []
        while len(low) >= 2:
            pairs = [list(g) for g in itertools.combinations(low, 2)] if len(low) > 2 else []
            groups = [(low, self._outline(todo, low))] + sorted(((g, self._outline(todo, g)) for g in pairs),
                                                                key=lambda go: -go[1][1])
            for group, outline in groups:
                got = self._merge_group(frame, todo, best, group, outline)
                if got is not None:
                    out.append(got)
                    low = [i for i in low if i not in group]
                    break
            else:
                break
        return out

    @staticmethod
    def _outline(todo: list[_Passed], group: list[int]) -> tuple[tuple, float]:
        """The minimum-area rectangle around ``group``'s quads and how well they fill it (0 when it has no card's
        aspect)."""
        hull = cv2.convexHull(np.concatenate([todo[i].quad for i in group]).astype(np.float32))
        rect = cv2.minAreaRect(hull)
        w, h = sorted(rect[1])
        if h <= 0 or abs(w / h - CARD_ASPECT) > 0.12:
            return rect, 0.0
        return rect, cv2.contourArea(hull) / (w * h)

    def _merge_group(self, frame: np.ndarray, todo: list[_Passed], best: dict, group: list[int],
                     outline: tuple[tuple, float]) -> tuple[list[int], _Passed, tuple] | None:
        rect, fill = outline  # ``_outline(todo, group)``
        if fill < 0.85:
            return None
        quad = portrait_quad(order_quad(cv2.boxPoints(rect)))
        passed = self._piece(frame, quad, max(todo[i].score for i in group), {"merged": len(group)})
        if passed is None:  # (a rectangle has no top side: both readings)
            return None
        read = self._read(frame, passed)
        if read[0].score < self.thresholds.no_card_score or read[0].score <= max(best[i][0].score for i in group):
            return None
        return group, passed, read

    def _gate_all(self, frame: np.ndarray, dets: list[Detection], todo: list[_Passed], rejected: list
                  ) -> tuple[dict[int, Detection], dict[int, _Passed], dict[int, list]]:
        """The gate for a frame's detections: those that pass go to ``todo``, the rejects to ``rejected``. Returns
        the detections they are pieces of, by id; of those parted into the card on top and the covered card's
        rest (``TFLiteDetector._on_top``), the card on top as it passed the gate, and the rest's reject held back
        (a covered card only if the parting stands: ``process``). A card on top that fails the gate (too small,
        out of view: a piece of one card, mostly), or that the frame's ``max_cards`` left out, takes its rest with
        it: the whole goes on as the first pass saw it."""
        wholes: dict[int, Detection] = {}
        tops: dict[int, _Passed] = {}
        held: dict[int, list] = {}
        for det in dets:
            parted = "on_top" in det.info or det.info.get("covered")
            if "whole" in det.info:
                wholes[id(det.info["whole"])] = det.info["whole"]
            passed = self._gate(frame, det, held.setdefault(id(det.info["whole"]), []) if parted else rejected)
            if passed is not None:
                todo.append(passed)
                if "on_top" in det.info:
                    tops[id(det.info["whole"])] = passed
        for key in [k for k in held if k not in tops]:
            whole = wholes.pop(key)
            del held[key]
            todo[:] = [t for t in todo if t.whole is not whole]
            det = Detection(whole.quad.copy(), whole.score, "cnn", whole.solidity, dict(whole.info))
            if self._cnn is not None:
                self._cnn.snap(frame, det)
            passed = self._gate(frame, det, rejected)
            if passed is not None:
                todo.append(passed)
        return wholes, tops, held

    def _reunite(self, frame: np.ndarray, wholes: dict[int, Detection], todo: list[_Passed], best: dict,
                 tops: dict[int, _Passed] | None = None) -> list[int]:
        """The detector's closer look took a detection apart into overlapping cards (``TFLiteDetector.closer``),
        or its first pass cut a kernel pinched at a neck (``split_kernels``: the whole is marked ``pinched``),
        which it tells from one card cut up by a finger or at its text box by shape alone. The catalog can tell
        better: when no piece reads well enough to be accepted and the whole reads better than every piece, the
        whole (edge-snapped) replaces them, in ``todo`` / ``best``; a pinched whole must also read as well as an
        accept. Costs one warp + embed + match per taken-apart detection that read badly. ``tops``: wholes parted
        into the card on top and the covered card's rest (``TFLiteDetector._on_top``), by id, with the card on top:
        such a whole is read whatever its pieces read, and replaces them unless the card on top reads as well as an
        accept and better than the whole (a tilted card's art window can read as some card; a card the whole
        reads badly may still be found by the looks that follow). Returns the ids (keys of ``wholes``) of the
        wholes read instead of their pieces."""
        restored = []
        for key, whole in wholes.items():
            idx = [i for i in best if todo[i].whole is whole]
            top = (tops or {}).get(key)
            if top is None and any(best[i][0].score >= self.thresholds.accept_floor for i in idx):
                continue
            det = Detection(whole.quad.copy(), whole.score, "cnn", whole.solidity, dict(whole.info))
            if self._cnn is not None:
                self._cnn.snap(frame, det)
            passed = self._gate(frame, det)
            if passed is None:
                continue
            read = self._read(frame, passed)
            if top is None:
                if idx and read[0].score <= max(best[i][0].score for i in idx):
                    continue
            else:
                on_top = [best[i][0].score for i in idx if todo[i] is top]
                if on_top and on_top[0] >= max(read[0].score, self.thresholds.accept_floor):
                    continue  # the card on top reads as a card, and better than the pile's outline: a pile
            if whole.info.get("pinched") and read[0].score < self.thresholds.accept_floor:
                continue  # a kernel cut at its neck is two touching cards far more often than one card
            _replace(todo, best, idx, [(passed, read)])
            restored.append(key)
        return restored

    def _touching(self, todo: list[_Passed], best: dict, rejected: list, outlines: list) -> set[int]:
        """The clean reprint-contest reads whose quad touches or overlaps another card of the frame (within
        TOUCH_GAP of its height): the contest is decided by patches a few pixels wide at exact places on the
        card, and where a card lies against another the edge snap can take the neighbour's edge for its own.
        Flagged ``touching``, such a card goes to the server as ambiguous rather than be accepted: on cards laid
        edge to edge (``models.vision_eval`` set ``full_catalog_row``, 1,000 frames, demo-12) contest accepts
        162 → 30 and wrong ones 12 → 1 (docs/device-vision.md, fifteenth session). ``outlines``: detections
        replaced by a card read at one of their ends or inside them (``_ends``, ``_inside``), whose rest is another
        card or object (an outline ``_grow`` carried on lies on the card read from it: it adds no neighbour)."""
        out = set()
        for i, (m, quad, _, _) in best.items():
            if not m.contest or todo[i].flag or m.score < self.thresholds.no_card_score:
                continue
            limit = TOUCH_GAP * card_height(quad)
            others = [best[j][1] for j in best if j != i] + [q for q, _ in rejected] + [
                o for o in outlines if quad_iou(o, quad) < 0.5]  # not the card's own outline
            if any(quad_gap(quad, o) <= limit for o in others):
                out.add(i)
        return out

    def process(self, frame: np.ndarray) -> FrameResult:
        t0 = time.perf_counter()
        dets: list[Detection] = self.detector.detect(frame)[: self.max_cards]
        t1 = time.perf_counter()
        ms = {"detect": (t1 - t0) * 1e3, "embed": 0.0, "match": 0.0}
        cards: list[CardResult] = []
        rejected: list[tuple[np.ndarray, str]] = []
        todo: list[_Passed] = []
        wholes, tops, held = self._gate_all(frame, dets, todo, rejected)
        variants = [(i, quad, crop) for i, t in enumerate(todo) for quad, crop in self._readings(frame, t)]
        if variants:
            t2 = time.perf_counter()
            embs = np.stack([self.embedder.embed(c) for _, _, c in variants])
            t3 = time.perf_counter()
            matches = self.matcher.topk_many(embs, TOP_K)
            t4 = time.perf_counter()
            ms["embed"] += (t3 - t2) * 1e3
            ms["match"] += (t4 - t3) * 1e3
            best: dict[int, tuple[Match, np.ndarray, np.ndarray, np.ndarray]] = {}
            for (i, quad, crop), m, e in zip(variants, matches, embs):
                if i not in best or m.score > best[i][0].score:
                    best[i] = (m, quad, crop, e)
            t5 = time.perf_counter()
            for i, (m, quad, crop, e) in best.items():
                best[i] = (self._rerank(m, frame, quad, e), quad, crop, e)
            ms["match"] += (time.perf_counter() - t5) * 1e3
            t6 = time.perf_counter()
            # a card whose kernel the first pass cut at a neck is read whole before its pieces are looked at
            # closer (the zoomed pass on a piece of one card finds that same card again, once per piece); so is a
            # pile parted into the card on top and the covered card's rest (TFLiteDetector._on_top): one card whose
            # outline is no card's shape (tilted, fingers across it) shows edges across it — its art window, its
            # text box — where a card on top would end, and read whole it still gets every look below. What the
            # closer look took apart, after
            early = {k: w for k, w in wholes.items() if w.info.get("pinched") or k in tops}
            closer = {k: w for k, w in wholes.items() if k not in early}
            restored = set(self._reunite(frame, early, todo, best, tops)) if early else set()
            for k, rest in held.items():  # a covered card's rest is one where the parting stands
                if k not in restored:
                    rejected += rest
            # the worst-read detections first, at most max_separate a frame: a binder page of nine small cards
            # would otherwise pay up to nine more inferences
            for i in sorted(best, key=lambda k: best[k][0].score)[:self.max_separate]:
                pieces = self._split(frame, todo[i], best[i][0])
                if pieces:
                    _replace(todo, best, [i], pieces)
            outlines = []  # outlines read at one end, inside or past (_ends, _grown_or_inside): see _touching
            for i in sorted(best, key=lambda k: best[k][0].score)[:MAX_CUT]:
                parts = self._cut(frame, todo[i], best[i][0])
                if not parts:
                    parts = self._ends(frame, todo[i], best[i][0]) or self._grown_or_inside(frame, todo[i], best[i][0])
                    outlines += [todo[i].quad] if parts else []
                if parts:
                    _replace(todo, best, [i], parts)
            if closer:
                self._reunite(frame, closer, todo, best)
            for pieces, passed, read in self._merge(frame, todo, best):
                _replace(todo, best, pieces, [(passed, read)])
            ms["detect"] += (time.perf_counter() - t6) * 1e3  # mostly the zoomed detector pass
            touching = self._touching(todo, best, rejected, outlines)
            for i in sorted(best):
                m, quad, crop, _ = best[i]
                flag = todo[i].flag or ("touching" if i in touching else None)
                height = card_height(quad)
                q = todo[i].quality
                conf = None if self.confidence is None else self.confidence(confidence_features(
                    m.score, m.margin, m.contest, height, q.get("sharpness"), q.get("glare")))
                dec = decide(m, self.thresholds, height=height, confidence=conf, flag=flag)
                if todo[i].source == "contour" and self._cnn is not None and m.score < self.thresholds.accept_score:
                    # the classical fallback where the CNN saw no card: on simulated captures it never once
                    # found a true card (≈ 5,500 cards, seed 900000) but fires on playmat prints and photo
                    # backgrounds, whose matches reach 0.45 — only a match as good as an accept makes it a card
                    dec = "no_card"
                if flag and dec == "no_card":  # nothing identifiable behind the failed gate: the gate's reject
                    rejected.append((quad, flag))
                    continue
                if (dec == "no_card" and self.gate.unmatched_to_server and todo[i].source == "cnn"
                        and todo[i].score >= self.gate.soft_min_detection_score):
                    # A confident detection that matches nothing: on the real sv1 scans (seed 900000) mostly a
                    # card whose corners are 40-130 px off (fingers, motion blur, a toploader), scoring like a
                    # non-catalog object, so the score cannot tell them apart. The server looks again (wider
                    # search, the frame around the quad) or a person does; the device never accepts it.
                    dec, flag = "ambiguous", "low_score"
                # card_id: the decided card (accept) or the best guess (ambiguous); None for no_card
                evidence = (rectify(frame, quad, evidence_size(quad), EVIDENCE_MARGIN) if dec == "ambiguous"
                            else None)
                cards.append(CardResult(quad, dec, m.card_ids[0] if dec != "no_card" else None, m.score, m.margin,
                                        list(zip(m.card_ids, m.scores)), crop, todo[i].quality, flag, evidence,
                                        m.contest, None if dec == "no_card" else conf, m.patch_fit))
        reject_reason = None
        if not cards:
            reject_reason = rejected[0][1] if rejected else "no_card"
        elif all(c.decision == "no_card" for c in cards):
            reject_reason = "no_card"
        ms["total"] = (time.perf_counter() - t0) * 1e3
        return FrameResult(cards, rejected, reject_reason, ms)
