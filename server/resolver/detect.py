"""Whole-photo uploads: find card quads and rectify them (server side, classical CV).

Uses the device vision engineer's detector (``device.vision``) when that package exists; otherwise this
contour detector: edges + contours -> convex quadrilaterals with a card-like aspect. An image that is
already a crop (one card filling the frame) yields a single quad = the image corners.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

log = logging.getLogger(__name__)

RECT_SIZE = (360, 504)  # (W, H) of a rectified card face, as the catalog renders
CARD_ASPECT = 63.0 / 88.0


def order_quad(pts: np.ndarray) -> np.ndarray:
    """TL, TR, BR, BL with the card upright-ish (portrait: the short edges are top and bottom)."""
    pts = np.asarray(pts, np.float32).reshape(4, 2)
    c = pts.mean(0)
    ang = np.arctan2(pts[:, 1] - c[1], pts[:, 0] - c[0])
    pts = pts[np.argsort(ang)]  # clockwise in image coordinates, starting near -180°
    # Start at the corner with the smallest x + y, then make edge 0 (TL->TR) a short edge.
    start = int(np.argmin(pts.sum(1)))
    pts = np.roll(pts, -start, axis=0)
    e0 = np.linalg.norm(pts[1] - pts[0])
    e1 = np.linalg.norm(pts[2] - pts[1])
    if e0 > e1:
        pts = np.roll(pts, -1, axis=0)
    return pts


def rectify(img: np.ndarray, quad: np.ndarray, size: tuple[int, int] = RECT_SIZE) -> np.ndarray:
    w, h = size
    dst = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)
    M = cv2.getPerspectiveTransform(np.asarray(quad, np.float32), dst)
    return cv2.warpPerspective(img, M, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _looks_like_crop(img: np.ndarray) -> bool:
    h, w = img.shape[:2]
    a = min(w, h) / max(w, h)
    return abs(a - CARD_ASPECT) < 0.025  # tight: a 4:3 camera frame (0.75) is not a crop


def detect_quads(img: np.ndarray, max_cards: int = 9, min_area_frac: float = 0.03) -> list[np.ndarray]:
    """Card quads (TL, TR, BR, BL, image pixels), largest first."""
    h, w = img.shape[:2]
    s = 640.0 / max(h, w) if max(h, w) > 640 else 1.0
    small = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s < 1 else img
    gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    gray = cv2.GaussianBlur(gray, (5, 5), 0)
    area_img = small.shape[0] * small.shape[1]
    found: list[tuple[float, np.ndarray]] = []
    for lo, hi, close in ((30, 90, 3), (60, 160, 3), (30, 90, 9)):
        edges = cv2.Canny(gray, lo, hi)
        # A closing bridges gaps in the card outline (glare, sleeve edges) so it forms one contour.
        edges = cv2.morphologyEx(edges, cv2.MORPH_CLOSE, np.ones((close, close), np.uint8)) if close > 3 else \
            cv2.dilate(edges, np.ones((3, 3), np.uint8))
        contours, _ = cv2.findContours(edges, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        for cnt in contours:
            area = cv2.contourArea(cnt)
            if area < min_area_frac * area_img:
                continue
            hull = cv2.convexHull(cnt)
            approx = cv2.approxPolyDP(hull, 0.02 * cv2.arcLength(hull, True), True)
            if len(approx) != 4:
                continue
            q = order_quad(approx.reshape(4, 2))
            sw = (np.linalg.norm(q[1] - q[0]) + np.linalg.norm(q[2] - q[3])) / 2
            sh = (np.linalg.norm(q[3] - q[0]) + np.linalg.norm(q[2] - q[1])) / 2
            if sh <= 0 or not 0.58 < sw / sh < 0.88:
                continue
            found.append((cv2.contourArea(q), q / s))
    found.sort(key=lambda t: -t[0])
    out: list[np.ndarray] = []
    for _, q in found:  # non-maximum suppression on centres
        c = q.mean(0)
        size = np.linalg.norm(q[2] - q[0])
        if all(np.linalg.norm(c - o.mean(0)) > 0.3 * size for o in out):
            out.append(q)
        if len(out) >= max_cards:
            break
    return out


def find_cards(img: np.ndarray, max_cards: int = 9) -> list[np.ndarray]:
    """Quads for an upload: detected cards, or the whole image when it is itself a crop."""
    h, w = img.shape[:2]
    whole = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)
    if w > h and _looks_like_crop(img):  # a landscape crop: the card lies on its side
        whole = np.roll(whole, -1, axis=0)
    # Both detectors, merged: on simulated photos each finds cards the other misses.
    quads = _merge((_device_detector(img) or []) + detect_quads(img, max_cards), max_cards)
    if _looks_like_crop(img) and (not quads or cv2.contourArea(quads[0]) > 0.6 * h * w):
        return [whole]
    return quads or ([whole] if _looks_like_crop(img) else [])


def _merge(quads: list[np.ndarray], max_cards: int) -> list[np.ndarray]:
    quads = sorted(quads, key=lambda q: -cv2.contourArea(np.asarray(q, np.float32)))
    out: list[np.ndarray] = []
    for q in quads:
        c, size = q.mean(0), np.linalg.norm(q[2] - q[0])
        if all(np.linalg.norm(c - o.mean(0)) > 0.3 * size for o in out):
            out.append(q)
    return out[:max_cards]


def _device_detector(img: np.ndarray):
    """device.vision's classical detector when it is there (the same quads the Pi would see), else None."""
    global _DEVICE_DET
    if _DEVICE_DET is None:
        try:
            from device.vision.detector import ContourDetector  # type: ignore

            _DEVICE_DET = ContourDetector()
        except Exception as exc:  # not built yet / API changed: fall back to ours
            log.debug("device.vision detector unavailable (%s); using the resolver's contour detector", exc)
            _DEVICE_DET = False
    if _DEVICE_DET is False:
        return None
    try:
        return [np.asarray(d.quad, np.float32).reshape(4, 2) for d in _DEVICE_DET.detect(img)] or None
    except Exception as exc:
        log.debug("device.vision detector failed (%s); using the contour detector", exc)
        return None


_DEVICE_DET = None


__all__ = ["RECT_SIZE", "detect_quads", "find_cards", "order_quad", "rectify"]
