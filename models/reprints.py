"""Build the bundle's reprint patches (``catalog/reprints.npz``, read by ``device.vision.reprints``).

For every illustration with several printings in the catalog: the catalog faces at ``CANVAS``, the pixels
where any two of them differ (after a light blur: JPEG noise is not a difference), grown a little and split
into boxes (collector number, set symbol, rarity mark...), and each printing's gray pixels in those boxes.
Illustrations whose printings differ over more than ``MAX_DIFF_FRACTION`` of the face (another layout or
frame: the embedder separates those) or in more than ``MAX_BOXES`` places are left out.

    python -m models.reprints --catalog var/catalog --out var/reprints.npz
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from device.vision.reprints import CANVAS

DIFF_THRESHOLD = 12  # gray levels, after a sigma-1 blur
MAX_DIFF_FRACTION = 0.04  # of the face: beyond that the printings are not "the same face but a few marks"
MAX_BOXES = 12
MAX_BOX_AREA = 30000  # px at CANVAS per contest (a number and a symbol: ~1,000; a footer's text lines: ~20,000)
FULL_RES_AREA = 6000  # px: contests whose boxes cover more are stored (and compared) at half resolution
RESIDUAL_FLOOR = 4  # gray levels: smaller differences from the mean face are JPEG noise
RESIDUAL_STEP = 4  # and the rest is rounded to this step (fewer distinct values compress better)
PAD = 3  # px around each difference box: the glyph's edges and a little context


def _face(path: Path) -> np.ndarray:
    g = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if g is None:
        raise ValueError(f"unreadable catalog image {path}")
    if (g.shape[1], g.shape[0]) != CANVAS:
        g = cv2.resize(g, CANVAS, interpolation=cv2.INTER_AREA)
    return g


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (np.abs(a - b) > DIFF_THRESHOLD).astype(np.uint8)


def difference_groups(faces: list[np.ndarray]) -> list[tuple[list[int], list[tuple[int, int, int, int]], np.ndarray]]:
    """Sets of near-identical faces (indices), the (y0, y1, x0, x1) boxes where they differ and the mask of
    differing pixels (grown by 2 px).

    Faces are linked when they differ in at most ``MAX_DIFF_FRACTION`` of the face; each linked set is one
    contest (an illustration printed in two frames gives two). Sets whose differences need more than
    ``MAX_BOXES`` boxes or ``MAX_BOX_AREA`` px are left out."""
    sm = [cv2.GaussianBlur(f.astype(np.float32), (0, 0), 1.0) for f in faces]
    n = len(sm)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    masks: dict[tuple[int, int], np.ndarray] = {}
    for i in range(n):
        for j in range(i + 1, n):
            d = _diff(sm[i], sm[j])
            if d.mean() <= MAX_DIFF_FRACTION:
                masks[(i, j)] = d
                parent[root(i)] = root(j)
    sets: dict[int, list[int]] = {}
    for i in range(n):
        sets.setdefault(root(i), []).append(i)
    out = []
    H, W = faces[0].shape
    for members in sets.values():
        if len(members) < 2:
            continue
        m = np.zeros((H, W), np.uint8)
        for (i, j), d in masks.items():
            if i in members:
                m |= d
        if not m.any():
            continue  # identical faces: nothing to tell them apart by
        m = cv2.dilate(m, np.ones((5, 5), np.uint8))
        _, _, st, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        boxes = [(max(0, y - PAD), min(H, y + h + PAD), max(0, x - PAD), min(W, x + w + PAD))
                 for x, y, w, h, a in (tuple(int(v) for v in s) for s in st[1:]) if a >= 16]
        if boxes and len(boxes) <= MAX_BOXES and sum((b - a) * (d - c) for a, b, c, d in boxes) <= MAX_BOX_AREA:
            out.append((members, boxes, m.astype(bool)))
    return out


def build(catalog_dir: str | Path, ids: list[str]) -> dict[str, np.ndarray]:
    """The arrays of ``catalog/reprints.npz`` for the bundle's ``ids`` (its catalog rows, in order)."""
    catalog_dir = Path(catalog_dir)
    rows = [json.loads(x) for x in (catalog_dir / "index.jsonl").read_text().splitlines() if x.strip()]
    rows = {r["card_id"]: r for r in rows}
    row_of = {c: i for i, c in enumerate(ids)}
    by_ill: dict[str, list[str]] = {}
    for c in ids:
        by_ill.setdefault(rows[c].get("illustration_id") or c, []).append(c)
    boxes, gstart, gscale, mrow, mgroup, pstart, pix, bstart, bmean = [], [0], [], [], [], [0], [], [0], []
    for ill in sorted(by_ill):
        printings = by_ill[ill]
        if len(printings) < 2:
            continue
        full = [_face(catalog_dir / f"{c}.jpg") for c in printings]
        for members, b, diff in difference_groups(full):
            # large differences (a footer's whole text) are compared at half resolution: they do not need
            # the fine pixels a one-digit collector number does, and would make the file 4x larger
            scale = 1 if sum((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in b) <= FULL_RES_AREA else 2
            faces, b = [full[k] for k in members], list(b)
            if scale == 2:
                size = (CANVAS[0] // 2, CANVAS[1] // 2)
                faces = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in faces]
                diff = cv2.resize(diff.astype(np.uint8), size, interpolation=cv2.INTER_AREA) > 0
                b = [(y0 // 2, (y1 + 1) // 2, x0 // 2, (x1 + 1) // 2) for y0, y1, x0, x1 in b]
            g = len(gstart) - 1
            boxes += b
            gstart.append(len(boxes))
            gscale.append(scale)
            # the contest's mean face in each box: it locates the box in a card whose corners are a little
            # off (it favours no printing), and each printing is stored as its difference from it
            mean = np.mean(faces, axis=0)
            means = []
            for y0, y1, x0, x1 in b:
                bm = np.clip(np.round(mean[y0:y1, x0:x1]), 0, 255).astype(np.uint8)
                means.append(bm.astype(np.int16).ravel())
                bmean.append(bm.ravel())
                bstart.append(bstart[-1] + bm.size)
            for k, f in zip(members, faces):
                mrow.append(row_of[printings[k]])
                mgroup.append(g)
                # zero wherever the printings agree (and for JPEG-noise-sized differences): the file costs
                # about the differing pixels only
                parts = []
                for (y0, y1, x0, x1), bm in zip(b, means):
                    r = f[y0:y1, x0:x1].astype(np.int16).ravel() - bm
                    r[~diff[y0:y1, x0:x1].ravel() | (np.abs(r) <= RESIDUAL_FLOOR)] = 0
                    parts.append(np.clip(np.round(r / RESIDUAL_STEP) * RESIDUAL_STEP, -128, 127).astype(np.int8))
                pix += parts
                pstart.append(pstart[-1] + sum(len(p) for p in parts))
    return {"boxes": np.array(boxes, np.int16).reshape(-1, 4), "group_box_start": np.array(gstart, np.int32),
            "group_scale": np.array(gscale, np.uint8),
            "member_row": np.array(mrow, np.int32), "member_group": np.array(mgroup, np.int32),
            "member_pix_start": np.array(pstart, np.int64),
            "residual": np.concatenate(pix) if pix else np.zeros(0, np.int8),
            "box_start": np.array(bstart, np.int64),
            "box_mean": np.concatenate(bmean) if bmean else np.zeros(0, np.uint8)}


def to_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", default="var/catalog")
    ap.add_argument("--bundle", default="models/bundles/demo", help="whose catalog/ids.json gives the rows")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    ids = json.loads((Path(a.bundle) / "catalog" / "ids.json").read_text())
    arrays = build(a.catalog, ids)
    data = to_bytes(arrays)
    Path(a.out).write_bytes(data)
    print(f"{len(arrays['member_row'])} printings in {len(arrays['group_box_start']) - 1} illustrations, "
          f"{len(arrays['boxes'])} boxes, {len(arrays['residual'])} px -> {a.out} ({len(data) / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
