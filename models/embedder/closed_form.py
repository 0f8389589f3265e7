"""Closed-form metric learning for the embedder's linear thumbnail paths (``lin`` of each branch).

From (simulated capture ↔ catalog image) pairs and hard-negative pairs (same illustration, same name,
plus random cards) on the L2-normalised centred thumbnails:

    Σ₊ = covariance of capture − catalog differences   (what must NOT matter: light, blur, jitter…)
    Σ₋ = covariance of negative-pair differences       (what MUST matter: set symbol, number, art…)

The projection is the top generalised eigenvectors of (Σ₋, Σ₊) — whiten the nuisance, keep the directions
that separate confusable printings (LDA / KISSME family) — scaled by √(λ/(1+λ)) so weak directions count
less. Takes a few CPU minutes instead of hours of SGD; ``models.embedder.train`` fine-tunes from here.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from device.vision.geometry import embedder_views
from models.embedder.data import CatalogIndex, capture_crop, clean_views, load_card, to_tensor_batch
from models.embedder.model import CardEmbedder


def thumbs(model: CardEmbedder, g, s, bs: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """The linear paths' input features (L2-normalised; the final normalisation makes the scale moot)."""
    outg, outs = [], []
    with torch.no_grad():
        for i in range(0, len(g), bs):
            outg.append(model.g.lin_features(torch.from_numpy(to_tensor_batch(list(g[i:i + bs])))).numpy())
            outs.append(model.s.lin_features(torch.from_numpy(to_tensor_batch(list(s[i:i + bs])))).numpy())
    return _unit(np.concatenate(outg)), _unit(np.concatenate(outs))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)


def centre(f: np.ndarray, n_edge: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Per-channel mean removal of the thumbnail part (edge cells are left as they are)."""
    f = f.copy()
    c, h, w = shape
    t = f[:, n_edge:].reshape(len(f), c, h * w)
    f[:, n_edge:] = (t - t.mean(2, keepdims=True)).reshape(len(f), -1)
    return f


def fold_centring(W: np.ndarray, n_edge: int, shape: tuple[int, int, int]) -> np.ndarray:
    """W·centre(f) == fold_centring(W)·f: centring is linear, so it lives in the weights."""
    W = W.copy()
    c, h, w = shape
    blk = W[:, n_edge:].reshape(len(W), c, h * w)
    W[:, n_edge:] = (blk - blk.mean(2, keepdims=True)).reshape(len(W), -1)
    return W


def gen_eig_projection(pos: np.ndarray, neg: np.ndarray, dim: int, shrink: float = 0.05) -> np.ndarray:
    d = pos.shape[1]
    sp = pos.T @ pos / len(pos)
    sp = (1 - shrink) * sp + shrink * np.trace(sp) / d * np.eye(d)
    sn = neg.T @ neg / len(neg)
    L = np.linalg.cholesky(sp)
    Li = np.linalg.inv(L)
    A = Li @ sn @ Li.T
    lam, U = np.linalg.eigh((A + A.T) / 2)
    order = np.argsort(-lam)[:dim]
    lam, U = np.maximum(lam[order], 0), U[:, order]
    W = (U.T @ Li) * np.sqrt(lam / (1 + lam))[:, None]
    return W.astype(np.float32)


def sample_pairs(index: CatalogIndex, catalog_dir: str, n: int, seed: int, model: CardEmbedder):
    rng = np.random.default_rng(seed)
    hard = index.hard_negatives(16, seed=seed)
    cards = rng.choice(len(index.ids), n, replace=False)
    cg, cs, ag, as_, hg, hs, has_h = [], [], [], [], [], [], []
    for c in cards:
        img = load_card(catalog_dir, index.ids[c])
        g, s = clean_views(img)
        cg.append(g)
        cs.append(s)
        g, s = embedder_views(capture_crop(img, rng))
        ag.append(g)
        as_.append(s)
        hn = hard[c][hard[c] >= 0]
        if len(hn):
            j = int(rng.choice(hn))
            g, s = clean_views(load_card(catalog_dir, index.ids[j]))
            hg.append(g)
            hs.append(s)
            has_h.append(len(cg) - 1)
    tcg, tcs = thumbs(model, cg, cs)
    tag, tas = thumbs(model, ag, as_)
    thg, ths = thumbs(model, hg, hs)
    return cards, (tcg, tcs), (tag, tas), (thg, ths), np.array(has_h)


def fit(catalog_dir: str, n: int = 6000, seed: int = 7, out: str | None = None, pairs: str | None = None) -> CardEmbedder:
    torch.manual_seed(seed)
    model = CardEmbedder()
    index = CatalogIndex.load(catalog_dir)
    t0 = time.time()
    if pairs:  # cached by models.embedder.pairs
        P = np.load(pairs)
        cards = P["card"]
        tcg, tcs = thumbs(model, P["cg"], P["cs"])
        tag, tas = thumbs(model, P["ag"], P["as"])
        thg, ths = thumbs(model, P["hg"], P["hs"])
        hidx = np.arange(len(cards))
    else:
        cards, (tcg, tcs), (tag, tas), (thg, ths), hidx = sample_pairs(index, catalog_dir, n, seed, model)
    gb, sb = model.g, model.s
    tcg, tag, thg = (_unit(centre(x, gb.N_EDGE, gb.THUMB_SHAPE)) for x in (tcg, tag, thg))
    tcs, tas, ths = (_unit(centre(x, sb.N_EDGE, sb.THUMB_SHAPE)) for x in (tcs, tas, ths))
    rng = np.random.default_rng(seed + 1)
    perm = rng.permutation(len(cards))
    # global: random pairs + hard pairs
    pos_g, pos_s = tag - tcg, tas - tcs
    neg_g = np.concatenate([tcg - tcg[perm], tcg[hidx] - thg])
    neg_s = np.concatenate([tcs - tcs[perm], tcs[hidx] - ths, tcs[hidx] - ths])  # strip: hard pairs weigh double
    wg = gen_eig_projection(pos_g, neg_g, model.g.lin.out_features)
    ws = gen_eig_projection(pos_s, neg_s, model.s.lin.out_features)
    wg = fold_centring(wg, gb.N_EDGE, gb.THUMB_SHAPE)
    ws = fold_centring(ws, sb.N_EDGE, sb.THUMB_SHAPE)
    with torch.no_grad():
        model.g.lin.weight.copy_(torch.from_numpy(wg))
        model.s.lin.weight.copy_(torch.from_numpy(ws))
    print(json.dumps({"pairs": len(cards), "hard_pairs": len(hidx), "seconds": round(time.time() - t0, 1)}), flush=True)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out)
    return model


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--n", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", required=True)
    ap.add_argument("--pairs", help="cached pairs .npz (models.embedder.pairs) instead of sampling")
    a = ap.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(2)
    fit(a.catalog, a.n, a.seed, a.out, a.pairs)
