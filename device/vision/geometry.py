"""Card geometry shared by the device and the training code: one definition of the canonical crop.

The detector returns a quad (TL, TR, BR, BL of the card itself, frame pixels). ``rectify`` warps it to the
canonical crop (``CANONICAL_SIZE``, 63:88); ``embedder_views`` cuts the two embedder inputs out of it:

* ``global``: the whole card at ``GLOBAL_SIZE`` (art, layout, name);
* ``strip``: the footer band (set symbol, collector number, rarity mark) at a higher resolution, so
  reprints that share the artwork still separate.

Training (``models/embedder``) builds its samples with these very functions, so what the embedder sees in
training and on the device cannot drift apart.
"""

from __future__ import annotations

import cv2
import numpy as np

CARD_ASPECT = 63.0 / 88.0
#: (W, H) of the rectified card crop the embedder sees (ambiguous scans ship ``evidence_size`` crops).
CANONICAL_SIZE = (192, 268)
#: (W, H) at most of the crop an ambiguous scan carries to the server (= server.resolver.verify.CANON, the size
#: its resolver compares at; the device does not import the server).
EVIDENCE_MAX_SIZE = (360, 504)
#: Border the evidence crop keeps around the quad, per side, as a fraction of the card's width (left, right)
#: and height (top, bottom). Why: the crops the server still gets wrong are mostly ones whose quad the
#: detector drew short (the foot with the collector number cut off); with the frame's pixels around the quad
#: the server's homography finds the real card edge. 0.1 covers a quad a tenth of the card too short.
EVIDENCE_MARGIN = 0.1
#: (W, H) of the embedder's whole-card input.
GLOBAL_SIZE = (96, 128)
#: (W, H) of the embedder's footer-strip input.
STRIP_SIZE = (192, 32)
#: The footer strip is this band of the card height (all layouts print number + rarity here).
STRIP_Y = (0.865, 1.0)


def order_quad(quad: np.ndarray) -> np.ndarray:
    """Order 4 points clockwise starting at the top-left-most one (image coordinates)."""
    q = np.asarray(quad, np.float32).reshape(4, 2)
    c = q.mean(0)
    ang = np.arctan2(q[:, 1] - c[1], q[:, 0] - c[0])
    q = q[np.argsort(ang)]  # clockwise in image coordinates (y down)
    start = int(np.argmin(q.sum(1)))
    return np.roll(q, -start, axis=0)


def is_landscape(quad: np.ndarray) -> bool:
    """Whether the quad's TL→TR side (and its opposite) is the long one."""
    q = np.asarray(quad, np.float32).reshape(4, 2)
    top = np.linalg.norm(q[1] - q[0]) + np.linalg.norm(q[2] - q[3])
    side = np.linalg.norm(q[3] - q[0]) + np.linalg.norm(q[2] - q[1])
    return bool(top > side)


def portrait_quad(quad: np.ndarray) -> np.ndarray:
    """Rotate the point order so TL→TR is a short side (cards are portrait)."""
    q = np.asarray(quad, np.float32).reshape(4, 2)
    return np.roll(q, -1, axis=0) if is_landscape(q) else q


def quads_from_a_side(quad: np.ndarray, reach: tuple[float, float]) -> list[tuple[int, np.ndarray]]:
    """Card-shaped quads that share one side of ``quad`` (TL, TR, BR, BL) — that side the card's width or its
    height — and reach across it, towards the opposite side, ``reach[0]``–``reach[1]`` of the way (below 1: a
    card at one end of an outline; above: the card an outline is a piece of). [(side index, quad)]; each quad
    starts with the shared side (its side 2 is the one across the outline) and has no top of its own."""
    q = order_quad(quad)
    out = []
    for i in range(4):
        a, b, c, d = q[i], q[(i + 1) % 4], q[(i + 2) % 4], q[(i + 3) % 4]  # d across from a, c from b
        side = float(np.linalg.norm(b - a))
        across = 0.5 * float(np.linalg.norm(d - a) + np.linalg.norm(c - b))
        for depth in (side / CARD_ASPECT, side * CARD_ASPECT):
            f = depth / max(across, 1e-6)
            if reach[0] <= f <= reach[1]:
                out.append((i, np.float32([a, b, b + f * (c - b), a + f * (d - a)])))
    return out


def card_height(quad: np.ndarray) -> float:
    """Mean length of the card's left and right sides (TL, TR, BR, BL quad), frame pixels."""
    q = np.asarray(quad, np.float32).reshape(4, 2)
    return float(0.5 * (np.linalg.norm(q[3] - q[0]) + np.linalg.norm(q[2] - q[1])))


