"""Train the card detector on ``models.detector.data`` output.

``python -m models.detector.train --data var/train/detector/data.npz --out var/train/detector --steps 1500``

Loss per map: weighted BCE + soft Dice (Dice keeps small cards and thin kernels from being drowned by
background). In-loop augmentation is cheap and label-preserving: gain, colour cast, noise, and a
horizontal flip of input and maps (mirroring keeps the top half on top, so the orientation map stays valid).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.detector.model import CardDetector


def dice_loss(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits) * w
    y = y * w
    inter = (p * y).sum((2, 3))
    den = p.sum((2, 3)) + y.sum((2, 3))
    return (1 - (2 * inter + 1) / (den + 1)).mean()


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    parts = [np.load(p) for p in args.data.split(",")]
    X = np.concatenate([d["x"] for d in parts])
    W = np.concatenate([d["w"] for d in parts]).astype(np.float32)
    Y = np.concatenate([d["y"].astype(np.float32) / (255.0 if d["y"].max() > 1 else 1.0) for d in parts])
    n = len(X)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = CardDetector()
    if args.init:
        model.load_state_dict(torch.load(args.init, map_location="cpu", weights_only=True))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    start = 0
    ck = out / "ckpt.pt"
    if args.resume and ck.is_file():
        st = torch.load(ck, map_location="cpu", weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        start = st["step"]
    log = open(out / "train.log", "a")
    t0 = time.time()
    pos_w = torch.tensor([1.0, 2.0, 1.0]).view(1, 3, 1, 1)
    model.train()
    if args.freeze_bn:  # statistics unknown (weights recovered from an int8 graph): keep them fixed
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
    for t in range(start, args.steps):
        r = np.random.default_rng([args.seed, t])
        idx = r.choice(n, args.batch, replace=False)
        x = X[idx].astype(np.float32) / 255.0
        y, w = Y[idx].copy(), W[idx].copy()
        # photometric jitter: gain, per-channel cast, noise
        x = x * r.uniform(0.7, 1.25, (len(idx), 1, 1, 1)) * r.uniform(0.9, 1.1, (len(idx), 1, 1, 3))
        x = x + r.normal(0, r.uniform(0, 0.03), x.shape)
        flip = r.random(len(idx)) < 0.5
        x[flip] = x[flip, :, ::-1]
        y[flip] = y[flip, :, :, ::-1]
        w[flip] = w[flip, :, :, ::-1]
        xt = torch.from_numpy(np.ascontiguousarray(x[..., ::-1].transpose(0, 3, 1, 2)).clip(0, 1)).float()  # BGR→RGB
        yt, wt = torch.from_numpy(np.ascontiguousarray(y)), torch.from_numpy(np.ascontiguousarray(w))
        lr = args.lr * min(1.0, (t + 1) / max(args.warmup, 1)) * 0.5 * (1 + math.cos(math.pi * t / args.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        logits = model(xt)
        bce = F.binary_cross_entropy_with_logits(logits, yt, weight=wt * (1 + (pos_w - 1) * yt), reduction="sum") / wt.sum().clamp(min=1)
        loss = bce + dice_loss(logits, yt, wt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if t % 20 == 0 or t == args.steps - 1:
            msg = {"step": t, "loss": round(loss.item(), 4), "bce": round(bce.item(), 4), "lr": round(lr, 5),
                   "elapsed_s": round(time.time() - t0, 1)}
            print(json.dumps(msg), flush=True)
            log.write(json.dumps(msg) + "\n")
            log.flush()
        if (t + 1) % args.ckpt_every == 0 or t == args.steps - 1:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": t + 1}, ck)
            torch.save(model.state_dict(), out / "detector.pt")
    torch.save(model.state_dict(), out / "detector.pt")
    return {"steps": args.steps, "seconds": round(time.time() - t0, 1)}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True, help="one or more .npz (comma-separated)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init", help="state_dict to start from (e.g. models.detector.from_tflite output)")
    ap.add_argument("--freeze-bn", action="store_true", help="keep BatchNorm statistics fixed (fine-tuning)")
    ap.add_argument("--warmup", type=int, default=50, help="linear learning-rate warm-up steps")
    return ap


if __name__ == "__main__":
    print(train(parser().parse_args()))
