"""Run an Identifier over labelled captures (and real playing-card photos) and write a Markdown report
with PNG plots: accuracy at printing and name level, error breakdowns, PR curve, calibration,
latency per stage, detector IoU."""

from __future__ import annotations

import csv
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np

from models.eval.identifiers import Identifier
from models.synth.catalog import read_index
from models.synth.dataset import read_labels

MIN_VISIBLE = 0.5  # a labelled card counts as "expected" when at least half its face is visible


def quad_iou(a, b) -> float:
    a, b = np.asarray(a, np.float32).reshape(4, 2), np.asarray(b, np.float32).reshape(4, 2)
    ha, hb = cv2.convexHull(a), cv2.convexHull(b)
    inter, _ = cv2.intersectConvexConvex(ha, hb)
    union = abs(cv2.contourArea(ha)) + abs(cv2.contourArea(hb)) - inter
    return float(inter / union) if union > 0 else 0.0


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _groups(index: dict[str, dict]) -> tuple[dict[str, int], dict[str, int]]:
    ill = Counter(r.get("illustration_id") for r in index.values() if r.get("illustration_id"))
    name = Counter(r.get("name") for r in index.values() if r.get("name"))
    return ill, name


def evaluate_captures(identifier: Identifier, captures_dir: str | Path, index: dict[str, dict],
                      limit: int | None = None) -> tuple[list[dict], list[dict]]:
    """Per expected (truth) card records and per-frame timing records."""
    captures_dir = Path(captures_dir)
    rows = read_labels(captures_dir)[:limit]
    paths = [captures_dir / r["image"] for r in rows]
    hints = [{"quads": [c["quad"] for c in r["cards"]]} for r in rows]
    results = identifier.identify_paths(paths, hints)
    ill_n, name_n = _groups(index)
    records, frames = [], []
    for r, (cards, ms) in zip(rows, results):
        frames.append({"image": r["image"], "ms": ms, "n_pred": len(cards)})
        truth = [c for c in r["cards"] if c["visible"] >= MIN_VISIBLE]
        used: set[int] = set()
        for t in truth:
            best, best_iou = None, 0.0
            for j, p in enumerate(cards):
                if j in used:
                    continue
                iou = quad_iou(t["quad"], p.quad) if p.quad is not None else (0.31 if len(truth) == 1 else 0.0)
                if iou > best_iou:
                    best, best_iou = j, iou
            pred = cards[best] if best is not None and best_iou >= 0.3 else None
            if pred is not None:
                used.add(best)
            tid = t["card_id"]
            trow = index.get(tid, {})
            rec = {
                "image": r["image"], "truth": tid, "truth_name": trow.get("name"),
                "distortions": r["params"].get("distortions", []), "visible": t["visible"],
                "detected": pred is not None, "iou": best_iou if pred is not None else 0.0,
                "pred": pred.card_id if pred else None, "score": pred.score if pred else 0.0,
                "margin": pred.margin if pred else 0.0, "decision": pred.decision if pred else "no_card",
                "top3": [c for c, _ in (pred.candidates[:3] if pred else [])],
                "has_reprint": ill_n.get(trow.get("illustration_id"), 0) > 1,
                "has_same_name": name_n.get(trow.get("name"), 0) > 1,
            }
            prow = index.get(rec["pred"] or "", {})
            rec["top1"] = rec["pred"] == tid
            rec["top3_hit"] = tid in rec["top3"] or rec["top1"]
            rec["name_top1"] = bool(prow) and prow.get("name") == trow.get("name")
            rec["name_top3"] = any(index.get(c, {}).get("name") == trow.get("name") for c in rec["top3"]) or rec["name_top1"]
            if rec["top1"]:
                rec["error"] = None
            elif not rec["detected"]:
                rec["error"] = "not_detected"
            elif prow and prow.get("illustration_id") == trow.get("illustration_id"):
                rec["error"] = "same_illustration"
            elif rec["name_top1"]:
                rec["error"] = "same_name"
            else:
                rec["error"] = "other"
            records.append(rec)
    return records, frames


