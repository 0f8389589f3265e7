"""Card detection: frame → card quads (TL, TR, BR, BL of each card, frame pixels).

Two detectors behind one interface:

* ``TFLiteDetector``: a small int8 CNN on a letterboxed 160×120 frame predicts three 40×30 maps — card face,
  shrunken "kernel" of each card (separates touching and overlapping cards) and top half (orientation).
  Each kernel component becomes a quad (hull → 4 corners), scaled back up about its centre (the kernel
  is the quad shrunk by ``KERNEL_SHRINK``; scaling is affine, so this is exact under perspective), put
  upright with the top map, then snapped to the card's edges in the full-resolution frame (the bundle's learned
  edge model, ``device.vision.edges``; ``refine_quad`` for a bundle without one). Kernels of
  touching / overlapping cards that merged through a neck are cut apart first (``split_kernels``); a
  portrait frame (phone photo) is turned a quarter so it fills the landscape input.
* ``ContourDetector``: classical (Canny → contours → convex 4-gons with a card's aspect). No model needed:
  the fallback when a bundle has no detector, and a cross-check (``CombinedDetector``) when the CNN sees
  nothing.

The quality gate (``geometry_reject``, ``crop_reject``) then says whether a detection is good enough to
identify, and if not, why: ``too_small``, ``partially_out_of_view``, ``occluded``, ``too_blurry``, ``glare``;
``soft_failure`` tells the failures that still leave an identifiable card (a sliver out of view, glare,
slight blur on a confident detection) from the hard ones.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from device.vision.edges import EdgeModel, intersect, seam
from device.vision.geometry import CARD_ASPECT, card_height, order_quad, portrait_quad, quads_from_a_side

INPUT_SIZE = (160, 120)  # (W, H) of the detector input
OUTPUT_STRIDE = 4
KERNEL_SHRINK = 0.6
CLOSER_ASPECT_TOL = 0.1  # side ratio within this of CARD_ASPECT: one card's shape (or two side by side), no closer look
ON_TOP_ASPECT_TOL = 0.06  # side ratio within this of CARD_ASPECT: one card, never looked at for a card on top
ON_TOP_REACH = (0.45, 0.92)  # how far across the outline the card on top at one of its ends may reach
ON_TOP_MIN_SUPPORT = 0.6  # fraction of the card on top's inner side along which the edge model sees an edge
ON_TOP_MIN_SEAM = 0.75  # … or along which a seam runs (``edges.seam``: white card on white card)
ON_TOP_SEAM_MIN_REST = 0.25  # … with a rest beyond it of at least this part of a card: a court card's picture
# frame is a seam a sixth to a fifth of the card in from its edge (test_a_court_cards_picture_frame_is_no_card_on_top)
ON_TOP_MIN_REST = 0.15  # the covered card's visible rest (a fraction of the card on top) below which none is reported
FACE_GROW = -0.5  # input pixels added around a fitted face region (the predicted face is slightly fat); tuned on simulated captures
REJECT_REASONS = ("no_card", "too_small", "partially_out_of_view", "occluded", "too_blurry", "glare")


def letterbox(frame: np.ndarray, size: tuple[int, int] = INPUT_SIZE) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Resize keeping the aspect and pad (grey) to ``size``. Returns (image, scale, (offx, offy)) with
    input = frame * scale + off."""
    h, w = frame.shape[:2]
    W, H = size
    s = min(W / w, H / h)
    nw, nh = max(1, int(round(w * s))), max(1, int(round(h * s)))
    if s < 0.25 and w % 2 == 0 and h % 2 == 0:
        # halve first: OpenCV averages 2×2 blocks fast (tests/bench/profile_pipeline.py, 1280×960: 2.58 → 0.99 ms
        # a frame), and the input stays within one grey level of a direct resize (tests/test_vision.py)
        frame = cv2.resize(frame, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    img = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA)
    ox, oy = (W - nw) // 2, (H - nh) // 2
    out = np.full((H, W, 3), 114, np.uint8)
    out[oy:oy + nh, ox:ox + nw] = img
    return out, s, (float(ox), float(oy))


@dataclass
class Detection:
    quad: np.ndarray  # (4, 2) float32 TL, TR, BR, BL of the card, frame pixels
    score: float = 1.0
    source: str = "cnn"  # cnn | contour
    solidity: float = 1.0  # kernel area / area of its fitted quad (low = occluded / odd shape)
    info: dict = field(default_factory=dict)


class Detector(abc.ABC):
    @abc.abstractmethod
    def detect(self, frame: np.ndarray) -> list[Detection]:
        """Card quads in ``frame`` (BGR uint8), biggest first."""


# ----------------------------------------------------------------------------------------- quad helpers


def hull_quad(points: np.ndarray, min_fill: float = 0.8) -> np.ndarray | None:
    """Best 4-corner approximation of a point set's convex hull (``kernel_quad`` without the area)."""
    kq = kernel_quad(points, min_fill)
    return None if kq is None else kq[0]


def kernel_quad(points: np.ndarray, min_fill: float = 0.8) -> tuple[np.ndarray, float] | None:
    """(4-corner approximation of the hull, area of the polygon through the hull's own vertices).

    A small kernel blob (a card 25-40 input px tall) has a rounded hull, and approxPolyDP may then keep
    its four *edge midpoints*: a diamond with half the card's area. That diamond also made decode_maps
    reject the correct face quad as "implausible" next to it. So a 4-gon filling less than ``min_fill`` of
    the hull's minimum-area rectangle gives way to the rectangle (a perspective card fills ~0.85-1.0).
    The area is what the occlusion gate was tuned on (``Detection.solidity``): measured against the
    rectangle instead, clean small cards read as occluded."""
    hull = cv2.convexHull(points.astype(np.float32).reshape(-1, 1, 2))
    if len(hull) < 4:
        return None
    rect = cv2.boxPoints(cv2.minAreaRect(hull)).astype(np.float32)
    rect_area = abs(cv2.contourArea(rect))
    peri = cv2.arcLength(hull, True)
    for eps in (0.02, 0.04, 0.06, 0.08, 0.12):
        ap = cv2.approxPolyDP(hull, eps * peri, True)
        if len(ap) == 4:
            q = ap.reshape(4, 2).astype(np.float32)
            area = abs(cv2.contourArea(q))
            return (q if area >= min_fill * rect_area else rect), area
        if len(ap) < 4:
            break
    return rect, rect_area


