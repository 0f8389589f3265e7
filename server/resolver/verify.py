"""Geometric and region verification of a rectified crop against candidate catalog images.

Why: an embedding puts reprints of one illustration on top of each other (same art pixels), and the device
only sends us scans it could not tell apart. What separates them is small and local: set symbol,
collector number, border, finish. So each candidate gets

* **geometric evidence**: ORB keypoints + ratio test + RANSAC homography; inlier count and ratio. This
  rejects candidates whose art does not match and gives a precise query->candidate alignment;
* **region evidence** on the aligned crop, after local contrast normalisation (robust to exposure, colour
  cast and lighting gradients):
  - *differential regions*: for every pair of close contenders (a, b) the pixels where a's and b's catalog
    images differ; within that mask the crop is correlated with a and with b, and the difference is a's
    pairwise win. This is exactly "told apart by the regions that differ", for any layout;
  - *fixed zones*: the footer strip (set symbol, collector number, rarity) and the lower-right corner of
    the art window (vintage symbol), normalised cross-correlation per candidate;
  - optional *OCR* of the collector number in the footer (Tesseract via pytesseract when installed).

All images are compared at ``CANON`` = (W, H) = (360, 504) (2.5:3.5), the catalog renders' aspect. A device
crop with a margin (``Scan.crop_margin``) is split in the card (everything above) and its ``Surround``
(the card plus the frame around it), which the homography alignment warps from.
"""

from __future__ import annotations

import functools
import logging
import re
import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from device.vision.geometry import CANONICAL_SIZE, margin_box, padded_size
from device.vision.reprints import ncc as _ncc

log = logging.getLogger(__name__)

CANON = (360, 504)
# Zones in fractions of (W, H): footer strip with symbol/number/rarity; vintage set symbol under the art.
ZONES = {"footer": (0.0, 0.86, 1.0, 0.985), "art_corner": (0.70, 0.44, 0.93, 0.54)}


