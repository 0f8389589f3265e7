"""Detector training data: simulated captures (exact quads) + the real playing-card photos' TRAIN split
(axis-aligned boxes only: weak supervision), as letterboxed 160×120 inputs with 40×30 target maps.

Targets are *soft*: drawn at 4× the output resolution and area-averaged (coverage per cell), so a
thresholded, bilinearly upsampled prediction puts card edges between cells (sub-cell accuracy).
Targets (``device.vision.detector`` decodes the same three channels):
  0 face   – visible card face (any card)
  1 kernel – the card quad shrunk about its centre by ``KERNEL_SHRINK``; separates touching/overlapping
             cards; a quad is recovered exactly by scaling the kernel quad back up (perspective-safe:
             scaling about the vertex centroid is affine). A card partly covered by another (fan-mode
             captures, neighbours) gets the shrunk *visible part* instead (what the photos' boxes of
             covered cards give); one less than 45 % visible gets none
  2 top    – the top half of each card face: tells a card from its 180°-rotated self
Weights: 0 = ignore (ring around weak boxes, orientation of playing cards), 1 = use.

Never reads the photos' test split: that is for ``models.detector.evaluate`` only.
"""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from device.vision.detector import INPUT_SIZE, KERNEL_SHRINK, OUTPUT_STRIDE, letterbox
from models.synth.capture import CaptureConfig, background
from models.synth.dataset import catalog_ids, make_foreign_frame, make_frame

