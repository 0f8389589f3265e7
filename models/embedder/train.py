"""Train the card embedder by metric learning: simulated capture ↔ clean catalog image.

``python -m models.embedder.train --catalog var/catalog --out var/train/embedder --steps 1500``

Loss: InfoNCE between the embedding of a simulated capture crop and the embeddings of the *clean catalog
views* (exactly what the bundle stores), negatives = the other cards of the batch plus a queue of recent
clean embeddings. Batches are built around hard negatives: every seed card brings printings with the same
illustration (reprints: only set symbol / number / frame differ) and with the same name, so the strip
branch must learn the footer. Three terms: combined embedding, global-only (same-illustration keys
masked out: the global view cannot and should not separate pixel-identical art), strip-only.

Why not per-class proxies: with two shared CPU cores each of the 19,783 printings is seen only a handful
of times; proxies would stay undertrained, while capture↔render matching generalises across cards.

Deterministic: step t's batch comes from ``default_rng([seed, t])``; checkpoints every ``--ckpt-every``
steps allow resuming (``--resume``) with the same data order.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from models.embedder.data import CatalogIndex, capture_crop, clean_views, load_card, to_tensor_batch
from models.embedder.model import STRIP_WEIGHT, CardEmbedder, combine
from device.vision.geometry import embedder_views


def pick_batch(rng: np.random.Generator, n_cards: int, hard: np.ndarray, n_seed: int, max_hard: int = 2) -> np.ndarray:
    seeds = rng.choice(n_cards, n_seed, replace=False)
    out = list(seeds)
    seen = set(out)
    for s in seeds:
        hn = hard[s][hard[s] >= 0]
        if len(hn):
            for j in rng.choice(hn, min(max_hard, len(hn)), replace=False):
                if int(j) not in seen:
                    seen.add(int(j))
                    out.append(int(j))
    return np.array(out, np.int64)


class BatchStream(torch.utils.data.IterableDataset):
    """Yields step batches: (aug_global, aug_strip, clean_global, clean_strip, card indices) as uint8 arrays."""

    def __init__(self, catalog_dir: str, index: CatalogIndex, hard: np.ndarray, seed: int, start: int, steps: int,
                 n_seed: int):
        self.catalog_dir, self.index, self.hard = catalog_dir, index, hard
        self.seed, self.start, self.steps, self.n_seed = seed, start, steps, n_seed

    def __iter__(self):
        cv2.setNumThreads(1)
        for t in range(self.start, self.steps):
            rng = np.random.default_rng([self.seed, t])
            idx = pick_batch(rng, len(self.index.ids), self.hard, self.n_seed)
            ag, as_, cg, cs = [], [], [], []
            for i in idx:
                img = load_card(self.catalog_dir, self.index.ids[i])
                g, s = clean_views(img)
                cg.append(g)
                cs.append(s)
                g, s = embedder_views(capture_crop(img, rng))
                ag.append(g)
                as_.append(s)
            yield t, to_tensor_batch(ag), to_tensor_batch(as_), to_tensor_batch(cg), to_tensor_batch(cs), idx


def info_nce(q: torch.Tensor, k: torch.Tensor, qid: torch.Tensor, kid: torch.Tensor, tau: float,
             ignore: torch.Tensor | None = None) -> torch.Tensor:
    """q[i] ↔ k[i] positives (k = batch keys + queue keys); other keys with the same card id, and pairs in
    ``ignore`` ([B, K] bool), are neither positive nor negative."""
    logits = q @ k.T / tau
    b = q.shape[0]
    same = qid[:, None] == kid[None, :]
    same[torch.arange(b), torch.arange(b)] = False
    mask = same if ignore is None else (same | ignore)
    mask[torch.arange(b), torch.arange(b)] = False
    logits = logits.masked_fill(mask, -1e4)
    return F.cross_entropy(logits, torch.arange(b))


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    index = CatalogIndex.load(args.catalog)
    hard = index.hard_negatives(16, seed=args.seed)
    ill_codes = {k: i for i, k in enumerate(sorted(set(index.illustration)))}
    ill = torch.tensor([ill_codes[x] for x in index.illustration])
    model = CardEmbedder()
    if args.init:
        model.load_state_dict(torch.load(args.init, map_location="cpu", weights_only=True))
    # The closed-form linear paths are already good: they move slowly; the CNN paths learn at full rate.
    lin = [p for n, p in model.named_parameters() if n.endswith("lin.weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("lin.weight")]
    opt = torch.optim.AdamW([{"params": rest, "lr_scale": 1.0}, {"params": lin, "lr_scale": args.lin_lr_scale,
                                                                   "weight_decay": 0.0}],
                            lr=args.lr, weight_decay=1e-4)
    start = 0
    qd = 192 + 128 + 64
    queue = torch.zeros(0, qd)
    qids = torch.zeros(0, dtype=torch.long)
    ck = out / "ckpt.pt"
    if args.resume and ck.is_file():
        st = torch.load(ck, map_location="cpu", weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        start = st["step"]
        queue, qids = st.get("queue", queue), st.get("qids", qids)
        print(f"resumed at step {start}", flush=True)
    stream = BatchStream(args.catalog, index, hard, args.seed, start, args.steps, args.n_seed)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=args.workers,
                                         prefetch_factor=4 if args.workers else None)
    log = open(out / "train.log", "a")
    t0 = time.time()
    model.train()
    w = STRIP_WEIGHT
    for t, ag, as_, cg, cs, idx in loader:
        lr = args.lr * min(1.0, (t + 1) / 30) * 0.5 * (1 + math.cos(math.pi * t / args.steps))
        for gr in opt.param_groups:
            gr["lr"] = lr * gr["lr_scale"]
        b = ag.shape[0]
        g, s = model(torch.cat([torch.as_tensor(ag), torch.as_tensor(cg)]), torch.cat([torch.as_tensor(as_), torch.as_tensor(cs)]))
        gn, sn = F.normalize(g, dim=1), F.normalize(s, dim=1)
        z = torch.cat([gn * (1 - w) ** 0.5, sn * w ** 0.5], 1)
        idx_t = torch.as_tensor(idx)
        use_q = t >= args.queue_after and len(queue) > 0
        kz, kg, ks = z[b:], gn[b:], sn[b:]
        kid = idx_t
        if use_q:
            kz = torch.cat([kz, queue[:, :192]])
            kg = torch.cat([kg, queue[:, 192:320]])
            ks = torch.cat([ks, queue[:, 320:]])
            kid = torch.cat([idx_t, qids])
        ign_g = ill[idx_t][:, None] == ill[kid][None, :]
        loss_z = info_nce(z[:b], kz, idx_t, kid, args.tau) + 0.5 * info_nce(z[b:], z[:b], idx_t, idx_t, args.tau)
        loss_g = info_nce(gn[:b], kg, idx_t, kid, args.tau, ignore=ign_g)
        loss_s = info_nce(sn[:b], ks, idx_t, kid, args.tau)
        loss = loss_z + 0.5 * loss_g + 0.5 * loss_s
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            newq = torch.cat([z[b:], gn[b:], sn[b:]], 1).detach()
            queue = torch.cat([newq, queue])[: args.queue]
            qids = torch.cat([idx_t, qids])[: args.queue]
            acc = (z[:b] @ z[b:].T).argmax(1).eq(torch.arange(b)).float().mean().item()
        if t % 10 == 0 or t == args.steps - 1:
            msg = {"step": t, "loss": round(loss.item(), 4), "z": round(loss_z.item(), 3), "g": round(loss_g.item(), 3),
                   "s": round(loss_s.item(), 3), "batch_acc": round(acc, 3), "lr": round(lr, 5), "b": b,
                   "elapsed_s": round(time.time() - t0, 1)}
            print(json.dumps(msg), flush=True)
            log.write(json.dumps(msg) + "\n")
            log.flush()
        if (t + 1) % args.ckpt_every == 0 or t == args.steps - 1:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": t + 1, "queue": queue,
                        "qids": qids}, ck)
            torch.save(model.state_dict(), out / "embedder.pt")
    torch.save(model.state_dict(), out / "embedder.pt")
    return {"steps": args.steps, "seconds": time.time() - t0}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", required=True, help="rendered catalog dir (index.jsonl + <card_id>.jpg)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--n-seed", type=int, default=40, help="seed cards per batch (each brings ≤2 hard negatives)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--tau", type=float, default=0.05)
    ap.add_argument("--queue", type=int, default=4096)
    ap.add_argument("--queue-after", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ckpt-every", type=int, default=50)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init", help="state_dict to start from (models.embedder.closed_form output)")
    ap.add_argument("--lin-lr-scale", type=float, default=0.05, help="LR factor for the closed-form linear paths")
    return ap


if __name__ == "__main__":
    print(train(parser().parse_args()))
