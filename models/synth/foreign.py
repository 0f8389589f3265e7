"""Procedural faces of cards that are not catalog printings: playing cards (pips, court cards) and card backs.

Why: the detector learns what a *card* looks like from our catalog renders and the real sv1 scans, which all
share a few frame designs (yellow or silver border, coloured panels). The real photos it is measured on are
white-faced playing cards with rounded corners, often overlapping; and a card's edge over another card of the
same white stock is only a thin shadow line. Faces of other designs, placed by the same capture simulator (fan
mode included), teach the card outline itself — border colour, corner radius and face content vary, the
2.5:3.5 shape and the edge stay. These images are never catalog entries and never reach the embedder.

Returned images are BGRA: alpha 0 outside the rounded corners (``models.synth.capture`` composites with it).
"""

from __future__ import annotations

import cv2
import numpy as np

SIZE = (360, 504)  # (W, H), 2.5:3.5 like every card the simulator places
KINDS = ("pips", "court", "back")
RANKS = ("A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K")
SUITS = ("spade", "heart", "diamond", "club")
RED, BLACK = (30, 30, 200), (25, 25, 25)

# Centre-pip layouts of a standard deck: (column, row) in a 3 × 7 lattice of the pip field.
_PIPS: dict[int, list[tuple[int, int]]] = {
    2: [(1, 0), (1, 6)], 3: [(1, 0), (1, 3), (1, 6)], 4: [(0, 0), (2, 0), (0, 6), (2, 6)],
    5: [(0, 0), (2, 0), (1, 3), (0, 6), (2, 6)], 6: [(0, 0), (2, 0), (0, 3), (2, 3), (0, 6), (2, 6)],
    7: [(0, 0), (2, 0), (1, 1), (0, 3), (2, 3), (0, 6), (2, 6)],
    8: [(0, 0), (2, 0), (1, 1), (0, 3), (2, 3), (1, 5), (0, 6), (2, 6)],
    9: [(0, 0), (2, 0), (0, 2), (2, 2), (1, 3), (0, 4), (2, 4), (0, 6), (2, 6)],
    10: [(0, 0), (2, 0), (1, 1), (0, 2), (2, 2), (0, 4), (2, 4), (1, 5), (0, 6), (2, 6)],
}


def suit_glyph(img: np.ndarray, suit: str, centre: tuple[float, float], size: float, colour, flip: bool = False) -> None:
    """Draw one suit symbol ``size`` pixels tall centred on ``centre`` (``flip``: upside down, as on the lower
    half of a real card)."""
    cx, cy = centre
    s = size / 2
    sg = -1.0 if flip else 1.0

    def pt(x: float, y: float) -> tuple[int, int]:
        return int(round(cx + x * s)), int(round(cy + sg * y * s))

    r = max(1, int(round(0.52 * s)))
    if suit == "diamond":
        cv2.fillConvexPoly(img, np.array([pt(0, -1), pt(0.72, 0), pt(0, 1), pt(-0.72, 0)], np.int32), colour, cv2.LINE_AA)
    elif suit == "heart":
        cv2.circle(img, pt(-0.45, -0.35), r, colour, -1, cv2.LINE_AA)
        cv2.circle(img, pt(0.45, -0.35), r, colour, -1, cv2.LINE_AA)
        cv2.fillConvexPoly(img, np.array([pt(-0.95, -0.2), pt(0.95, -0.2), pt(0, 1)], np.int32), colour, cv2.LINE_AA)
    elif suit == "spade":
        cv2.circle(img, pt(-0.45, 0.2), r, colour, -1, cv2.LINE_AA)
        cv2.circle(img, pt(0.45, 0.2), r, colour, -1, cv2.LINE_AA)
        cv2.fillConvexPoly(img, np.array([pt(-0.95, 0.05), pt(0.95, 0.05), pt(0, -1)], np.int32), colour, cv2.LINE_AA)
        cv2.fillConvexPoly(img, np.array([pt(0, 0.3), pt(0.3, 1), pt(-0.3, 1)], np.int32), colour, cv2.LINE_AA)
    else:  # club
        for x, y in ((0, -0.5), (-0.5, 0.2), (0.5, 0.2)):
            cv2.circle(img, pt(x, y), r, colour, -1, cv2.LINE_AA)
        cv2.fillConvexPoly(img, np.array([pt(0, 0), pt(0.3, 1), pt(-0.3, 1)], np.int32), colour, cv2.LINE_AA)


