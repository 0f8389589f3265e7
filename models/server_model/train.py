"""Train the server embedder: open_clip architecture, contrastive capture<->catalog plus image<->text (names).

From scratch (default): the tiny ViT in ``configs/scanemon-tiny-vit.json``, trained on the rendered catalog
(``python -m models.synth catalog … --out var/catalog``) with ``models.synth.capture.augment_crop`` as the
camera model. The same recipe fine-tunes pretrained CLIP: ``--model-name ViT-B-32 --pretrained <tag|file>``.

    nice -n 15 nohup .venv/bin/python -m models.server_model.train --catalog var/catalog \
        --cpu-minutes 28 > var/train/server_model/train.log 2>&1 &

Losses (both symmetric InfoNCE with a learned temperature):
* capture <-> catalog image: a simulated rectified crop must land on its clean catalog face;
* catalog image <-> text (card name): text search works, and names shape the image space.
Batches hold distinct illustrations (reprints share art: same-art pairs would be false negatives) and the
text targets are soft over equal names. Budget is CPU time (``--cpu-minutes``), checked every step;
a resumable state goes to ``--log-dir``/state.pt and the compact checkpoint to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger("server_model.train")

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "checkpoints" / "scanemon-tiny-vit.pt"
STORE_W, STORE_H = 128, 180  # card faces kept in memory at about model resolution


def load_catalog(catalog: Path, limit: int | None = None) -> tuple[list[dict], np.ndarray]:
    from models.synth.catalog import read_index

    rows = [r for r in read_index(catalog).values() if (catalog / f"{r['card_id']}.jpg").is_file()]
    rows.sort(key=lambda r: r["card_id"])
    if limit:
        rows = rows[:limit]
    imgs = np.empty((len(rows), STORE_H, STORE_W, 3), np.uint8)
    for i, r in enumerate(rows):
        im = cv2.imread(str(catalog / f"{r['card_id']}.jpg"), cv2.IMREAD_REDUCED_COLOR_2)
        imgs[i] = cv2.resize(im, (STORE_W, STORE_H), interpolation=cv2.INTER_AREA)
    return rows, imgs


def wait_for_catalog(catalog: Path, wait_s: float) -> None:
    """The catalog is rendered by another job; its index.jsonl is written last, so wait for that."""
    t0 = time.time()
    while not (catalog / "index.jsonl").is_file():
        if time.time() - t0 > wait_s:
            raise SystemExit(f"{catalog}/index.jsonl did not appear within {wait_s:.0f} s")
        log.info("waiting for %s/index.jsonl …", catalog)
        time.sleep(30)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.server_model.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", default="var/catalog", help="rendered catalog folder (<card_id>.jpg + index.jsonl)")
    ap.add_argument("--wait-s", type=float, default=0, help="wait this long for the catalog's index.jsonl")
    ap.add_argument("--model-name", default="scanemon-tiny-vit", help="open_clip architecture")
    ap.add_argument("--pretrained", default=None, help="fine-tune from an open_clip hub tag or local checkpoint")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="compact checkpoint written here")
    ap.add_argument("--log-dir", default="var/train/server_model", help="state.pt, metrics.jsonl")
    ap.add_argument("--cpu-minutes", type=float, default=28.0, help="stop after this much process CPU time")
    ap.add_argument("--wall-minutes", type=float, default=0, help="also stop after this much wall time (0 = no limit)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--strength", type=float, default=1.0, help="augment_crop strength (camera model)")
    ap.add_argument("--text-weight", type=float, default=0.5)
    ap.add_argument("--limit", type=int, default=None, help="first N catalog cards only (smoke runs)")
    ap.add_argument("--save-every", type=int, default=50, help="steps between checkpoints")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="continue from --log-dir/state.pt")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import open_clip
    import torch
    import torch.nn.functional as F

    from models.synth.capture import augment_crop
    from server.resolver.embedders import preprocess_batch, register_model_configs, save_compact_checkpoint

    torch.set_num_threads(a.threads)
    cv2.setNumThreads(1)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    catalog = Path(a.catalog)
    if a.wait_s:
        wait_for_catalog(catalog, a.wait_s)
    log_dir = Path(a.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    rows, imgs = load_catalog(catalog, a.limit)
    log.info("catalog: %d cards loaded in %.1f s", len(rows), time.time() - t0)
    by_ill: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_ill.setdefault(r.get("illustration_id", r["card_id"]), []).append(i)
    ills = list(by_ill)
    names = [r.get("name", r["card_id"]) for r in rows]
    name_ids = {n: k for k, n in enumerate(sorted(set(names)))}

    register_model_configs()
    model, _, _ = open_clip.create_model_and_transforms(a.model_name, pretrained=a.pretrained)
    from open_clip.factory import get_model_config

    model_cfg = get_model_config(a.model_name)
    tokenizer = open_clip.get_tokenizer(a.model_name)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    tokens_all = tokenizer(sorted(name_ids))  # (n_names, ctx): one row per distinct name
    used_tokens = np.unique(tokens_all.numpy())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a.lr, weight_decay=0.05)
    step, cpu_used0 = 0, 0.0
    state_path = log_dir / "state.pt"
    if a.resume and state_path.is_file():
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step, cpu_used0 = st["step"], st["cpu_s"]
        log.info("resumed at step %d (%.1f CPU-min used)", step, cpu_used0 / 60)
    budget = a.cpu_minutes * 60
    # Rough schedule length for cosine decay: measured speed is unknown up front, so assume ~3 s per step.
    total_steps_guess = max(100, int(budget / 3.0))
    metrics = open(log_dir / "metrics.jsonl", "a")
    cpu0 = time.process_time()

    def cpu_used() -> float:
        return cpu_used0 + time.process_time() - cpu0

    def save(final: bool = False) -> None:
        meta = {"steps": step, "cpu_minutes": round(cpu_used() / 60, 2), "cards": len(rows),
                "catalog": str(catalog), "pretrained": a.pretrained, "batch": a.batch, "final": final}
        save_compact_checkpoint(model, a.model_name, model_cfg, a.out,
                                used_tokens=used_tokens if a.pretrained is None else None, meta=meta)
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "cpu_s": cpu_used()},
                   state_path)

    model.train()
    wall_end = time.time() + a.wall_minutes * 60 if a.wall_minutes else float("inf")
    while cpu_used() < budget and time.time() < wall_end:
        ts = time.time()
        pick = rng.choice(len(ills), size=min(a.batch, len(ills)), replace=False)
        idx = [by_ill[ills[j]][int(rng.integers(len(by_ill[ills[j]])))] for j in pick]
        caps = [augment_crop(imgs[i], rng, a.strength * float(rng.uniform(0.5, 1.0))) for i in idx]
        clean = [imgs[i] for i in idx]
        name_idx = torch.tensor([name_ids[names[i]] for i in idx])
        lr = a.lr * 0.5 * (1 + np.cos(np.pi * min(1.0, step / total_steps_guess)))
        for g in opt.param_groups:
            g["lr"] = max(lr, a.lr * 0.02)
        x = preprocess_batch(caps + clean, size)
        feats = F.normalize(model.encode_image(x), dim=-1)
        fc, fk = feats[:len(idx)], feats[len(idx):]
        ft = F.normalize(model.encode_text(tokens_all[name_idx]), dim=-1)
        scale = model.logit_scale.exp().clamp(max=100)
        labels = torch.arange(len(idx))
        li = scale * fc @ fk.T
        loss_img = (F.cross_entropy(li, labels) + F.cross_entropy(li.T, labels)) / 2
        same = (name_idx[:, None] == name_idx[None, :]).float()
        tgt = same / same.sum(1, keepdim=True)
        lt = scale * fk @ ft.T
        loss_txt = (torch.sum(-tgt * F.log_softmax(lt, 1), 1).mean() + torch.sum(-tgt * F.log_softmax(lt.T, 1), 1).mean()) / 2
        loss = loss_img + a.text_weight * loss_txt
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step == 5 and not a.resume:  # now the real CPU cost per step is known: fit the schedule to the budget
            total_steps_guess = max(20, int(budget / max(cpu_used() / 5, 1e-3)))
            log.info("schedule: ~%d steps in the %.0f CPU-min budget", total_steps_guess, a.cpu_minutes)
        with torch.no_grad():
            acc = float((li.argmax(1) == labels).float().mean())
        loss = loss.detach()
        rec = {"step": step, "loss": round(float(loss), 4), "loss_img": round(float(loss_img), 4),
               "loss_txt": round(float(loss_txt), 4), "batch_acc": round(acc, 3), "lr": round(float(lr), 6),
               "scale": round(float(scale), 2), "step_s": round(time.time() - ts, 2),
               "cpu_min": round(cpu_used() / 60, 2)}
        metrics.write(json.dumps(rec) + "\n")
        metrics.flush()
        if step % 10 == 0:
            log.info("%s", rec)
        if step % a.save_every == 0:
            save()
    save(final=True)
    log.info("done: %d steps, %.1f CPU-min -> %s", step, cpu_used() / 60, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
