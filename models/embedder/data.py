"""Training samples for the embedder: a catalog image → what the device's rectified crop of it looks like.

A sample imitates the whole device path cheaply (no full-frame simulation): the card is shrunk to a
random capture resolution, warped back to the canonical crop through a slightly wrong quad (detector
corner error, residual perspective), then gets lighting, colour cast, glare, sleeve sheen, blur, noise and
JPEG. The two embedder views are cut with ``device.vision.geometry.embedder_views`` — the device's own code.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from device.vision.geometry import CANONICAL_SIZE, embedder_views


@dataclass
class CatalogIndex:
    ids: list[str]
    illustration: list[str]
    names: list[str]
    real_scan: list[bool]

    @classmethod
    def load(cls, catalog_dir: str | Path) -> "CatalogIndex":
        rows = [json.loads(x) for x in (Path(catalog_dir) / "index.jsonl").read_text().splitlines() if x.strip()]
        rows.sort(key=lambda r: r["card_id"])
        return cls([r["card_id"] for r in rows], [r.get("illustration_id", r["card_id"]) for r in rows],
                   [r.get("name", "") for r in rows], [bool(r.get("real_scan")) for r in rows])

    def hard_negatives(self, k: int = 16, seed: int = 0) -> np.ndarray:
        """[n, k] indices of other printings with the same illustration or the same name (-1 padded):
        the confusions that matter (reprints, same Pokémon with other art)."""
        rng = np.random.default_rng(seed)
        by_ill: dict[str, list[int]] = {}
        by_name: dict[str, list[int]] = {}
        for i, (il, nm) in enumerate(zip(self.illustration, self.names)):
            by_ill.setdefault(il, []).append(i)
            by_name.setdefault(nm, []).append(i)
        out = np.full((len(self.ids), k), -1, np.int64)
        for i, (il, nm) in enumerate(zip(self.illustration, self.names)):
            same_ill = [j for j in by_ill[il] if j != i]
            same_name = [j for j in by_name[nm] if j != i and j not in set(same_ill)]
            if len(same_ill) > k:
                same_ill = list(rng.choice(same_ill, k, replace=False))
            rest = k - len(same_ill)
            if len(same_name) > rest:
                same_name = list(rng.choice(same_name, rest, replace=False))
            cand = same_ill + same_name
            out[i, :len(cand)] = cand
        return out


def load_card(catalog_dir: str | Path, card_id: str) -> np.ndarray:
    img = cv2.imread(str(Path(catalog_dir) / f"{card_id}.jpg"), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"{catalog_dir}/{card_id}.jpg")
    return img


def clean_views(card_img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The catalog-side views: the render resized straight to the canonical crop."""
    return embedder_views(cv2.resize(card_img, CANONICAL_SIZE, interpolation=cv2.INTER_AREA))


def _sheen(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    ang = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h // 4, 0:w // 4].astype(np.float32) * 4
    ph = (xx * math.cos(ang) + yy * math.sin(ang)) / max(w, h) * rng.uniform(3, 9) * np.pi
    hsv = np.empty(ph.shape + (3,), np.uint8)
    hsv[..., 0] = ((np.sin(ph) * 0.5 + 0.5) * 179).astype(np.uint8)
    hsv[..., 1] = 140
    hsv[..., 2] = 230
    return cv2.resize(cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR), (w, h), interpolation=cv2.INTER_LINEAR)


JITTER_SIGMAS = (0.008, 0.02, 0.035, 0.05)
JITTER_P = (0.25, 0.3, 0.3, 0.15)