def _stock(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Card stock: near-white with a slight tint and paper grain."""
    base = rng.uniform(222, 252) + rng.uniform(-8, 8, 3)
    img = np.empty((h, w, 3), np.float32)
    img[:] = base
    img += rng.normal(0, rng.uniform(0.5, 3.0), (h, w, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def _corner_index(img: np.ndarray, rank: str, suit: str, colour, rng: np.random.Generator) -> None:
    """Rank and small suit in the top-left corner and, rotated 180°, the bottom-right one."""
    h, w = img.shape[:2]
    tile = np.full((int(0.2 * h), int(0.17 * w), 3), 255, np.uint8)
    tile[:] = img[int(0.02 * h), int(0.02 * w)]
    scale = 1.1 if len(rank) == 1 else 0.85
    cv2.putText(tile, rank, (2, int(0.09 * h)), cv2.FONT_HERSHEY_DUPLEX, scale, colour, 2, cv2.LINE_AA)
    suit_glyph(tile, suit, (0.35 * tile.shape[1], 0.7 * tile.shape[0]), 0.3 * tile.shape[0], colour)
    x0, y0 = int(rng.uniform(0.02, 0.04) * w), int(rng.uniform(0.02, 0.04) * h)
    th, tw = tile.shape[:2]
    img[y0:y0 + th, x0:x0 + tw] = tile
    img[h - y0 - th:h - y0, w - x0 - tw:w - x0] = tile[::-1, ::-1]


def _pips(img: np.ndarray, rank: int, suit: str, colour) -> None:
    h, w = img.shape[:2]
    if rank == 1:
        suit_glyph(img, suit, (w / 2, h / 2), 0.3 * h, colour)
        return
    xs = (0.3 * w, 0.5 * w, 0.7 * w)
    ys = np.linspace(0.2 * h, 0.8 * h, 7)
    for c, r in _PIPS[rank]:
        suit_glyph(img, suit, (xs[c], ys[r]), 0.12 * h, colour, flip=r > 3)


def _court(img: np.ndarray, rng: np.random.Generator, colour) -> None:
    """A framed picture of bold colour blocks, mirrored about the centre like a court card."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = int(0.2 * w), int(0.15 * h), int(0.8 * w), int(0.85 * h)
    ph, pw = (y1 - y0) // 2, x1 - x0
    half = np.empty((ph, pw, 3), np.uint8)
    half[:] = img[y0, x0]
    palette = [(40, 40, 200), (200, 120, 30), (40, 190, 230), (30, 30, 30), (60, 150, 60), (220, 220, 220)]
    for _ in range(int(rng.integers(8, 20))):
        c = palette[int(rng.integers(len(palette)))]
        a, b = rng.uniform(0, 1, 2) * (pw, ph), rng.uniform(0, 1, 2) * (pw, ph)
        if rng.random() < 0.5:
            cv2.rectangle(half, tuple(int(v) for v in a), tuple(int(v) for v in b), c, -1)
        else:
            cv2.ellipse(half, (tuple(int(v) for v in a), tuple(float(v) for v in np.abs(b - a) + 4),
                               float(rng.uniform(0, 180))), c, -1, cv2.LINE_AA)
    img[y0:y0 + ph, x0:x1] = half
    img[y0 + ph:y0 + 2 * ph, x0:x1] = half[::-1, ::-1]
    cv2.rectangle(img, (x0, y0), (x1, y0 + 2 * ph), colour, 2, cv2.LINE_AA)


def _back(img: np.ndarray, rng: np.random.Generator) -> None:
    """A card back: a white margin around a coloured lattice."""
    h, w = img.shape[:2]
    c = np.array([(40, 40, 170), (150, 70, 30), (40, 110, 40), (30, 30, 30)][int(rng.integers(4))], np.float32)
    m = int(rng.uniform(0.03, 0.08) * w)
    field = np.empty((h - 2 * m, w - 2 * m, 3), np.uint8)
    field[:] = c
    step = int(rng.uniform(10, 24))
    lc = tuple(int(v) for v in np.clip(c + 90, 0, 255))
    for k in range(-field.shape[0], field.shape[1] + field.shape[0], step):
        cv2.line(field, (k, 0), (k + field.shape[0], field.shape[0]), lc, 2, cv2.LINE_AA)
        cv2.line(field, (k, field.shape[0]), (k + field.shape[0], 0), lc, 2, cv2.LINE_AA)
    img[m:h - m, m:w - m] = field


def rounded_alpha(w: int, h: int, radius: float) -> np.ndarray:
    """uint8 alpha of a w × h card with corners rounded to ``radius`` pixels (anti-aliased)."""
    a = np.zeros((h * 4, w * 4), np.uint8)
    r = max(1, int(round(radius * 4)))
    cv2.rectangle(a, (r, 0), (w * 4 - 1 - r, h * 4 - 1), 255, -1)
    cv2.rectangle(a, (0, r), (w * 4 - 1, h * 4 - 1 - r), 255, -1)
    for cx, cy in ((r, r), (w * 4 - 1 - r, r), (r, h * 4 - 1 - r), (w * 4 - 1 - r, h * 4 - 1 - r)):
        cv2.circle(a, (cx, cy), r, 255, -1)
    return cv2.resize(a, (w, h), interpolation=cv2.INTER_AREA)


def foreign_card(rng: np.random.Generator, kind: str | None = None) -> np.ndarray:
    """One non-catalog card face, BGRA ``SIZE``: ``kind`` in ``KINDS`` (drawn when None)."""
    w, h = SIZE
    kind = kind or KINDS[int(rng.choice(len(KINDS), p=[0.55, 0.3, 0.15]))]
    img = _stock(rng, w, h)
    if kind == "back":
        _back(img, rng)
    else:
        suit = SUITS[int(rng.integers(4))]
        colour = RED if suit in ("heart", "diamond") else BLACK
        if kind == "court":
            _court(img, rng, colour)
            rank = RANKS[int(rng.integers(10, 13))]
        else:
            n = int(rng.integers(1, 11))
            _pips(img, n, suit, colour)
            rank = RANKS[n - 1]
        _corner_index(img, rank, suit, colour, rng)
    if rng.random() < 0.3:  # a printed frame line some decks have
        m = int(rng.uniform(0.04, 0.08) * w)
        cv2.rectangle(img, (m, m), (w - 1 - m, h - 1 - m), (int(rng.uniform(60, 200)),) * 3, 1, cv2.LINE_AA)
    alpha = rounded_alpha(w, h, rng.uniform(0.03, 0.08) * w)
    return np.dstack([img, alpha])


def contact_sheet(n: int = 12, seed: int = 0) -> np.ndarray:
    """A row of ``n`` faces on grey (for looking at them: ``python -m models.synth.foreign OUT.png``)."""
    rng = np.random.default_rng(seed)
    tiles = []
    for _ in range(n):
        c = foreign_card(rng).astype(np.float32)
        a = c[..., 3:] / 255.0
        tiles.append((c[..., :3] * a + 110 * (1 - a)).astype(np.uint8))
    return np.hstack(tiles)


if __name__ == "__main__":
    import sys

    cv2.imwrite(sys.argv[1] if len(sys.argv) > 1 else "foreign.png", contact_sheet())
