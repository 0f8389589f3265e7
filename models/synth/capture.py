"""Capture simulator: put rendered cards into realistic-looking camera frames with exact labels.

``simulate_capture`` places one or several card images on a background with a pinhole-camera
perspective (tilt, rotation, scale), optional sleeves/top-loaders, neighbours and fingers, then applies
camera effects (lighting gradient, colour temperature, glare, blur, sensor noise, JPEG). Labels give,
per card, the quad of the card *face* in TL, TR, BR, BL order of the card itself (so a card rotated by
180° has its TL corner at the bottom right of the frame) and the fraction of the face that is visible.

Everything random is drawn from the ``rng`` passed in, so ``default_rng(seed + index)`` reproduces a
frame exactly. cv2 does the pixel work: on this hardware numpy full-frame arithmetic is far slower.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

BackgroundKind = Literal["wood", "cloth", "playmat", "noise", "photo", "table"]
CARD_ASPECT = 63.0 / 88.0  # width / height of a standard card


class CaptureConfig(BaseModel):
    """Distribution of simulated camera captures."""

    model_config = ConfigDict(extra="forbid")

    size: tuple[int, int] = Field((640, 480), description="Frame size (W, H) in pixels, e.g. (640, 480) or (1280, 720).")
    mode: Literal["free", "scanner_box", "grid", "fan"] = Field(
        "free", description="free: hand-held photo (any rotation, tilt); scanner_box: fixed camera above a tray "
        "(small rotation, fixed distance); grid: up to 9 cards as a binder page / table grid; fan: 2-5 cards "
        "overlapping on one table plane, each partly covering the one below (see fan_layouts).")
    max_tilt_deg: float = Field(40.0, ge=0, le=60, description="Max out-of-plane tilt of the card (free mode), degrees.")
    scale_range: tuple[float, float] = Field((0.2, 0.8), description="Card height as a fraction of frame height (free mode).")
    scanner_box_rotation_deg: float = Field(10.0, ge=0, description="Max in-plane rotation in scanner_box mode, degrees.")
    scanner_box_scale: float = Field(0.78, gt=0, le=1, description="Card height / frame height in scanner_box mode (fixed distance).")
    scanner_box_tilt_deg: float = Field(4.0, ge=0, description="Max residual tilt in scanner_box mode, degrees.")
    grid_scale_range: tuple[float, float] = Field((0.7, 0.95), description="Grid height / frame height in grid mode.")
    grid_max_tilt_deg: float = Field(20.0, ge=0, description="Max tilt of the whole page in grid mode, degrees.")
    max_cards: int = Field(9, ge=1, le=9, description="Most cards placed in one frame.")
    fan_cards: tuple[int, int] = Field((2, 5), description="fan mode: fewest and most cards in the overlapping group.")
    fan_layouts: list[Literal["spread", "hand", "pile", "row"]] = Field(
        default_factory=lambda: ["spread", "hand", "pile"],
        description="fan mode arrangements, drawn uniformly: spread = cards side by side, each shifted 15-65 % of a "
        "card width over the previous one (a hand laid down); hand = cards pivoting about a point near their "
        "bottom edge, 6-22 degrees apart (a fanned hand); pile = cards dropped with random offsets and rotations; "
        "row = cards laid out edge to edge along their width or their height, from 12 % overlap to a 6 % gap, "
        "each turned a few degrees (cards put down next to each other on a counter; not in the default list, so "
        "the evaluation sets keep their frames). "
        "Labels keep every card's full face quad; ``visible`` is the share of the face not covered by the cards "
        "above it (a covered card is not scannable: the evaluation needs >= 0.9, and the device's kernel of it "
        "is only the visible part, see models.detector.data).")
    backgrounds: list[BackgroundKind] = Field(
        default_factory=lambda: ["wood", "cloth", "playmat", "noise", "photo"],
        description="Background kinds to draw from (photo = real photographs shipped with installed packages; "
        "table = the surfaces of the real playing-card TRAIN photos, away from their cards; both fall back to "
        "procedural noise when their files are absent). table is not in the default list, so the evaluation sets "
        "keep their frames.")
    p_sleeve: float = Field(0.3, ge=0, le=1, description="Probability a card is in a penny sleeve.")
    p_toploader: float = Field(0.1, ge=0, le=1, description="Probability a card is in a top-loader (checked after sleeve).")
    p_glare: float = Field(0.35, ge=0, le=1, description="Probability of a specular glare spot on a card.")
    p_motion_blur: float = Field(0.2, ge=0, le=1, description="Probability of motion blur.")
    max_motion_blur_px: int = Field(11, ge=1, description="Longest motion-blur streak, pixels at 640 px width.")
    p_defocus: float = Field(0.25, ge=0, le=1, description="Probability of defocus (Gaussian) blur.")
    max_defocus_sigma: float = Field(2.5, ge=0, description="Largest defocus sigma, pixels at 640 px width.")
    p_fingers: float = Field(0.25, ge=0, le=1, description="Probability that fingers partially occlude the (first) card.")
    p_neighbours: float = Field(0.3, ge=0, le=1, description="Probability (CLI free mode) of 1-2 extra cards overlapping the main one.")
    p_shadow: float = Field(0.0, ge=0, le=1, description="Probability that a card casts a soft drop shadow on "
                            "what lies under it (a card on another card shows its edge as a thin shadow line). 0 "
                            "keeps the frames of earlier datasets and evaluations seed for seed.")
    light_gradient: tuple[float, float] = Field((0.0, 0.45), description="Strength range of the smooth illumination gradient (0 = flat).")
    brightness: tuple[float, float] = Field((0.65, 1.25), description="Global exposure gain range.")
    colour_temperature: tuple[float, float] = Field((-0.25, 0.25), description="Warm(-)/cool(+) white-balance shift range.")
    noise_sigma: tuple[float, float] = Field((1.0, 9.0), description="Sensor noise standard deviation range (8-bit levels).")
    jpeg_quality: tuple[int, int] = Field((35, 95), description="JPEG quality range for compression artefacts.")


# ------------------------------------------------------------------------------------------- backgrounds

N_VARIANTS = 6


def _photo_files() -> list[Path]:
    """Real photographs that installed packages ship (no downloads): matplotlib's sample data, skimage's data."""
    out: list[Path] = []
    try:
        import matplotlib

        d = Path(matplotlib.get_data_path()) / "sample_data"
        out += [p for p in d.glob("*.jpg")]
    except Exception:  # matplotlib missing: procedural backgrounds only
        pass
    try:
        import skimage  # type: ignore

        d = Path(skimage.__file__).parent / "data"
        out += [p for p in d.glob("*.png") if p.stat().st_size > 50_000] + list(d.glob("*.jpg"))
    except Exception:
        pass
    return sorted(out)


# A table crop keeps this share of a card box's size clear of it on every side (a box is a card's axis-aligned
# extent; a fanned card's box can miss a sliver of a neighbour).
TABLE_CLEAR = 0.08
TABLE_MIN_SIDE = 0.3  # of the photo's shorter side: smaller empty regions would be blown up into a blur


@functools.lru_cache(maxsize=1)
def _table_regions() -> tuple[tuple[Path, tuple[int, int, int, int]], ...]:
    """(photo, (x0, y0, x1, y1)) of every real playing-card TRAIN photo whose largest rectangle free of its
    labelled cards is large enough: real surfaces cards lie on (carpet, fabric, wood, a bag, a cat, magazine
    pages), which no procedural texture resembles. Only the TRAIN split: the TEST photos measure the detector.
    Empty when the data is absent (a user's machine)."""
    try:
        from models.detector.data import PHOTOS, photo_boxes

        boxes = photo_boxes("train")
    except (OSError, KeyError, ValueError):
        return ()
    out = []
    for name, bxs in sorted(boxes.items()):
        path = Path(PHOTOS) / "train" / name
        img = cv2.imread(str(path), cv2.IMREAD_REDUCED_GRAYSCALE_8)  # only its size is needed
        if img is None:
            continue
        # the size rounded up to 8 px (slicing clips the region to the photo); kept so that demo-13's training
        # frames, drawn by region index, come out the same
        h, w = (8 * v for v in img.shape[:2])
        r = _free_rect(w, h, bxs)
        if r is not None and min(r[2] - r[0], r[3] - r[1]) >= TABLE_MIN_SIDE * min(w, h):
            out.append((path, r))
    return tuple(out)


def _free_rect(w: int, h: int, boxes: list[tuple[float, ...]]) -> tuple[int, int, int, int] | None:
    """The largest axis-aligned rectangle of a w × h image that no box (grown by TABLE_CLEAR) overlaps. Each side
    of a maximal empty rectangle lies on the image's border or on a box's edge, so those coordinates are the only
    candidates (a photo holds a handful of boxes)."""
    grown = []
    for x0, y0, x1, y1 in boxes:
        gx, gy = TABLE_CLEAR * (x1 - x0), TABLE_CLEAR * (y1 - y0)
        grown.append((max(int(x0 - gx), 0), max(int(y0 - gy), 0), min(int(math.ceil(x1 + gx)), w),
                      min(int(math.ceil(y1 + gy)), h)))
    xs0 = sorted({0, *(g[2] for g in grown)})
    xs1 = sorted({w, *(g[0] for g in grown)})
    ys0 = sorted({0, *(g[3] for g in grown)})
    ys1 = sorted({h, *(g[1] for g in grown)})
    best, rect = 0, None
    for x0 in xs0:
        for x1 in (x for x in xs1 if x > x0):
            for y0 in ys0:
                for y1 in (y for y in ys1 if y > y0):
                    area = (x1 - x0) * (y1 - y0)
                    if area > best and not any(g[0] < x1 and x0 < g[2] and g[1] < y1 and y0 < g[3] for g in grown):
                        best, rect = area, (x0, y0, x1, y1)
    return rect


@functools.lru_cache(maxsize=128)
def background(kind: str, variant: int, size: tuple[int, int]) -> np.ndarray:
    """A deterministic background texture (kind, variant) at ``size``; cached, do not modify in place."""
    w, h = size
    rng = np.random.default_rng(_kseed(kind, variant))
    if kind == "table":
        regions = _table_regions()
        if regions:
            path, (x0, y0, x1, y1) = regions[variant % len(regions)]
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is not None:
                # a random part of the free region with the frame's aspect (at least half its shorter side)
                img = img[y0:y1, x0:x1]
                ih, iw = img.shape[:2]
                cw = int(min(iw, ih * w / h) * rng.uniform(0.5, 1.0))
                ch = max(int(round(cw * h / w)), 1)
                cy, cx = int(rng.integers(0, max(ih - ch, 0) + 1)), int(rng.integers(0, iw - cw + 1))
                return cv2.resize(img[cy:cy + ch, cx:cx + cw], (w, h), interpolation=cv2.INTER_LINEAR)
        kind = "noise"
    if kind == "photo":
        photos = _photo_files()
        if photos:
            img = cv2.imread(str(photos[variant % len(photos)]), cv2.IMREAD_COLOR)
            if img is not None:
                ih, iw = img.shape[:2]
                # Random crop with the frame's aspect, so variants differ even with one photo.
                ch = int(ih * rng.uniform(0.5, 0.9))
                cw = min(iw, int(ch * w / h))
                y0, x0 = int(rng.integers(0, ih - ch + 1)), int(rng.integers(0, iw - cw + 1))
                return cv2.resize(img[y0:y0 + ch, x0:x0 + cw], (w, h), interpolation=cv2.INTER_AREA)
        kind = "noise"
    if kind == "wood":
        base = np.array([rng.uniform(40, 90), rng.uniform(80, 140), rng.uniform(130, 200)], np.float32)
        rows = rng.normal(0, 1, (h // 2 + 1, 1)).astype(np.float32)
        rows = cv2.GaussianBlur(rows, (1, 7), 2)
        yy = np.arange(rows.shape[0], dtype=np.float32)[:, None]
        grain = np.sin(yy * rng.uniform(0.15, 0.4) + rows * 3.0) * 0.5 + 0.5
        tex = cv2.resize(grain, (w, h), interpolation=cv2.INTER_LINEAR)
        streak = cv2.resize(rng.normal(0, 1, (h // 4, 8)).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        tex = tex * 0.7 + streak * 0.12
        img = base[None, None, :] * (0.65 + 0.5 * tex[..., None])
        if rng.random() < 0.5:
            img = cv2.rotate(np.ascontiguousarray(img), cv2.ROTATE_180)
        return np.clip(img, 0, 255).astype(np.uint8)
    if kind == "cloth":
        col = rng.integers(30, 220, 3).astype(np.float32)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        p = rng.uniform(2.5, 5.0)
        weave = (np.sin(xx * np.pi / p) * np.sin(yy * np.pi / p)) * 0.5 + 0.5
        low = cv2.resize(rng.normal(0, 1, (6, 8)).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        img = col[None, None, :] * (0.75 + 0.2 * weave[..., None] + 0.08 * low[..., None])
        return np.clip(img, 0, 255).astype(np.uint8)
    if kind == "playmat":
        base = rng.integers(10, 120, 3)
        img = np.empty((h, w, 3), np.uint8)
        cv2.rectangle(img, (0, 0), (w, h), tuple(int(v) for v in base), -1)
        low = cv2.resize(rng.integers(0, 60, (4, 6, 3)).astype(np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)
        img = cv2.add(img, low)
        s = min(w, h)
        for _ in range(int(rng.integers(3, 9))):  # printed artwork: big arcs and discs
            c = tuple(int(v) for v in rng.integers(0, 255, 3))
            cv2.circle(img, (int(rng.uniform(0, w)), int(rng.uniform(0, h))), int(rng.uniform(0.1, 0.6) * s), c,
                       int(rng.choice([-1, 3, 8])), cv2.LINE_AA)
        line_col = tuple(int(v) for v in rng.integers(150, 255, 3))
        for _ in range(int(rng.integers(2, 6))):  # card zones
            x, y = int(rng.uniform(0, w * 0.8)), int(rng.uniform(0, h * 0.7))
            zw = int(s * rng.uniform(0.2, 0.35))
            cv2.rectangle(img, (x, y), (x + zw, y + int(zw / CARD_ASPECT)), line_col, 2, cv2.LINE_AA)
        cv2.putText(img, "PLAYMAT", (int(w * 0.1), int(h * 0.9)), cv2.FONT_HERSHEY_TRIPLEX, s / 250, line_col, 2, cv2.LINE_AA)
        return cv2.GaussianBlur(img, (3, 3), 0)
    # noise: multi-octave colour noise
    acc = np.zeros((h, w, 3), np.float32)
    for k, amp in ((4, 60), (16, 35), (64, 20), (256, 10)):
        g = rng.normal(0, 1, (max(2, k * h // w), k, 3)).astype(np.float32)
        acc += cv2.resize(g, (w, h), interpolation=cv2.INTER_LINEAR) * amp
    acc += rng.integers(40, 200, 3).astype(np.float32)
    return np.clip(acc, 0, 255).astype(np.uint8)


def _kseed(kind: str, variant: int) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha1(f"bg|{kind}|{variant}".encode()).digest()[:4], "little")


def sample_background(rng: np.random.Generator, config: CaptureConfig) -> tuple[np.ndarray, dict]:
    # Photos get half weight: installed packages ship very few, so they would repeat a lot.
    wts = np.array([0.5 if k == "photo" else 1.0 for k in config.backgrounds])
    kind = str(config.backgrounds[int(rng.choice(len(wts), p=wts / wts.sum()))])
    variant = int(rng.integers(0, N_VARIANTS))
    if kind == "table":  # one variant per TRAIN photo with room (drawn after, so other kinds keep their frames)
        variant = int(rng.integers(0, max(len(_table_regions()), 1)))
    img = background(kind, variant, tuple(config.size)).copy()
    flip = int(rng.integers(-1, 3))  # -1, 0, 1 = cv2 flips, 2 = none
    if flip < 2:
        img = cv2.flip(img, flip)
    return img, {"kind": kind, "variant": variant, "flip": flip}


# ------------------------------------------------------------------------------------------- geometry


def project_plane(points: np.ndarray, center: tuple[float, float], rot_deg: float, tilt_x_deg: float,
                  tilt_y_deg: float, focal: float) -> np.ndarray:
    """Project points of a plane (pixels, origin at the plane centre, as seen fronto-parallel) after an
    in-plane rotation and an out-of-plane tilt, with a pinhole camera whose distance keeps the centre scale 1."""
    r = math.radians(rot_deg)
    ax, ay = math.radians(tilt_x_deg), math.radians(tilt_y_deg)
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    p3 = np.c_[points, np.zeros(len(points))] @ (ry @ rx @ rz).T
    z = focal + p3[:, 2]
    return np.stack([center[0] + focal * p3[:, 0] / z, center[1] + focal * p3[:, 1] / z], 1)


def polygon_area(quad: np.ndarray) -> float:
    return float(abs(cv2.contourArea(np.asarray(quad, np.float32))))


# ------------------------------------------------------------------------------------------- card objects


def _wrap_object(card: np.ndarray, holder: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The card plus its holder as (BGR image, alpha float32, face corners in object pixels). A BGRA ``card``
    (``models.synth.foreign``: rounded corners) keeps its own alpha; catalog images are BGR rectangles."""
    ch, cw = card.shape[:2]
    card_alpha = np.ones((ch, cw), np.float32)
    if card.ndim == 3 and card.shape[2] == 4:
        card, card_alpha = np.ascontiguousarray(card[..., :3]), card[..., 3].astype(np.float32) / 255.0
    if holder == "none":
        face = np.array([[0, 0], [cw, 0], [cw, ch], [0, ch]], np.float32)
        return card, card_alpha, face
    if holder == "sleeve":
        m, top, edge_a, tint = int(cw * 0.03), int(cw * 0.06), 0.28, 235
    elif holder == "toploader":
        m, top, edge_a, tint = int(cw * 0.09), int(cw * 0.12), 0.35, 225
    else:  # binder pocket
        m, top, edge_a, tint = int(cw * 0.04), int(cw * 0.04), 0.3, 60
    H, W = ch + top + m, cw + 2 * m
    img = np.empty((H, W, 3), np.uint8)
    cv2.rectangle(img, (0, 0), (W, H), (tint, tint, tint), -1)
    img[top:top + ch, m:m + cw] = card
    alpha = np.full((H, W), edge_a, np.float32)
    alpha[top:top + ch, m:m + cw] = np.maximum(card_alpha, edge_a)
    img[top:top + ch, m:m + cw][card_alpha < 0.5] = tint  # the holder's plastic shows at rounded corners
    if holder == "toploader":  # rigid plastic: a visible edge line
        cv2.rectangle(img, (2, 2), (W - 3, H - 3), (250, 250, 250), max(2, cw // 80))
        cv2.rectangle(alpha, (2, 2), (W - 3, H - 3), 0.7, max(2, cw // 80))
    if holder != "pocket":
        # Reflective plastic: a soft diagonal sheen across the whole object.
        sheen = np.zeros((8, 8), np.float32)
        k = int(rng.integers(0, 8))
        for i in range(8):
            j = (k + i) % 8
            sheen[i, j] = 1.0
        sheen = cv2.resize(sheen, (W, H), interpolation=cv2.INTER_LINEAR)
        sheen = cv2.GaussianBlur(sheen, (0, 0), W / 12)
        gain = float(rng.uniform(40, 110))
        add = (sheen / max(1e-6, float(sheen.max())) * gain).astype(np.uint8)
        img = cv2.add(img, cv2.merge([add, add, add]))
    face = np.array([[m, top], [m + cw, top], [m + cw, top + ch], [m, top + ch]], np.float32)
    return img, alpha, face


def _composite(frame: np.ndarray, obj: np.ndarray, alpha: np.ndarray, dst_quad_obj: np.ndarray) -> None:
    """Warp ``obj`` (with alpha) so its outline lands on ``dst_quad_obj`` and blend it into ``frame``."""
    fh, fw = frame.shape[:2]
    oh, ow = obj.shape[:2]
    x0, y0 = np.floor(dst_quad_obj.min(0)).astype(int)
    x1, y1 = np.ceil(dst_quad_obj.max(0)).astype(int)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(fw, x1 + 1), min(fh, y1 + 1)
    if x1 <= x0 or y1 <= y0:
        return
    # Pre-shrink big objects: a linear warp that minifies a lot aliases badly.
    target_h = float(np.linalg.norm(dst_quad_obj[3] - dst_quad_obj[0]))
    if target_h < 0.5 * oh:
        f = max(target_h * 1.5 / oh, 0.05)
        obj = cv2.resize(obj, (max(2, int(ow * f)), max(2, int(oh * f))), interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(alpha, (obj.shape[1], obj.shape[0]), interpolation=cv2.INTER_AREA)
        oh, ow = obj.shape[:2]
    src = np.array([[0, 0], [ow, 0], [ow, oh], [0, oh]], np.float32)
    Hm = cv2.getPerspectiveTransform(src, (dst_quad_obj - [x0, y0]).astype(np.float32))
    size = (x1 - x0, y1 - y0)
    warped = cv2.warpPerspective(obj, Hm, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    a = cv2.warpPerspective(alpha, Hm, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    roi = frame[y0:y1, x0:x1]
    roi[:] = cv2.blendLinear(warped, roi, a, 1.0 - a)


def _shadow(frame: np.ndarray, alpha: np.ndarray, dst_quad_obj: np.ndarray, rng: np.random.Generator) -> None:
    """Darken ``frame`` under a blurred, slightly offset copy of the object's outline (a light from above and
    to one side): on the table it is barely seen, on a white card below it is the only trace of the edge."""
    diag = float(np.linalg.norm(dst_quad_obj[2] - dst_quad_obj[0]))
    shift = rng.uniform(-0.012, 0.012, 2) * diag
    blur = float(rng.uniform(0.003, 0.012)) * diag
    strength = float(rng.uniform(0.15, 0.5))
    oh, ow = alpha.shape[:2]
    src = np.array([[0, 0], [ow, 0], [ow, oh], [0, oh]], np.float32)
    Hm = cv2.getPerspectiveTransform(src, (dst_quad_obj + shift).astype(np.float32))
    shadow = cv2.warpPerspective(alpha, Hm, (frame.shape[1], frame.shape[0]), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    shadow = cv2.GaussianBlur(shadow, (0, 0), max(0.5, blur))
    frame[:] = np.clip(frame * (1.0 - strength * shadow)[..., None], 0, 255).astype(np.uint8)


def _face_to_frame(obj_shape: tuple[int, int], face_obj: np.ndarray, obj_quad: np.ndarray) -> np.ndarray:
    oh, ow = obj_shape
    src = np.array([[0, 0], [ow, 0], [ow, oh], [0, oh]], np.float32)
    Hm = cv2.getPerspectiveTransform(src, obj_quad.astype(np.float32))
    return cv2.perspectiveTransform(face_obj[None].astype(np.float32), Hm)[0]


# ------------------------------------------------------------------------------------------- camera effects


def _lighting(frame: np.ndarray, rng: np.random.Generator, cfg: CaptureConfig, p: dict) -> np.ndarray:
    h, w = frame.shape[:2]
    strength = float(rng.uniform(*cfg.light_gradient))
    bright = float(rng.uniform(*cfg.brightness))
    temp = float(rng.uniform(*cfg.colour_temperature))
    # White balance: warm = more red, less blue (BGR order).
    wb = np.array([1 + temp, 1.0 + 0.1 * abs(temp), 1 - temp], np.float32)
    grid = 1 + strength * rng.uniform(-1, 1, (2, 2, 1)).astype(np.float32)
    gains = np.clip(grid * wb[None, None, :] * bright * 128, 0, 255).astype(np.uint8)
    field = cv2.resize(gains, (w, h), interpolation=cv2.INTER_LINEAR)
    p.update(light_gradient=round(strength, 3), brightness=round(bright, 3), colour_temperature=round(temp, 3))
    return cv2.multiply(frame, field, scale=1 / 128)


def _glare(frame: np.ndarray, rng: np.random.Generator, where: np.ndarray, p: dict) -> np.ndarray:
    h, w = frame.shape[:2]
    sh, sw = max(2, h // 8), max(2, w // 8)
    g = np.zeros((sh, sw), np.uint8)
    wts = rng.dirichlet(np.ones(len(where)))
    cx, cy = (wts @ where) / 8
    ax = float(rng.uniform(0.02, 0.12) * sw)
    cv2.ellipse(g, (int(cx), int(cy)), (max(1, int(ax)), max(1, int(ax * rng.uniform(0.3, 1.0)))),
                float(rng.uniform(0, 180)), 0, 360, int(rng.uniform(120, 255)), -1)
    g = cv2.GaussianBlur(g, (0, 0), max(0.8, ax / 2))
    g = cv2.resize(g, (w, h), interpolation=cv2.INTER_LINEAR)
    p["glare"] = [round(float(cx * 8), 1), round(float(cy * 8), 1), round(ax * 8, 1)]
    return cv2.add(frame, cv2.merge([g, g, g]))


def _motion_blur(frame: np.ndarray, length: int, angle: float) -> np.ndarray:
    k = np.zeros((length, length), np.float32)
    c = (length - 1) / 2
    dx, dy = math.cos(math.radians(angle)) * c, math.sin(math.radians(angle)) * c
    cv2.line(k, (int(round(c - dx)), int(round(c - dy))), (int(round(c + dx)), int(round(c + dy))), 1.0, 1)
    return cv2.filter2D(frame, -1, k / max(k.sum(), 1e-6))


def _noise(frame: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    h, w = frame.shape[:2]
    # cv2's generator, seeded from ours: deterministic and ~5x faster than numpy normal draws here.
    cv2.setRNGSeed(int(rng.integers(0, 2**31 - 1)))
    n = np.empty(((h + 1) // 2, (w + 1) // 2, 3), np.int16)
    cv2.randn(n, (0, 0, 0), (sigma, sigma, sigma))
    n = cv2.resize(n, (w, h), interpolation=cv2.INTER_NEAREST)
    return cv2.add(frame, n, dtype=cv2.CV_8U)


def _jpeg(frame: np.ndarray, q: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, int(q)])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else frame


def _camera_effects(frame: np.ndarray, rng: np.random.Generator, cfg: CaptureConfig, glare_at: np.ndarray | None,
                    p: dict, tags: list[str], scale: float) -> np.ndarray:
    frame = _lighting(frame, rng, cfg, p)
    if p["brightness"] < 0.8:
        tags.append("dark")
    if abs(p["colour_temperature"]) > 0.15:
        tags.append("colour_cast")
    if glare_at is not None and rng.random() < cfg.p_glare:
        frame = _glare(frame, rng, glare_at, p)
        tags.append("glare")
    if rng.random() < cfg.p_motion_blur:
        length = int(rng.integers(3, max(4, int(cfg.max_motion_blur_px * scale) + 1)))
        ang = float(rng.uniform(0, 180))
        frame = _motion_blur(frame, length, ang)
        p["motion_blur"] = [length, round(ang, 1)]
        tags.append("motion_blur")
    if rng.random() < cfg.p_defocus:
        sig = float(rng.uniform(0.6, max(0.61, cfg.max_defocus_sigma * scale)))
        frame = cv2.GaussianBlur(frame, (0, 0), sig)
        p["defocus_sigma"] = round(sig, 2)
        tags.append("defocus")
    sigma = float(rng.uniform(*cfg.noise_sigma))
    frame = _noise(frame, rng, sigma)
    p["noise_sigma"] = round(sigma, 2)
    if sigma > 6:
        tags.append("noise")
    q = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
    frame = _jpeg(frame, q)
    p["jpeg_quality"] = q
    if q < 50:
        tags.append("jpeg")
    return frame


SKIN_TONES = [(95, 135, 190), (120, 160, 215), (80, 110, 160), (60, 85, 120), (140, 180, 230), (45, 65, 95)]


def _fingers(frame: np.ndarray, label: np.ndarray, quad: np.ndarray, rng: np.random.Generator, p: dict) -> None:
    """Skin-coloured finger blobs reaching from outside over one card edge (drawn into frame and label map)."""
    h, w = frame.shape[:2]
    ls = label.shape[1] / w
    e = int(rng.integers(0, 4))
    a, b = quad[e], quad[(e + 1) % 4]
    centre = quad.mean(0)
    t = float(rng.uniform(0.2, 0.8))
    edge_pt = a + (b - a) * t
    out = edge_pt - centre
    out /= max(np.linalg.norm(out), 1e-6)
    card_h = float(np.linalg.norm(quad[3] - quad[0]))
    fw = card_h * rng.uniform(0.16, 0.22)  # a finger is ~18 mm wide, a card 88 mm tall
    tone = np.array(SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], np.float32) * rng.uniform(0.85, 1.15)
    n = int(rng.integers(1, 3))
    fingers = []
    for i in range(n):
        off = np.array([-out[1], out[0]]) * fw * 1.1 * (i - (n - 1) / 2)
        tip = edge_pt - out * card_h * rng.uniform(0.04, 0.2) + off
        base = tip + out * card_h * 0.9
        c = (tip + base) / 2
        ang = math.degrees(math.atan2(out[1], out[0]))
        axes = (int(np.linalg.norm(base - tip) / 2), int(fw / 2))
        col = tuple(int(v) for v in np.clip(tone * rng.uniform(0.9, 1.1), 0, 255))
        cv2.ellipse(frame, (int(c[0]), int(c[1])), axes, ang, 0, 360, col, -1, cv2.LINE_AA)
        # Darker nail-side shading so the blob reads as a finger, not a sticker.
        cv2.ellipse(frame, (int(c[0]), int(c[1])), axes, ang, 0, 360, tuple(int(v * 0.8) for v in col), 2, cv2.LINE_AA)
        cv2.ellipse(label, (int(c[0] * ls), int(c[1] * ls)), (max(1, int(axes[0] * ls)), max(1, int(axes[1] * ls))),
                    ang, 0, 360, 255, -1)
        fingers.append([round(float(tip[0]), 1), round(float(tip[1]), 1)])
    p["fingers"] = fingers


# ------------------------------------------------------------------------------------------- placement


def _holder(rng: np.random.Generator, cfg: CaptureConfig) -> str:
    r = rng.random()
    if r < cfg.p_sleeve:
        return "sleeve"
    if r < cfg.p_sleeve + cfg.p_toploader:
        return "toploader"
    return "none"


def _plan(n: int, rng: np.random.Generator, cfg: CaptureConfig) -> tuple[list[dict], dict]:
    """Per-card placement (centre, fronto-parallel height, rotation, tilt) and frame-level params."""
    w, h = cfg.size
    focal = float(w)  # ~53° horizontal field of view
    plans: list[dict] = []
    if cfg.mode == "scanner_box":
        ch = h * cfg.scanner_box_scale * rng.uniform(0.97, 1.03)
        plans.append(dict(center=(w / 2 + rng.normal(0, w * 0.02), h / 2 + rng.normal(0, h * 0.02)), height=ch,
                          rot=float(rng.uniform(-cfg.scanner_box_rotation_deg, cfg.scanner_box_rotation_deg)),
                          tilt=(float(rng.uniform(-1, 1) * cfg.scanner_box_tilt_deg), float(rng.uniform(-1, 1) * cfg.scanner_box_tilt_deg))))
        for _ in range(1, n):  # extra cards in a scanner box: neighbours peeking in from an edge
            plans.append(dict(center=(plans[0]["center"][0] + rng.choice([-1, 1]) * ch * CARD_ASPECT * rng.uniform(0.8, 1.0),
                                      plans[0]["center"][1] + rng.normal(0, ch * 0.1)), height=ch,
                              rot=float(rng.uniform(-10, 10)), tilt=(0.0, 0.0)))
        return plans, {"focal": focal}
    if cfg.mode == "grid":
        n = min(n, cfg.max_cards)
        cols = 3 if n > 4 else (2 if n > 1 else 1)
        rows = math.ceil(n / cols)
        grid_h = h * rng.uniform(*cfg.grid_scale_range)
        gap = 0.06
        ch = grid_h / (rows + (rows - 1) * gap)
        cw = ch * CARD_ASPECT
        grid_w = cols * cw + (cols - 1) * gap * ch
        if grid_w > w * 0.95:  # keep the page inside the frame
            f = w * 0.95 / grid_w
            ch, cw, grid_w, grid_h = ch * f, cw * f, grid_w * f, grid_h * f
        center = (w / 2 + rng.normal(0, w * 0.02), h / 2 + rng.normal(0, h * 0.02))
        rot = float(rng.uniform(-12, 12))
        tilt = (float(rng.uniform(-1, 1) * cfg.grid_max_tilt_deg), float(rng.uniform(-1, 1) * cfg.grid_max_tilt_deg))
        for i in range(n):
            r_, c_ = divmod(i, cols)
            lx = -grid_w / 2 + cw / 2 + c_ * (cw + gap * ch) + rng.normal(0, ch * 0.01)
            ly = -grid_h / 2 + ch / 2 + r_ * (ch * (1 + gap)) + rng.normal(0, ch * 0.01)
            plans.append(dict(local=(lx, ly), height=ch, rot=rot + float(rng.normal(0, 1.5)), page_rot=rot, tilt=tilt,
                              center=center))
        return plans, {"focal": focal, "grid": [rows, cols]}
    if cfg.mode == "fan":
        return _plan_fan(n, rng, cfg, focal)
    # free
    ch = h * rng.uniform(*cfg.scale_range)
    rot = float(rng.uniform(-180, 180))
    tilt = (float(rng.uniform(-1, 1) * cfg.max_tilt_deg), float(rng.uniform(-1, 1) * cfg.max_tilt_deg))
    # Keep the main card's centre inside the frame with a margin that depends on its size.
    mx, my = min(w * 0.45, ch * 0.35), min(h * 0.45, ch * 0.35)
    center = (float(rng.uniform(mx, w - mx)), float(rng.uniform(my, h - my)))
    plans.append(dict(center=center, height=ch, rot=rot, tilt=tilt))
    for _ in range(1, n):
        ang = rng.uniform(0, 2 * np.pi)
        d = ch * rng.uniform(0.55, 0.95)
        plans.append(dict(center=(center[0] + d * math.cos(ang), center[1] + d * math.sin(ang)),
                          height=ch * rng.uniform(0.95, 1.05), rot=rot + float(rng.normal(0, 20)),
                          tilt=(tilt[0] * 0.8, tilt[1] * 0.8)))
    return plans, {"focal": focal}


def _plan_fan(n: int, rng: np.random.Generator, cfg: CaptureConfig, focal: float) -> tuple[list[dict], dict]:
    """Overlapping cards on one table plane. Card 0 lies on top (drawn last), card n-1 at the bottom; each
    card is placed relative to the one above it, so every card but the top one is partly covered."""
    w, h = cfg.size
    layout = str(cfg.fan_layouts[int(rng.integers(len(cfg.fan_layouts)))])
    ch = h * rng.uniform(cfg.scale_range[0], 0.5 * (cfg.scale_range[0] + cfg.scale_range[1]) + 0.1)
    cw = ch * CARD_ASPECT
    centres, rots = [np.zeros(2)], [0.0]
    if layout == "spread":
        step = rng.uniform(0.15, 0.65) * cw
        dirn = float(rng.choice([-1.0, 1.0]))
        for i in range(1, n):
            centres.append(centres[-1] + [dirn * step * rng.uniform(0.85, 1.15), rng.normal(0, 0.04 * ch)])
            rots.append(float(rng.normal(0, 3.0)))
    elif layout == "hand":
        pivot = np.array([rng.normal(0, 0.1 * cw), ch * rng.uniform(0.25, 0.48)])  # below the centre (y down)
        step = float(rng.uniform(6, 22)) * float(rng.choice([-1.0, 1.0]))
        for i in range(1, n):
            a = math.radians(step * i + rng.normal(0, 1.5))
            r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
            centres.append(pivot + r @ (centres[0] - pivot))
            rots.append(math.degrees(a))
    elif layout == "row":
        # edge to edge: the one arrangement whose outline has a card's shape (two cards side by side), which the
        # detector's kernels have to keep apart (real playing-card photos, docs/device-vision.md)
        along = int(rng.integers(2))  # 0: along the card's width, 1: along its height
        span = (cw, ch)[along]
        dirn = float(rng.choice([-1.0, 1.0]))
        for i in range(1, n):
            d = dirn * span * rng.uniform(0.88, 1.06)
            off = rng.normal(0, 0.04 * (ch, cw)[along])
            centres.append(centres[-1] + (np.array([d, off]) if along == 0 else np.array([off, d])))
            rots.append(float(rng.normal(0, 3.0)))
    else:  # pile
        for i in range(1, n):
            ang = rng.uniform(0, 2 * np.pi)
            d = ch * rng.uniform(0.2, 0.6)
            centres.append(centres[-1] + d * np.array([math.cos(ang), math.sin(ang)]))
            rots.append(rots[-1] + float(rng.uniform(-45, 45)))
    c = np.array(centres)
    c -= (c.min(0) + c.max(0)) / 2
    page_rot = float(rng.uniform(-180, 180))
    tilt = (float(rng.uniform(-1, 1) * cfg.max_tilt_deg * 0.6), float(rng.uniform(-1, 1) * cfg.max_tilt_deg * 0.6))
    # extent of the group after the page rotation: shrink it (cards and offsets) to fit ~90 % of the frame
    corners = []
    base = np.array([[-cw, -ch], [cw, -ch], [cw, ch], [-cw, ch]]) / 2
    for ci, ri in zip(c, rots):
        a = math.radians(ri + page_rot)
        r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        pr = math.radians(page_rot)
        rp = np.array([[math.cos(pr), -math.sin(pr)], [math.sin(pr), math.cos(pr)]])
        corners.append(base @ r.T + rp @ ci)
    corners = np.vstack(corners)
    ext = corners.max(0) - corners.min(0)
    f = min(1.0, 0.9 * w / ext[0], 0.9 * h / ext[1])
    ch, cw, c, ext = ch * f, cw * f, c * f, ext * f
    mid = (corners.max(0) + corners.min(0)) / 2 * f
    slack = np.maximum(np.array([w, h]) * 0.95 - ext, 0) / 2
    center = (float(w / 2 - mid[0] + rng.uniform(-1, 1) * slack[0]), float(h / 2 - mid[1] + rng.uniform(-1, 1) * slack[1]))
    plans = [dict(local=(float(c[i, 0]), float(c[i, 1])), height=ch * rng.uniform(0.99, 1.01), rot=page_rot + rots[i],
                  page_rot=page_rot, tilt=tilt, center=center) for i in range(n)]
    return plans, {"focal": focal, "fan_layout": layout}


def simulate_capture(card_images: list[np.ndarray], card_ids: list[str], rng: np.random.Generator,
                     config: CaptureConfig | None = None) -> tuple[np.ndarray, dict]:
    """One simulated camera frame containing ``card_images`` (first = main card in free mode).

    Returns (frame BGR uint8, labels) with labels = {"size": [W, H], "cards": [{"card_id", "quad" (TL, TR,
    BR, BL of the card face, frame pixels), "visible" (fraction of the face visible), "holder"}], "params": {…,
    "distortions": [tags]}}.
    """
    cfg = config or CaptureConfig()
    if len(card_images) != len(card_ids) or not card_images:
        raise ValueError("card_images and card_ids must be non-empty and of equal length")
    w, h = cfg.size
    n = min(len(card_images), cfg.max_cards if cfg.mode == "grid" else (cfg.fan_cards[1] if cfg.mode == "fan" else len(card_images)))
    frame, bg = sample_background(rng, cfg)
    plans, gp = _plan(n, rng, cfg)
    params: dict = {"mode": cfg.mode, "size": [w, h], "background": bg, **gp, "cards": []}
    tags: list[str] = []
    ls = 0.5 if cfg.mode == "fan" else 0.25  # label map resolution: visibility is a ratio, a quarter-res raster is plenty (overlapping cards: half-res)
    label = np.zeros((int(h * ls), int(w * ls)), np.uint8)  # 0 = nothing, i + 1 = card i, 255 = finger
    order = list(range(n))
    if cfg.mode == "free" and n > 1:
        rng.shuffle(order)  # neighbours land under or over the main card
    elif cfg.mode == "fan":
        order = order[::-1]  # card 0 on top
        if gp["fan_layout"] == "pile" and rng.random() < 0.3:
            rng.shuffle(order)  # a loose pile: any card may be on top
    faces: dict[int, np.ndarray] = {}
    for i in order:
        pl = plans[i]
        card = card_images[i]
        holder = "pocket" if cfg.mode == "grid" else _holder(rng, cfg)
        obj, alpha, face_obj = _wrap_object(card, holder, rng)
        oh, ow = obj.shape[:2]
        # Plane coordinates of the object's outline, scaled so the card *face* has the planned height.
        k = pl["height"] / card.shape[0]
        fc = face_obj.mean(0)
        outline = (np.array([[0, 0], [ow, 0], [ow, oh], [0, oh]], np.float32) - fc) * k
        face_local = (face_obj - fc) * k
        if cfg.mode in ("grid", "fan"):
            # Rotate each card about its own centre, then place it in the page and project the page.
            r = math.radians(pl["rot"] - pl["page_rot"])
            rm = np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])
            off = np.array(pl["local"])
            pts = np.vstack([outline @ rm.T + off, face_local @ rm.T + off])
            proj = project_plane(pts, pl["center"], pl["page_rot"], pl["tilt"][0], pl["tilt"][1], gp["focal"])
        else:
            pts = np.vstack([outline, face_local])
            proj = project_plane(pts, pl["center"], pl["rot"], pl["tilt"][0], pl["tilt"][1], gp["focal"])
        obj_quad, face_quad = proj[:4], proj[4:]
        if cfg.p_shadow > 0 and rng.random() < cfg.p_shadow:
            _shadow(frame, alpha, obj_quad, rng)
        _composite(frame, obj, alpha, obj_quad)
        cv2.fillConvexPoly(label, np.round(face_quad * ls * 16).astype(np.int32), i + 1, cv2.LINE_8, 4)
        faces[i] = face_quad
        params["cards"].append({"index": i, "holder": holder, "height": round(pl["height"], 1),
                                "rot": round(pl["rot"], 2), "tilt": [round(pl["tilt"][0], 2), round(pl["tilt"][1], 2)]})
        if holder in ("sleeve", "toploader"):
            tags.append(holder)
    if cfg.mode != "grid" and rng.random() < cfg.p_fingers:
        _fingers(frame, label, faces[0], rng, params)
        tags.append("fingers")
    glare_at = faces[int(rng.integers(0, n))]
    frame = _camera_effects(frame, rng, cfg, glare_at, params, tags, scale=w / 640)
    main = params["cards"][[c["index"] for c in params["cards"]].index(0)]
    if max(abs(main["tilt"][0]), abs(main["tilt"][1])) > 25:
        tags.append("steep_tilt")
    if plans[0]["height"] < 0.35 * h:
        tags.append("small")
    cards_out = []
    for i in range(n):
        area = polygon_area(faces[i] * ls)
        vis = float(np.count_nonzero(label == i + 1)) / area if area > 0 else 0.0
        cards_out.append({"card_id": card_ids[i], "quad": [[round(float(x), 2), round(float(y), 2)] for x, y in faces[i]],
                          "visible": round(min(1.0, vis), 4), "holder": next(c["holder"] for c in params["cards"] if c["index"] == i)})
    if n > 1 and cfg.mode == "free":
        tags.append("overlap" if cards_out[0]["visible"] < 0.98 else "neighbours")
    elif cfg.mode == "fan":
        tags += ["overlap", gp["fan_layout"]]
    elif cards_out[0]["visible"] < 0.9:
        tags.append("occluded")
    params["distortions"] = sorted(set(tags))
    return frame, {"size": [w, h], "cards": cards_out, "params": params}


# ------------------------------------------------------------------------------------------- crops


def augment_crop(card_img: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """A cheap 'rectified camera crop' of one card (same size as ``card_img``) for embedder training:
    small perspective jitter (as a detector's corner error), colour/exposure, glare, sleeve sheen, blur,
    noise and JPEG."""
    h, w = card_img.shape[:2]
    j = 0.03 * strength
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    dst = src + rng.uniform(-j, j, (4, 2)).astype(np.float32) * [w, h]
    Hm = cv2.getPerspectiveTransform(src, dst.astype(np.float32))
    bcol = tuple(int(v) for v in rng.integers(0, 256, 3))
    img = cv2.warpPerspective(card_img, Hm, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=bcol)
    p: dict = {}
    cfg = _CROP_CFG
    img = _lighting(img, rng, cfg, p)
    if rng.random() < 0.3 * strength:
        img = _glare(img, rng, np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32), p)
    if rng.random() < 0.25 * strength:
        sheen_obj, _, _ = _wrap_object(img, "sleeve", rng)
        img = cv2.resize(sheen_obj, (w, h), interpolation=cv2.INTER_AREA)
    r = rng.random()
    if r < 0.2 * strength:
        img = _motion_blur(img, int(rng.integers(3, 8)), float(rng.uniform(0, 180)))
    elif r < 0.45 * strength:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.5, 1.8)))
    img = _noise(img, rng, float(rng.uniform(0.5, 6.0 * strength + 0.5)))
    return _jpeg(img, int(rng.integers(40, 96)))


_CROP_CFG = CaptureConfig(light_gradient=(0.0, 0.3), brightness=(0.75, 1.2), colour_temperature=(-0.2, 0.2))


__all__ = ["CaptureConfig", "augment_crop", "background", "project_plane", "simulate_capture", "polygon_area"]