def capture_crop(card_img: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """A canonical crop (``CANONICAL_SIZE``) of ``card_img`` as the device would get it from a camera frame."""
    W, H = CANONICAL_SIZE
    sh, sw = card_img.shape[:2]
    # 1. capture resolution: card height in the camera frame (log-uniform 85..380 px).
    hc = float(np.exp(rng.uniform(np.log(85), np.log(380))))
    f = min(1.0, hc / sh)
    src = card_img if f > 0.97 else cv2.resize(card_img, (max(8, int(sw * f)), max(8, int(sh * f))),
                                                interpolation=cv2.INTER_AREA)
    h2, w2 = src.shape[:2]
    # 2. rectification through a wrong quad: the detector's corner error (measured on simulated captures:
    #    median max-corner error ≈ 5 % of the card height, long tail) — σ drawn from that range.
    sig = float(rng.choice(JITTER_SIGMAS, p=JITTER_P)) * strength
    quad = np.array([[0, 0], [w2, 0], [w2, h2], [0, h2]], np.float32)
    quad += np.clip(rng.normal(0, sig, (4, 2)), -3 * sig, 3 * sig).astype(np.float32) * [w2, h2]
    quad += rng.normal(0, sig * 0.5, 2).astype(np.float32) * [w2, h2]  # whole-quad shift
    hm = cv2.getPerspectiveTransform(quad, np.array([[0, 0], [W, 0], [W, H], [0, H]], np.float32))
    bcol = tuple(int(v) for v in rng.integers(0, 256, 3))
    img = cv2.warpPerspective(src, hm, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=bcol)
    # 3. finish / sleeve sheen (reverse holos share the card id; sleeves reflect).
    if rng.random() < 0.25 * strength:
        a = float(rng.uniform(0.08, 0.3))
        img = cv2.addWeighted(img, 1 - a, _sheen(W, H, rng), a, 0)
    # 4. lighting: gain, colour temperature, contrast (one LUT), then a smooth gradient (cv2, not numpy
    #    float arithmetic: ~10x faster at this size).
    gain = rng.uniform(0.6, 1.3)
    temp = rng.uniform(-0.2, 0.2) * strength
    c = rng.uniform(0.75, 1.15)
    lv = np.arange(256, dtype=np.float32)
    lut = np.stack([np.clip(((lv * g) - 128) * c + 128, 0, 255) for g in (gain * (1 - temp), gain, gain * (1 + temp))], 1)
    img = cv2.LUT(img, lut.astype(np.uint8).reshape(256, 1, 3))
    gx, gy = rng.normal(0, 0.25 * strength, 2)
    ramp = (1 + gx * np.linspace(-1, 1, 8, dtype=np.float32)[None, :] + gy * np.linspace(-1, 1, 8, dtype=np.float32)[:, None])
    ramp = cv2.resize(np.clip(ramp, 0.3, 2.0), (W, H), interpolation=cv2.INTER_LINEAR)
    img = cv2.multiply(img, cv2.merge([ramp, ramp, ramp]), dtype=cv2.CV_8U)
    # 5. glare spot.
    if rng.random() < 0.3 * strength:
        g = np.zeros((H // 4, W // 4), np.uint8)
        ax = int(rng.uniform(3, 14))
        cv2.ellipse(g, (int(rng.uniform(0, W // 4)), int(rng.uniform(0, H // 4))), (ax, int(ax * rng.uniform(0.3, 1))),
                    float(rng.uniform(0, 180)), 0, 360, int(rng.uniform(120, 255)), -1)
        g = cv2.resize(cv2.GaussianBlur(g, (0, 0), max(1.0, ax / 2)), (W, H))
        img = cv2.add(img, cv2.merge([g, g, g]))
    # 6. fingers over an edge.
    if rng.random() < 0.08 * strength:
        col = tuple(int(v) for v in rng.uniform(60, 230, 3) * [0.7, 0.85, 1.0])
        e = int(rng.integers(0, 4))
        t = rng.uniform(0.2, 0.8)
        cx, cy = [(t * W, 0), (W, t * H), (t * W, H), (0, t * H)][e]
        cv2.ellipse(img, (int(cx), int(cy)), (int(W * 0.11), int(H * rng.uniform(0.08, 0.2))),
                    0 if e in (0, 2) else 90, 0, 360, col, -1, cv2.LINE_AA)
    # 7. blur, noise, JPEG.
    r = rng.random()
    if r < 0.15 * strength:
        k = int(rng.integers(3, 8))
        ker = np.zeros((k, k), np.float32)
        ang = rng.uniform(0, np.pi)
        c0 = (k - 1) / 2
        cv2.line(ker, (int(round(c0 - math.cos(ang) * c0)), int(round(c0 - math.sin(ang) * c0))),
                 (int(round(c0 + math.cos(ang) * c0)), int(round(c0 + math.sin(ang) * c0))), 1.0, 1)
        img = cv2.filter2D(img, -1, ker / ker.sum())
    elif r < 0.4 * strength:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.4, 1.4)))
    sigma = float(rng.uniform(0.5, 7.0 * strength + 0.5))
    cv2.setRNGSeed(int(rng.integers(0, 2**31 - 1)))
    noise = np.empty((H // 2, W // 2, 3), np.int16)
    cv2.randn(noise, (0, 0, 0), (sigma, sigma, sigma))
    img = cv2.add(img, cv2.resize(noise, (W, H), interpolation=cv2.INTER_NEAREST), dtype=cv2.CV_8U)
    if rng.random() < 0.6:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(35, 95))])
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return img


def to_tensor_batch(views: list[np.ndarray]) -> np.ndarray:
    """BGR uint8 HWC list → float32 NCHW RGB in [0, 1] (the embedder's input convention)."""
    a = np.stack(views)[..., ::-1].astype(np.float32) / 255.0
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))
