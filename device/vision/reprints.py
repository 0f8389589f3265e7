"""Tell reprints apart on the device: the few pixels where printings of one illustration differ.

Why: reprints share the art, so the embedder puts them on top of each other (163 of the 167 device errors of
the full-catalog eval-final run with bundle demo-2, docs/device-vision.md), and the margin rule then sends every
one of them to the server. What separates them is small and at fixed places of the card: the collector number, the set
symbol, a rarity mark. The bundle stores, per *contest* (printings of one illustration whose faces differ in
a few places only), the boxes where they differ, the contest's mean face there and each printing's
difference from it (``catalog/reprints.npz``, built by ``models.reprints``). At match time the printings of
the leading candidate's contest are compared with the card, box by box, at ``CANVAS`` resolution (half of it for contests whose boxes are large): each box is located by the contest's
mean face (the quad's corners are a few pixels off), each printing's patch slides a few pixels more and keeps
its best normalised cross-correlation; the two best printings are compared once more on the pixels where
they differ (``Reprints.pair_win``); a verdict the embedding disputes (it ranks another printing first by
``RerankConfig.dispute``) is left without a margin, and so is one whose patches fit the card poorly even when
looked for again within a wider search (``RerankConfig.min_fit``: they were not found on the card). That moves
the contenders' scores (``Reprints.rerank``); the accept rule then works on the moved scores and margin, with
thresholds calibrated on captures scored the same way (``models.build_bundle.calibrate``).

Printings that differ over a large part of the face (another layout or frame) are no contest: the embedder
separates those already, and their patches would not be small.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from device.vision.geometry import EVIDENCE_MAX_SIZE, rectify
from device.vision.matcher import Match

FILE = "catalog/reprints.npz"
# The faces are compared at the server's evidence resolution: a collector-number digit is 7 px tall there
# (4 px in the embedder's 268-px crop).
CANVAS = EVIDENCE_MAX_SIZE  # (W, H)
# A light low-pass of both the card and the stored patches before comparing (JPEG blocks, sensor noise). More
# (sigma 1.2, 1.7) blurred the glyphs together and decided fewer reprint contests safely on development
# captures (docs/device-vision.md, "Reprints on the device").
SIGMA = 0.5
PAIR_DIFF = 6.0  # gray levels (low-passed) at which two printings' patches count as different there
LOCATE_MIN = 0.3  # a weaker fit of a box's surroundings keeps the quad's placement


class RerankConfig(BaseModel):
    """How the reprint patches move the scores (the bundle's ``thresholds.reprints``: the accept thresholds
    are calibrated with these values, so they travel together)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    weight: float = Field(0.15, ge=0.0, description="Score moved per unit of patch correlation a printing lacks "
                                                     "against the contest's best.")
    # 28 / 14 while the corners were ≈ 5 px off (the classical edge snap); with the learned edge snap (median
    # ≈ 0.6 px) a wide search lets a printing's patch slide onto a neighbouring line of text that happens to fit
    # it better. Development captures (scanner box, seed 761000, 1,500 frames): device top-1 98.20 → 98.47 %,
    # best clean accept rate 89.7 → 91.4 %; 6 / 3 and 14 / 7 were worse (docs/device-vision.md).
    search: int = Field(10, ge=0, le=100, description="Pixels (at CANVAS) within which each box is located by the "
                                                      "contest's mean face (0 = the quad's placement).")
    slack: int = Field(5, ge=0, le=100, description="Pixels each printing's patch may slide around that.")
    pairwise: bool = Field(True, description="Weigh the two best printings' margin on the pixels where they "
                                             "differ too (Reprints.pair_win), not on their whole boxes only.")
    max_contenders: int = Field(8, ge=2, le=64, description="Printings of the leading contest compared, best by "
                                                            "embedding score.")
    # A card slid onto another is outlined with the strip of the one below it (simulated stack seeds 5009 and 5038): the
    # boxes land on a rule line beside the number, and the patches fit neither printing (0.50-0.53 and 0.54-0.62 in the
    # frames the device accepted, `tests/bench/bench_device.py --trace 5009` with min_fit 0) — a coin toss. Located
    # again within 30 px they fit 0.86-0.91 and 0.85-0.86 and name the right printing (the same trace with the default).
    # 0.75: on development captures (seed 761000, all evaluation sets) every band of contest accepts under it held wrong
    # ones (2 of 21 under 0.6, 2 of 71 at 0.6-0.75), none of 304 above (docs/device-vision.md, twenty-second session).
    min_fit: float = Field(0.75, ge=0.0, le=1.0, description="Patch fit (the leading printing's area-weighted best "
                           "correlation) below which the boxes are located again within wide_search, and below "
                           "which, still, the verdict is left tied (never accepted): the patches were not found on "
                           "the card. 0: every verdict stands.")
    wide_search: int = Field(30, ge=0, le=100, description="Pixels (at CANVAS) within which the boxes are located "
                             "again when the patches fit below min_fit (a wider search everywhere lets a patch "
                             "slide onto a neighbouring line of text that fits it better: see search).")
    dispute: float | None = Field(
        0.005, ge=0.0, le=1.0, description="Embedding score by which another printing of the contest must lead the "
        "patches' choice for the verdict to count as disputed: the two best are then left tied (no accept, "
        "device.vision.decision.unreadable_contest). None: the patches' verdict stands alone.")


