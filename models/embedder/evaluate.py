"""Retrieval check of a PyTorch embedder checkpoint against the whole catalog (no TFLite, no detector).

    python -m models.embedder.evaluate --catalog var/catalog --checkpoint var/train/embedder/embedder.pt

Queries are ``capture_crop`` samples (fast proxy of the device crop) of held-out seeds; the catalog side is
the clean view of every printing (cached as uint8 memmaps under var/train/catalog_views/).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from device.vision.geometry import GLOBAL_SIZE, STRIP_SIZE, embedder_views
from models.embedder.data import CatalogIndex, capture_crop, clean_views, load_card, to_tensor_batch
from models.embedder.model import CardEmbedder, combine


def catalog_views(catalog_dir: str, cache: str = "var/train/catalog_views") -> tuple[np.ndarray, np.ndarray, list[str]]:
    index = CatalogIndex.load(catalog_dir)
    d = Path(cache)
    n = len(index.ids)
    gshape, sshape = (n, GLOBAL_SIZE[1], GLOBAL_SIZE[0], 3), (n, STRIP_SIZE[1], STRIP_SIZE[0], 3)
    done = d / "ids.json"
    if done.is_file() and json.loads(done.read_text()) == index.ids:
        return (np.lib.format.open_memmap(d / "global.npy", mode="r"),
                np.lib.format.open_memmap(d / "strip.npy", mode="r"), index.ids)
    d.mkdir(parents=True, exist_ok=True)
    G = np.lib.format.open_memmap(d / "global.npy", mode="w+", dtype=np.uint8, shape=gshape)
    S = np.lib.format.open_memmap(d / "strip.npy", mode="w+", dtype=np.uint8, shape=sshape)
    for i, cid in enumerate(index.ids):
        G[i], S[i] = clean_views(load_card(catalog_dir, cid))
    G.flush()
    S.flush()
    done.write_text(json.dumps(index.ids))
    return G, S, index.ids


def embed_arrays(model: CardEmbedder, G: np.ndarray, S: np.ndarray, bs: int = 256) -> np.ndarray:
    out = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(G), bs):
            g, s = model(torch.from_numpy(to_tensor_batch(list(G[i:i + bs]))),
                         torch.from_numpy(to_tensor_batch(list(S[i:i + bs]))))
            out.append(combine(g, s).numpy())
    return np.concatenate(out)


def evaluate(model: CardEmbedder, catalog_dir: str, n: int = 1000, seed: int = 123_456,
             catalog_emb: np.ndarray | None = None) -> dict:
    G, S, ids = catalog_views(catalog_dir)
    index = CatalogIndex.load(catalog_dir)
    t0 = time.time()
    if catalog_emb is None:
        catalog_emb = embed_arrays(model, G, S)
    rng = np.random.default_rng(seed)
    q = rng.choice(len(ids), n, replace=False)
    qg, qs = [], []
    for i in q:
        g, s = embedder_views(capture_crop(load_card(catalog_dir, ids[i]), rng))
        qg.append(g)
        qs.append(s)
    qe = embed_arrays(model, np.stack(qg), np.stack(qs))
    sims = qe @ catalog_emb.T
    top = np.argsort(-sims, axis=1)[:, :5]
    top1 = top[:, 0] == q
    ill = np.array(index.illustration)
    res = {"queries": n, "top1": float(top1.mean()), "top5": float((top == q[:, None]).any(1).mean()),
           "top1_illustration": float((ill[top[:, 0]] == ill[q]).mean()), "seconds": round(time.time() - t0, 1)}
    srt = np.sort(sims, axis=1)
    res["median_score"] = float(np.median(srt[:, -1]))
    res["median_margin"] = float(np.median(srt[:, -1] - srt[:, -2]))
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cv2.setNumThreads(1)
    m = CardEmbedder()
    m.load_state_dict(torch.load(a.checkpoint, map_location="cpu", weights_only=True))
    print(json.dumps(evaluate(m, a.catalog, a.n)))
