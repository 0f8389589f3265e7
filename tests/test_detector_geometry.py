"""Quad fitting of the detector's decoded maps (device/vision/detector.py), on real rasterised shapes."""

from __future__ import annotations

import cv2
import numpy as np

from device.vision.detector import hull_quad


def _blob_points(w: int, h: int, radius: int, angle: float = 0.0) -> np.ndarray:
    """Pixels of a w×h card with rounded corners (a low-resolution kernel blob), turned by ``angle``."""
    img = np.zeros((4 * h, 4 * w), np.uint8)
    x0, y0 = 1.5 * w, 1.5 * h
    cv2.rectangle(img, (int(x0), int(y0)), (int(x0 + w), int(y0 + h)), 255, -1)
    # round the corners the way a blurred, thresholded probability map does
    img = cv2.GaussianBlur(img, (0, 0), radius)
    img = (img > 127).astype(np.uint8)
    if angle:
        m = cv2.getRotationMatrix2D((2 * w, 2 * h), angle, 1.0)
        img = cv2.warpAffine(img, m, (4 * w, 4 * h), flags=cv2.INTER_NEAREST)
    ys, xs = np.nonzero(img)
    return np.stack([xs, ys], 1).astype(np.float32) + 0.5


def test_rounded_small_blob_gives_the_card_not_its_edge_midpoints():
    for angle in (0.0, 10.0, 30.0):
        pts = _blob_points(10, 14, 3, angle)
        q = hull_quad(pts)
        hull = cv2.convexHull(pts.reshape(-1, 1, 2))
        assert q is not None and q.shape == (4, 2)
        # a diamond through the edge midpoints would cover about half of the hull
        assert abs(cv2.contourArea(q)) >= 0.8 * cv2.contourArea(hull), angle


def test_perspective_trapezoid_keeps_its_corners():
    quad = np.array([[40, 20], [100, 30], [110, 120], [30, 110]], np.float32)
    img = np.zeros((160, 160), np.uint8)
    cv2.fillConvexPoly(img, quad.astype(np.int32), 255)
    ys, xs = np.nonzero(img)
    q = hull_quad(np.stack([xs, ys], 1).astype(np.float32) + 0.5)
    # every true corner has a fitted corner within 2 px (not replaced by the bounding rectangle)
    d = np.linalg.norm(q[:, None, :] - quad[None, :, :], axis=2)
    assert d.min(0).max() <= 2.0
