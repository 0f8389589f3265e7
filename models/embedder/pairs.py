"""Cache of (capture, catalog, hard negative) view triples for closed-form fitting and quick experiments.

    python -m models.embedder.pairs --catalog var/catalog --n 6000 --seed 7 --out var/train/pairs.npz
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np

from device.vision.geometry import embedder_views
from models.embedder.data import CatalogIndex, capture_crop, clean_views, load_card


def make_pairs(catalog_dir: str, n: int, seed: int) -> dict[str, np.ndarray]:
    index = CatalogIndex.load(catalog_dir)
    rng = np.random.default_rng(seed)
    hard = index.hard_negatives(16, seed=seed)
    cards = rng.choice(len(index.ids), n, replace=False)
    out = {k: [] for k in ("cg", "cs", "ag", "as", "hg", "hs")}
    hid = np.full(n, -1, np.int64)
    for k, c in enumerate(cards):
        img = load_card(catalog_dir, index.ids[c])
        g, s = clean_views(img)
        out["cg"].append(g)
        out["cs"].append(s)
        g, s = embedder_views(capture_crop(img, rng))
        out["ag"].append(g)
        out["as"].append(s)
        hn = hard[c][hard[c] >= 0]
        j = int(rng.choice(hn)) if len(hn) else int(rng.integers(len(index.ids)))
        hid[k] = j
        g, s = clean_views(load_card(catalog_dir, index.ids[j]))
        out["hg"].append(g)
        out["hs"].append(s)
    res = {k: np.stack(v) for k, v in out.items()}
    res["card"] = cards
    res["hard"] = hid
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--n", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    cv2.setNumThreads(1)
    np.savez(a.out, **make_pairs(a.catalog, a.n, a.seed))
