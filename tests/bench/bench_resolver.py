"""Resolver benchmark on simulated captures over the whole rendered catalog.

    .venv/bin/python tests/bench/bench_resolver.py --catalog var/catalog --n 200

Samples: catalog faces through ``augment_crop`` (the capture simulator's rectified-crop model), a share of
them printings that share their illustration with another printing (reprints). Two shortlist modes:

* ``server``: the server embedding's top-k (+ reprints of the leaders) only;
* ``device``: plus the device's candidates for an ambiguous reprint scan (the printings of that art),
  as an ambiguous scan carries them.

Prints top-1, top-1 on reprints, whether the true card was in the shortlist, the share resolved at the
configured confidence threshold and its precision, and median/p90 ms per resolution (embedding + FAISS +
verification (+ OCR tie-break when installed)). Uses ``var`` as data_dir: the index is built once.

These crops are catalog faces through ``augment_crop``, and the ``device`` mode's candidates are *all*
printings of the art, so this is the resolver's best case. The production path (the device's own crops and
top-5 on simulated captures, accepted scans included) is measured by ``python -m models.eval.final``
(``make eval-final``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", default="var/catalog")
    ap.add_argument("--data-dir", default="var")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--calibration", default=None)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=12345, help="differs from the calibration seed")
    ap.add_argument("--reprint-frac", type=float, default=0.5)
    ap.add_argument("--modes", default="server,device")
    ap.add_argument("--no-ocr", action="store_true")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch/OpenCV threads (default: library default)")
    a = ap.parse_args(argv)
    if a.threads:
        import cv2
        import torch

        cv2.setNumThreads(a.threads)
        torch.set_num_threads(a.threads)

    from models.server_model.calibrate import sample_cards
    from models.synth.capture import augment_crop
    from server.resolver.service import build_resolver

    t = time.time()
    r = build_resolver(a.catalog, a.data_dir, checkpoint=a.checkpoint, calibration=a.calibration)
    r.config.ocr = not a.no_ocr
    print(f"resolver ready in {time.time() - t:.0f} s: {len(r.index)} cards, index={r.index.meta.get('kind')}, "
          f"model={r.embedder.model_id}, ocr={'on' if r.config.ocr else 'off'}", flush=True)
    rng = np.random.default_rng(a.seed)
    cards = sample_cards(r, a.n, rng, a.reprint_frac)
    reprint = {c: len(r.by_ill.get(r.meta.get(c, {}).get("illustration_id") or c, [])) > 1 for c in cards}
    report = {}
    for mode in a.modes.split(","):
        crng = np.random.default_rng(a.seed + 1)  # same crops in both modes
        rows = []
        for cid in cards:
            crop = augment_crop(r.catalog.image(cid), crng, 1.0)
            dev = []
            if mode == "device":
                ill = r.meta.get(cid, {}).get("illustration_id") or cid
                dev = list(r.by_ill.get(ill, [cid]))[:8]
            res = r.resolve_crop(crop, dev)
            rows.append({"card_id": cid, "top": res.card_id, "conf": res.confidence, "status": res.status, "ms": res.ms,
                         "in": any(c["card_id"] == cid for c in res.candidates), "reprint": reprint[cid]})
        ok = np.array([x["top"] == x["card_id"] for x in rows])
        rp = np.array([x["reprint"] for x in rows])
        resolved = np.array([x["status"] == "resolved" for x in rows])
        ms = np.array([x["ms"] for x in rows])
        rep = {"n": len(rows), "top1": float(ok.mean()), "top1_reprints": float(ok[rp].mean()) if rp.any() else None,
               "n_reprints": int(rp.sum()), "top1_others": float(ok[~rp].mean()) if (~rp).any() else None,
               "in_shortlist": float(np.mean([x["in"] for x in rows])), "resolved_share": float(resolved.mean()),
               "resolved_precision": float(ok[resolved].mean()) if resolved.any() else None,
               "ms_p50": float(np.median(ms)), "ms_p90": float(np.percentile(ms, 90))}
        report[mode] = rep
        print(f"[{mode}] " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in rep.items()),
              flush=True)
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
