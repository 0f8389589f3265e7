"""Train the edge model that snaps detected quads onto the card's outline (``device.vision.edges``).

    python -m models.detector.edges --bundle models/bundles/demo --frames 2400 --out var/train/edges

(``make models`` runs this after the detector: the model learns that detector's errors.)

Data: simulated captures (hand-held, scanner box, binder grid; 640×480 and 1280×960) from seeds far from the
evaluation's. For every fully visible card, profiles across the sides of (a) the bundle detector's own quad
before any snap — the errors the model will see — and (b) the labelled quad jittered by a few percent (corner
errors the detector makes elsewhere). Target: where the labelled side crosses each profile. Loss: softmax
cross-entropy over a profile's positions (soft label between the two nearest). Writes ``detector_edges.npz``
and ``report.json`` (mean-corner error of the detector's quads before / after, classic snap, on held-out
frames).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from device.vision.detector import refine_quad
from device.vision.edges import FILE, EdgeModel, feature_count, features, side_profiles
from device.vision.geometry import quad_iou
from models.synth.capture import CaptureConfig
from models.synth.dataset import make_foreign_frame, make_frame

SEED = 5_200_000  # training frames; evaluation uses 900000+, development 761000+, calibration 950000+
MODES = (("free", 0.4), ("scanner_box", 0.4), ("grid", 0.2))


def _targets(pts: np.ndarray, normals: np.ndarray, step: float, gq: np.ndarray) -> np.ndarray:
    """Signed distance (profile steps, outward) from each profile point to the labelled side it crosses."""
    out = np.empty(pts.shape[:2], np.float32)
    for i in range(4):
        a, b = gq[i], gq[(i + 1) % 4]
        d = (b - a) / max(float(np.linalg.norm(b - a)), 1e-6)
        n = normals[i]
        # p + t n on the line through a along d: cross(p + t n - a, d) = 0
        cr = lambda v: v[..., 0] * d[1] - v[..., 1] * d[0]  # noqa: E731
        den = float(cr(n))
        out[i] = -cr(pts[i] - a) / den / step if abs(den) > 1e-3 else np.nan
    return out


def _in_frame(q: np.ndarray, w: int, h: int) -> bool:
    return bool((q >= 0).all() and (q[:, 0] <= w - 1).all() and (q[:, 1] <= h - 1).all())


def collect(detector, catalog: str, ids: list[str], n: int, seed: int, radius: int, half: int, samples: int,
            jitter: float = 0.02, foreign_frac: float = 0.0, real_ids: list[str] | None = None,
            real_frac: float = 0.0, row_frac: float = 0.0, table_frac: float = 0.0
            ) -> tuple[np.ndarray, np.ndarray, list]:
    """(profiles [N, 2(radius+half)+1, 3] float16, targets [N] in positions, per-card records for evaluation).
    ``foreign_frac`` of the frames show non-catalog faces (``models.synth.foreign``: white playing cards with
    rounded corners, backs) and cast shadows, hand-held or overlapping: the outline of a card that is not a
    Pokémon card (the real photos the detector is measured on). ``real_frac`` of the catalog frames show only
    ``real_ids`` (the real sv1 scans: a silver border with a thin dark rim and rounded corners, an outline no
    render has — sampled like every other printing, 1.3 % of the frames, they were snapped from 7.4 to only 4.1 px
    mean-corner error on held-out frames, the renders from 6.2 to 0.6: ``--evaluate``);
    which frames is fixed by the index, so 0 keeps every frame of the old mix. ``row_frac`` of the catalog frames
    are cards laid edge to edge (fan mode's ``row`` layout, ``CaptureConfig.fan_layouts``): a side that touches a
    neighbour has two edges next to each other, and the model must take the card's own (the thirteenth session's
    wrong accepts on rows were reprint contests read off quads snapped onto the neighbour's edge); chosen by the
    index too. ``table_frac`` of all frames lie on the real surfaces of the playing-card TRAIN photos (capture
    background ``table``: carpet, fabric, wood), chosen by the index: a white card's edge against carpet pile is
    a step no procedural texture showed the model (the real TEST photos' single cards came out with a side 10-30 px
    off, docs/device-vision.md, sixteenth session)."""
    rng = np.random.default_rng(seed)
    n_real = int(round(n * real_frac)) if real_ids else 0
    n_row = int(round(n * row_frac))
    n_table = int(round(n * table_frac))
    vals_all, tgt_all, cards = [], [], []
    for i in range(n):
        r = rng.random()
        mode = "free" if r < MODES[0][1] else "scanner_box" if r < MODES[0][1] + MODES[1][1] else "grid"
        size = (1280, 960) if rng.random() < 0.2 else (640, 480)
        bg = {"backgrounds": ["table"]} if (i * 15485863 + 7) % n < n_table else {}
        if foreign_frac > 0 and rng.random() < foreign_frac:
            cfg = CaptureConfig(size=size, mode="fan" if rng.random() < 0.5 else "free", p_shadow=0.7, **bg)
            frame, labels = make_foreign_frame(seed, i, cfg)
        else:
            pool = real_ids if (i * 7919) % n < n_real else ids
            cfg = (CaptureConfig(size=size, mode="fan", fan_layouts=["row"], **bg) if (i * 104729 + 13) % n < n_row
                   else CaptureConfig(size=size, mode=mode, **bg))
            frame, labels = make_frame(catalog, pool, seed, i, cfg)
        detector.refine = False
        dets = detector.detect(frame)
        detector.refine = True
        for gt in labels["cards"]:
            gq = np.array(gt["quad"], np.float32)
            if gt.get("visible", 1.0) < 0.9 or not _in_frame(gq, size[0], size[1]):
                continue
            quads = []
            m = [d.quad for d in dets if quad_iou(d.quad, gq) > 0.5]
            if m:
                q = m[0]
                k = min(range(4), key=lambda k: float(np.abs(np.roll(q, k, 0) - gq).sum()))
                quads.append(np.roll(q, k, 0).astype(np.float32))
                cards.append({"frame": frame, "quad": quads[0], "gt": gq, "holder": gt.get("holder")})
            diag = float(np.linalg.norm(gq[2] - gq[0]))
            quads.append(gq + rng.normal(0, jitter * diag, gq.shape).astype(np.float32))
            for q in quads:
                prof = side_profiles(frame, q, radius, half, samples)
                if prof is None:
                    continue
                pts, normals, step, vals = prof
                t = _targets(pts, normals, step, gq) + radius
                ok = np.isfinite(t) & (t >= 0) & (t <= 2 * radius)
                vals_all.append(vals[ok].astype(np.float16))
                tgt_all.append(t[ok])
    return np.concatenate(vals_all), np.concatenate(tgt_all), cards


def train(vals: np.ndarray, tgt: np.ndarray, radius: int, half: int, hidden: int, steps: int, batch: int,
          lr: float, seed: int) -> EdgeModel:
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    F = feature_count(half)
    net = torch.nn.Sequential(torch.nn.Linear(F, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    P = 2 * radius + 1
    for s in range(steps):
        idx = rng.integers(0, len(vals), batch)
        x = torch.from_numpy(features(vals[idx].astype(np.float32), half, radius))  # [B, P, F]
        t = torch.from_numpy(tgt[idx])
        lo = t.floor().long().clamp(0, P - 1)
        hi = (lo + 1).clamp(max=P - 1)
        frac = (t - lo.float()).clamp(0, 1)
        soft = torch.zeros(batch, P)
        soft.scatter_add_(1, lo[:, None], (1 - frac)[:, None])
        soft.scatter_add_(1, hi[:, None], frac[:, None])
        logp = torch.log_softmax(net(x)[..., 0], -1)
        loss = -(soft * logp).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if s % 250 == 0 or s == steps - 1:
            print(f"step {s} loss {loss.item():.4f}", flush=True)
    l1, l2 = net[0], net[2]
    return EdgeModel({"w1": l1.weight.detach().numpy().T, "b1": l1.bias.detach().numpy(),
                      "w2": l2.weight.detach().numpy().T, "b2": l2.bias.detach().numpy(),
                      "radius": np.int32(radius), "half_window": np.int32(half), "samples": np.int32(0)})


def corner_report(model: EdgeModel, cards: list) -> dict:
    """Mean-corner error (frame px) of held-out detector quads: as detected, classic snap, edge model."""
    rows: dict[str, list] = {"detector": [], "classic_snap": [], "edge_model": []}
    holder = []
    for c in cards:
        f, q, gq = c["frame"], c["quad"], c["gt"]
        gray = cv2.cvtColor(f, cv2.COLOR_BGR2GRAY)
        rows["detector"].append(float(np.linalg.norm(q - gq, axis=1).mean()))
        rows["classic_snap"].append(float(np.linalg.norm(refine_quad(gray, q) - gq, axis=1).mean()))
        rows["edge_model"].append(float(np.linalg.norm(model.refine(f, q)[0] - gq, axis=1).mean()))
        holder.append(str(c["holder"]))
    h = np.array(holder)
    out = {}
    for k, v in rows.items():
        v = np.array(v)
        out[k] = {"median": round(float(np.median(v)), 2), "p90": round(float(np.percentile(v, 90)), 2),
                  **{f"median_{x}": round(float(np.median(v[h == x])), 2) for x in sorted(set(holder))}}
    out["cards"] = len(cards)
    return out


def build(detector_tflite: str | Path, catalog: str | Path, out: str | Path, frames: int = 2400,
          held_out: int = 300, radius: int = 24, half_window: int = 5, samples: int = 16, hidden: int = 32,
          steps: int = 3000, batch: int = 512, lr: float = 3e-3, seed: int = SEED, threads: int = 2,
          foreign_frac: float = 0.0, real_frac: float = 0.0, row_frac: float = 0.0, table_frac: float = 0.0) -> Path:
    """Train on captures with ``detector_tflite``'s quads → ``out/detector_edges.npz`` (+ ``report.json``)."""
    args = {k: (str(v) if isinstance(v, Path) else v) for k, v in locals().items()}
    import torch

    from device.vision.detector import TFLiteDetector

    torch.set_num_threads(threads)
    cv2.setNumThreads(1)
    det = TFLiteDetector(str(detector_tflite), 1)
    rows = [json.loads(line) for line in open(Path(catalog) / "index.jsonl")]
    ids = [r["card_id"] for r in rows]
    real_ids = [r["card_id"] for r in rows if r.get("real_scan")]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    vals, tgt, _ = collect(det, str(catalog), ids, frames, seed, radius, half_window, samples,
                           foreign_frac=foreign_frac, real_ids=real_ids, real_frac=real_frac, row_frac=row_frac,
                           table_frac=table_frac)
    held, held_real, held_rows, held_table = _held_out(det, str(catalog), ids, real_ids, held_out, seed, radius,
                                                       half_window, samples)
    print(f"{len(vals)} profiles from {frames} frames in {time.time() - t0:.0f} s", flush=True)
    model = train(vals, tgt, radius, half_window, hidden, steps, batch, lr, seed)
    model.samples = samples
    path = out / "detector_edges.npz"
    model.save(path)
    rep = {"args": args, "profiles": int(len(vals)), "held_out": corner_report(model, held),
           "held_out_real_scans": corner_report(model, held_real) if held_real else None,
           "held_out_rows": corner_report(model, held_rows), "held_out_table": corner_report(model, held_table),
           "seconds": round(time.time() - t0, 1)}
    (out / "report.json").write_text(json.dumps(rep, indent=2))
    print(json.dumps({k: rep[k] for k in ("held_out", "held_out_real_scans", "held_out_rows", "held_out_table")},
                     indent=2))
    return path


def _held_out(det, catalog: str, ids: list[str], real_ids: list[str], n: int, seed: int, radius: int, half: int,
              samples: int) -> tuple[list, list, list]:
    """Cards of held-out frames (other seeds than training's): the old mix, the real sv1 scans alone, rows."""
    held = collect(det, catalog, ids, n, seed + 1_000_000, radius, half, samples)[2]
    held_real = collect(det, catalog, real_ids, n // 2, seed + 2_000_000, radius, half, samples)[2] if real_ids else []
    held_rows = collect(det, catalog, ids, n // 2, seed + 3_000_000, radius, half, samples, row_frac=1.0)[2]
    held_table = collect(det, catalog, ids, n // 2, seed + 4_000_000, radius, half, samples, foreign_frac=0.5,
                         table_frac=1.0)[2]
    return held, held_real, held_rows, held_table


def evaluate(detector_tflite: str | Path, catalog: str | Path, models: list[str], held_out: int = 300,
             seed: int = SEED) -> dict:
    """Held-out corner errors of edge models side by side, on ``build``'s held-out frames (all cards; the
    real sv1 scans alone)."""
    from device.vision.detector import TFLiteDetector

    cv2.setNumThreads(1)
    det = TFLiteDetector(str(detector_tflite), 1)
    rows = [json.loads(line) for line in open(Path(catalog) / "index.jsonl")]
    ids = [r["card_id"] for r in rows]
    real_ids = [r["card_id"] for r in rows if r.get("real_scan")]
    held, held_real, held_rows, held_table = _held_out(det, str(catalog), ids, real_ids, held_out, seed, 24, 5, 16)
    out = {}
    for m in models:
        p = Path(m)
        if p.is_dir():
            model = EdgeModel.load(p)
            if model is None:
                raise FileNotFoundError(f"{p / FILE}")
        else:
            with np.load(p, allow_pickle=False) as z:
                model = EdgeModel({k: z[k] for k in z.files})
        out[m] = {"held_out": corner_report(model, held),
                  "held_out_real_scans": corner_report(model, held_real) if held_real else None,
                  "held_out_rows": corner_report(model, held_rows), "held_out_table": corner_report(model, held_table)}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="models/bundles/demo", help="bundle whose detector.tflite makes the quads")
    ap.add_argument("--catalog", default="var/catalog")
    ap.add_argument("--frames", type=int, default=2400, help="training frames")
    ap.add_argument("--held-out", type=int, default=300, help="frames for the report (other seeds)")
    ap.add_argument("--radius", type=int, default=24, help="positions each side of the detector's line (1/400 diagonal)")
    ap.add_argument("--half-window", type=int, default=5, help="colours each side of a position that score it")
    ap.add_argument("--samples", type=int, default=16, help="profiles per side")
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--foreign-frac", type=float, default=0.0,
                    help="share of training frames with non-catalog faces (playing cards, backs; collect())")
    ap.add_argument("--real-frac", type=float, default=0.0,
                    help="share of the catalog frames that show only the real sv1 scans (collect())")
    ap.add_argument("--row-frac", type=float, default=0.0,
                    help="share of the catalog frames with cards laid edge to edge (collect())")
    ap.add_argument("--table-frac", type=float, default=0.0,
                    help="share of all training frames on the real TRAIN photos' surfaces (collect())")
    ap.add_argument("--out", default="var/train/edges")
    ap.add_argument("--evaluate", nargs="+", metavar="NPZ",
                    help="only report these edge models (files or bundle dirs) on the held-out frames, side by side")
    a = ap.parse_args(argv)
    if a.evaluate:
        print(json.dumps(evaluate(Path(a.bundle) / "detector.tflite", a.catalog, a.evaluate, a.held_out, a.seed),
                         indent=2))
        return
    build(Path(a.bundle) / "detector.tflite", a.catalog, a.out, a.frames, a.held_out, a.radius, a.half_window,
          a.samples, a.hidden, a.steps, a.batch, a.lr, a.seed, a.threads, a.foreign_frac, a.real_frac, a.row_frac,
          a.table_frac)


if __name__ == "__main__":
    main()
