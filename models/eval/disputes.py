"""How far the embedding can be trusted to dispute a reprint verdict (``RerankConfig.dispute``).

For every card of simulated captures whose reading was a reprint contest (``Reprints.rerank`` re-scored its
leading illustration's printings), with the card among the contenders: which printing the patches chose, which
the embedding ranked first, by how much, and whether the device accepted. Prints, per capture set and per
embedding gap, how often each was right and how many accepts were wrong — the table the dispute rule was chosen
on (docs/device-vision.md, seventeenth session; development seeds, far from the evaluations' 900000 / 910000):

    python -m models.eval.disputes --bundle B --seed 780000 --n 1000 --out var/eval/disputes.jsonl

Every capture set is drawn from the same seed, as ``models.vision_eval`` draws them: ``--seed 910000 --sets free``
holds the hand-held frames of that evaluation (each reading's frame index is in ``--out``). The patch scores are
read with the bundle's own rerank settings and the dispute rule switched off (``dispute: None``), so that the
patches' verdicts are seen as they are; the decisions are the device's with bundle B as it is — give it a manifest
with ``"dispute": null`` to see what the device accepted without the rule.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

GAPS = (0.0, 0.005, 0.01, 0.02, 0.04, 1.0)
WEIGHT = 0.15  # RerankConfig.weight of the bundles this was studied on (score moved per unit of patch correlation)
# the full-catalog capture sets of models.vision_eval, by the names used here -> capture mode
SETS = {"box": "scanner_box", "grid": "grid", "free": "free", "row": "row", "fan": "fan"}


def contest_reads(pipe, frame: np.ndarray, labels: dict) -> list[dict]:
    """One row per contest reading of ``frame`` that lies on a labelled card (quad IoU ≥ 0.5)."""
    from device.vision.geometry import card_height, quad_iou

    rows = []
    cfg = pipe.rerank.model_copy(update={"dispute": None})
    for c in pipe.process(frame).cards:
        if c.crop is None or pipe.reprints is None:
            continue
        e = pipe.embedder.embed(c.crop)
        m = pipe.matcher.topk(e, 5)
        cont = pipe.reprints.contenders(m, pipe.matcher.matrix, e, cfg.max_contenders)
        if len(cont) < 2:
            continue
        _, detail = pipe.reprints.rerank(m, frame, c.quad, pipe.matcher.matrix, e, cfg)
        ious = [(quad_iou(c.quad, np.asarray(g["quad"], np.float32)), g["card_id"]) for g in labels["cards"]]
        iou, truth = max(ious) if ious else (0.0, None)
        if detail is None or iou < 0.5:
            continue
        names = [pipe.reprints.ids[int(pipe.reprints.member_row[k])] for k, _ in cont]
        rows.append({"truth": truth, "height": round(card_height(c.quad), 1), "decision": c.decision,
                     "emb": {n: round(s, 5) for n, (_, s) in zip(names, cont)}, "patch": detail["patch"]})
    return rows


def table(rows: list[dict]) -> dict:
    """Counts per capture set (agree / disagree) and per embedding gap of the disagreements."""
    out: dict = {"sets": defaultdict(Counter), "gaps": {}}
    gaps = []
    for r in rows:
        if r["truth"] not in r["emb"]:
            continue
        emb, patch = r["emb"], r["patch"]
        by_emb, by_patch = max(emb, key=emb.get), max(patch, key=patch.get)
        key = f"{r['set']} {'agree' if by_emb == by_patch else 'disagree'}"
        c = out["sets"][key]
        c["reads"] += 1
        c["patches_right"] += by_patch == r["truth"]
        c["embedding_right"] += by_emb == r["truth"]
        c["accepted"] += r["decision"] == "accept"
        c["accepted_wrong"] += r["decision"] == "accept" and by_patch != r["truth"]
        if by_emb != by_patch:
            gaps.append((emb[by_emb] - emb[by_patch], by_emb == r["truth"], by_patch == r["truth"],
                         r["decision"] == "accept"))
    for lo, hi in zip(GAPS, GAPS[1:]):
        sel = [g for g in gaps if lo <= g[0] < hi]
        out["gaps"][f"{lo:.3f}-{hi:.3f}"] = {"reads": len(sel), "embedding_right": sum(g[1] for g in sel),
                                             "patches_right": sum(g[2] for g in sel),
                                             "accepted": sum(g[3] for g in sel),
                                             "accepted_wrong": sum(g[3] and not g[2] for g in sel)}
    out["sets"] = {k: dict(v) for k, v in sorted(out["sets"].items())}
    # the embedding's gaps weighed into the contest's order instead of disputing it: the rerank score
    # lead − weight · (best patch − patch) + k · (embedding − lead) orders the printings as
    # weight · patch + k · embedding
    known = [r for r in rows if r["truth"] in r["emb"]]
    out["weighted_top1"] = {str(k): round(sum(
        max(r["patch"], key=lambda c: WEIGHT * r["patch"][c] + k * r["emb"][c]) == r["truth"] for r in known)
        / max(len(known), 1), 4) for k in (0.0, 0.25, 0.5, 1.0, 2.0)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="models/bundles/demo")
    ap.add_argument("--catalog", default="var/catalog")
    ap.add_argument("--seed", type=int, default=780_000, help="frame seed of every set (development: far from the "
                    "evaluations' 900000 / 910000)")
    ap.add_argument("--n", type=int, default=1000, help="frames a set (binder pages: a fifth)")
    ap.add_argument("--sets", default=",".join(SETS), help=f"comma-separated subset of {', '.join(SETS)}")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="also write every contest reading (JSON lines)")
    ap.add_argument("--rows", help="print the table of the readings an earlier run wrote (--out), running nothing")
    a = ap.parse_args(argv)
    if a.rows:
        print(json.dumps(table([json.loads(x) for x in Path(a.rows).read_text().splitlines() if x.strip()]), indent=1))
        return 0
    wanted = a.sets.split(",")
    unknown = sorted(set(wanted) - set(SETS))
    if unknown:
        ap.error(f"--sets: unknown {', '.join(unknown)} (known: {', '.join(SETS)})")
    from device.vision.pipeline import VisionPipeline
    from models.synth.dataset import catalog_ids, make_frame
    from models.vision_eval import capture_config

    pipe = VisionPipeline.from_bundle(a.bundle, a.threads)
    ids = catalog_ids(a.catalog)
    rows = []
    for name in wanted:
        mode = SETS[name]
        for i in range(max(1, a.n // 5) if mode == "grid" else a.n):
            frame, labels = make_frame(a.catalog, ids, a.seed, i, capture_config(mode))
            rows += [{"set": name, "seed": a.seed, "frame": i} | r for r in contest_reads(pipe, frame, labels)]
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(json.dumps(table(rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