def to_canon(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if (img.shape[1], img.shape[0]) == CANON:
        return img
    interp = cv2.INTER_AREA if img.shape[1] > CANON[0] else cv2.INTER_LINEAR
    return cv2.resize(img, CANON, interpolation=interp)


# The device's embedder crop height: the server embedder, the ORB settings and the calibration were fitted on
# crops of this resolution. A device sends ambiguous scans at the card's own resolution (up to CANON, which
# device.vision.geometry.EVIDENCE_MAX_SIZE mirrors); search and keypoints still see them at this height.
SEARCH_HEIGHT = CANONICAL_SIZE[1]


def search_res(img: np.ndarray) -> np.ndarray:
    """``img`` reduced (area average) to at most ``SEARCH_HEIGHT`` rows, aspect kept."""
    if img.shape[0] <= SEARCH_HEIGHT:
        return img
    f = SEARCH_HEIGHT / img.shape[0]
    return cv2.resize(img, (max(1, round(img.shape[1] * f)), SEARCH_HEIGHT), interpolation=cv2.INTER_AREA)


def normalise(gray: np.ndarray, sigma: float = 6.0) -> np.ndarray:
    """Local contrast normalisation: (g - local mean) / local std; float32."""
    g = gray.astype(np.float32)
    mu = cv2.GaussianBlur(g, (0, 0), sigma)
    d = g - mu
    sd = np.sqrt(cv2.GaussianBlur(d * d, (0, 0), sigma)) + 4.0
    return d / sd


class Features:
    """ORB keypoints/descriptors + gray image of one canonical card face.

    Everything is computed on first use and kept: ORB runs on every shortlisted candidate (or comes from the
    precomputed ``KeypointStore``), while the gray face and its normalised and smoothed forms are only
    needed for the few *contenders* compared by region, so a catalog face is then decoded from ``loader``
    only for those (the LRU cache of catalog features keeps hot cards)."""

    __slots__ = ("_gray", "_loader", "_kp", "_des", "_norm", "_smooth")

    def __init__(self, gray: np.ndarray | None = None, *, loader=None, kp: np.ndarray | None = None,
                 des: np.ndarray | None = None):
        if gray is None and loader is None:
            raise ValueError("Features needs a gray image or a loader")
        self._gray = gray
        self._loader = loader
        self._kp = kp
        self._des = des
        self._norm: np.ndarray | None = None
        self._smooth: np.ndarray | None = None

    @property
    def gray(self) -> np.ndarray:
        """Gray face, CANON size (uint8)."""
        if self._gray is None:
            self._gray = self._loader()
            self._loader = None
        return self._gray

    def _orb(self) -> None:
        self._kp, self._des = orb(self.gray)

    @property
    def kp(self) -> np.ndarray:
        """(n, 2) float32 ORB keypoint coordinates (computed on first use: a reprint whose art another
        printing already verified needs no keypoints of its own)."""
        if self._kp is None:
            self._orb()
        return self._kp

    @property
    def des(self) -> np.ndarray | None:
        """(n, 32) uint8 ORB descriptors."""
        if self._kp is None:
            self._orb()
        return self._des

    @property
    def norm(self) -> np.ndarray:
        """Local-contrast-normalised gray, CANON size (float32)."""
        if self._norm is None:
            self._norm = normalise(cv2.GaussianBlur(self.gray, (0, 0), 0.8))
        return self._norm

    def norm_at(self, sigma: float) -> np.ndarray:
        """The normalised face as a camera that blurs by ``sigma`` px would see it (not cached: contenders only)."""
        if sigma <= 0.05:
            return self.norm
        return normalise(cv2.GaussianBlur(self.gray, (0, 0), float(np.hypot(0.8, sigma))))

    @property
    def smooth(self) -> np.ndarray:
        """Lightly blurred gray (int16) for differential masks."""
        if self._smooth is None:
            self._smooth = cv2.GaussianBlur(self.gray, (0, 0), 1.0).astype(np.int16)
        return self._smooth


# ORB settings for query crops and catalog faces alike; part of the keypoint store's folder name, so a change
# here rebuilds the stored catalog keypoints.
ORB_PARAMS = {"nfeatures": 700, "scaleFactor": 1.2, "nlevels": 6, "edgeThreshold": 15, "patchSize": 21,
              "fastThreshold": 10}
# Query crops and catalog faces keep the same number of ORB keypoints (fewer on the query side is cheaper —
# matching costs query × catalog keypoints — but lost scans in development runs).
QUERY_NFEATURES = 700
_local = threading.local()  # one ORB per thread: the keypoint store is built by a thread pool


def _detector():
    d = getattr(_local, "orb", None)
    if d is None:
        d = _local.orb = cv2.ORB_create(**ORB_PARAMS)
    return d


def _query_detector():
    d = getattr(_local, "query_orb", None)
    if d is None:
        d = _local.query_orb = cv2.ORB_create(**dict(ORB_PARAMS, nfeatures=QUERY_NFEATURES))
    return d


def orb(gray: np.ndarray, detector=None) -> tuple[np.ndarray, np.ndarray | None]:
    """((n, 2) float32 keypoint coordinates, (n, 32) uint8 descriptors or None) of a canonical gray face."""
    kps, des = (detector or _detector()).detectAndCompute(gray, None)
    return np.array([k.pt for k in kps], np.float32).reshape(-1, 2), des


def extract(img: np.ndarray) -> Features:
    """Features of a query crop (``QUERY_NFEATURES`` ORB keypoints)."""
    g = gray_canon(img)
    kp, des = orb(g, _query_detector())
    return Features(g, kp=kp, des=des)


def gray_canon(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(to_canon(img), cv2.COLOR_BGR2GRAY)


class CatalogImages:
    """card_id -> catalog image file; canonical features cached (LRU) so hot candidates cost nothing.

    With a ``KeypointStore`` (``use_store``) a candidate's ORB keypoints come from the precomputed arrays and
    its face is decoded only if it becomes a contender."""

    def __init__(self, paths: dict[str, Path], cache_size: int = 4096):
        self.paths = {k: Path(v) for k, v in paths.items()}
        self.cache_size = cache_size
        self.store = None
        self._cache: OrderedDict[str, Features] = OrderedDict()

    @classmethod
    def from_dir(cls, folder: str | Path, **kw) -> "CatalogImages":
        return cls({p.stem: p for p in Path(folder).glob("*.jpg")}, **kw)

    def __contains__(self, card_id: str) -> bool:
        return card_id in self.paths

    def use_store(self, store) -> None:
        self.store = store
        self._cache.clear()

    def image(self, card_id: str) -> np.ndarray:
        img = cv2.imread(str(self.paths[card_id]), cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(f"catalog image unreadable: {self.paths[card_id]}")
        return img

    def gray(self, card_id: str) -> np.ndarray:
        return gray_canon(self.image(card_id))

    def keypoints(self, card_id: str) -> tuple[np.ndarray, np.ndarray | None]:
        """ORB of one catalog face, computed from its image (what the keypoint store is built from)."""
        return orb(self.gray(card_id))

    def features(self, card_id: str) -> Features:
        f = self._cache.get(card_id)
        if f is not None:
            self._cache.move_to_end(card_id)
            return f
        if self.store is not None and card_id in self.store:
            kp, des = self.store.get(card_id)
            f = Features(loader=functools.partial(self.gray, card_id), kp=kp, des=des)
        else:
            f = Features(self.gray(card_id))
        self._cache[card_id] = f
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return f


_matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
HOMOGRAPHY_METHOD = cv2.USAC_FAST


@dataclass
class Geometric:
    inliers: int = 0
    matches: int = 0
    H: np.ndarray | None = None  # query -> candidate (canonical pixels)

    @property
    def ratio(self) -> float:
        return self.inliers / self.matches if self.matches else 0.0


def geometric(q: Features, c: Features, ratio: float = 0.8, reproj_px: float = 4.0) -> Geometric:
    """ORB ratio-test matches and RANSAC homography inliers of the query against one candidate."""
    if q.des is None or c.des is None or len(q.des) < 8 or len(c.des) < 8:
        return Geometric()
    knn = _matcher.knnMatch(q.des, c.des, k=2)
    good = [m[0] for m in knn if len(m) == 2 and m[0].distance < ratio * m[1].distance]
    if len(good) < 8:
        return Geometric(0, len(good))
    src = q.kp[[m.queryIdx for m in good]]
    dst = c.kp[[m.trainIdx for m in good]]
    # USAC (SPRT early rejection + local optimisation) rather than classic RANSAC, which runs all its draws on
    # the many same-layout, other-art candidates whose inlier share is low (tests/bench/resolver_scans.py).
    H, mask = cv2.findHomography(src, dst, HOMOGRAPHY_METHOD, reproj_px, maxIters=500, confidence=0.99)
    inl = int(mask.sum()) if (H is not None and mask is not None) else 0
    if len(good) >= 30 and inl < 12:
        # Many matches but little consensus: a blurred crop of the same art has a low inlier share, and plain
        # RANSAC then often misses the model (seen: 66 matches, 0 inliers, where MAGSAC++ finds 19). Only
        # same-art candidates get this many ratio-test matches, so the retry costs little overall.
        H2, mask2 = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, reproj_px, maxIters=1000, confidence=0.995)
        if H2 is not None and mask2 is not None and int(mask2.sum()) > inl:
            H, mask, inl = H2, mask2, int(mask2.sum())
    if H is None or mask is None:
        return Geometric(0, len(good))
    return Geometric(inl, len(good), H if _sane(H) else None)


def _sane(H: np.ndarray) -> bool:
    """A rectified crop vs a catalog face: the mapping is close to a similarity of the whole card."""
    corners = np.array([[0, 0], [CANON[0], 0], [CANON[0], CANON[1]], [0, CANON[1]]], np.float32).reshape(-1, 1, 2)
    try:
        warped = cv2.perspectiveTransform(corners, H).reshape(-1, 2)
    except cv2.error:
        return False
    area = abs(cv2.contourArea(warped.astype(np.float32)))
    return 0.5 < area / (CANON[0] * CANON[1]) < 2.0 and cv2.isContourConvex(warped.astype(np.float32))


class CropError(ValueError):
    """A crop that holds no card to compare (e.g. a margin that leaves nothing inside): bad input from a
    device, decided by a person, never retried."""


def split_margin(img: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray | None]:
    """(the card, the whole crop) for a crop made with ``margin`` (``device.vision.geometry.rectify``);
    (img, None) when it has none. Raises ``CropError`` when the margin leaves no card."""
    if margin <= 0:
        return img, None
    x0, y0, x1, y1 = margin_box((img.shape[1], img.shape[0]), margin)
    inner = img[int(round(y0)):int(round(y1)), int(round(x0)):int(round(x1))]
    if inner.shape[0] < 8 or inner.shape[1] < 8:
        raise CropError(f"crop of {img.shape[1]}x{img.shape[0]} px has no card inside a margin of {margin}")
    return inner, img


@dataclass
class Surround:
    """The query card with the frame pixels around it, at canonical scale: ``gray``/``norm`` are
    ``padded_size(CANON, margin)``; ``to_canvas`` maps canonical card coordinates into them."""

    gray: np.ndarray
    norm: np.ndarray
    to_canvas: np.ndarray

    @classmethod
    def of(cls, padded: np.ndarray, margin: float, turned: bool = False) -> "Surround":
        size = padded_size(CANON, margin)
        img = padded if padded.ndim == 2 else cv2.cvtColor(padded, cv2.COLOR_BGR2GRAY)
        interp = cv2.INTER_AREA if img.shape[1] > size[0] else cv2.INTER_LINEAR
        g = cv2.resize(img, size, interpolation=interp)
        if turned:  # the margin is the same on every side, so the card's box does not move
            g = cv2.rotate(g, cv2.ROTATE_180)
        x0, y0, x1, y1 = margin_box(size, margin)
        S = np.array([[(x1 - x0) / CANON[0], 0, x0], [0, (y1 - y0) / CANON[1], y0], [0, 0, 1]], np.float64)
        return cls(g, normalise(cv2.GaussianBlur(g, (0, 0), 0.8)), S)

    def align(self, img: str, H: np.ndarray) -> np.ndarray:
        """``img`` ("gray" or "norm") warped into the candidate's frame by ``H`` (a homography from canonical
        crop coordinates): the parts of the card the device's quad left out come from the margin."""
        src = self.gray if img == "gray" else self.norm
        Hc = H @ np.linalg.inv(self.to_canvas)
        return cv2.warpPerspective(src, Hc, CANON, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def align(q_img_norm: np.ndarray, H: np.ndarray | None) -> np.ndarray:
    """The query's normalised image in the candidate's frame (identity when no trustworthy homography)."""
    if H is None:
        return q_img_norm
    return cv2.warpPerspective(q_img_norm, H, CANON, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    if mask is not None:
        a, b = a[mask], b[mask]
    if a.size < 16:
        return 0.0
    return _ncc(a, b)


def zone_mask(zone: str) -> np.ndarray:
    return _zone_mask(zone)


@functools.lru_cache(maxsize=8)
def _zone_mask(zone: str) -> np.ndarray:
    x0, y0, x1, y1 = ZONES[zone]
    m = np.zeros((CANON[1], CANON[0]), bool)
    m[int(y0 * CANON[1]):int(y1 * CANON[1]), int(x0 * CANON[0]):int(x1 * CANON[0])] = True
    return m


def diff_mask(a: Features, b: Features, thresh: int = 12, min_px: int = 8, grow: int = 0) -> np.ndarray | None:
    """Pixels where two catalog faces differ (dilated a little for alignment error, and by ``grow`` px more
    where the crop is blurred: a blurred glyph spreads), or None if identical.

    The threshold is low on purpose: a collector number is a few thin glyphs, blurred by resizing."""
    d = np.abs(a.smooth - b.smooth)
    m = (d > thresh).astype(np.uint8)
    if int(m.sum()) < min_px:
        return None
    k = 5 + 2 * max(0, int(grow))
    m = cv2.dilate(m, np.ones((k, k), np.uint8))
    return m.astype(bool)


BLUR_SIGMAS = (0.0, 0.8, 1.4, 2.0, 2.8, 3.8, 5.0, 6.5)


def estimate_blur(q_gray_aligned: np.ndarray, ref_gray: np.ndarray) -> float:
    """How much blurrier (Gaussian sigma, canonical px) the aligned crop is than a catalog face of the same art.

    Why: reprints differ in a few thin glyphs (collector number, set symbol). Comparing a defocused or
    motion-blurred crop with the *sharp* catalog faces lets the blur itself dominate the correlation; comparing
    it with faces blurred the same way leaves only the real difference. Measured at half resolution over the
    card interior (the border is what alignment gets least right)."""
    q = cv2.resize(q_gray_aligned.astype(np.float32), (CANON[0] // 2, CANON[1] // 2), interpolation=cv2.INTER_AREA)
    r = cv2.resize(ref_gray.astype(np.float32), (CANON[0] // 2, CANON[1] // 2), interpolation=cv2.INTER_AREA)
    h, w = q.shape
    sl = (slice(int(0.05 * h), int(0.95 * h)), slice(int(0.06 * w), int(0.94 * w)))
    qi = q[sl]
    best, best_s = -2.0, 0.0
    for s in BLUR_SIGMAS:
        rb = cv2.GaussianBlur(r, (0, 0), s / 2) if s > 0 else r
        v = ncc(qi, rb[sl])
        if v > best:
            best, best_s = v, s
    return best_s


def pairwise_region_scores(q_views: list[np.ndarray], feats: dict[str, Features],
                           contenders: list[str], norms: dict[str, np.ndarray] | None = None,
                           grow: int = 0, pairs_out: dict | None = None) -> dict[str, float]:
    """Mean pairwise win of each contender against the others within their differing pixels.

    win(a, b) = NCC(q, a | D_ab) - NCC(q, b | D_ab) per differing patch (``_region_win``), with q the query
    aligned to the contenders (``q_views``: the homography-aligned crop first, then other readings such as
    the crop as the device rectified it; each patch uses the one that fits its surroundings best). Positive
    means the crop looks more like a than like b exactly where a and b differ. ``pairs_out`` receives every
    compared pair's win: (a, b) -> win(a, b).
    """
    out = {c: 0.0 for c in contenders}
    if len(contenders) < 2:
        return out
    nrm = norms if norms is not None else {c: feats[c].norm for c in contenders}
    wins = {c: [] for c in contenders}
    for i, a in enumerate(contenders):
        for b in contenders[i + 1:]:
            m = diff_mask(feats[a], feats[b], grow=grow)
            if m is None:
                continue  # identical faces (same image): nothing can tell them apart here
            w = _region_win(q_views, nrm[a], nrm[b], m)
            if pairs_out is not None:
                pairs_out[(a, b)], pairs_out[(b, a)] = w, -w
            wins[a].append(w)
            wins[b].append(-w)
    return {c: (float(np.mean(v)) if v else 0.0) for c, v in wins.items()}


def _region_win(q_views: list[np.ndarray], a: np.ndarray, b: np.ndarray, m: np.ndarray) -> float:
    """a's win over b in the crop where they differ: each separate differing patch (set symbol, collector
    number, a rarity mark...) is located and template-matched on its own, the wins weighted by the patch's
    area.

    Why per patch: reprints differ in a set symbol mid-card and a number at the foot; one box around both is
    mostly identical art, which dilutes the few differing pixels to nothing and makes one alignment serve
    both places."""
    n, lab, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
    if n > 1 + MAX_PATCHES:
        n = 0  # differences everywhere (another layout): one masked comparison of the whole
    wins, weights = [], []
    for k in range(1, n):
        x, y, w, h, area = stats[k]
        if area < 16:
            continue
        sub = np.zeros_like(m)
        sub[y:y + h, x:x + w] = lab[y:y + h, x:x + w] == k
        win = _patch_win(q_views, a, b, sub)
        if win is None:
            break  # one patch too large for template matching: compare the whole mask instead
        wins.append(win)
        weights.append(float(area))
    else:
        if wins:
            return float(np.average(wins, weights=weights))
    pw = _patch_win(q_views, a, b, m)
    q = q_views[0]
    return pw if pw is not None else ncc(q, a, m) - ncc(q, b, m)


MAX_PATCHES = 8
# Local re-alignment of a differing patch: the faces' shared surroundings (CONTEXT_PX around the patch) are
# found in the crop within SEARCH_PX. A homography fitted on the art alone can be 20-30 px off at the foot of
# a full-art card (where the collector number is); a match below LOCATE_MIN keeps the global alignment.
CONTEXT_PX = 28
SEARCH_PX = 32
LOCATE_MIN = 0.3


def _locate(q_views: list[np.ndarray], ctx: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, int, int]:
    """(view, dy, dx): where the context ``ctx`` (face pixels at ``box`` = y0, y1, x0, x1) lies in the best
    fitting crop view."""
    y0, y1, x0, x1 = box
    best = (LOCATE_MIN, q_views[0], 0, 0)
    for q in q_views:
        H, W = q.shape
        sy0, sy1, sx0, sx1 = max(0, y0 - SEARCH_PX), min(H, y1 + SEARCH_PX), max(0, x0 - SEARCH_PX), min(W, x1 + SEARCH_PX)
        region = np.ascontiguousarray(q[sy0:sy1, sx0:sx1])
        if region.shape[0] < ctx.shape[0] or region.shape[1] < ctx.shape[1]:
            continue
        _, mx, _, loc = cv2.minMaxLoc(cv2.matchTemplate(region, ctx, cv2.TM_CCOEFF_NORMED))
        if mx > best[0]:
            best = (mx, q, sy0 + loc[1] - y0, sx0 + loc[0] - x0)
    return best[1], best[2], best[3]


def _patch_win(q_views: list[np.ndarray], a: np.ndarray, b: np.ndarray, m: np.ndarray, slack: int = 5,
               max_frac: float = 0.25) -> float | None:
    """Template-match a's and b's differing patch in the crop, allowing a few pixels of residual shift.

    Differences like a collector number are a few pixels tall: a 2-3 px alignment error would swamp a
    fixed-position comparison, so the patch is first re-located by its surroundings (``_locate``) and then
    each candidate's patch may slide by ``slack`` px and keeps its best score.
    None when the differing area is too large for one patch (then the masked NCC is used)."""
    ys, xs = np.nonzero(m)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    if (y1 - y0) * (x1 - x0) > max_frac * m.size or (y1 - y0) < 4 or (x1 - x0) < 4:
        return None
    H, W = a.shape
    cy0, cy1, cx0, cx1 = max(0, y0 - CONTEXT_PX), min(H, y1 + CONTEXT_PX), max(0, x0 - CONTEXT_PX), min(W, x1 + CONTEXT_PX)
    # the pair's mean face as context: it does not favour either candidate
    ctx = np.ascontiguousarray(0.5 * (a[cy0:cy1, cx0:cx1] + b[cy0:cy1, cx0:cx1]))
    q, dy, dx = _locate(q_views, ctx, (cy0, cy1, cx0, cx1))
    sy0, sy1 = max(0, y0 + dy - slack), min(H, y1 + dy + slack)
    sx0, sx1 = max(0, x0 + dx - slack), min(W, x1 + dx + slack)
    region = np.ascontiguousarray(q[sy0:sy1, sx0:sx1])
    ta = np.ascontiguousarray(a[y0:y1, x0:x1])
    tb = np.ascontiguousarray(b[y0:y1, x0:x1])
    if region.shape[0] < ta.shape[0] or region.shape[1] < ta.shape[1]:
        return None
    sa = float(cv2.matchTemplate(region, ta, cv2.TM_CCOEFF_NORMED).max())
    sb = float(cv2.matchTemplate(region, tb, cv2.TM_CCOEFF_NORMED).max())
    return sa - sb


# --- OCR (optional) ---------------------------------------------------------------------------------------

_NUM_RE = re.compile(r"([A-Z]{0,4}\d{1,4})\s*/\s*([A-Z]{0,4}\d{1,4})")


@functools.lru_cache(maxsize=1)
def ocr_available() -> bool:
    try:
        import pytesseract  # noqa: F401
    except ImportError:
        return False
    return shutil.which("tesseract") is not None


def ocr_numbers(crop: np.ndarray) -> list[str]:
    """Collector numbers ('11', 'TG05') read from the footer strip; [] when OCR is absent or reads nothing."""
    if not ocr_available():
        return []
    import pytesseract

    c = to_canon(crop)
    x0, y0, x1, y1 = ZONES["footer"]
    strip = c[int(y0 * CANON[1]):int(y1 * CANON[1]), :]
    g = cv2.cvtColor(strip, cv2.COLOR_BGR2GRAY)
    g = cv2.resize(g, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
    try:
        text = pytesseract.image_to_string(g, config="--psm 6 -c tessedit_char_whitelist=0123456789/ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    except Exception as exc:  # a broken tesseract install must never break resolution
        log.debug("OCR failed: %s", exc)
        return []
    return [m.group(1).lstrip("0") or "0" for m in _NUM_RE.finditer(text.upper())]


def number_matches(read: list[str], number: str) -> bool:
    """Whether an OCR'd number equals the catalog number ('WE157' read from 'WE 157/232' matches '157')."""
    n = (number or "").upper().lstrip("0") or "0"
    return any(r == n or (n.isdigit() and re.sub(r"^[A-Z]+", "", r).lstrip("0") == n) for r in read)


__all__ = ["BLUR_SIGMAS", "CANON", "CatalogImages", "Features", "Geometric", "ZONES", "align", "diff_mask",
           "estimate_blur", "extract", "geometric", "gray_canon", "orb", "ORB_PARAMS",
           "ncc", "normalise", "number_matches", "ocr_available", "ocr_numbers", "pairwise_region_scores",
           "to_canon", "zone_mask"]
