"""Procedural card renderer: one catalog printing -> a card-face image (BGR uint8, 2.5:3.5).

Why procedural: we have real scans for one set only, but the identifier must tell apart ~20k printings
whose differences are often tiny (reprints share the artwork and differ in set symbol, number, border
and finish). The renderer reproduces exactly that structure:

* the art is a deterministic function of ``illustration_id`` (reprints share art pixels exactly);
* set symbol is a deterministic glyph of ``set_id``; number/total, rarity mark, artist, HP, attacks,
  weakness/resistance/retreat come from the record;
* the layout family (vintage yellow border, modern silver border, full art, trainer, energy) follows the
  series / subtypes / rarity, so two printings of one illustration can land in different frames;
* finish overlays: ``holo`` (sheen in the art window), ``reverse_holo`` (sheen outside it), plus an
  etched texture on full-art cards.

Everything is plain ``cv2`` drawing with Hershey fonts, so a card renders in a few milliseconds.
"""

from __future__ import annotations

import functools
import hashlib
import unicodedata
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from server.catalog.sources import CardRecord, SetRecord

DEFAULT_SIZE = (360, 504)  # (W, H) = 2.5:3.5

FINISHES = ("normal", "holo", "reverse_holo")
LAYOUTS = ("vintage", "modern", "full_art", "trainer", "energy")

# Series printed with a silver border (Scarlet & Violet onwards).
MODERN_SERIES = {"Scarlet & Violet", "Mega Evolution"}
MODERN_SET_PREFIXES = ("sv", "me", "zsv", "rsv")

FULL_ART_SUBTYPES = {"ex", "EX", "V", "VMAX", "VSTAR", "GX", "TAG TEAM", "V-UNION", "MEGA", "LEGEND", "BREAK"}
FULL_ART_RARITIES = {
    "Rare Ultra", "Illustration Rare", "Special Illustration Rare", "Rare Secret", "Rare Rainbow", "Ultra Rare",
    "Hyper Rare", "Trainer Gallery Rare Holo", "Rare Shiny GX", "Shiny Ultra Rare", "Mega Hyper Rare",
    "Rare Holo VMAX", "Rare Holo VSTAR", "Double Rare", "Rare Holo EX", "Rare Holo GX", "Rare Holo V",
}

# Frame palette per energy type (BGR): (frame colour, light panel colour, dark accent).
TYPE_PALETTE: dict[str, tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]] = {
    "Grass": ((70, 170, 90), (190, 235, 200), (30, 90, 40)),
    "Fire": ((50, 80, 215), (180, 195, 245), (20, 30, 120)),
    "Water": ((210, 140, 50), (245, 215, 180), (120, 60, 20)),
    "Lightning": ((40, 200, 235), (180, 240, 250), (20, 110, 140)),
    "Psychic": ((170, 80, 150), (235, 200, 230), (90, 30, 80)),
    "Fighting": ((50, 110, 180), (170, 200, 230), (25, 55, 100)),
    "Darkness": ((70, 60, 40), (150, 140, 120), (25, 20, 15)),
    "Metal": ((150, 150, 140), (220, 220, 215), (80, 80, 75)),
    "Dragon": ((40, 150, 170), (170, 215, 225), (20, 80, 90)),
    "Fairy": ((180, 130, 235), (235, 215, 250), (110, 60, 160)),
    "Colorless": ((200, 200, 195), (240, 240, 238), (110, 110, 105)),
}
TRAINER_PALETTE = ((190, 175, 160), (240, 235, 228), (90, 70, 60))
ENERGY_TYPE_ORDER = list(TYPE_PALETTE)

YELLOW_BORDER = (45, 200, 242)
SILVER_BORDER = (196, 196, 200)
INK = (25, 25, 25)
WHITE = (255, 255, 255)

FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_BOLD = cv2.FONT_HERSHEY_DUPLEX
AA = cv2.LINE_AA


def _seed(*parts: str) -> int:
    return int.from_bytes(hashlib.sha1("|".join(parts).encode()).digest()[:8], "little")


_ASCII_MAP = str.maketrans({"×": "x", "♀": " F", "♂": " M", "’": "'", "—": "-", "–": "-", "é": "e", "δ": "d", "☆": "*"})


@functools.lru_cache(maxsize=65536)
def ascii_text(text: str) -> str:
    """Hershey fonts are ASCII only: fold accents and symbols."""
    text = text.translate(_ASCII_MAP)
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