def margin_box(canvas: tuple[int, int], margin: float) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the card inside a ``canvas`` (W, H) crop made with ``margin``: the one formula the
    device (``rectify``) and the server (``server.resolver.verify.split_margin``) share."""
    a = margin / (1.0 + 2.0 * margin)
    w, h = canvas
    return a * w, a * h, (1.0 - a) * w, (1.0 - a) * h


def padded_size(size: tuple[int, int], margin: float) -> tuple[int, int]:
    """(W, H) of the canvas that holds a ``size`` card with ``margin`` around it."""
    return int(round(size[0] * (1.0 + 2.0 * margin))), int(round(size[1] * (1.0 + 2.0 * margin)))


def rectify(frame: np.ndarray, quad: np.ndarray, size: tuple[int, int] = CANONICAL_SIZE,
            margin: float = 0.0) -> np.ndarray:
    """Warp the card under ``quad`` (TL, TR, BR, BL of the card) to an upright ``size`` crop; with ``margin``
    the crop is ``padded_size(size, margin)`` and the card lies in its ``margin_box``."""
    q = np.asarray(quad, np.float32).reshape(4, 2)
    if margin <= 0:
        canvas, target = size, np.array([[0, 0], [size[0], 0], [size[0], size[1]], [0, size[1]]], np.float32)
    else:
        canvas = padded_size(size, margin)
        x0, y0, x1, y1 = margin_box(canvas, margin)
        target = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)
    # Area-average first when the card is much bigger than the crop: a linear warp that minifies aliases.
    # By a whole factor n (the warp then minifies ≤ 1.6×), and only the part of the frame the crop reads: OpenCV
    # averages n×n blocks much faster than it resizes by a fraction (tests/bench/profile_pipeline.py, 1280×960
    # hand-held and binder frames: this resize 2.77 → 0.04 ms a frame).
    height = card_height(q)
    if height > 2.2 * size[1]:
        n = int(np.ceil(height / (1.6 * size[1])))
        hm = cv2.getPerspectiveTransform(q, target)
        c = np.array([[0, 0], [canvas[0], 0], [canvas[0], canvas[1]], [0, canvas[1]]], np.float32)
        try:
            reach = cv2.perspectiveTransform(c[None], np.linalg.inv(hm))[0]
        except np.linalg.LinAlgError:
            reach = q
        fh, fw = frame.shape[:2]
        pad = 2.0 + 2.0 * n  # the linear warp's neighbours, in frame pixels
        lo = np.floor(np.minimum(reach.min(0), q.min(0)) - pad)
        hi = np.ceil(np.maximum(reach.max(0), q.max(0)) + pad)
        rx0, ry0 = int(np.clip(lo[0], 0, fw - 1)), int(np.clip(lo[1], 0, fh - 1))
        rx1, ry1 = int(np.clip(hi[0], rx0 + n, fw)), int(np.clip(hi[1], ry0 + n, fh))
        rw, rh = (rx1 - rx0) // n, (ry1 - ry0) // n
        if rw > 0 and rh > 0:
            frame = cv2.resize(frame[ry0:ry0 + rh * n, rx0:rx0 + rw * n], (rw, rh), interpolation=cv2.INTER_AREA)
            # block (i, j) averages frame pixels n·i … n·i + n − 1: its centre is frame n·i + (n − 1)/2
            q = (q - np.array([rx0, ry0], np.float32) - (n - 1) / 2.0) / n
    hm = cv2.getPerspectiveTransform(q, target)
    if margin <= 0:
        return cv2.warpPerspective(frame, hm, canvas, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    # beyond the frame: constant grey, not replicated edge pixels (streaks would look like card edges)
    return cv2.warpPerspective(frame, hm, canvas, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                               borderValue=(128, 128, 128))


def evidence_size(quad: np.ndarray) -> tuple[int, int]:
    """(W, H) of the crop the server gets for a card under ``quad``: the card's own height in the frame,
    between ``CANONICAL_SIZE`` and ``EVIDENCE_MAX_SIZE``.

    Why: what the server still has to decide is a reprint contest fought over a few thin glyphs (a one-digit
    collector number, a set symbol). The embedder's 268-px crop throws away up to half the pixels a
    scanner-box camera has of them; a crop at the card's own resolution keeps them (and costs one warp, for
    ambiguous cards only)."""
    h = int(round(min(max(card_height(quad), CANONICAL_SIZE[1]), EVIDENCE_MAX_SIZE[1])))
    return int(round(h * CARD_ASPECT)), h


def embedder_views(crop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(global, strip) BGR uint8 views of a canonical crop (any size with the card's aspect)."""
    h = crop.shape[0]
    g = cv2.resize(crop, GLOBAL_SIZE, interpolation=cv2.INTER_AREA)
    y0 = int(round(STRIP_Y[0] * h))
    band = crop[y0:int(round(STRIP_Y[1] * h))]
    interp = cv2.INTER_AREA if band.shape[1] > STRIP_SIZE[0] else cv2.INTER_LINEAR
    s = cv2.resize(band, STRIP_SIZE, interpolation=interp)
    return g, s


def quad_iou_box(quad: np.ndarray, box: tuple[float, float, float, float]) -> float:
    """IoU between the axis-aligned bounding box of ``quad`` and ``box`` (x0, y0, x1, y1)."""
    q = np.asarray(quad, np.float32).reshape(4, 2)
    a = (float(q[:, 0].min()), float(q[:, 1].min()), float(q[:, 0].max()), float(q[:, 1].max()))
    return box_iou(a, box)


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def quad_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two convex quads (polygon intersection)."""
    pa = np.asarray(a, np.float32).reshape(4, 2)
    pb = np.asarray(b, np.float32).reshape(4, 2)
    area_a, area_b = abs(cv2.contourArea(pa)), abs(cv2.contourArea(pb))
    if area_a <= 0 or area_b <= 0:
        return 0.0
    inter, _ = cv2.intersectConvexConvex(cv2.convexHull(pa), cv2.convexHull(pb))
    return float(inter / (area_a + area_b - inter)) if inter > 0 else 0.0


def quad_gap(a: np.ndarray, b: np.ndarray) -> float:
    """Distance between two convex quads in frame px, 0 when they touch or overlap: the nearest vertex of
    either to the other's outline (two disjoint convex polygons are nearest at a vertex of one of them)."""
    pa = cv2.convexHull(np.asarray(a, np.float32).reshape(4, 2))
    pb = cv2.convexHull(np.asarray(b, np.float32).reshape(4, 2))
    inter, _ = cv2.intersectConvexConvex(pa, pb)
    if inter > 0:
        return 0.0
    return max(0.0, min(-cv2.pointPolygonTest(q, (float(x), float(y)), True)
                        for p, q in ((pa, pb), (pb, pa)) for x, y in p.reshape(-1, 2)))
