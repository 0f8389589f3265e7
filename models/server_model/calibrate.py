"""Fit the resolver's confidence model on simulated crops, and evaluate it.

    .venv/bin/python -m models.server_model.calibrate --catalog var/catalog --n 300 --out \
        models/server_model/checkpoints/resolver_calibration.json

Simulated ambiguous scans: a catalog face through ``augment_crop`` (corner error, exposure, colour, glare,
sleeve, blur, noise, JPEG). Half the samples are printings that share their illustration with another
printing (reprints: the hard case the device sends up). For each sample the resolver computes its
shortlist features; a conditional logit over the shortlist (softmax of w . features) is fitted by maximum
likelihood, so its probability of the top candidate is the calibrated confidence.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def reprint_groups(resolver) -> list[list[str]]:
    """Illustrations with >= 2 printings whose catalog faces differ (identical files cannot be told apart)."""
    groups = []
    for ill, ids in resolver.by_ill.items():
        if len(ids) >= 2:
            groups.append(sorted(ids))
    return groups


def sample_cards(resolver, n: int, rng: np.random.Generator, reprint_frac: float = 0.5) -> list[str]:
    ids = resolver.index.ids
    groups = reprint_groups(resolver)
    out = []
    for _ in range(n):
        if groups and rng.random() < reprint_frac:
            g = groups[int(rng.integers(len(groups)))]
            out.append(g[int(rng.integers(len(g)))])
        else:
            out.append(ids[int(rng.integers(len(ids)))])
    return out


def simulate(resolver, cards: list[str], seed: int, strength: float = 1.0, device_group: float = 0.0):
    """Per sample: (true id, shortlist ids, feature matrix, ms, resolution)."""
    from models.synth.capture import augment_crop

    rng = np.random.default_rng(seed)
    rows = []
    for cid in cards:
        crop = augment_crop(resolver.catalog.image(cid), rng, strength)
        dev = []
        if rng.random() < device_group:  # the device's shortlist of an ambiguous reprint scan: the printings of the art
            ill = resolver.meta.get(cid, {}).get("illustration_id") or cid
            dev = list(resolver.by_ill.get(ill, [cid]))[:8]
        t = time.perf_counter()
        canon, ids, X, detail = resolver.evidence(crop, dev)
        rows.append({"card_id": cid, "ids": ids, "X": X, "crop": canon, "ms_features": (time.perf_counter() - t) * 1000})
    return rows


def _adam(grad, n: int, iters: int, lr: float) -> np.ndarray:
    """Minimise from zeros with Adam (β 0.9 / 0.999); ``grad(theta)`` is the gradient of the mean loss."""
    theta, m, v = np.zeros(n), np.zeros(n), np.zeros(n)
    for t in range(1, iters + 1):
        g = grad(theta)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        theta -= lr * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    return theta


def fit(rows, l2: float = 1e-3, iters: int = 1500, lr: float = 0.05) -> tuple[np.ndarray, float]:
    """Conditional-logit MLE over each shortlist plus a "none of these" alternative (Adam).

    Returns (weights on raw features, null bias). Samples whose true card missed the shortlist teach the
    null alternative, so weak absolute evidence lowers the confidence."""
    data = [(r["X"], r["ids"].index(r["card_id"]) if r["card_id"] in r["ids"] else -1) for r in rows if len(r["ids"])]
    allX = np.concatenate([X for X, _ in data])
    mu, sd = allX.mean(0), allX.std(0) + 1e-6
    d = allX.shape[1]
    Zs = [((X - mu) / sd, y) for X, y in data]

    def grad(theta: np.ndarray) -> np.ndarray:  # theta: standardised weights + null bias
        g = l2 * np.append(theta[:d], 0.0)
        w, b = theta[:d], theta[d]
        for Z, y in Zs:
            z = np.append(Z @ w, b)
            z -= z.max()
            p = np.exp(z)
            p /= p.sum()
            gw = Z.T @ p[:-1]
            gb = p[-1]
            if y >= 0:
                gw = gw - Z[y]
            else:
                gb -= 1.0
            g[:d] += gw / len(Zs)
            g[d] += gb / len(Zs)
        return g

    theta = _adam(grad, d + 1, iters, lr)
    w_raw = theta[:d] / sd
    return w_raw, float(theta[d] + mu @ w_raw)


def fit_null(rows, w: np.ndarray, l2: float = 1e-3, iters: int = 1500, lr: float = 0.05) -> tuple[np.ndarray, float]:
    """With the ranking weights ``w`` (raw features) fixed, fit only the "none of these" utility
    ``b + v . x_leader`` (x_leader: the features of the shortlist's best-ranked candidate) by maximum likelihood.

    Returns (v on raw features, b). Why: fitting everything on catalog scans plus scans of non-catalog objects
    (``models.eval.negatives --scans-out``, ``card_id`` null) moved the ranking weights too and lowered the
    held-out top-1; here the ranking, hence the answer, stays exactly as fitted, and only the confidence learns
    that weak absolute evidence on the leader means "not a catalog card"."""
    data = []
    for r in rows:
        if not len(r["ids"]):
            continue
        z = r["X"] @ w
        data.append((z, r["X"][int(np.argmax(z))], r["ids"].index(r["card_id"]) if r["card_id"] in r["ids"] else -1))
    lead = np.stack([x for _, x, _ in data])
    mu, sd = lead.mean(0), lead.std(0) + 1e-6
    d = lead.shape[1]
    items = [(z - z.max(), (x - mu) / sd, y, z.max()) for z, x, y in data]

    def grad(theta: np.ndarray) -> np.ndarray:  # theta: standardised null weights + bias
        g = l2 * np.append(theta[:d], 0.0)
        for z, x, y, zmax in items:
            nl = theta[d] + x @ theta[:d] - zmax  # null utility, shifted like z
            top = max(0.0, nl)
            p_null = np.exp(nl - top) / (np.exp(z - top).sum() + np.exp(nl - top))
            r_ = p_null - (1.0 if y < 0 else 0.0)
            g[:d] += r_ * x / len(items)
            g[d] += r_ / len(items)
        return g

    theta = _adam(grad, d + 1, iters, lr)
    v_raw = theta[:d] / sd
    return v_raw, float(theta[d] - mu @ v_raw)


def evaluate(resolver, rows, threshold: float) -> dict:
    top1 = []
    conf = []
    for r in rows:
        if not r["ids"]:
            top1.append(False)
            conf.append(0.0)
            continue
        p = resolver.probabilities(r["X"])
        i = int(np.argmax(p))
        top1.append(r["ids"][i] == r["card_id"])
        conf.append(float(p[i]))
    top1, conf = np.array(top1), np.array(conf)
    acc = conf >= threshold
    bins = np.linspace(0, 1, 11)
    ece = sum(abs(top1[(conf > lo) & (conf <= hi)].mean() - conf[(conf > lo) & (conf <= hi)].mean())
              * ((conf > lo) & (conf <= hi)).mean() for lo, hi in zip(bins[:-1], bins[1:]) if ((conf > lo) & (conf <= hi)).any())
    return {"n": len(rows), "top1": float(top1.mean()), "in_shortlist": float(np.mean([r["card_id"] in r["ids"] for r in rows])),
            "resolved_share": float(acc.mean()), "resolved_precision": float(top1[acc].mean()) if acc.any() else None,
            "ece": float(ece)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", default="var/catalog")
    ap.add_argument("--data-dir", default="var", help="index cache lives under DATA_DIR/index")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--device-group", type=float, default=0.5,
                    help="share of samples whose shortlist is seeded with the art's printings (as the device sends)")
    ap.add_argument("--out", default=None, help="write the calibration JSON here")
    a = ap.parse_args(argv)

    from server.resolver.resolver import FEATURES, Calibration
    from server.resolver.service import build_resolver

    r = build_resolver(a.catalog, a.data_dir, checkpoint=a.checkpoint)
    r.config.ocr = False
    rng = np.random.default_rng(a.seed)
    cards = sample_cards(r, a.n, rng)
    t = time.time()
    rows = simulate(r, cards, a.seed, device_group=a.device_group)
    print(f"simulated {len(rows)} shortlists in {time.time() - t:.0f} s", flush=True)
    print("before:", json.dumps(evaluate(r, rows, r.config.accept_confidence)))
    w, nb = fit(rows)
    r.calibration = Calibration({f: float(x) for f, x in zip(FEATURES, w)}, 1.0,
                                {"n": len(rows), "seed": a.seed, "catalog": a.catalog, "model_id": r.embedder.model_id,
                                 "fitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, nb)
    print("weights:", json.dumps(r.calibration.weights))
    print("after (train):", json.dumps(evaluate(r, rows, r.config.accept_confidence)))
    if a.out:
        r.calibration.save(a.out)
        print("wrote", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