# --------------------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Layout:
    """Geometry of one layout family, in fractions of (W, H)."""

    name: str
    border: float  # border width as a fraction of W
    art: tuple[float, float, float, float]  # x0, y0, x1, y1 of the art window
    name_y: float  # baseline of the name
    body: tuple[float, float]  # y0, y1 of the attack/rules text block
    wrr_y: float  # weakness/resistance/retreat row baseline
    footer_y: float  # baseline of the number/artist footer


LAYOUT_GEOMETRY = {
    "vintage": Layout("vintage", 0.055, (0.11, 0.115, 0.89, 0.47), 0.085, (0.54, 0.82), 0.865, 0.945),
    "modern": Layout("modern", 0.040, (0.075, 0.105, 0.925, 0.505), 0.075, (0.56, 0.84), 0.885, 0.955),
    "full_art": Layout("full_art", 0.030, (0.030, 0.0215, 0.970, 0.9785), 0.075, (0.60, 0.84), 0.885, 0.955),
    "trainer": Layout("trainer", 0.045, (0.14, 0.16, 0.86, 0.45), 0.135, (0.50, 0.84), 0.885, 0.950),
    "energy": Layout("energy", 0.045, (0.10, 0.12, 0.90, 0.70), 0.090, (0.74, 0.86), 0.885, 0.950),
}


def is_modern(card: CardRecord, set_index: dict[str, SetRecord] | None) -> bool:
    rec = (set_index or {}).get(card.set_id)
    if rec is not None and rec.series:
        return rec.series in MODERN_SERIES
    return card.set_id.lower().startswith(MODERN_SET_PREFIXES)


def layout_family(card: CardRecord, set_index: dict[str, SetRecord] | None = None) -> str:
    """Which of ``LAYOUTS`` a printing uses."""
    if card.supertype == "Energy":
        return "energy"
    if card.supertype == "Trainer":
        return "full_art" if (card.rarity in FULL_ART_RARITIES and card.rarity not in {"Double Rare"}) else "trainer"
    if card.rarity in FULL_ART_RARITIES or FULL_ART_SUBTYPES.intersection(card.subtypes):
        return "full_art"
    return "modern" if is_modern(card, set_index) else "vintage"


def default_finish(card: CardRecord) -> str:
    """The finish a printing has in the catalog (reverse holo is a variant of the same card id)."""
    r = card.rarity or ""
    if "Holo" in r or r in {"Rare Shining", "Rare Prime", "LEGEND", "Amazing Rare", "Radiant Rare", "Rare Holo Star"}:
        return "holo"
    return "normal"


def art_rect(card: CardRecord, set_index: dict[str, SetRecord] | None = None,
             size: tuple[int, int] = DEFAULT_SIZE) -> tuple[int, int, int, int]:
    """Pixel rectangle (x0, y0, x1, y1) of the art window for this card at ``size``."""
    return _rect(LAYOUT_GEOMETRY[layout_family(card, set_index)].art, size)