def evaluate_photos(identifier: Identifier, photos_dir: str | Path) -> dict:
    """Detector IoU on real playing-card photos with axis-aligned boxes (``<split>_labels.csv`` next to the
    folder, else Pascal VOC xml beside each image)."""
    photos_dir = Path(photos_dir)
    boxes: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
    csv_file = photos_dir.parent / f"{photos_dir.name}_labels.csv"
    if csv_file.is_file():
        with open(csv_file, newline="") as f:
            for row in csv.DictReader(f):
                boxes[row["filename"]].append(tuple(float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax")))
    else:
        import xml.etree.ElementTree as ET

        for x in sorted(photos_dir.glob("*.xml")):
            root = ET.parse(x).getroot()
            fn = root.findtext("filename")
            for o in root.iter("object"):
                bb = o.find("bndbox")
                boxes[fn].append(tuple(float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")))
    ious, tp, n_pred, n_gt, ms = [], 0, 0, 0, []
    for fn, gts in sorted(boxes.items()):
        img = cv2.imread(str(photos_dir / fn), cv2.IMREAD_COLOR)
        if img is None:
            continue
        t0 = time.perf_counter()
        quads = identifier.detect(img)
        ms.append((time.perf_counter() - t0) * 1e3)
        preds = [(float(q[:, 0].min()), float(q[:, 1].min()), float(q[:, 0].max()), float(q[:, 1].max())) for q in quads]
        n_pred += len(preds)
        n_gt += len(gts)
        used: set[int] = set()
        for g in gts:
            best, bi = 0.0, None
            for j, p in enumerate(preds):
                if j not in used and box_iou(g, p) > best:
                    best, bi = box_iou(g, p), j
            if bi is not None and best >= 0.5:
                used.add(bi)
                tp += 1
            ious.append(best)
    return {"images": len(ms), "gt_boxes": n_gt, "pred_boxes": n_pred,
            "mean_best_iou": float(np.mean(ious)) if ious else 0.0,
            "recall@0.5": tp / n_gt if n_gt else 0.0, "precision@0.5": tp / n_pred if n_pred else 0.0,
            "ms_mean": float(np.mean(ms)) if ms else 0.0}


def _rate(recs: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in recs])) if recs else float("nan")


def summarize(records: list[dict], frames: list[dict]) -> dict:
    s: dict = {"frames": len(frames), "expected_cards": len(records)}
    for k in ("top1", "top3_hit", "name_top1", "name_top3", "detected"):
        s[k] = _rate(records, k)
    det = [r["iou"] for r in records if r["detected"]]
    s["detector_mean_iou"] = float(np.mean(det)) if det else 0.0
    s["detector_recall@0.5"] = float(np.mean([r["detected"] and r["iou"] >= 0.5 for r in records])) if records else 0.0
    by_d: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        for d in r["distortions"] or ["clean"]:
            by_d[d].append(r)
    s["by_distortion"] = {d: {"n": len(v), "top1": _rate(v, "top1"), "detected": _rate(v, "detected")} for d, v in sorted(by_d.items())}
    groups = {"has_reprint (same illustration in catalog)": [r for r in records if r["has_reprint"]],
              "has_same_name (other printings of the name)": [r for r in records if r["has_same_name"]],
              "unique": [r for r in records if not r["has_reprint"] and not r["has_same_name"]]}
    s["by_group"] = {g: {"n": len(v), "top1": _rate(v, "top1"), "name_top1": _rate(v, "name_top1")} for g, v in groups.items()}
    s["errors"] = dict(Counter(r["error"] for r in records if r["error"]))
    dec = Counter(r["decision"] for r in records)
    acc = [r for r in records if r["decision"] == "accept"]
    s["decisions"] = dict(dec)
    s["accept_precision"] = _rate(acc, "top1") if acc else float("nan")
    s["accept_recall"] = sum(r["top1"] for r in acc) / len(records) if records else 0.0
    lat: dict[str, list[float]] = defaultdict(list)
    for f in frames:
        for k, v in f["ms"].items():
            lat[k].append(v)
    s["latency_ms"] = {k: {"mean": float(np.mean(v)), "p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95))}
                       for k, v in sorted(lat.items())}
    scores = np.clip([r["score"] for r in records], 0, 1)
    correct = np.array([r["top1"] for r in records], float)
    bins = np.linspace(0, 1, 11)
    ece, rel = 0.0, []
    for lo, hi in zip(bins[:-1], bins[1:]):
        m = (scores >= lo) & ((scores < hi) if hi < 1 else (scores <= hi))
        if m.any():
            ece += m.mean() * abs(scores[m].mean() - correct[m].mean())
            rel.append((float((lo + hi) / 2), float(scores[m].mean()), float(correct[m].mean()), int(m.sum())))
    s["ece"] = float(ece)
    s["reliability"] = rel
    return s


def _plots(records: list[dict], s: dict, out: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    scores = np.array([r["score"] for r in records], float)
    correct = np.array([r["top1"] for r in records], bool)
    n = len(records)
    ths = np.unique(np.r_[scores, 0, 1])
    prec, rec = [], []
    for t in ths:
        a = scores >= t
        prec.append(correct[a].mean() if a.any() else 1.0)
        rec.append((correct & a).sum() / n if n else 0)
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].plot(rec, prec, "-")
    ax[0].set_xlabel("recall (correct accepts / expected cards)")
    ax[0].set_ylabel("precision of accepts")
    ax[0].set_title("accept precision / recall vs score threshold")
    ax[0].grid(alpha=0.3)
    ax[1].plot(ths, prec, label="precision")
    ax[1].plot(ths, rec, label="recall")
    ax[1].set_xlabel("score threshold")
    ax[1].legend()
    ax[1].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "pr_curve.png", dpi=90)
    plt.close(fig)
    files["pr"] = "pr_curve.png"

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    if s["reliability"]:
        c, conf, accu, cnt = zip(*s["reliability"])
        ax.bar(c, accu, width=0.09, alpha=0.6, label="accuracy")
        ax.plot(conf, accu, "o-", label="mean score vs accuracy")
    ax.set_xlabel("score")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(f"reliability (ECE={s['ece']:.3f})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "calibration.png", dpi=90)
    plt.close(fig)
    files["calibration"] = "calibration.png"

    lat = s["latency_ms"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ks = list(lat)
    ax.bar(ks, [lat[k]["mean"] for k in ks], label="mean")
    ax.scatter(ks, [lat[k]["p95"] for k in ks], color="r", zorder=3, label="p95")
    ax.set_ylabel("ms")
    ax.set_title("latency per stage")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=90)
    plt.close(fig)
    files["latency"] = "latency.png"

    bd = s["by_distortion"]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ks = list(bd)
    ax.bar(ks, [bd[k]["top1"] for k in ks])
    ax.set_ylim(0, 1)
    ax.set_ylabel("top-1")
    ax.set_title("top-1 by distortion")
    plt.setp(ax.get_xticklabels(), rotation=40, ha="right")
    fig.tight_layout()
    fig.savefig(out / "by_distortion.png", dpi=90)
    plt.close(fig)
    files["by_distortion"] = "by_distortion.png"

    ious = [r["iou"] for r in records if r["detected"]]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(ious, bins=20, range=(0, 1))
    ax.set_xlabel("IoU (predicted vs labelled quad)")
    ax.set_title("detector IoU on captures")
    fig.tight_layout()
    fig.savefig(out / "detector_iou.png", dpi=90)
    plt.close(fig)
    files["iou"] = "detector_iou.png"
    return files


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.1f}%"


def write_report(identifier: Identifier, captures_dir: str | Path, catalog_dir: str | Path | None, out: str | Path,
                 photos_dir: str | Path | None = None, sheets: dict[str, str] | None = None,
                 limit: int | None = None, title: str = "Identifier evaluation") -> dict:
    """Evaluate and write ``out/REPORT.md`` + PNGs + ``metrics.json`` + ``records.jsonl``; returns the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index = read_index(catalog_dir) if catalog_dir else {}
    t0 = time.perf_counter()
    records, frames = evaluate_captures(identifier, captures_dir, index, limit)
    s = summarize(records, frames)
    s["identifier"] = identifier.name
    s["captures"] = str(captures_dir)
    s["eval_seconds"] = time.perf_counter() - t0
    if photos_dir and Path(photos_dir).is_dir():
        s["photos"] = evaluate_photos(identifier, photos_dir)
    files = _plots(records, s, out)
    with open(out / "records.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    (out / "metrics.json").write_text(json.dumps(s, indent=2, default=float))

    L = [f"# {title}", "", f"- identifier: `{identifier.name}`; captures: `{captures_dir}`; catalog: `{catalog_dir}`",
         f"- frames: {s['frames']}, expected cards (visible >= {MIN_VISIBLE:.0%}): {s['expected_cards']}", "",
         "## Accuracy", "", "| level | top-1 | top-3 |", "|---|---|---|",
         f"| printing (card_id) | {_pct(s['top1'])} | {_pct(s['top3_hit'])} |",
         f"| name | {_pct(s['name_top1'])} | {_pct(s['name_top3'])} |", "",
         f"Decisions: {s['decisions']}; accept precision {_pct(s['accept_precision'])}, accept recall {_pct(s['accept_recall'])}.", "",
         "## Errors", "", "| error | n |", "|---|---|"]
    L += [f"| {k} | {v} |" for k, v in sorted(s["errors"].items())]
    L += ["", "### By near-duplicate group", "", "| group | n | top-1 | name top-1 |", "|---|---|---|---|"]
    L += [f"| {g} | {v['n']} | {_pct(v['top1'])} | {_pct(v['name_top1'])} |" for g, v in s["by_group"].items()]
    L += ["", "### By distortion", "", "| distortion | n | top-1 | detected |", "|---|---|---|---|"]
    L += [f"| {d} | {v['n']} | {_pct(v['top1'])} | {_pct(v['detected'])} |" for d, v in s["by_distortion"].items()]
    L += ["", f"![by distortion]({files['by_distortion']})", "", "## Accept precision / recall", "",
          f"![PR]({files['pr']})", "", "## Calibration", "", f"ECE = {s['ece']:.3f}", "", f"![calibration]({files['calibration']})",
          "", "## Latency per stage (ms)", "", "| stage | mean | p50 | p95 |", "|---|---|---|---|"]
    L += [f"| {k} | {v['mean']:.1f} | {v['p50']:.1f} | {v['p95']:.1f} |" for k, v in s["latency_ms"].items()]
    L += ["", f"![latency]({files['latency']})", "", "## Detector", "",
          f"Captures: mean IoU of matched quads {s['detector_mean_iou']:.3f}, recall@IoU0.5 {_pct(s['detector_recall@0.5'])}.", "",
          f"![IoU]({files['iou']})", ""]
    if "photos" in s:
        p = s["photos"]
        L += [f"Real playing-card photos (`{photos_dir}`, axis-aligned boxes vs the bounding box of predicted quads): "
              f"{p['images']} images, {p['gt_boxes']} boxes, {p['pred_boxes']} predictions; mean best IoU {p['mean_best_iou']:.3f}, "
              f"recall@0.5 {_pct(p['recall@0.5'])}, precision@0.5 {_pct(p['precision@0.5'])}, {p['ms_mean']:.1f} ms/image.", ""]
    if sheets:
        L += ["## Contact sheets", ""]
        L += [f"- [{k}]({v})" for k, v in sheets.items()]
        L += [""] + [f"![{k}]({v})" for k, v in sheets.items()]
    (out / "REPORT.md").write_text("\n".join(L) + "\n")
    return s