class Reprints:
    """The bundle's reprint patches: per contest (near-identical printings of one illustration), the boxes
    where they differ, the contest's mean face in those boxes and each printing's difference from it."""

    def __init__(self, data: dict[str, np.ndarray], ids: list[str]):
        try:
            self.boxes = data["boxes"].astype(np.int32)  # [B, 4] y0, y1, x0, x1 at CANVAS / scale
            self.group_box_start = data["group_box_start"].astype(np.int64)  # [G + 1]
            self.group_scale = data["group_scale"].astype(np.int64)  # [G] 1 (full) or 2 (half resolution)
            self.member_row = data["member_row"].astype(np.int64)  # [M] row in the catalog
            self.member_group = data["member_group"].astype(np.int64)  # [M]
            self.member_pix_start = data["member_pix_start"].astype(np.int64)  # [M + 1]
            self.residual = data["residual"]  # int8: printing - mean, flattened member by member, box by box
            self.box_start = data["box_start"].astype(np.int64)  # [B + 1]
            self.box_mean = data["box_mean"]  # uint8: the contest's mean face, flattened box by box
        except KeyError as exc:
            raise ValueError(f"{FILE}: missing array {exc}") from None
        if (self.residual.dtype != np.int8 or self.box_mean.dtype != np.uint8
                or len(self.member_pix_start) != len(self.member_row) + 1 or len(self.box_start) != len(self.boxes) + 1
                or len(self.group_scale) + 1 != len(self.group_box_start)):
            raise ValueError(f"{FILE}: inconsistent arrays")
        if self.member_row.size and int(self.member_row.max()) >= len(ids):
            raise ValueError(f"{FILE}: member rows beyond the catalog's {len(ids)} ids")
        self.ids = ids
        self.member_of_row = {int(r): m for m, r in enumerate(self.member_row)}
        self.members_of_group: dict[int, list[int]] = {}
        for m, g in enumerate(self.member_group):
            self.members_of_group.setdefault(int(g), []).append(m)
        self.row_of = {c: i for i, c in enumerate(ids)}
        self._tpl: dict[int, list[np.ndarray]] = {}
        self._mean: dict[int, np.ndarray] = {}

    @classmethod
    def load(cls, bundle_dir: str | Path, ids: list[str]) -> "Reprints | None":
        p = Path(bundle_dir) / FILE
        if not p.is_file():
            return None  # an older bundle: the embedding ranking alone
        with np.load(p, allow_pickle=False) as z:
            return cls({k: z[k] for k in z.files}, ids)

    def __len__(self) -> int:
        return len(self.member_row)

    def group_boxes(self, g: int) -> np.ndarray:
        return self.boxes[self.group_box_start[g]:self.group_box_start[g + 1]]

    def mean(self, box: int) -> np.ndarray:
        """The contest's mean face in ``box``, low-passed, float32."""
        t = self._mean.get(box)
        if t is None:
            y0, y1, x0, x1 = self.boxes[box]
            m = self.box_mean[self.box_start[box]:self.box_start[box + 1]].astype(np.float32)
            t = self._mean[box] = cv2.GaussianBlur(m.reshape(y1 - y0, x1 - x0), (0, 0), SIGMA)
        return t

    def templates(self, m: int) -> list[np.ndarray]:
        """Member ``m``'s patches, low-passed, float32 (cached: a stack shows one card many times)."""
        t = self._tpl.get(m)
        if t is None:
            g = int(self.member_group[m])
            t, o = [], int(self.member_pix_start[m])
            for b, (y0, y1, x0, x1) in enumerate(self.group_boxes(g), int(self.group_box_start[g])):
                n = (y1 - y0) * (x1 - x0)
                mean = self.box_mean[self.box_start[b]:self.box_start[b] + n].astype(np.float32)
                patch = (mean + self.residual[o:o + n]).reshape(y1 - y0, x1 - x0)
                t.append(cv2.GaussianBlur(patch, (0, 0), SIGMA))
                o += n
            if len(self._tpl) > 4096:
                self._tpl.clear()
                self._mean.clear()
            self._tpl[m] = t
        return t

    def contenders(self, match: Match, matrix: np.ndarray, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """(member, embedding score) of the leading candidate's contest, best ``k`` by score."""
        lead = self.member_of_row.get(self.row_of.get(match.card_ids[0], -1))
        if lead is None:
            return []
        members = self.members_of_group[int(self.member_group[lead])]
        rows = self.member_row[members]
        q = query / max(float(np.linalg.norm(query)), 1e-8)
        s = matrix[rows] @ q
        order = np.argsort(-s)[:k]
        return [(members[i], float(s[i])) for i in order]

    def patch_scores(self, card_gray: np.ndarray, members: list[int], slack: int, search: int = 0,
                     reads: dict | None = None) -> np.ndarray:
        """Area-weighted best NCC of each member's patches in the card (``card_gray``: gray, low-passed, at
        the contest's scale). Each box is first located by the contest's mean face within ``search`` px (the
        quad's corners are a few px off), then every printing's patch slides ``slack`` px around that.
        ``reads`` receives the card's pixels at each member's best position: (box index, member) -> patch."""
        g = int(self.member_group[members[0]])
        H, W = card_gray.shape
        tot = np.zeros(len(members))
        wsum = 0.0
        for b, (y0, y1, x0, x1) in enumerate(self.group_boxes(g)):
            box = int(self.group_box_start[g]) + b
            if search:
                dy, dx = _locate(card_gray, self.mean(box), (y0, y1, x0, x1), search)
                y0, y1, x0, x1 = y0 + dy, y1 + dy, x0 + dx, x1 + dx
            region = card_gray[max(0, y0 - slack):min(H, y1 + slack), max(0, x0 - slack):min(W, x1 + slack)]
            area = float((y1 - y0) * (x1 - x0))
            if region.shape[0] < y1 - y0 or region.shape[1] < x1 - x0:
                continue
            for j, m in enumerate(members):
                tpl = self.templates(m)[b]
                _, mx, _, (lx, ly) = cv2.minMaxLoc(cv2.matchTemplate(region, tpl, cv2.TM_CCOEFF_NORMED))
                tot[j] += area * float(mx)
                if reads is not None:
                    reads[(b, m)] = region[ly:ly + tpl.shape[0], lx:lx + tpl.shape[1]]
            wsum += area
        return tot / wsum if wsum else tot

    def pair_win(self, reads: dict, a: int, b: int) -> float | None:
        """a's win over b where their patches differ: per box, the card read at each one's best position
        (``reads`` from ``patch_scores``), NCC over the pixels where a and b differ only, a's minus b's,
        weighted by those pixels. Why: the boxes' shared pixels (the rest of a number, its frame) correlate
        equally with both and dilute what tells them apart. None when they do not differ anywhere."""
        tot = wsum = 0.0
        for k in range(len(self.group_boxes(int(self.member_group[a])))):
            ta, tb = self.templates(a)[k], self.templates(b)[k]
            qa, qb = reads.get((k, a)), reads.get((k, b))
            mask = np.abs(ta - tb) > PAIR_DIFF
            n = int(mask.sum())
            if n < 4 or qa is None or qb is None:
                continue
            # the card read at a's best position and at b's: each says how much more it looks like a than b
            sa = ncc(qa[mask], ta[mask]) - ncc(qa[mask], tb[mask])
            sb = ncc(qb[mask], tb[mask]) - ncc(qb[mask], ta[mask])
            tot += n * 0.5 * (sa - sb)
            wsum += n
        return tot / wsum if wsum else None

    def rerank(self, match: Match, frame: np.ndarray, quad: np.ndarray, matrix: np.ndarray, query: np.ndarray,
               cfg: RerankConfig = RerankConfig()) -> tuple[Match, dict | None]:
        """The match with the leading contest's printings re-scored by their difference patches:
        score' = best score of the contest − weight · (best patch NCC − own patch NCC): the embedding
        cannot tell printings of one face apart (their score differences are noise), the patches can. Other
        candidates keep their scores. Returns (match, detail) — detail None when there was no contest."""
        cont = self.contenders(match, matrix, query, cfg.max_contenders)
        if len(cont) < 2:
            return match, None
        members = [m for m, _ in cont]
        scale = int(self.group_scale[int(self.member_group[members[0]])])
        size = (CANVAS[0] // scale, CANVAS[1] // scale)
        gray = cv2.cvtColor(rectify(frame, quad, size), cv2.COLOR_BGR2GRAY).astype(np.float32)
        gray = cv2.GaussianBlur(gray, (0, 0), SIGMA)
        reads: dict = {}
        p = self.patch_scores(gray, members, max(1, cfg.slack // scale), cfg.search // scale, reads)
        if float(p.max()) < cfg.min_fit and cfg.wide_search > cfg.search:
            wide: dict = {}
            pw = self.patch_scores(gray, members, max(1, cfg.slack // scale), cfg.wide_search // scale, wide)
            if float(pw.max()) > float(p.max()):
                p, reads = pw, wide
        fit = float(p.max())  # the leader's: neither the pairwise margin nor a tie below lifts another above it
        if cfg.pairwise:
            i, j = np.argsort(-p, kind="stable")[:2]
            w = self.pair_win(reads, members[i], members[j])
            if w is not None:
                # the order stays the boxes' (the pairwise verdict alone ranked worse on development captures);
                # the margin is the smaller of the two where both agree (both must speak for the leader: the mean
                # of the two until the corners became sub-pixel, docs/device-vision.md) and none where they disagree
                p[j] = p[i] - (min(p[i] - p[j], w) if w > 0 else 0.0)
        # The embedding cannot rank printings of one face, but it can dispute a verdict: where the patches and the
        # embedding named the same printing (development captures, demo-13, ``python -m models.eval.disputes``:
        # 1,060 contests) the device accepted 365, 1 wrong; where the embedding ranked another printing first by
        # ``dispute`` or more (286), the patches were right in 128 and the embedding in 108, and 5 of the 11
        # accepts were wrong. A disputed verdict keeps the patches' order (in the scanner box they were right 11
        # times of 15, the embedding 3) but no margin: a tie, which is never accepted (docs/device-vision.md).
        i = int(np.argmax(p))
        emb = np.array([s for _, s in cont])
        disputed = cfg.dispute is not None and float(emb.max() - emb[i]) >= cfg.dispute
        unfound = fit < cfg.min_fit  # the patches were not found on the card: their order is noise
        names = [self.ids[int(self.member_row[m])] for m in members]
        first = None
        if disputed or unfound:
            p[np.argsort(-p, kind="stable")[1]] = p[i]
            first = names[i]
        lead_score = max(s for _, s in cont)
        # equal scores keep the contenders' (embedding) order, except a tied verdict's printing, first
        rescored = sorted(((c, lead_score - cfg.weight * (fit - float(pm))) for c, pm in zip(names, p)),
                          key=lambda kv: (-kv[1], kv[0] != first))
        # The contest keeps as many places in the list as it held (at least two): printings from outside the
        # top-k may take them, but not the places of other illustrations — with bad corners the leader's
        # illustration is wrong, and the true card is one of those others (the server verifies the list).
        in_contest = set(names)
        held = max(2, sum(c in in_contest for c in match.card_ids))
        others = [(c, s) for c, s in zip(match.card_ids, match.scores) if c not in in_contest]
        top = sorted(rescored[:held] + others, key=lambda kv: -kv[1])[:len(match.card_ids)]
        detail = {"patch": {c: round(float(pm), 4) for c, pm in zip(names, p)}, "disputed": disputed,
                  "unfound": unfound}
        contest = len(top) > 1 and top[0][0] in in_contest and top[1][0] in in_contest
        return Match([c for c, _ in top], [s for _, s in top], contest, round(fit, 4)), detail


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation of two equally shaped arrays (0 when either is flat)."""
    a = a - a.mean()
    b = b - b.mean()
    d = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / d) if d > 1e-6 else 0.0


def _locate(gray: np.ndarray, mean: np.ndarray, box: tuple[int, int, int, int], search: int) -> tuple[int, int]:
    """(dy, dx) by which ``box`` is displaced in the card: where the contest's mean face fits best within
    ``search`` px; (0, 0) when nothing fits well or the box is featureless."""
    y0, y1, x0, x1 = box
    H, W = gray.shape
    sy0, sx0 = max(0, y0 - search), max(0, x0 - search)
    region = gray[sy0:min(H, y1 + search), sx0:min(W, x1 + search)]
    if region.shape[0] < mean.shape[0] or region.shape[1] < mean.shape[1] or float(mean.std()) < 2.0:
        return 0, 0
    _, mx, _, loc = cv2.minMaxLoc(cv2.matchTemplate(region, mean, cv2.TM_CCOEFF_NORMED))
    if mx < LOCATE_MIN:
        return 0, 0
    return sy0 + loc[1] - y0, sx0 + loc[0] - x0
