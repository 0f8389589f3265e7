"""Contact sheets: a grid of images with captions (and labelled quads for captures)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from models.synth.render import render_card


def grid(images: list[np.ndarray], captions: list[str], cell: tuple[int, int], cols: int) -> np.ndarray:
    cw, ch = cell
    rows = (len(images) + cols - 1) // cols
    sheet = np.full((rows * (ch + 22), cols * cw, 3), 255, np.uint8)
    for k, (img, cap) in enumerate(zip(images, captions)):
        r, c = divmod(k, cols)
        f = min(cw / img.shape[1], ch / img.shape[0])
        im = cv2.resize(img, (int(img.shape[1] * f), int(img.shape[0] * f)), interpolation=cv2.INTER_AREA)
        y, x = r * (ch + 22), c * cw
        sheet[y:y + im.shape[0], x:x + im.shape[1]] = im
        cv2.putText(sheet, cap[:48], (x + 3, y + ch + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return sheet


def draw_labels(frame: np.ndarray, cards: list[dict]) -> np.ndarray:
    out = frame.copy()
    for c in cards:
        q = np.array(c["quad"], np.float32)
        cv2.polylines(out, [np.round(q).astype(np.int32)], True, (0, 255, 0), 2, cv2.LINE_AA)
        cv2.circle(out, tuple(np.round(q[0]).astype(int)), 6, (0, 0, 255), -1)  # TL of the card face
        cv2.putText(out, f"{c['card_id']} v={c['visible']:.2f}", tuple(np.round(q.mean(0)).astype(int)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 255), 1, cv2.LINE_AA)
    return out


def printings_sheet(cards, set_index, out: str | Path, size=(360, 504)) -> Path:
    """Rendered printings: given cards in their default finish, plus holo / reverse-holo variants of the first."""
    imgs, caps = [], []
    for c in cards:
        imgs.append(render_card(c, set_index, size))
        caps.append(f"{c.id} {c.name}")
    base = cards[0]
    for fin in ("normal", "holo", "reverse_holo"):
        imgs.append(render_card(base, set_index, size, finish=fin, use_scan=False))
        caps.append(f"{base.id} {fin}")
    sheet = grid(imgs, caps, (size[0] // 2, size[1] // 2), cols=6)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), sheet)
    return out


def captures_sheet(captures_dir: str | Path, rows: list[dict], out: str | Path, n: int = 12) -> Path:
    imgs, caps = [], []
    for r in rows[:n]:
        frame = cv2.imread(str(Path(captures_dir) / r["image"]))
        imgs.append(draw_labels(frame, r["cards"]))
        caps.append(",".join(r["params"].get("distortions", []))[:48] or r["params"].get("mode", ""))
    w, h = imgs[0].shape[1], imgs[0].shape[0]
    sheet = grid(imgs, caps, (w // 2, h // 2), cols=4)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), sheet)
    return out


__all__ = ["captures_sheet", "draw_labels", "grid", "printings_sheet"]