def refine_quad(gray: np.ndarray, quad: np.ndarray, search: float = 0.02, samples: int = 14,
                outer_frac: float = 0.6) -> np.ndarray:
    """Snap each side of ``quad`` to the strongest nearby edge of ``gray`` (full resolution) and intersect
    the fitted lines. Keeps the input when the edges are weak or the result degenerates."""
    q = np.asarray(quad, np.float32)
    size = 0.5 * (np.linalg.norm(q[2] - q[0]) + np.linalg.norm(q[3] - q[1]))
    r = max(3.0, search * size)
    offs = np.linspace(-r, r, int(2 * r) + 1, dtype=np.float32)
    ts = np.linspace(0.12, 0.88, samples, dtype=np.float32)
    c = q.mean(0)
    lines = []
    for i in range(4):
        a, b = q[i], q[(i + 1) % 4]
        d = b - a
        ln = float(np.linalg.norm(d))
        if ln < 4:
            return q
        d /= ln
        n = np.array([d[1], -d[0]], np.float32)
        if np.dot(n, (a + b) / 2 - c) < 0:
            n = -n  # outward
        pts = a[None, :] + ts[:, None] * (b - a)[None, :]
        grid = pts[:, None, :] + offs[None, :, None] * n[None, None, :]  # samples × offsets × 2
        vals = cv2.remap(gray, grid[..., 0].astype(np.float32), grid[..., 1].astype(np.float32),
                         cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        grad = np.abs(np.diff(vals, axis=1))
        # the card's outline is its *outermost* strong edge: the border's inner edge (frame, art window)
        # is often as strong, a few pixels inside
        peak = grad.max(1, keepdims=True)
        strong = grad >= outer_frac * peak
        k = (grad.shape[1] - 1 - np.argmax(strong[:, ::-1], axis=1)) if outer_frac < 1 else grad.argmax(1)
        strength = grad[np.arange(len(k)), k]
        good = strength > max(8.0, 0.5 * float(np.median(strength)))
        if good.sum() < 4:
            lines.append(None)
            continue
        o = (offs[k] + offs[k + 1]) / 2
        p = pts + o[:, None] * n[None, :]
        p = p[good]
        vx, vy, x0, y0 = cv2.fitLine(p.reshape(-1, 1, 2), cv2.DIST_HUBER, 0, 0.01, 0.01).ravel()
        lines.append((np.array([x0, y0], np.float32), np.array([vx, vy], np.float32)))
    out = q.copy()
    for i in range(4):
        x = intersect(lines[(i - 1) % 4], lines[i])  # corner i joins side i-1 and side i
        if x is not None and np.linalg.norm(x - q[i]) <= 2.5 * r:
            out[i] = x
    if not cv2.isContourConvex(out.reshape(-1, 1, 2)) or abs(cv2.contourArea(out)) < 0.7 * abs(cv2.contourArea(q)):
        return q
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def fit_quad(mask: np.ndarray, iterations: int = 2) -> np.ndarray | None:
    """Quad of a binary region: start from its minimum-area rectangle (robust to rounded, blurred or
    clipped corners), then re-fit each side as a robust line through the boundary points nearest to it
    and intersect neighbouring sides (recovers perspective trapezoids)."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    cnt = max(contours, key=cv2.contourArea).reshape(-1, 2).astype(np.float32) + 0.5
    if len(cnt) < 8:
        return None
    q = order_quad(cv2.boxPoints(cv2.minAreaRect(cnt.reshape(-1, 1, 2))).astype(np.float32))
    for _ in range(iterations):
        # all four sides at once (points × sides): this runs for every detection of every frame
        d = np.roll(q, -1, axis=0) - q
        lens = np.sqrt((d * d).sum(1))
        if lens.min() < 2:
            return q
        u = d / lens[:, None]
        rel = cnt[:, None, :] - q[None]  # [N, 4, 2]
        t = (rel * u[None]).sum(-1)
        dist = np.abs(rel[..., 0] * u[None, :, 1] - rel[..., 1] * u[None, :, 0])
        near = dist.argmin(1)
        sel_all = (t > 0.1 * lens) & (t < 0.9 * lens)
        lines = []
        for i in range(4):
            sel = (near == i) & sel_all[:, i]
            if np.count_nonzero(sel) < 4:
                lines.append((q[i], u[i]))
                continue
            vx, vy, x0, y0 = cv2.fitLine(cnt[sel].reshape(-1, 1, 2), cv2.DIST_HUBER, 0, 0.01, 0.01).ravel()
            lines.append((np.array([x0, y0], np.float32), np.array([vx, vy], np.float32)))
        new = q.copy()
        diag = np.sqrt(((np.roll(q, -2, axis=0) - q) ** 2).sum(1))
        for i in range(4):
            (p1, d1), (p2, d2) = lines[(i - 1) % 4], lines[i]
            den = d1[0] * d2[1] - d1[1] * d2[0]
            if abs(den) < 1e-3:
                continue
            t_ = ((p2[0] - p1[0]) * d2[1] - (p2[1] - p1[1]) * d2[0]) / den
            x = p1 + t_ * d1
            if np.linalg.norm(x - q[i]) < 0.3 * diag[i]:
                new[i] = x
        q = new
    return q


def split_kernels(lab: np.ndarray, keep: list[int], stats: np.ndarray, min_px: int,
                  min_solidity: float = 0.9, origin: dict[int, int] | None = None) -> tuple[np.ndarray, list[int]]:
    """Cut kernel components that are two (or more) cards' kernels joined by a thin neck.

    A card's kernel is a convex quad; a component that fills its convex hull less than ``min_solidity`` is
    suspect. Its distance transform is thresholded at rising fractions of the maximum: the first level at
    which it falls into several sizeable cores (each ≥ ``min_px`` and ≥ 15 % of the component) splits it, and
    every pixel of the component goes to its nearest core. Returns (labels, kept label ids); ``origin`` (optional
    dict) gets, for every new part's label, the label of the component it was cut from."""
    lab = lab.copy()
    nxt = int(lab.max()) + 1
    out = []
    for j in keep:
        x, y, w, h = (int(v) for v in stats[j, :4])
        sub = (lab[y:y + h, x:x + w] == j).astype(np.uint8)
        area = int(stats[j, cv2.CC_STAT_AREA])
        pts = cv2.findNonZero(sub)
        hull_area = cv2.contourArea(cv2.convexHull(pts)) if pts is not None else 0.0
        if hull_area <= 0 or area / hull_area >= min_solidity or _one_card_shape(pts, area):
            out.append(j)
            continue
        pad = np.pad(sub, 1)
        dist = cv2.distanceTransform(pad, cv2.DIST_L2, 5)
        cores = None
        for f in (0.3, 0.4, 0.5, 0.6, 0.7):
            m, cl, cs, _ = cv2.connectedComponentsWithStats((dist > f * dist.max()).astype(np.uint8), connectivity=4)
            big = [k for k in range(1, m) if cs[k, cv2.CC_STAT_AREA] * 4 >= min(min_px, 0.15 * area)]
            if len(big) >= 2:
                cores = (cl, big)
                break
        if cores is None:
            out.append(j)
            continue
        cl, big = cores
        dists = []
        for k in big:
            dists.append(cv2.distanceTransform((cl != k).astype(np.uint8), cv2.DIST_L2, 3))
        owner = np.argmin(np.stack(dists), 0)[1:-1, 1:-1]
        parts = []
        for i in range(len(big)):
            pm = (owner == i) & (sub > 0)
            if pm.sum() >= min_px and pm.sum() >= 0.15 * area:
                parts.append(pm)
        if len(parts) < 2:
            out.append(j)
            continue
        view = lab[y:y + h, x:x + w]
        view[sub > 0] = 0
        for pm in parts:  # pixels of dropped slivers stay background
            view[pm] = nxt
            out.append(nxt)
            if origin is not None:
                origin[nxt] = j
            nxt += 1
    return lab, out


def side_ratio(quad: np.ndarray) -> float:
    """Shorter over longer of a quad's mean opposite side lengths (a card: 0.714, whichever way it lies)."""
    q = np.asarray(quad, np.float32)
    a = float(np.linalg.norm(q[1] - q[0]) + np.linalg.norm(q[2] - q[3]))
    b = float(np.linalg.norm(q[3] - q[0]) + np.linalg.norm(q[2] - q[1]))
    return min(a, b) / max(a, b, 1e-6)


def _area(quad: np.ndarray) -> float:
    return abs(float(cv2.contourArea(np.asarray(quad, np.float32))))


def _onto_line(quad: np.ndarray, side: int, ends: np.ndarray) -> np.ndarray | None:
    """``quad`` with its ``side`` moved onto the line through ``ends`` (the two sides beside it keep their
    directions, their corners sliding along them); None where the line misses one of them."""
    q = np.asarray(quad, np.float32).copy()
    line = (ends[0], (ends[1] - ends[0]) / max(float(np.linalg.norm(ends[1] - ends[0])), 1e-6))
    for corner, other in ((side, (side - 1) % 4), ((side + 1) % 4, (side + 2) % 4)):
        d = q[corner] - q[other]
        x = intersect(line, (q[other], d / max(float(np.linalg.norm(d)), 1e-6)))
        if x is None:
            return None
        q[corner] = x
    return q


def _a_pile(whole: np.ndarray, pieces: list[np.ndarray]) -> bool:
    """Do ``pieces`` of a detection ``whole`` look like overlapping cards rather than one card cut up? A pile
    has a card on top: one piece of a card's shape that takes a good part (≥ 40 %) of the whole. A card cut by a
    finger falls into pieces of other shapes (hand-held simulated captures); what is left — two card-shaped
    halves of a tilted card — the pipeline still reads whole when that reads better
    (``VisionPipeline._reunite``)."""
    area = max(abs(float(cv2.contourArea(whole))), 1e-6)
    return any(abs(side_ratio(p) - CARD_ASPECT) <= CLOSER_ASPECT_TOL and abs(float(cv2.contourArea(p))) >= 0.4 * area
               for p in pieces)


def _one_card_shape(pts: np.ndarray, area: int, tol: float = 0.07, min_fill: float = 0.5) -> bool:
    """Is a pinched kernel component one card rather than two cards' kernels joined? A real card's art
    window and text box can come out as two kernel lobes, but their minimum-area rectangle keeps the card's
    aspect (measured 0.69–0.74 on simulated scanner-box captures of the real sv1 scans) while merged
    neighbours' kernels span other shapes (0.42–0.65 on hand-held captures)."""
    (_, _), (rw, rh), _ = cv2.minAreaRect(pts.astype(np.float32))
    if rw <= 0 or rh <= 0:
        return False
    aspect = min(rw, rh) / max(rw, rh)
    return abs(aspect - CARD_ASPECT) < tol * CARD_ASPECT and area >= min_fill * rw * rh


def _nearest_part(lab: np.ndarray, keep: list[int]) -> np.ndarray:
    """Label of the nearest kept kernel part for every pixel (like DIST_LABEL_CCOMP, per part)."""
    d = np.stack([cv2.distanceTransform((lab != j).astype(np.uint8), cv2.DIST_L2, 3) for j in keep])
    return np.asarray(keep, np.int32)[np.argmin(d, 0)]


def decode_maps(maps: np.ndarray, s: float, off: tuple[float, float], gray: np.ndarray | None = None,
                kernel_thresh: float = 0.5, min_cells: int = 3, split: bool = True,
                around: np.ndarray | None = None, wholes: bool = True) -> list[Detection]:
    """maps: [3, h, w] probabilities (face, kernel, top) at the detector output resolution.

    Kernel components = card instances. Each face pixel goes to its nearest kernel (distance transform),
    and the card quad is fitted to that face region (no ×1/0.6 amplification of kernel-edge error); when
    the face region is implausible (merged with a neighbour), the scaled-up kernel quad is used instead.
    ``split``: kernels of touching / overlapping cards that merged through a thin neck are cut apart
    (``split_kernels``). ``around``: a frame polygon; only detections whose quad is centred inside it are
    returned (a zoomed pass looks at one detection; its neighbours at the crop's border are not wanted), and
    kernels lying well outside it are not even fitted. ``wholes``: each piece of a cut kernel carries the uncut
    component's detection (``info["whole"]``, marked ``pinched``; see below) — the first pass's job only: the
    pieces of a zoomed pass are a second look already, and nothing reads their whole."""
    _, h, w = maps.shape
    up = OUTPUT_STRIDE  # work at input resolution: sub-cell accuracy from the interpolated probabilities
    size = (w * up, h * up)
    face = cv2.resize(maps[0], size, interpolation=cv2.INTER_LINEAR)
    kern = cv2.resize(maps[1], size, interpolation=cv2.INTER_LINEAR)
    top = cv2.resize(maps[2], size, interpolation=cv2.INTER_LINEAR)
    binm = (kern > kernel_thresh).astype(np.uint8)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(binm, connectivity=4)
    keep = [j for j in range(1, n) if stats[j, cv2.CC_STAT_AREA] >= min_cells * up * up]
    if not keep:
        return []
    face_bin = face > 0.5
    kept, whole_lab = keep, lab
    origin: dict[int, int] = {}  # part label -> the component it was cut from
    if split:
        lab, keep = split_kernels(lab, keep, stats, min_cells * up * up, origin=origin)
    # nearest kernel part for every pixel (parts of a split component touch, so connected components of the
    # kernel mask no longer tell them apart)
    if keep != kept:
        near = _nearest_part(lab, keep)
    else:
        _, near = cv2.distanceTransformWithLabels((1 - binm).astype(np.uint8) * 255, cv2.DIST_L2, 3,
                                                  labelType=cv2.DIST_LABEL_CCOMP)
    if around is not None:
        around = np.asarray(around, np.float32).reshape(-1, 1, 2)
        # a kernel's centre can lie well off its fitted quad's (a fragment of a face): only far ones are skipped
        # unfitted; the quad's own centre decides below
        reach = 0.3 * np.sqrt(abs(cv2.contourArea(around)))

    def fit(kmask: np.ndarray, region: np.ndarray) -> Detection | None:
        """The card quad of one kernel (``kmask``) and the face pixels nearest to it (``region``)."""
        ys, xs = np.nonzero(kmask)
        k = kernel_quad(np.stack([xs, ys], 1).astype(np.float32) + 0.5)
        if k is None:
            return None
        kq, karea = k  # karea: the polygon the occlusion gate was tuned on (see kernel_quad)
        solidity = float(len(xs) / karea) if karea > 0 else 0.0
        c = kq.mean(0)
        if around is not None:
            cf = (c - np.array(off, np.float32)) / s - 0.5
            if cv2.pointPolygonTest(around, (float(cf[0]), float(cf[1])), True) < -reach:
                return None
        quad_k = c + (kq - c) / KERNEL_SHRINK
        region = region.astype(np.uint8)
        quad_in = None
        if region.sum() > 0:
            fq = fit_quad(region)
            if fq is not None:
                ratio = abs(cv2.contourArea(fq)) / max(abs(cv2.contourArea(quad_k)), 1e-6)
                if 0.5 < ratio < 1.6:  # else the face region merged with a neighbour (or is a fragment)
                    quad_in = fq
        if quad_in is None:
            quad_in = quad_k
        else:  # boundary pixels lie half a pixel inside the region's true edge
            cq = quad_in.mean(0)
            side = 0.25 * sum(float(np.linalg.norm(quad_in[(k + 1) % 4] - quad_in[k])) for k in range(4))
            quad_in = cq + (quad_in - cq) * (1 + FACE_GROW / max(side, 1.0))
        # quad_in is in input pixel-area coordinates (cell i of the maps covers [i·stride, (i+1)·stride),
        # see models/detector/data.py); frame quads use pixel-centre coordinates
        quad = (quad_in - np.array(off, np.float32)) / s - 0.5
        quad, top_margin = orient_quad(order_quad(quad), top, s, off)
        if around is not None and cv2.pointPolygonTest(around, tuple(float(v) for v in quad.mean(0)), False) < 0:
            return None
        score = float(kern[kmask].mean())
        if gray is not None:
            quad = refine_quad(gray, quad)
        return Detection(quad.astype(np.float32), score, "cnn", min(1.0, solidity),
                         {"top_margin": round(top_margin, 3)})

    dets: list[Detection] = []
    uncut: dict[int, Detection | None] = {}
    for j in keep:
        kmask = lab == j
        ys, xs = np.nonzero(kmask)
        d = fit(kmask, face_bin & (near == near[ys[0], xs[0]]))
        if d is None:
            continue
        if wholes and j in origin:
            # a piece of a pinched kernel: one card's art window and text box come apart this way as well as
            # two touching cards, and the shape cannot always tell (a tilted, blurred card: simulated hand-held
            # sv1 captures); the unsplit component goes along so the pipeline can read it whole when that reads
            # better (``VisionPipeline._reunite``)
            o = origin[j]
            if o not in uncut:
                parts = [p for p in keep if origin.get(p) == o]
                uncut[o] = fit(whole_lab == o, face_bin & np.isin(near, parts))
                if uncut[o] is not None:
                    uncut[o].info["pinched"] = True
            if uncut[o] is not None:
                d.info["whole"] = uncut[o]
        dets.append(d)
    dets.sort(key=lambda d: -abs(cv2.contourArea(d.quad)))
    return dets


def orient_quad(quad: np.ndarray, top: np.ndarray, s: float, off: tuple[float, float]) -> tuple[np.ndarray, float]:
    """Which side of the quad is the card's top: all four rotations compete on the "top half" map (a
    steeply tilted portrait card can look landscape, so the short side alone is not enough); a small
    prior favours a short top side. Returns (quad TL, TR, BR, BL of the card, margin to the runner-up)."""
    qi = (quad + 0.5) * s + np.array(off, np.float32) - 0.5  # upsampled pixel j ↔ input j + 0.5
    mids = (qi + np.roll(qi, -1, axis=0)) / 2  # mids[k]: middle of side k (corner k to corner k + 1)
    # rotation r's top half is rotation (r + 2)'s bottom half: four half-card means serve all four rotations
    half = [_poly_mean(top, np.array([qi[r], qi[(r + 1) % 4], mids[(r + 1) % 4], mids[(r + 3) % 4]]))
            for r in range(4)]
    sides = np.sqrt(((np.roll(quad, -1, axis=0) - quad) ** 2).sum(1))  # side k: corner k to corner k + 1
    across, along = sides[0] + sides[2], sides[1] + sides[3]
    scores = []
    for r in range(4):  # rotation r: its top side is side r
        short = across < along if r % 2 == 0 else along < across
        scores.append(half[r] - half[(r + 2) % 4] + (0.1 if short else 0.0))
    order = np.argsort(scores)[::-1]
    best = int(order[0])
    return np.roll(quad, -best, axis=0), float(scores[best] - scores[int(order[1])])


def _poly_mean(img: np.ndarray, poly: np.ndarray) -> float:
    """Mean of ``img`` inside a convex polygon, drawn on its bounding box only."""
    pts = np.round(poly).astype(np.int32)
    h, w = img.shape[:2]
    x0, y0 = max(int(pts[:, 0].min()), 0), max(int(pts[:, 1].min()), 0)
    x1, y1 = min(int(pts[:, 0].max()) + 1, w), min(int(pts[:, 1].max()) + 1, h)
    if x1 <= x0 or y1 <= y0:
        return 0.0
    m = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillConvexPoly(m, pts - np.array([x0, y0], np.int32), 1)
    n = np.count_nonzero(m)
    return float(img[y0:y1, x0:x1][m > 0].sum() / n) if n else 0.0


# ----------------------------------------------------------------------------------------- detectors


class TFLiteDetector(Detector):
    """The bundle's int8 CNN (``detector.tflite``).

    One pass on the whole frame (letterboxed to 160×120). A *closer look* (``closer`` > 0, the bundle's
    ``detector.closer``): of the ``closer`` biggest detections, each that is no card's shape (a pile of overlapping
    cards seen as one blob, mostly) and that a zoomed pass would see larger (by ``closer_min_zoom``) gets a second
    inference on a crop around it; when that finds a pile in it (``_a_pile``), the cards found replace it, each
    remembering the detection it came from (``info["whole"]``, for ``VisionPipeline._reunite``); when it finds
    none (or the detection is nearly a card's shape), a card lying on top at one end of it, where the edge model
    sees an edge run across (``_on_top``). Real playing-card photos and simulated fans of Pokémon cards,
    docs/device-vision.md. A card-shaped detection, as every card in a scanner box, never pays for it. Optional
    older second pass (``zoom_cards`` > 0): when the frame holds at most that many cards, a zoomed corner
    refinement of each. Off by default: on simulated captures it lowered the median corner error a little but
    not top-1 (measured 0.76 vs 0.79 identified top-1 with/without)."""

    def __init__(self, model_path: str, num_threads: int | None = None, kernel_thresh: float = 0.5,
                 refine: bool = True, zoom_cards: int = 0, zoom_margin: float = 0.3, split: bool = True,
                 edges: EdgeModel | None = None, closer: int = 0, closer_min_zoom: float = 1.0,
                 closer_margin: float = 0.15):
        from device.vision.runtime import TFLiteModel

        self.model = TFLiteModel(model_path, num_threads)
        self.kernel_thresh = kernel_thresh
        self.refine = refine
        self.edges = edges  # the bundle's learned edge snap; None: the classical refine_quad
        self.zoom_cards = zoom_cards
        self.zoom_margin = zoom_margin
        self.split = split
        self.closer = closer
        self.closer_min_zoom = closer_min_zoom
        self.closer_margin = closer_margin

    def _run(self, x: np.ndarray) -> np.ndarray:
        rgb = x[..., ::-1]
        out = self.model.run([rgb[None].astype(np.float32) / 255.0])[0][0]  # [h, w, 3] or [3, h, w]
        if out.shape[-1] == 3 and out.shape[0] != 3:
            out = out.transpose(2, 0, 1)
        return _sigmoid(out.astype(np.float32))

    def maps(self, frame: np.ndarray) -> tuple[np.ndarray, float, tuple[float, float]]:
        x, s, off = letterbox(frame)
        return self._run(x), s, off

    @staticmethod
    def _zoom_scale(q: np.ndarray, margin: float) -> float:
        """Input pixels per frame pixel of a pass that fills the input with ``q``'s bounding box (``margin`` of
        it added on each side)."""
        W, H = INPUT_SIZE
        x0, y0 = q.min(0)
        x1, y1 = q.max(0)
        cw, ch = (x1 - x0) * (1 + 2 * margin), (y1 - y0) * (1 + 2 * margin)
        return min(W / max(cw, 1.0), H / max(ch, 1.0))

    def _zoomed(self, frame: np.ndarray, q: np.ndarray, margin: float,
                around: np.ndarray | None = None) -> list[Detection]:
        """Detections of a pass on the frame around ``q``'s bounding box (``margin`` of it on each side), scaled
        to fill the input: an axis-aligned scale + shift (input = frame·s + off), decoded in frame coordinates
        (only near ``around``, see ``decode_maps``)."""
        W, H = INPUT_SIZE
        x0, y0 = q.min(0)
        x1, y1 = q.max(0)
        s = self._zoom_scale(q, margin)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        off = (W / 2 - cx * s, H / 2 - cy * s)
        m = np.array([[s, 0, off[0]], [0, s, off[1]]], np.float32)
        x = cv2.warpAffine(frame, m, (W, H), flags=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=(114, 114, 114))
        return decode_maps(self._run(x), s, off, None, self.kernel_thresh, split=self.split, around=around,
                           wholes=False)

    def separate(self, frame: np.ndarray, quad: np.ndarray, margin: float = 0.15, score: float = 1.0) -> list[Detection]:
        """A second look at a detection that read badly, zoomed on ``quad`` (2–3× the scale): touching or
        overlapping cards the first pass merged into one come apart there, and a single card's corners come out
        finer. Returns the zoomed pass's detections centred inside ``quad``, edge-snapped like the first pass's
        (``info["split"]`` when there are two or more), scores capped at ``score`` (``_pieces``); the caller decides whether they read better than the
        one (``VisionPipeline._split``; hand-held cards missed at seed 900000: 45 → 27 of 714,
        docs/device-vision.md)."""
        dets = self._pieces(frame, quad, margin, score)
        for d in dets:
            self.snap(frame, d)
        return dets

    def snap(self, frame: np.ndarray, det: Detection) -> Detection:
        """Snap ``det``'s quad onto the card's outline with the bundle's edge model (in place; no edge model or
        ``refine`` off: unchanged). The one place every detection and second look is edge-snapped."""
        if self.refine and self.edges is not None:
            det.quad, info = self.edges.refine(frame, det.quad)
            det.info.update(info)
        return det

    def _pieces(self, frame: np.ndarray, quad: np.ndarray, margin: float, score: float = 1.0) -> list[Detection]:
        """The zoomed pass's detections centred inside ``quad`` (not edge-snapped), marked ``split`` when there
        are two or more and ``refocused`` when one. Their scores are capped at ``score``, the confidence of the
        detection looked at: a closer look sharpens corners and parts cards, it is no evidence that a card is there
        (zoomed on an empty playmat's printed card zone that the first pass found at 0.78, it saw a card at 0.92;
        the soft gate and the low_score path rely on the score)."""
        q = np.asarray(quad, np.float32)
        dets = self._zoomed(frame, q, margin, around=q)
        for d in dets:
            d.info["split" if len(dets) >= 2 else "refocused"] = True
            d.score = min(d.score, score)
        return dets

    def _look_closer(self, frame: np.ndarray, first: Detection, scale: float) -> list[Detection]:
        """``first`` or, when it may be several cards and the input saw it small, the cards a zoomed pass finds in
        it (see the class); else the card on top and the covered card's rest when ``_on_top`` finds them.

        A card-shaped detection stays as it is: two cards side by side make a blob of a card's shape too (a card's
        half has nearly a card's aspect, 2.5 × 1.75), and the zoomed pass cut single cards into their art window
        and text box now and then, which nothing in the pieces' geometry tells from two cards. Nor does one piece
        replace the detection: the zoomed pass's corners of a single card read no better than the first pass's
        (worse on simulated binder pages). A card on top is looked for in outlines nearer a card's shape than the
        zoomed pass is (``ON_TOP_ASPECT_TOL``): two cards offset by a tenth of a card make such a blob."""
        off_shape = abs(side_ratio(first.quad) - CARD_ASPECT)
        if off_shape <= ON_TOP_ASPECT_TOL:
            return [first]
        zoom = self._zoom_scale(first.quad, self.closer_margin)
        if off_shape > CLOSER_ASPECT_TOL and zoom >= self.closer_min_zoom * scale:
            pieces = self._pieces(frame, first.quad, self.closer_margin, first.score)
            if len(pieces) >= 2 and _a_pile(first.quad, [p.quad for p in pieces]):
                for p in pieces:  # the pipeline may still read the whole better (VisionPipeline._reunite)
                    p.info["whole"] = first
                return pieces
        return self._on_top(frame, first) or [first]

    def _on_top(self, frame: np.ndarray, first: Detection) -> list[Detection]:
        """Two overlapping cards whose faces the maps merged into one outline — even zoomed in: on the real
        playing-card photos white card over white card, a pair offset sideways making a near-square blob — as the
        card on top and the covered card's visible rest, or [] when no card lies on top at one of its ends.

        The card on top lies at one end of the outline, shares that side, and its inner side is an edge running
        across the outline; the covered card's inner side lies under it, so nothing marks an edge there. So: a
        card-shaped quad at each end of the edge-snapped outline (``quads_from_a_side``, the card reaching
        ``ON_TOP_REACH`` across), its inner side edge-snapped; the one whose inner side the edge model supports
        best, along ≥ ``ON_TOP_MIN_SUPPORT`` of it, is the card on top (then snapped on all four sides). Where the
        edge model sees no such edge, a white card on a white card shows only its cut edge's thin shadow or glint:
        the quad whose inner side a seam (``edges.seam``) runs along, ≥ ``ON_TOP_MIN_SEAM`` of it, is the card on
        top, its inner side on the seam — if the rest beyond is at least ``ON_TOP_SEAM_MIN_REST`` of a card (a
        court card's picture frame is such a line near its edge). The rest of the outline beyond the card on top
        is the covered card's visible part (its solidity the part's area over a card's, so the gate calls a mostly
        covered card ``occluded``). Both carry the outline as ``info["whole"]``: the pipeline reads it whole
        instead unless the card on top reads as an accept and better (``VisionPipeline._reunite``). Needs the
        bundle's edge model."""
        if self.edges is None or abs(side_ratio(first.quad) - CARD_ASPECT / 2) <= ON_TOP_ASPECT_TOL:
            return []  # two cards' shape, end to end: cards laid edge to edge (VisionPipeline._cut) more often
        outline, snapped_info = self.edges.refine(frame, first.quad)
        best, shaped = None, []
        for side, quad in quads_from_a_side(outline, ON_TOP_REACH):
            # its other three sides lie on the outline, snapped already: only the inner one is snapped
            snapped, _ = self.edges.refine(frame, quad, sides=(2,))
            if abs(side_ratio(snapped) - CARD_ASPECT) > ON_TOP_ASPECT_TOL:
                continue
            shaped.append((side, quad))
            support = float(self.edges.side_support(frame, snapped, sides=(2,))[0])  # side 2: across the outline
            if support >= ON_TOP_MIN_SUPPORT and (best is None or support > best[0]):
                best = (support, side, quad, False)
        for side, quad in shaped if best is None else []:  # no edge seen: a seam, white card on white card
            found, ends = seam(frame, quad, 2, self.edges.radius, self.edges.samples)
            moved = _onto_line(quad, 2, ends) if found >= ON_TOP_MIN_SEAM else None
            if (moved is not None and abs(side_ratio(moved) - CARD_ASPECT) <= ON_TOP_ASPECT_TOL
                    and _area(outline) >= (1 + ON_TOP_SEAM_MIN_REST) * _area(moved)
                    and (best is None or found > best[0])):
                best = (found, side, moved, True)
        if best is None:  # one card after all: it keeps the snap just made (``detect`` snaps no detection twice)
            first.quad = outline
            first.info.update(snapped_info)
            return []
        support, side, top_quad, on_seam = best
        # the card on top's own outline, all four sides — but a seam the edge model cannot see stays where it is;
        # its snap info tells ``detect`` not to snap it again
        top_quad, snapped_top = self.edges.refine(frame, top_quad, sides=(0, 1, 3) if on_seam else (0, 1, 2, 3))
        q = order_quad(outline)
        far = q[(side + 2) % 4], q[(side + 3) % 4]  # the outline's corners across from the shared side
        top = Detection(portrait_quad(order_quad(top_quad)), first.score, "cnn", first.solidity,
                        {"top_margin": 0.0, "on_top": round(support, 3), "whole": first, **snapped_top})
        out = [top]
        rest_quad = order_quad(np.float32([top_quad[3], top_quad[2], far[0], far[1]]))
        visible = _area(rest_quad) / max(_area(top_quad), 1e-6)
        if visible >= ON_TOP_MIN_REST and cv2.isContourConvex(rest_quad.reshape(-1, 1, 2)):
            out.append(Detection(portrait_quad(rest_quad), first.score, "cnn", min(first.solidity, visible),
                                 {"top_margin": 0.0, "covered": True, "whole": first}))
        return out

    def zoom(self, frame: np.ndarray, det: Detection) -> Detection | None:
        """Second pass on a crop around ``det``, whose best match replaces it (finer corners)."""
        q = det.quad
        dets = self._zoomed(frame, q, self.zoom_margin)
        if not dets:
            return None
        from device.vision.geometry import quad_iou

        best = max(dets, key=lambda d: quad_iou(d.quad, q))
        if quad_iou(best.quad, q) < 0.7:
            return None
        # the crop may reach past the frame edge (grey padding): trust a zoomed corner only near the
        # first-pass one, so padding can never stretch a card
        qz = best.quad
        r = min(range(4), key=lambda k: float(np.abs(np.roll(qz, k, axis=0) - q).sum()))
        qz = np.roll(qz, r, axis=0)
        diag = float(np.linalg.norm(q[2] - q[0]))
        far = np.linalg.norm(qz - q, axis=1) > 0.08 * diag
        best.quad = np.where(far[:, None], q, qz).astype(np.float32)
        return best

    def detect(self, frame: np.ndarray) -> list[Detection]:
        dets, s = self._first_pass(frame)
        if self.closer > 0 and dets:  # biggest first
            dets = [p for d in dets[:self.closer] for p in self._look_closer(frame, d, s)] + dets[self.closer:]
            dets.sort(key=lambda d: -abs(cv2.contourArea(d.quad)))
        for i, d in enumerate(dets if len(dets) <= self.zoom_cards else []):
            z = self.zoom(frame, d)
            if z is not None:
                z.solidity = min(z.solidity, d.solidity)  # occlusion is judged on the whole frame
                z.info["zoomed"] = True
                dets[i] = z
        if self.edges is not None:
            for d in dets:
                if "edges" not in d.info:  # not snapped yet (_on_top snaps the card on top, and an outline it
                    # finds one card in)
                    self.snap(frame, d)
        elif self.refine:
            gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            for d in dets:
                d.quad = refine_quad(gray, d.quad)
        return dets

    def _first_pass(self, frame: np.ndarray) -> tuple[list[Detection], float]:
        """The whole frame's detections (not edge-snapped, frame coordinates) and the input's scale."""
        h = frame.shape[0]
        if h > frame.shape[1]:
            # portrait frame (a phone photo, 3:4): letterboxed as is it fills only 56 % of the landscape
            # input's width; turned a quarter it is seen at 1.33× the scale (real test photos: mean box IoU
            # 0.54 → 0.62 with the same model). Everything after this pass works on the frame as it is.
            rot = np.ascontiguousarray(np.rot90(frame, -1))  # clockwise: rot (x', y') = frame (y', h−1−x')
            maps, s, off = self.maps(rot)
            dets = decode_maps(maps, s, off, None, self.kernel_thresh, split=self.split)
            wholes = {id(d.info["whole"]): d.info["whole"] for d in dets if "whole" in d.info}
            for d in dets + list(wholes.values()):  # a rotation keeps the corner order (TL, TR, BR, BL)
                d.quad = np.stack([d.quad[:, 1], h - 1 - d.quad[:, 0]], 1).astype(np.float32)
            return dets, s
        maps, s, off = self.maps(frame)
        return decode_maps(maps, s, off, None, self.kernel_thresh, split=self.split), s


class ContourDetector(Detector):
    """Classical: edges → external contours → convex quadrilaterals with a card's aspect ratio."""

    def __init__(self, min_area_frac: float = 0.01, work_width: int = 480):
        self.min_area_frac = min_area_frac
        self.work_width = work_width

    def detect(self, frame: np.ndarray) -> list[Detection]:
        h, w = frame.shape[:2]
        f = min(1.0, self.work_width / w)
        small = cv2.resize(frame, None, fx=f, fy=f, interpolation=cv2.INTER_AREA) if f < 1 else frame
        gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        gray = cv2.GaussianBlur(gray, (5, 5), 0)
        v = float(np.median(gray))
        edges = cv2.Canny(gray, max(10, int(0.5 * v)), min(255, int(1.3 * v) + 20))
        edges = cv2.dilate(edges, np.ones((3, 3), np.uint8))
        contours, _ = cv2.findContours(edges, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        min_area = self.min_area_frac * small.shape[0] * small.shape[1]
        dets: list[Detection] = []
        for c in contours:
            area = cv2.contourArea(c)
            if area < min_area:
                continue
            hull = cv2.convexHull(c)
            ap = cv2.approxPolyDP(hull, 0.03 * cv2.arcLength(hull, True), True)
            if len(ap) != 4:
                continue
            q = ap.reshape(4, 2).astype(np.float32) / f
            q = portrait_quad(order_quad(q))
            if not _card_like(q):
                continue
            if cv2.contourArea(hull) > 0 and area / cv2.contourArea(hull) < 0.5:
                continue
            dets.append(Detection(q, 0.5, "contour"))
        return nms(dets)


def _card_like(q: np.ndarray, tol: float = 0.3) -> bool:
    wd = 0.5 * (np.linalg.norm(q[1] - q[0]) + np.linalg.norm(q[2] - q[3]))
    ht = card_height(q)
    if ht <= 0:
        return False
    return abs(wd / ht - CARD_ASPECT) < tol * CARD_ASPECT * 1.5


def nms(dets: list[Detection], iou: float = 0.5) -> list[Detection]:
    from device.vision.geometry import quad_iou

    dets = sorted(dets, key=lambda d: (-d.score, -abs(cv2.contourArea(d.quad))))
    keep: list[Detection] = []
    for d in dets:
        if all(quad_iou(d.quad, k.quad) < iou for k in keep):
            keep.append(d)
    keep.sort(key=lambda d: -abs(cv2.contourArea(d.quad)))
    return keep


class CombinedDetector(Detector):
    """CNN first; the contour detector cross-checks when the CNN finds nothing (or there is no CNN)."""

    def __init__(self, cnn: Detector | None, contour: Detector | None = None):
        self.cnn = cnn
        self.contour = contour or ContourDetector()

    def detect(self, frame: np.ndarray) -> list[Detection]:
        if self.cnn is not None:
            dets = self.cnn.detect(frame)
            if dets:
                return dets
        return self.contour.detect(frame)


# ----------------------------------------------------------------------------------------- quality gate


class GateConfig(BaseModel):
    """Quality gate. A *hard* failure rejects the detection (no answer); a *soft* one — a sliver out of view,
    glare, slight blur on a confidently detected card — still leaves an identifiable card: it is identified,
    never auto-accepted, and goes to the server as ``ambiguous`` with its crop and the reason
    (``soft_failure``). Overridable per bundle under ``thresholds.gate`` in the manifest."""

    model_config = ConfigDict(extra="forbid")
    min_card_height_px: float = Field(72.0, gt=0, description="Card height (frame pixels) below which a detection "
                                      "is too_small: the footer is unreadable. Always hard.")
    border_margin_frac: float = Field(0.06, ge=0, description="Corners further outside the frame than this × the "
                                      "card height: partially_out_of_view (rectification replicates the edge, so a "
                                      "sliver outside is harmless and passes).")
    min_solidity: float = Field(0.75, ge=0, le=1, description="Kernel fills its quad less than this: occluded. "
                                "Always hard.")
    min_sharpness: float = Field(12.0, ge=0, description="Variance of the Laplacian of the grey crop below which "
                                 "it is too_blurry.")
    max_glare_frac: float = Field(0.4, ge=0, le=1, description="Fraction of blown-out (near-white, unsaturated) "
                                  "crop pixels above which it is glare.")
    soft_min_inside: float = Field(0.95, ge=0, le=1, description="partially_out_of_view is soft while at least "
                                   "this fraction of the quad's area lies inside the frame (mostly out of view "
                                   "stays a reject).")
    soft_min_sharpness: float = Field(6.0, ge=0, description="too_blurry is soft at or above this sharpness "
                                      "(slight blur); below it the crop is a reject.")
    soft_max_glare_frac: float = Field(0.85, ge=0, le=1, description="glare is soft up to this blown-out fraction; "
                                       "above it the card face is gone and the crop is a reject.")
    soft_min_detection_score: float = Field(0.8, ge=0, le=1, description="Soft failures need a confident CNN "
                                            "detection (mean kernel probability ≥ this); contour fallbacks never "
                                            "pass a failed gate. 0.8 since bundle demo-10 (0.75 before): its "
                                            "detector found an empty playmat's printed card zone at 0.78 "
                                            "(docs/device-vision.md).")
    unmatched_to_server: bool = Field(True, description="A clean, confident CNN detection (mean kernel "
                                      "probability ≥ soft_min_detection_score) whose best match is below "
                                      "no_card_score goes to the server as ambiguous (quality_flag low_score) "
                                      "instead of no_card: a card whose corners the detector got wrong matches "
                                      "as poorly as a non-catalog object, and a card placed in the box must not "
                                      "vanish without a trace. false: such a detection is no_card.")


#: gate failures that can be soft (``soft_failure``); too_small and occluded are always hard
SOFT_REASONS = ("partially_out_of_view", "too_blurry", "glare")


def geometry_reject(det: Detection, frame_shape: tuple[int, ...], cfg: GateConfig) -> str | None:
    h, w = frame_shape[:2]
    q = det.quad
    m = cfg.border_margin_frac * card_height(q)  # rectification replicates the edge: a sliver outside is harmless
    if (q[:, 0] < -m).any() or (q[:, 1] < -m).any() or (q[:, 0] > w - 1 + m).any() or (q[:, 1] > h - 1 + m).any():
        return "partially_out_of_view"
    if card_height(q) < cfg.min_card_height_px:
        return "too_small"
    if det.solidity < cfg.min_solidity:
        return "occluded"
    return None


def sharpness(crop: np.ndarray) -> float:
    g = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    g = cv2.resize(g, (96, 134), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(g, cv2.CV_32F).var())


def glare_fraction(crop: np.ndarray) -> float:
    hsv = cv2.cvtColor(crop, cv2.COLOR_BGR2HSV)
    blown = (hsv[..., 2] >= 250) & (hsv[..., 1] <= 30)
    return float(blown.mean())


def crop_reject(crop: np.ndarray, cfg: GateConfig) -> tuple[str | None, dict]:
    sh, gl = sharpness(crop), glare_fraction(crop)
    info = {"sharpness": round(sh, 1), "glare": round(gl, 3)}
    if sh < cfg.min_sharpness:
        return "too_blurry", info
    if gl > cfg.max_glare_frac:
        return "glare", info
    return None, info


def inside_fraction(quad: np.ndarray, frame_shape: tuple[int, ...]) -> float:
    """Fraction of the quad's area that lies inside the frame."""
    h, w = frame_shape[:2]
    q = np.asarray(quad, np.float32)
    area = abs(float(cv2.contourArea(q)))
    if area <= 0:
        return 0.0
    frame = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)
    inter, _ = cv2.intersectConvexConvex(np.ascontiguousarray(q), frame)
    return float(min(1.0, inter / area))


def soft_failure(reason: str, det: Detection, frame_shape: tuple[int, ...], quality: dict, cfg: GateConfig) -> bool:
    """Whether a gate failure still leaves an identifiable card (identify it, never accept it, let the server
    decide) rather than a reject. Only for a confident CNN detection: a shaky quad with a failed gate has little
    left to go on. ``quality`` holds the crop measures (``crop_reject``); empty for a geometry failure."""
    if reason not in SOFT_REASONS or det.source != "cnn" or det.score < cfg.soft_min_detection_score:
        return False
    if reason == "partially_out_of_view":
        return inside_fraction(det.quad, frame_shape) >= cfg.soft_min_inside
    if reason == "too_blurry":
        return float(quality.get("sharpness", 0.0)) >= cfg.soft_min_sharpness
    return float(quality.get("glare", 1.0)) <= cfg.soft_max_glare_frac
