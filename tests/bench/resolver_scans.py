"""The resolver alone, on the scans the device really sends it (for before/after comparisons of resolver code).

    # 1. the device's ambiguous scans of models.eval.final's frames, as stored rows (JPEG crop + device top-5)
    .venv/bin/python -m tests.bench.resolver_scans collect --n 3000 --seed 900000 --out var/scans-900000.jsonl
    # 2. resolve each one (1 OpenCV thread): CPU ms per scan and top-1
    .venv/bin/python -m tests.bench.resolver_scans time --scans var/scans-900000.jsonl
    # the same scans without the frame around the quad (what a device without crop_margin sends):
    .venv/bin/python -m tests.bench.resolver_scans time --scans var/scans-900000.jsonl --no-margin
    # the same scans through older resolver code (its own calibration file too):
    git worktree add /tmp/old b1fb7da && (cd /tmp/old && PYTHONPATH=/tmp/old /work/main/.venv/bin/python \
        /work/main/tests/bench/resolver_scans.py time --scans /work/main/var/scans-900000.jsonl \
        --catalog /work/main/var/catalog --data-dir /work/main/var)

Why apart from ``models.eval.final``: that one re-runs the device on every frame, so the resolver's time is
measured among the device's and the capture simulator's, and a change of device code changes which scans
the resolver sees. Here the scans are fixed once, so two resolver versions answer exactly the same inputs.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def collect(a) -> int:
    from device.vision.geometry import quad_iou
    from models.eval.final import MIN_VISIBLE, FinalAnswerSystem
    from models.synth.capture import CaptureConfig
    from models.synth.dataset import make_frame

    system = FinalAnswerSystem.build(a.bundle, a.catalog, a.data_dir)
    ids = sorted(system.resolver.index.ids)
    if a.subset == "sv1":
        ids = [c for c in ids if c.startswith("sv1-")]
    cfg = CaptureConfig(size=a.frame_size, mode=a.mode)
    n = 0
    with open(a.out, "w") as f:
        for i in range(a.n):
            frame, labels = make_frame(a.catalog, ids, a.seed, i, cfg)
            res = system.pipeline.process(frame)
            for gt in labels["cards"]:
                if gt.get("visible", 1.0) < MIN_VISIBLE:
                    continue
                for c in res.cards:
                    if c.decision != "ambiguous" or quad_iou(c.quad, np.array(gt["quad"], np.float32)) < 0.5:
                        continue
                    f.write(json.dumps(system.scan_record(c, gt["card_id"], frame=i)) + "\n")
                    n += 1
    print(f"{n} ambiguous scans from {a.n} frames (seed {a.seed}, {a.subset}, {a.mode}, "
          f"{a.frame_size[0]}x{a.frame_size[1]}) -> {a.out}")
    return 0


def time_scans(a) -> int:
    import cv2

    cv2.setNumThreads(1)
    from server.resolver.service import build_resolver
    from server.resolver.verify import split_margin

    r = build_resolver(a.catalog, a.data_dir)
    if a.calibration:
        from server.resolver.resolver import Calibration

        r.calibration = Calibration.load(a.calibration)
    r.config.ocr = False
    rows = [json.loads(line) for line in open(a.scans)]
    if not rows:
        print("no scans", file=sys.stderr)
        return 1
    imgs = [cv2.imdecode(np.frombuffer(base64.b64decode(x["crop_jpeg_b64"]), np.uint8), cv2.IMREAD_COLOR) for x in rows]
    # load the models; then empty the face cache again
    r.resolve_crop(imgs[0], rows[0]["device_candidates"], margin=rows[0].get("crop_margin", 0.0))
    r.catalog._cache.clear()
    cpu, ok, resolved, resolved_ok = [], 0, 0, 0
    per_scan = open(a.rows, "w") if a.rows else None
    for x, img in zip(rows, imgs):
        margin = x.get("crop_margin", 0.0)
        if a.no_margin and margin:  # A/B: the same scans as a device without crop_margin would send them
            img, margin = split_margin(img, margin)[0], 0.0
        c0 = time.process_time()
        res = r.resolve_crop(img, x["device_candidates"], margin=margin)
        cpu.append((time.process_time() - c0) * 1e3)
        if per_scan:
            per_scan.write(json.dumps({"frame": x["frame"], "card_id": x["card_id"], "answer": res.card_id,
                                       "status": res.status, "confidence": res.confidence,
                                       "candidates": res.candidates[:5], "crop_hw": list(img.shape[:2]),
                                       "blur_sigma": res.detail.get("blur_sigma"),
                                       "contenders": res.detail.get("contenders")}) + "\n")
        ok += res.card_id == x["card_id"]
        if res.status == "resolved":
            resolved += 1
            resolved_ok += res.card_id == x["card_id"]
    out = {"scans": len(rows), "top1": round(ok / len(rows), 4), "resolved_share": round(resolved / len(rows), 4),
           "resolved_precision": round(resolved_ok / resolved, 4) if resolved else None,
           "cpu_ms_median": round(statistics.median(cpu), 1), "cpu_ms_p90": round(float(np.percentile(cpu, 90)), 1),
           "code": str(Path.cwd())}
    print(json.dumps(out))
    return 0


def fit_scans(a) -> int:
    """Refit the resolver calibration on collected scans (``models.server_model.calibrate.fit``): the same
    fit as ``models.eval.final --fit-calibration``, without re-running the device on every frame."""
    import cv2

    from models.server_model.calibrate import evaluate, fit, fit_null
    from server.resolver.resolver import FEATURES, Calibration
    from server.resolver.service import build_resolver

    r = build_resolver(a.catalog, a.data_dir)
    if a.calibration:
        r.calibration = Calibration.load(a.calibration)
    rows = []
    for path in a.scans.split(","):
        for line in open(path):
            x = json.loads(line)
            img = cv2.imdecode(np.frombuffer(base64.b64decode(x["crop_jpeg_b64"]), np.uint8), cv2.IMREAD_COLOR)
            _, ids, X, _ = r.evidence(img, x["device_candidates"], margin=x.get("crop_margin", 0.0))
            rows.append({"card_id": x["card_id"], "ids": ids, "X": X})
    before = evaluate(r, rows, r.config.accept_confidence)
    meta = {"n": len(rows), "scans": a.scans, "source": "device-ambiguous scans of simulated captures "
            "(tests/bench/resolver_scans.py collect; card_id null: models.eval.negatives --scans-out)",
            "model_id": r.embedder.model_id, "fitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if a.null_only:  # the ranking of the loaded calibration stays; only "none of these" is refitted
        v, nb = fit_null(rows, r.calibration.vector())
        meta = {**r.calibration.meta, "null_model": {**meta, "n_none_of_these": sum(x["card_id"] is None for x in rows)}}
        r.calibration = Calibration(dict(r.calibration.weights), r.calibration.temperature, meta, nb,
                                    {f: float(x) for f, x in zip(FEATURES, v)})
    else:
        w, nb = fit(rows)
        r.calibration = Calibration({f: float(v) for f, v in zip(FEATURES, w)}, 1.0, meta, nb)
    after = evaluate(r, rows, r.config.accept_confidence)
    r.calibration.save(a.out)
    print("calibration before:", json.dumps(before), "\nafter (train):", json.dumps(after), "\nwrote", a.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    from models.eval import frame_size

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect", help="the device's ambiguous scans of simulated scanner-box frames")
    c.add_argument("--bundle", default="models/bundles/demo")
    c.add_argument("--catalog", default="var/catalog")
    c.add_argument("--data-dir", default="var")
    c.add_argument("--subset", choices=["all", "sv1"], default="all")
    c.add_argument("--mode", choices=["scanner_box", "free", "grid"], default="scanner_box",
                   help="capture mode of the frames (free = hand-held)")
    c.add_argument("--n", type=int, default=3000, help="frames")
    c.add_argument("--seed", type=int, default=900_000)
    c.add_argument("--frame-size", type=frame_size, default=(640, 480), metavar="WxH",
                   help="simulated camera frame size (the appliance's picamera2 default is 1280x960)")
    c.add_argument("--out", required=True)
    t = sub.add_parser("time", help="resolve the collected scans: top-1 and CPU ms per scan (1 OpenCV thread)")
    t.add_argument("--scans", required=True)
    t.add_argument("--catalog", default="var/catalog")
    t.add_argument("--data-dir", default="var")
    t.add_argument("--rows", help="also write one JSON line per scan (truth, answer, shortlist) to this file")
    t.add_argument("--calibration", help="resolver calibration JSON to use (default: the committed one)")
    t.add_argument("--no-margin", action="store_true",
                   help="resolve only the card inside each crop's margin (as if the device sent no crop_margin)")
    f = sub.add_parser("fit", help="refit the resolver calibration on collected scans")
    f.add_argument("--scans", required=True, help="one or more collected files, comma-separated")
    f.add_argument("--catalog", default="var/catalog")
    f.add_argument("--data-dir", default="var")
    f.add_argument("--out", required=True, help="calibration JSON to write")
    f.add_argument("--calibration", help="start from this calibration JSON (default: the committed one)")
    f.add_argument("--null-only", action="store_true",
                   help="keep the calibration's ranking weights; fit only its \"none of these\" model "
                        "(calibrate.fit_null), e.g. with negatives' scans (models.eval.negatives --scans-out)")
    a = ap.parse_args(argv)
    return {"collect": collect, "time": time_scans, "fit": fit_scans}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