def _rect(frac: tuple[float, float, float, float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    w, h = size
    return int(round(frac[0] * w)), int(round(frac[1] * h)), int(round(frac[2] * w)), int(round(frac[3] * h))


def number_rect(card: CardRecord, set_index: dict[str, SetRecord] | None = None,
                size: tuple[int, int] = DEFAULT_SIZE) -> tuple[int, int, int, int]:
    """Pixel rectangle of the footer strip holding set symbol, number and rarity mark."""
    lay = LAYOUT_GEOMETRY[layout_family(card, set_index)]
    w, h = size
    y = lay.footer_y * h
    return 0, int(y - 0.035 * h), w, min(h, int(y + 0.02 * h))


# --------------------------------------------------------------------------------------------- art


@functools.lru_cache(maxsize=512)
def _art_cached(illustration_id: str, w: int, h: int) -> np.ndarray:
    return _make_art(illustration_id, w, h)


def make_art(illustration_id: str, w: int, h: int) -> np.ndarray:
    """Deterministic artwork for one illustration (the same pixels for every reprint at one size)."""
    return _art_cached(illustration_id, w, h).copy()


def _make_art(illustration_id: str, w: int, h: int) -> np.ndarray:
    rng = np.random.default_rng(_seed("art", illustration_id))
    # Background: two-colour gradient plus low-frequency colour blotches, built on a tiny grid and
    # upsampled once (cv2 linear resize is far cheaper than full-size numpy arithmetic).
    c0 = rng.integers(30, 240, 3).astype(np.float32)
    c1 = rng.integers(30, 240, 3).astype(np.float32)
    gh, gw = int(rng.integers(3, 7)), int(rng.integers(3, 7))
    t = np.linspace(0.0, 1.0, gh, dtype=np.float32)[:, None, None]
    grid = c0 * (1 - t) + c1 * t + rng.normal(0, 38, (gh, gw, 3)).astype(np.float32)
    img = cv2.resize(np.clip(grid, 0, 255).astype(np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)
    # Scenery: ground / hills polygons.
    for _ in range(rng.integers(1, 4)):
        ybase = rng.uniform(0.5, 0.95) * h
        xs = np.linspace(-0.1 * w, 1.1 * w, rng.integers(3, 7))
        ys = ybase + rng.normal(0, 0.08 * h, len(xs))
        pts = np.concatenate([np.stack([xs, ys], 1), [[1.1 * w, h * 1.2], [-0.1 * w, h * 1.2]]]).astype(np.int32)
        cv2.fillPoly(img, [pts], tuple(int(v) for v in rng.integers(20, 230, 3)), AA)
    # Decorations: sun/stars/bubbles/streaks.
    for _ in range(rng.integers(3, 12)):
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        cx, cy = int(rng.uniform(0, w)), int(rng.uniform(0, h))
        if rng.random() < 0.6:
            cv2.circle(img, (cx, cy), int(rng.uniform(0.01, 0.08) * w), col, -1 if rng.random() < 0.7 else 2, AA)
        else:
            cv2.line(img, (cx, cy), (int(cx + rng.normal(0, 0.3 * w)), int(cy + rng.normal(0, 0.2 * h))), col,
                     int(rng.integers(1, 5)), AA)
    # The creature: body + head + eyes + ears/limbs, with a dark outline.
    body_col = tuple(int(v) for v in rng.integers(20, 250, 3))
    accent = tuple(int(v) for v in rng.integers(20, 250, 3))
    cx, cy = rng.uniform(0.35, 0.65) * w, rng.uniform(0.5, 0.7) * h
    bw, bh = rng.uniform(0.15, 0.3) * w, rng.uniform(0.15, 0.3) * h
    hr = rng.uniform(0.1, 0.18) * min(w, h) * 1.3
    hx, hy = cx + rng.normal(0, 0.08 * w), cy - bh - hr * 0.6
    parts: list[tuple[str, Any]] = []
    for _ in range(rng.integers(2, 6)):  # limbs / ears / tail polygons attached to body or head
        ax, ay, r = (cx, cy, max(bw, bh)) if rng.random() < 0.5 else (hx, hy, hr)
        ang = rng.uniform(0, 2 * np.pi)
        spread = rng.uniform(0.2, 0.6)
        ln = r * rng.uniform(1.1, 2.0)
        tri = np.array([[ax + r * 0.6 * np.cos(ang - spread), ay + r * 0.6 * np.sin(ang - spread)],
                        [ax + ln * np.cos(ang), ay + ln * np.sin(ang)],
                        [ax + r * 0.6 * np.cos(ang + spread), ay + r * 0.6 * np.sin(ang + spread)]], np.int32)
        parts.append(("poly", (tri, accent if rng.random() < 0.5 else body_col)))
    outline = (20, 20, 20)
    for kind, (pts, col) in parts:
        cv2.fillPoly(img, [pts], col, AA)
        cv2.polylines(img, [pts], True, outline, 2, AA)
    cv2.ellipse(img, (int(cx), int(cy)), (int(bw), int(bh)), float(rng.uniform(-30, 30)), 0, 360, body_col, -1, AA)
    cv2.ellipse(img, (int(cx), int(cy)), (int(bw), int(bh)), 0, 0, 360, outline, 2, AA)
    cv2.ellipse(img, (int(cx), int(cy + bh * 0.2)), (int(bw * 0.55), int(bh * 0.5)), 0, 0, 360, accent, -1, AA)
    cv2.circle(img, (int(hx), int(hy)), int(hr), body_col, -1, AA)
    cv2.circle(img, (int(hx), int(hy)), int(hr), outline, 2, AA)
    er = max(2, int(hr * rng.uniform(0.12, 0.25)))
    for sx in (-1, 1):
        ex, ey = int(hx + sx * hr * 0.4), int(hy - hr * 0.1)
        cv2.circle(img, (ex, ey), er, WHITE, -1, AA)
        cv2.circle(img, (ex, ey), max(1, er // 2), outline, -1, AA)
    cv2.ellipse(img, (int(hx), int(hy + hr * 0.35)), (int(hr * 0.3), int(hr * 0.12)), 0, 0, 180, outline, 2, AA)
    return img


# --------------------------------------------------------------------------------------------- glyphs


def _regular_poly(cx: float, cy: float, r: float, n: int, rot: float = -np.pi / 2, star: bool = False) -> np.ndarray:
    k = 2 * n if star else n
    ang = rot + np.arange(k) * 2 * np.pi / k
    rr = np.where(np.arange(k) % 2 == 1, r * 0.45, r) if star else np.full(k, r)
    return np.stack([cx + rr * np.cos(ang), cy + rr * np.sin(ang)], 1).astype(np.int32)


@functools.lru_cache(maxsize=1024)
def set_symbol(set_id: str, px: int) -> tuple[np.ndarray, np.ndarray]:
    """A distinct procedural glyph per set (image, mask), deterministic from the set id."""
    rng = np.random.default_rng(_seed("set-symbol", set_id))
    s = px * 4  # draw big, downsample: crisp anti-aliased small glyphs
    img = np.zeros((s, s, 3), np.uint8)
    mask = np.zeros((s, s), np.uint8)
    c = s / 2
    shape = int(rng.integers(0, 7))
    fill = (20, 20, 20) if rng.random() < 0.6 else tuple(int(v) for v in rng.integers(0, 200, 3))
    inner = (245, 245, 245)
    if shape == 0:
        outer = _regular_poly(c, c, s * 0.46, 48)
    elif shape == 1:
        outer = _regular_poly(c, c, s * 0.48, 4, rot=0)  # diamond
    elif shape == 2:
        outer = _regular_poly(c, c, s * 0.5, 3)
    elif shape == 3:
        outer = _regular_poly(c, c, s * 0.48, 6)
    elif shape == 4:
        outer = _regular_poly(c, c, s * 0.5, int(rng.integers(5, 8)), star=True)
    elif shape == 5:
        outer = np.array([[s * 0.1, s * 0.1], [s * 0.9, s * 0.1], [s * 0.9, s * 0.55], [c, s * 0.95], [s * 0.1, s * 0.55]], np.int32)
    else:
        outer = _regular_poly(c, c, s * 0.48, 4, rot=np.pi / 4)  # square
    cv2.fillPoly(img, [outer], fill, AA)
    cv2.fillPoly(mask, [outer], 255, AA)
    motif = int(rng.integers(0, 6))
    th = max(2, s // 10)
    ang = rng.uniform(0, np.pi)
    if motif == 0:
        d = np.array([np.cos(ang), np.sin(ang)]) * s * 0.3
        cv2.line(img, tuple((c - d).astype(int)), tuple((c + d).astype(int)), inner, th, AA)
    elif motif == 1:
        cv2.circle(img, (int(c), int(c)), int(s * 0.18), inner, th, AA)
    elif motif == 2:
        cv2.circle(img, (int(c + rng.normal(0, s * 0.08)), int(c + rng.normal(0, s * 0.08))), int(s * 0.1), inner, -1, AA)
    elif motif == 3:
        cv2.line(img, (int(c - s * 0.2), int(c)), (int(c + s * 0.2), int(c)), inner, th, AA)
        cv2.line(img, (int(c), int(c - s * 0.2)), (int(c), int(c + s * 0.2)), inner, th, AA)
    elif motif == 4:
        pts = np.array([[c - s * 0.2, c + s * 0.1], [c, c - s * 0.15], [c + s * 0.2, c + s * 0.1]], np.int32)
        cv2.polylines(img, [pts], False, inner, th, AA)
    else:
        for k in range(int(rng.integers(2, 4))):
            cv2.circle(img, (int(c - s * 0.2 + k * s * 0.2), int(c)), max(2, s // 14), inner, -1, AA)
    return (cv2.resize(img, (px, px), interpolation=cv2.INTER_AREA),
            cv2.resize(mask, (px, px), interpolation=cv2.INTER_AREA))


def _paste_glyph(dst: np.ndarray, glyph: tuple[np.ndarray, np.ndarray], x: int, y: int) -> None:
    img, mask = glyph
    h, w = mask.shape
    x, y = max(0, min(x, dst.shape[1] - w)), max(0, min(y, dst.shape[0] - h))
    roi = dst[y:y + h, x:x + w]
    a = (mask.astype(np.float32) / 255.0)[..., None]
    roi[:] = (img * a + roi * (1 - a)).astype(np.uint8)


def _energy_icon(img: np.ndarray, t: str, cx: int, cy: int, r: int) -> None:
    col = TYPE_PALETTE.get(t, TYPE_PALETTE["Colorless"])[0]
    cv2.circle(img, (cx, cy), r, col, -1, AA)
    cv2.circle(img, (cx, cy), r, (40, 40, 40), 1, AA)
    # A tiny type-specific mark so icons differ in shape as well as colour.
    k = ENERGY_TYPE_ORDER.index(t) if t in ENERGY_TYPE_ORDER else 0
    if r >= 5:
        pts = _regular_poly(cx, cy, r * 0.55, 3 + k % 4, star=k >= 6)
        cv2.fillPoly(img, [pts], (250, 250, 250) if k != 10 else (60, 60, 60), AA)


def _rarity_mark(img: np.ndarray, rarity: str | None, x: int, y: int, r: int) -> None:
    r_ = rarity or ""
    if r_ == "Common":
        cv2.circle(img, (x, y), r, INK, -1, AA)
    elif r_ == "Uncommon":
        cv2.fillPoly(img, [_regular_poly(x, y, r * 1.2, 4, rot=0)], INK, AA)
    elif r_ in {"Promo", ""}:
        cv2.fillPoly(img, [_regular_poly(x, y, r * 1.3, 5, star=True)], (40, 40, 200), AA)
    else:
        n = 2 if ("Double" in r_ or "Ultra" in r_ or "Illustration" in r_) else 1
        n = 3 if ("Special" in r_ or "Hyper" in r_ or "Secret" in r_) else n
        col = (40, 190, 230) if n >= 2 else (INK if "Holo" not in r_ else (240, 240, 240))
        for k in range(n):
            pts = _regular_poly(x + (k - (n - 1) / 2) * r * 2.3, y, r * 1.3, 5, star=True)
            cv2.fillPoly(img, [pts], col, AA)
            cv2.polylines(img, [pts], True, INK, 1, AA)


def _text(img: np.ndarray, text: str, x: float, y: float, scale: float, color=INK, thick: int = 1,
          font: int = FONT, max_w: float | None = None, align: str = "left") -> int:
    """Draw ASCII text; shrink to fit ``max_w``. Returns the drawn width."""
    text = ascii_text(text)
    (tw, _), _ = cv2.getTextSize(text, font, scale, thick)
    if max_w and tw > max_w:
        scale *= max_w / tw
        tw = int(max_w)
    if align == "right":
        x -= tw
    elif align == "center":
        x -= tw / 2
    cv2.putText(img, text, (int(x), int(y)), font, scale, color, thick, AA)
    return tw


def _wrap(text: str, max_chars: int, max_lines: int) -> list[str]:
    words, lines, cur = ascii_text(text).split(), [], ""
    for w in words:
        if len(cur) + len(w) + 1 > max_chars and cur:
            lines.append(cur)
            cur = w
            if len(lines) == max_lines:
                return lines
        else:
            cur = f"{cur} {w}".strip()
    if cur and len(lines) < max_lines:
        lines.append(cur)
    return lines


# --------------------------------------------------------------------------------------------- finishes


@functools.lru_cache(maxsize=16)
def _holo_pattern(w: int, h: int) -> np.ndarray:
    """Rainbow diagonal sheen with sparkles; one pattern per size (finish, not printing, specific)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = (xx * 0.9 + yy * 0.6) / max(w, h) * 6 * np.pi
    hsv = np.empty((h, w, 3), np.uint8)
    hsv[..., 0] = ((np.sin(phase) * 0.5 + 0.5) * 179).astype(np.uint8)
    hsv[..., 1] = 150
    hsv[..., 2] = (200 + 55 * np.sin(phase * 2.3 + yy / 9.0)).clip(0, 255).astype(np.uint8)
    pat = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    rng = np.random.default_rng(12345)
    n = w * h // 400
    ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
    pat[ys, xs] = 255
    return cv2.GaussianBlur(pat, (3, 3), 0)


@functools.lru_cache(maxsize=16)
def _etch_pattern(w: int, h: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    lines = ((xx + yy) % 6 < 1) | ((xx - yy) % 9 < 1)
    return np.where(lines, 255, 128).astype(np.uint8)[..., None].repeat(3, 2)


def apply_finish(img: np.ndarray, finish: str, art: tuple[int, int, int, int], strength: float = 1.0) -> np.ndarray:
    """Overlay ``holo`` in the art window or ``reverse_holo`` outside it (in place; returns img)."""
    if finish == "normal":
        return img
    h, w = img.shape[:2]
    pat = _holo_pattern(w, h)
    x0, y0, x1, y1 = art
    if finish == "holo":
        roi = img[y0:y1, x0:x1]
        a = 0.38 * strength
        cv2.addWeighted(roi, 1 - a, pat[y0:y1, x0:x1], a, 0, dst=roi)
    elif finish == "reverse_holo":
        keep = img[y0:y1, x0:x1].copy()
        a = 0.4 * strength
        cv2.addWeighted(img, 1 - a, pat, a, 0, dst=img)
        img[y0:y1, x0:x1] = keep
    else:
        raise ValueError(f"unknown finish {finish!r}; expected one of {FINISHES}")
    return img


# --------------------------------------------------------------------------------------------- render


def build_set_index(sets: list[SetRecord]) -> dict[str, SetRecord]:
    return {s.id: s for s in sets}


def _number_text(card: CardRecord, modern: bool) -> str:
    num, total = card.number, card.printed_total
    if total and num.isdigit():
        if modern:
            return f"{int(num):0{len(str(total))}d}/{total:0{len(str(total))}d}"
        return f"{int(num)}/{total}"
    return num


def render_card(card: CardRecord, set_index: dict[str, SetRecord] | None = None,
                size: tuple[int, int] = DEFAULT_SIZE, finish: str | None = None,
                use_scan: bool = True) -> np.ndarray:
    """Render one printing as a BGR uint8 image of ``size`` = (W, H).

    ``finish``: None = the printing's default (``default_finish``); ``reverse_holo`` gives the variant.
    When ``card.image_path`` exists (a real scan) and ``use_scan``, the scan is used, resized; an explicitly
    requested non-normal finish is still overlaid.
    """
    w, h = size
    lay_name = layout_family(card, set_index)
    lay = LAYOUT_GEOMETRY[lay_name]
    art = _rect(lay.art, size)
    fin = finish if finish is not None else default_finish(card)
    if use_scan and card.image_path:
        scan = cv2.imread(card.image_path, cv2.IMREAD_COLOR)
        if scan is not None:
            img = cv2.resize(scan, size, interpolation=cv2.INTER_AREA if scan.shape[1] > w else cv2.INTER_LINEAR)
            if finish is not None and finish != "normal":
                apply_finish(img, finish, _rect(LAYOUT_GEOMETRY["modern"].art, size))
            return img

    modern = is_modern(card, set_index)
    s = w / 360.0
    ptype = card.types[0] if card.types else "Colorless"
    if card.supertype == "Trainer":
        frame, panel, dark = TRAINER_PALETTE
    else:
        frame, panel, dark = TYPE_PALETTE.get(ptype, TYPE_PALETTE["Colorless"])
    border_col = SILVER_BORDER if modern else YELLOW_BORDER
    b = max(2, int(round(lay.border * w)))
    img = np.empty((h, w, 3), np.uint8)
    cv2.rectangle(img, (0, 0), (w, h), border_col, -1)  # cv2 fills: numpy broadcasting is ~30x slower here
    # Inner frame: type colour fading to the light panel colour (a 2-pixel image stretched linearly).
    mix = tuple(int(f * 0.4 + p * 0.6) for f, p in zip(frame, panel))
    img[b:h - b, b:w - b] = cv2.resize(np.array([[frame], [mix]], np.uint8), (w - 2 * b, h - 2 * b),
                                       interpolation=cv2.INTER_LINEAR)
    cv2.rectangle(img, (b, b), (w - b - 1, h - b - 1), dark, max(1, int(2 * s)), AA)

    x0, y0, x1, y1 = art
    art_img = _art_cached(card.illustration_id, x1 - x0, y1 - y0)
    img[y0:y1, x0:x1] = art_img
    text_col = INK
    if lay_name == "full_art":
        # Full art: the illustration covers the face; text sits on translucent bands with an etched texture.
        cv2.addWeighted(img, 0.85, _etch_pattern(w, h), 0.15, 0, dst=img)
        for (ya, yb) in ((0.03, 0.105), (lay.body[0] - 0.02, 0.975)):
            band = img[int(ya * h):int(yb * h), b:w - b]
            cv2.addWeighted(band, 0.45, band, 0.0, 0.55 * 245, dst=band)
    else:
        cv2.rectangle(img, (x0 - 1, y0 - 1), (x1, y1), dark, max(1, int(3 * s)))
        # Light text panel under the art.
        cv2.rectangle(img, (b + int(6 * s), int(lay.body[0] * h) - int(8 * s)),
                      (w - b - int(6 * s), int(lay.wrr_y * h) + int(6 * s)), panel, -1)

    # Header: stage / trainer kind, name, HP + type icon.
    fs = 0.62 * s
    if card.supertype == "Trainer":
        cv2.rectangle(img, (b, b), (w - b, int(0.07 * h)), dark, -1)
        _text(img, "TRAINER", b + 8 * s, 0.055 * h, 0.5 * s, WHITE, 1, FONT_BOLD)
        kind = next((st for st in card.subtypes if st in {"Item", "Supporter", "Stadium", "Pokémon Tool", "Technical Machine"}), "")
        _text(img, kind.upper(), w - b - 8 * s, 0.055 * h, 0.42 * s, WHITE, 1, FONT, align="right")
        _text(img, card.name, w / 2, lay.name_y * h, fs, text_col, 1, FONT_BOLD, max_w=w - 2 * b - 16 * s, align="center")
    elif card.supertype == "Energy":
        _text(img, card.name, w / 2, lay.name_y * h, fs, text_col, 1, FONT_BOLD, max_w=w - 2 * b - 16 * s, align="center")
        et = next((t for t in ENERGY_TYPE_ORDER if t.lower() in card.name.lower()), ptype)
        if "Special" not in card.subtypes:
            # Basic energy: one big symbol over the art.
            _energy_icon(img, et, w // 2, int((y0 + y1) / 2), int(min(x1 - x0, y1 - y0) * 0.32))
    else:
        stage = next((st for st in card.subtypes if st.startswith("Stage") or st in {"Basic", "Baby", "Level-Up", "Restored", "VMAX", "VSTAR", "BREAK"}), "")
        nx = b + 8 * s
        if stage:
            cv2.rectangle(img, (int(b + 4 * s), int(lay.name_y * h - 13 * s)), (int(b + 50 * s), int(lay.name_y * h + 1 * s)), dark, -1)
            _text(img, stage.upper(), b + 7 * s, lay.name_y * h - 3 * s, 0.3 * s, WHITE, 1, FONT, max_w=40 * s)
            nx = b + 55 * s
        _text(img, card.name, nx, lay.name_y * h, fs, text_col, 1, FONT_BOLD, max_w=w * 0.5)
        if card.hp:
            hx = w - b - 24 * s
            _text(img, f"{card.hp} HP" if not modern else f"HP{card.hp}", hx, lay.name_y * h, 0.52 * s, text_col, 1, FONT_BOLD, align="right")
        _energy_icon(img, ptype, int(w - b - 13 * s), int(lay.name_y * h - 6 * s), max(3, int(8 * s)))
        if card.facts.get("evolvesFrom"):
            _text(img, f"Evolves from {card.facts['evolvesFrom']}", b + 55 * s, lay.name_y * h - 17 * s, 0.28 * s,
                  text_col, 1, FONT, max_w=w * 0.45)

    # Body: abilities, attacks, or rules text.
    y = lay.body[0] * h
    ymax = lay.body[1] * h
    line_h = 11 * s
    tx = b + 12 * s
    cost_r = max(3, int(5 * s))
    for ab in card.facts.get("abilities") or []:
        if y > ymax:
            break
        _text(img, f"{ab.get('type', 'Ability')}: {ab.get('name', '')}", tx, y, 0.4 * s, (30, 30, 160), 1, FONT_BOLD, max_w=w - 2 * tx)
        y += line_h * 1.1
        for ln in _wrap(ab.get("text", ""), int(58), 2):
            _text(img, ln, tx, y, 0.3 * s, text_col)
            y += line_h * 0.9
        y += 3 * s
    for at in card.facts.get("attacks") or []:
        if y > ymax:
            break
        cx = tx + cost_r
        for c in (at.get("cost") or [])[:5]:
            _energy_icon(img, c, int(cx), int(y - cost_r + 1), cost_r)
            cx += cost_r * 2 + 2
        _text(img, at.get("name", ""), max(cx + 4 * s, tx + 50 * s), y, 0.45 * s, text_col, 1, FONT_BOLD, max_w=w * 0.5)
        if at.get("damage"):
            _text(img, str(at["damage"]), w - b - 12 * s, y, 0.5 * s, text_col, 1, FONT_BOLD, align="right")
        y += line_h * 1.1
        for ln in _wrap(at.get("text", ""), 60, 2):
            _text(img, ln, tx, y, 0.3 * s, text_col)
            y += line_h * 0.9
        y += 4 * s
    if card.supertype in {"Trainer", "Energy"}:
        for rule in (card.facts.get("rules") or [])[:2]:
            for ln in _wrap(rule, 52, 5):
                if y > ymax:
                    break
                _text(img, ln, tx, y, 0.34 * s, text_col)
                y += line_h
            y += 4 * s

    # Weakness / resistance / retreat row (Pokémon only).
    if card.supertype == "Pokémon":
        wy = lay.wrr_y * h
        cv2.line(img, (int(tx), int(wy - 12 * s)), (int(w - tx), int(wy - 12 * s)), dark, 1, AA)
        _text(img, "weakness", tx, wy, 0.28 * s, text_col)
        xw = tx + 48 * s
        for wk in (card.facts.get("weaknesses") or [])[:2]:
            _energy_icon(img, wk.get("type", ""), int(xw), int(wy - 3 * s), max(3, int(4 * s)))
            _text(img, wk.get("value", ""), xw + 6 * s, wy, 0.3 * s, text_col)
            xw += 30 * s
        _text(img, "resistance", w * 0.42, wy, 0.28 * s, text_col)
        xr = w * 0.42 + 54 * s
        for rs in (card.facts.get("resistances") or [])[:2]:
            _energy_icon(img, rs.get("type", ""), int(xr), int(wy - 3 * s), max(3, int(4 * s)))
            _text(img, rs.get("value", ""), xr + 6 * s, wy, 0.3 * s, text_col)
            xr += 30 * s
        _text(img, "retreat", w * 0.72, wy, 0.28 * s, text_col)
        xc = w * 0.72 + 38 * s
        for c in (card.facts.get("retreatCost") or [])[:5]:
            _energy_icon(img, c, int(xc), int(wy - 3 * s), max(3, int(4 * s)))
            xc += 10 * s

    # Footer: artist, set symbol, number/total, rarity mark, regulation mark.
    fy = lay.footer_y * h
    num = _number_text(card, modern)
    sym = set_symbol(card.set_id, max(8, int(15 * s)))
    foot_col = INK if lay_name != "full_art" else (20, 20, 20)
    if card.artist:
        _text(img, f"Illus. {card.artist}", b + 6 * s, fy - 12 * s, 0.28 * s, foot_col, 1, FONT, max_w=w * 0.55)
    if modern:
        reg = card.facts.get("regulationMark")
        x = b + 6 * s
        if reg:
            cv2.rectangle(img, (int(x), int(fy - 9 * s)), (int(x + 10 * s), int(fy + 2 * s)), WHITE, -1)
            _text(img, reg, x + 1.5 * s, fy, 0.3 * s, INK)
            x += 14 * s
        _paste_glyph(img, sym, int(x), int(fy - 11 * s))
        x += sym[1].shape[1] + 4 * s
        tw = _text(img, num, x, fy, 0.36 * s, foot_col, 1, FONT_BOLD)
        _rarity_mark(img, card.rarity, int(x + tw + 9 * s), int(fy - 4 * s), max(2, int(3.2 * s)))
    else:
        # Vintage: symbol at the lower right of the art window, number + rarity at the bottom right.
        if lay_name != "full_art":
            _paste_glyph(img, sym, int(x1 - sym[1].shape[1] - 3 * s), int(y1 + 3 * s))
            tw = _text(img, num, w - b - 22 * s, fy, 0.38 * s, foot_col, 1, FONT_BOLD, align="right")
        else:
            _paste_glyph(img, sym, int(w - b - 80 * s - sym[1].shape[1]), int(fy - 11 * s))
            tw = _text(img, num, w - b - 22 * s, fy, 0.38 * s, foot_col, 1, FONT_BOLD, align="right")
        _rarity_mark(img, card.rarity, int(w - b - 12 * s), int(fy - 4 * s), max(2, int(3.2 * s)))

    # Full-art sheen is subtler: the whole face is "art", so a strong overlay would hide it.
    return apply_finish(img, fin, art, 0.5 if lay_name == "full_art" else 1.0)


__all__ = [
    "DEFAULT_SIZE", "FINISHES", "LAYOUTS", "Layout", "LAYOUT_GEOMETRY", "TYPE_PALETTE", "apply_finish", "art_rect",
    "build_set_index", "default_finish", "layout_family", "make_art", "number_rect", "render_card", "set_symbol",
]