OUT_SIZE = (INPUT_SIZE[0] // OUTPUT_STRIDE, INPUT_SIZE[1] // OUTPUT_STRIDE)
PHOTOS = "/work/shared/data/TensorFlow-Object-Detection-API-Tutorial-Train-Multiple-Objects-Windows-10/images"


def _fill(img: np.ndarray, quad: np.ndarray, value: int, scale: float) -> None:
    cv2.fillConvexPoly(img, np.round(np.asarray(quad) * scale * 16).astype(np.int32), value, cv2.LINE_8, 4)


def shrink(quad: np.ndarray, k: float = KERNEL_SHRINK) -> np.ndarray:
    q = np.asarray(quad, np.float32)
    c = q.mean(0)
    return c + (q - c) * k


SS = 4  # supersampling of the targets


def frame_shift(s: float, off: tuple[float, float]) -> np.ndarray:
    """Add to frame coordinates, then multiply by r = s·SS/stride, to get supersampled drawing coordinates."""
    return np.array(off, np.float32) / s + 0.5 - 0.5 * OUTPUT_STRIDE / (SS * s)


def _soft(m: np.ndarray) -> np.ndarray:
    """Supersampled binary map → coverage per output cell, as uint8 0..255."""
    return np.round(cv2.resize(m.astype(np.float32), OUT_SIZE, interpolation=cv2.INTER_AREA) * 255).astype(np.uint8)


def targets_from_quads(cards: list[dict], z_order: list[int], s: float, off: tuple[float, float],
                       min_visible: float = 0.45) -> tuple[np.ndarray, np.ndarray]:
    """cards: [{quad, visible}] in frame pixels; z_order: drawing order (bottom first); s/off map frame
    pixels to detector-input pixels (letterbox). Returns (targets uint8 0..255 coverage, weights 0/1).

    Grid convention (pixel-area coordinates): output cell i covers input [i·stride, (i+1)·stride), which is
    what bilinear upsampling on the device assumes. Frame quads are pixel-centre coordinates x, so the input
    position is U = (x + 0.5)·s + off and the supersampled drawing coordinate is U·SS/stride − 0.5."""
    ow, oh = OUT_SIZE[0] * SS, OUT_SIZE[1] * SS
    r = s * SS / OUTPUT_STRIDE
    shift = frame_shift(s, off)
    face = np.zeros((oh, ow), np.uint8)
    kern = np.zeros((oh, ow), np.uint8)
    top = np.zeros((oh, ow), np.uint8)
    owner = np.zeros((oh, ow), np.uint8)  # 1 + index of the card on top at each supersample
    for i in z_order:
        q = np.asarray(cards[i]["quad"], np.float32) + shift
        _fill(face, q, 1, r)
        _fill(owner, q, i + 1, r)
        _fill(top, q, 0, r)
        half = np.array([q[0], q[1], (q[1] + q[2]) / 2, (q[0] + q[3]) / 2])
        _fill(top, half, 1, r)
    for i in z_order:
        if cards[i].get("visible", 1.0) < min_visible:
            continue  # mostly covered: face only, no instance
        q = np.asarray(cards[i]["quad"], np.float32) + shift
        full = np.zeros_like(owner)
        _fill(full, q, 1, r)
        vis = owner == i + 1
        if not (full.astype(bool) & ~vis).any():
            _fill(kern, shrink(q), 1, r)  # not covered by another card (frame clipping aside): as ever
            continue
        # Covered by another card: the kernel is the *visible part* shrunk about its own centroid (and kept
        # inside it), as the photos' boxes of covered cards (visible part) give it. The device then
        # reconstructs the visible part, leaves a gap to the kernel of the card on top, and a kernel cut into
        # a non-convex shape (a covered corner) reads as ``occluded`` at its gate (solidity).
        m = cv2.moments(vis.astype(np.uint8), binaryImage=True)
        if m["m00"] <= 0:
            continue
        cx, cy = m["m10"] / m["m00"], m["m01"] / m["m00"]
        k = KERNEL_SHRINK
        sm = cv2.warpAffine(vis.astype(np.uint8), np.array([[k, 0, cx * (1 - k)], [0, k, cy * (1 - k)]], np.float32),
                            (ow, oh), flags=cv2.INTER_NEAREST)
        kern[(sm > 0) & vis] = 1
    y = np.stack([_soft(face), _soft(kern), _soft(top)])
    return y, np.ones_like(y)


def sim_item(args) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    catalog_dir, ids, seed, index, cfg, foreign = args
    if foreign:
        frame, labels = make_foreign_frame(seed, index, cfg)
    else:
        frame, labels = make_frame(catalog_dir, ids, seed, index, cfg)
    x, s, off = letterbox(frame)
    z = [c["index"] for c in labels["params"]["cards"]]
    y, w = targets_from_quads(labels["cards"], z, s, off)
    if foreign:
        w[2] = 0  # playing cards and backs look (nearly) the same both ways up: no orientation supervision
    return x, y, w


def photo_boxes(split: str = "train") -> dict[str, list[tuple[float, float, float, float]]]:
    assert split == "train" or split == "test"
    by: dict[str, list] = defaultdict(list)
    with open(Path(PHOTOS) / f"{split}_labels.csv", newline="") as f:
        for r in csv.DictReader(f):
            by[r["filename"]].append(tuple(float(r[k]) for k in ("xmin", "ymin", "xmax", "ymax")))
    return dict(by)


def photo_item(path: Path, boxes: list, rng: np.random.Generator, corner_ignore: bool = False,
               corner_cut: float = 0.3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A real photo with box supervision, randomly cropped/flipped/recoloured. ``corner_ignore``: trust only
    each box's inner octagon as card (see below) instead of the whole box."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    b = np.array(boxes, np.float32)
    # random crop keeping all boxes (scale augmentation)
    x0 = rng.uniform(0, max(1e-3, b[:, 0].min())) * rng.uniform(0, 1)
    y0 = rng.uniform(0, max(1e-3, b[:, 1].min())) * rng.uniform(0, 1)
    x1 = w - rng.uniform(0, max(1e-3, w - b[:, 2].max())) * rng.uniform(0, 1)
    y1 = h - rng.uniform(0, max(1e-3, h - b[:, 3].max())) * rng.uniform(0, 1)
    img = img[int(y0):int(y1), int(x0):int(x1)]
    b = b - [int(x0), int(y0), int(x0), int(y0)]
    if rng.random() < 0.5:
        img = img[:, ::-1]
        W = img.shape[1]
        b = np.stack([W - b[:, 2], b[:, 1], W - b[:, 0], b[:, 3]], 1)
    if rng.random() < 0.5:  # rotate 90° counter-clockwise: cards lie both ways; (x, y) -> (y, W - x)
        w_old = img.shape[1]
        img = np.rot90(img)
        b = np.stack([b[:, 1], w_old - b[:, 2], b[:, 3], w_old - b[:, 0]], 1)
    img = np.ascontiguousarray(img)
    x = img.astype(np.float32) * rng.uniform(0.7, 1.2) * rng.uniform(0.9, 1.1, 3)
    img = np.clip(x, 0, 255).astype(np.uint8)
    xin, s, off = letterbox(img)
    ow, oh = OUT_SIZE
    r = s * SS / OUTPUT_STRIDE
    shift = frame_shift(s, off) - 0.5  # boxes are pixel-area coordinates: x = X − 0.5
    face = np.zeros((oh * SS, ow * SS), np.uint8)
    kern = np.zeros((oh * SS, ow * SS), np.uint8)
    wt = np.ones((3, oh, ow), np.uint8)
    wt[2] = 0  # playing cards look the same both ways up: no orientation supervision
    quads = [_box_quad(bx) + shift for bx in b]
    if not corner_ignore:
        for q in quads:
            _fill(face, q, 1, r)
            _fill(kern, shrink(q), 1, r)
            # ignore a ring around the box edge: the box is axis-aligned, the card may not be
            _ignore_edge_ring(wt, q, r)
        y = np.stack([_soft(face), _soft(kern), np.zeros((oh, ow), np.uint8)])
        return xin, y, wt
    # A tilted card fills its axis-aligned box except four corner triangles: supervise the box's inner
    # octagon as card and everything outside the box as background, and ignore the corners (and a ring
    # along the box edge) — box labels then no longer teach the network that cards are axis-aligned blobs.
    # Same for the kernel (the shrunk box). Where boxes overlap (overlapping cards; boxes are the visible
    # parts), the kernel is ignored: which card is on top is not in the label.
    known = np.zeros((2, oh * SS, ow * SS), np.uint8)  # 1 = label is trusted there
    known[:] = 1
    cover = np.zeros((oh * SS, ow * SS), np.uint8)
    for q in quads:
        for ch, qq in ((0, q), (1, shrink(q))):
            box = np.zeros_like(cover)
            _fill(box, qq, 1, r)
            octa = np.zeros_like(cover)
            _fill(octa, _octagon(qq, corner_cut), 1, r)
            known[ch][(box > 0) & (octa == 0)] = 0
            (face if ch == 0 else kern)[octa > 0] = 1
            if ch == 1:
                cover += box
    known[1][cover > 1] = 0
    for ch in (0, 1):
        # a cell is trusted only if all of its supersamples are, plus the 1-cell ring along each box edge
        wt[ch] = (cv2.resize(known[ch].astype(np.float32), OUT_SIZE, interpolation=cv2.INTER_AREA) > 0.999)
    for q in quads:
        _ignore_edge_ring(wt, q, r)
    y = np.stack([_soft(face), _soft(kern), np.zeros((oh, ow), np.uint8)])
    return xin, y, wt


def _box_quad(bx) -> np.ndarray:
    """An axis-aligned box (x0, y0, x1, y1) as a clockwise quad."""
    return np.array([[bx[0], bx[1]], [bx[2], bx[1]], [bx[2], bx[3]], [bx[0], bx[3]]], np.float32)


def _ignore_edge_ring(wt: np.ndarray, q: np.ndarray, r: float) -> None:
    """Zero the weight of the output cells along the edge of the box quad ``q`` (face) and of its kernel."""
    oh, ow = wt.shape[1:]
    for ch, qq in ((0, q), (1, shrink(q))):
        ring = np.zeros((oh, ow), np.uint8)
        cv2.polylines(ring, [np.round(qq * (r / SS) * 16).astype(np.int32)], True, 1, 2, cv2.LINE_8, 4)
        wt[ch][ring > 0] = 0


def _octagon(q: np.ndarray, cut: float) -> np.ndarray:
    """The axis-aligned box ``q`` (TL, TR, BR, BL) with each corner cut off ``cut`` × its shorter side."""
    (x0, y0), (x1, y1) = q[0], q[2]
    c = cut * min(x1 - x0, y1 - y0)
    return np.array([[x0 + c, y0], [x1 - c, y0], [x1, y0 + c], [x1, y1 - c], [x1 - c, y1], [x0 + c, y1],
                     [x0, y1 - c], [x0, y0 + c]], np.float32)


def build_photos(out: str, seed: int, repeats: int = 3, corner_ignore: bool = True) -> dict:
    """Only the playing-card photos' TRAIN split (``repeats`` random augmentations of each), for fine-tuning."""
    t0 = time.time()
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(repeats):
        for name, bxs in sorted(photo_boxes("train").items()):
            items.append(photo_item(Path(PHOTOS) / "train" / name, bxs, rng, corner_ignore=corner_ignore))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, x=np.stack([i[0] for i in items]), y=np.stack([i[1] for i in items]),
             w=np.stack([i[2] for i in items]), n_sim=0)
    return {"n": len(items), "seconds": round(time.time() - t0, 1)}


EMPTY_KINDS = ("playmat", "playmat", "wood", "cloth", "noise", "photo")


def empty_item(rng: np.random.Generator, first_variant: int = 6, variants: int = 24,
               size: tuple[int, int] = (320, 240), kinds: tuple[str, ...] = EMPTY_KINDS
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A table or mat with no card on it (every target 0), seen whole or zoomed in up to 2.5×: hard negatives
    for what looks like a card's outline without being one — a playmat's printed card zones above all, which
    the detector otherwise takes for an empty white card (an ambiguous scan of nothing, docs/device-vision.md).
    Background variants from ``first_variant`` on: the capture sets and the tests' empty frames use 0…5
    (``table``, the real TRAIN photos' surfaces, has one variant per photo: any).
    """
    kind = kinds[int(rng.integers(len(kinds)))]
    w, h = size
    img = background(kind, first_variant + int(rng.integers(variants)) if kind != "table"
                     else int(rng.integers(10_000)), size).copy()
    z = float(rng.uniform(1.0, 2.5))
    cw, ch = int(round(w / z)), int(round(h / z))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = cv2.resize(img[y0:y0 + ch, x0:x0 + cw], size, interpolation=cv2.INTER_LINEAR)
    flip = int(rng.integers(-1, 3))
    if flip < 2:
        img = cv2.flip(img, flip)
    img = np.clip(img.astype(np.float32) * rng.uniform(0.7, 1.25) + rng.normal(0, rng.uniform(1, 6), img.shape),
                  0, 255).astype(np.uint8)
    x, _, _ = letterbox(img)
    y = np.zeros((3, OUT_SIZE[1], OUT_SIZE[0]), np.uint8)
    return x, y, np.ones(y.shape, np.uint8)


def build_empty(out: str, n: int, seed: int, kinds: tuple[str, ...] = EMPTY_KINDS) -> dict:
    """``n`` frames of ``empty_item`` (fine-tuning data) on background ``kinds``."""
    t0 = time.time()
    rng = np.random.default_rng(seed)
    items = [empty_item(rng, kinds=kinds) for _ in range(n)]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, x=np.stack([i[0] for i in items]), y=np.stack([i[1] for i in items]),
             w=np.stack([i[2] for i in items]), n_sim=0)
    return {"n": n, "seconds": round(time.time() - t0, 1)}


def build(catalog_dir: str, out: str, n: int, seed: int, workers: int = 2, photo_repeats: int = 6,
          real_frac: float = 0.25, fan_frac: float = 0.0, foreign_frac: float = 0.0, p_shadow: float = 0.0,
          fan_layouts: list[str] | None = None, backgrounds: list[str] | None = None) -> dict:
    """``real_frac`` of the simulated frames show only the real sv1 scans (rounded corners, silver borders,
    real print texture): the renders alone under-represent what real cards look like. ``fan_frac`` of them
    are fan-mode captures (2-5 overlapping cards: spread / fanned hand / pile, ``CaptureConfig.fan_layouts``);
    ``foreign_frac`` of them show non-catalog card faces instead (``models.synth.foreign``: playing cards and
    backs, rounded corners; no orientation target), drawn independently of the mode; ``p_shadow`` is
    ``CaptureConfig.p_shadow``; ``fan_layouts`` the fan frames' arrangements (``CaptureConfig.fan_layouts``; None:
    its default); ``backgrounds`` the background kinds (``CaptureConfig.backgrounds``; None: its default — e.g.
    ``["table"]``: the real TRAIN photos' surfaces). 0, 0 and 0 keep the old mix frame for frame."""
    t0 = time.time()
    ids = catalog_ids(catalog_dir)
    from models.synth.catalog import read_index

    idx = read_index(catalog_dir)
    real_ids = [c for c in ids if idx.get(c, {}).get("real_scan")] or ids
    bg = {"backgrounds": backgrounds} if backgrounds else {}
    base = CaptureConfig(size=(320, 240), p_shadow=p_shadow, **bg)
    fan = CaptureConfig(size=(320, 240), p_shadow=p_shadow, mode="fan",
                        **({"fan_layouts": fan_layouts} if fan_layouts else {}), **bg)  # validated: a typo is an error
    cfgs = [base.model_copy(update={"mode": "free"}), base.model_copy(update={"mode": "grid"}),
            base.model_copy(update={"mode": "scanner_box"}), fan]
    # free 55 % (with neighbours), grid 30 %, scanner box 15 % (of the frames that are not fan frames)
    n_fan = int(round(n * fan_frac))
    mode_of = lambda i: (cfgs[3] if (i * 104729 + 17) % n < n_fan else
                         cfgs[0] if i % 20 < 11 else (cfgs[1] if i % 20 < 17 else cfgs[2]))
    n_real = int(round(n * real_frac))
    n_foreign = int(round(n * foreign_frac))
    jobs = [(catalog_dir, real_ids if (i * 7919) % n < n_real else ids, seed, i, mode_of(i),
             (i * 65537 + 3) % n < n_foreign) for i in range(n)]
    with mp.get_context("fork").Pool(workers, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
        items = pool.map(sim_item, jobs, chunksize=32)
    rng = np.random.default_rng(seed)
    boxes = photo_boxes("train")
    for _ in range(photo_repeats):
        for name, bxs in sorted(boxes.items()):
            items.append(photo_item(Path(PHOTOS) / "train" / name, bxs, rng))
    X = np.stack([i[0] for i in items])
    Y = np.stack([i[1] for i in items])
    Wt = np.stack([i[2] for i in items])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, x=X, y=Y, w=Wt, n_sim=n)
    return {"n": len(items), "n_sim": n, "seconds": round(time.time() - t0, 1)}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--catalog", default="var/catalog")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--photo-repeats", type=int, default=6, help="augmented copies of each TRAIN photo")
    ap.add_argument("--real-frac", type=float, default=0.25, help="share of simulated frames with only real sv1 scans")
    ap.add_argument("--fan-frac", type=float, default=0.0, help="share of simulated frames in fan mode (overlapping cards)")
    ap.add_argument("--foreign-frac", type=float, default=0.0,
                    help="share of simulated frames with non-catalog faces (playing cards, backs)")
    ap.add_argument("--p-shadow", type=float, default=0.0, help="CaptureConfig.p_shadow (cards cast drop shadows)")
    ap.add_argument("--fan-layouts", default=None, help="comma-separated CaptureConfig.fan_layouts of the fan frames "
                    "(default: spread,hand,pile; row = cards edge to edge)")
    ap.add_argument("--backgrounds", default=None, help="comma-separated CaptureConfig.backgrounds (default: its own; "
                    "table = the real TRAIN photos' surfaces); with --empty-only the empty frames' kinds")
    ap.add_argument("--empty-only", action="store_true",
                    help="only empty tables and mats (no card; hard negatives such as printed card zones), --n of them")
    ap.add_argument("--photos-only", action="store_true",
                    help="only the TRAIN photos, boxes as octagon-with-ignored-corners targets (fine-tuning)")
    a = ap.parse_args()
    if a.photos_only:
        print(json.dumps(build_photos(a.out, a.seed, a.photo_repeats)))
    elif a.empty_only:
        print(json.dumps(build_empty(a.out, a.n, a.seed, tuple(a.backgrounds.split(",")) if a.backgrounds
                                     else EMPTY_KINDS)))
    else:
        print(json.dumps(build(a.catalog, a.out, a.n, a.seed, a.workers, a.photo_repeats, a.real_frac, a.fan_frac,
                               a.foreign_frac, a.p_shadow, a.fan_layouts.split(",") if a.fan_layouts else None,
                               a.backgrounds.split(",") if a.backgrounds else None)))
