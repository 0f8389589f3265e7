"""Device benchmark (``make bench-device``): latency per stage with 1 TFLite thread, resident memory, and
the counter-scan count on simulated stack sequences, using the *device* pipeline and a bundle.

    .venv/bin/python tests/bench/bench_device.py [--bundle models/bundles/demo] [--frames 200] [--threads 1]
        [--catalog var/catalog] [--stacks 3] [--frame-size 1280x960] [--max-separate N]
    .venv/bin/python tests/bench/bench_device.py --trace 5014      # one stack sequence, frame by frame

* latency: median / p90 ms of detect, embed, match, total over simulated 640×480 captures (free + grid;
  ``--frame-size 1280x960`` for the appliance's picamera2 default mode, the resize into the detector is then
  part of ``detect``); goal ≤ 15 ms median total with one thread on this machine;
* memory: peak RSS (``/proc/self/status`` VmHWM) of a fresh process that loaded the bundle and processed the
  frames (read from JPEG files written beforehand), goal ≤ 300 MB;
* stack: ``models.synth.stack`` sequences → appliance stack logic → per-card counts vs ground truth (exact
  or not: needs every placement counted *and* identified right) and the number of placements alone;
* ``--trace SEED``: one stack sequence (seed 5000 + k is the bench's k-th) printed frame by frame — the phase,
  the cards on the mat with their visible share, what the device read (card, decision, score, flag, calibrated
  confidence, a reprint contest's patch fit; area
  relative to the resting card and centre shift in its heights), and the tracker's events.

Frames come from ``models.synth`` (seeded); without a rendered catalog (``--catalog``) synthetic card faces
are used for latency/RSS and the stack part is skipped. Accuracy lives in ``python -m models.vision_eval``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def rss_mb() -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            k, v = line.split(":")
            out[k] = round(int(v.split()[0]) / 1024, 1)
    return out


def frames(catalog: str | None, n: int, seed: int = 424_242, size: tuple[int, int] = (640, 480),
           foreign: bool = False):
    from models.synth.capture import CaptureConfig

    if foreign:  # cards that are no catalog card (playing cards, backs): every detection matches nothing
        from models.synth.dataset import make_foreign_frame

        for i in range(n):
            yield make_foreign_frame(seed, i, CaptureConfig(size=size, mode="free"))[0]
    elif catalog and Path(catalog, "index.jsonl").is_file():
        from models.synth.dataset import catalog_ids, make_frame

        ids = catalog_ids(catalog)
        for i in range(n):
            mode = "grid" if i % 5 == 4 else "free"
            yield make_frame(catalog, ids, seed, i, CaptureConfig(size=size, mode=mode))[0]
    else:
        from models.synth.capture import simulate_capture
        from tests.test_vision import card_image

        for i in range(n):
            rng = np.random.default_rng(seed + i)
            yield simulate_capture([card_image(i)], [f"x-{i}"], rng, CaptureConfig(size=size))[0]


def frames_dir(args) -> Path:
    """Simulated frames written once as JPEG files, so the measuring process holds only the device pipeline
    (the simulator's image caches would otherwise dominate its RSS)."""
    import cv2

    w, h = args.frame_size
    d = ROOT / "var/bench_device_frames" / (f"n{args.frames}" if (w, h) == (640, 480) else f"n{args.frames}-{w}x{h}")
    if args.foreign:
        d = d.with_name(d.name + "-foreign")
    if not (d / "done").is_file():
        d.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(frames(args.catalog, args.frames, size=args.frame_size, foreign=args.foreign)):
            cv2.imwrite(str(d / f"{i:05d}.jpg"), f, [cv2.IMWRITE_JPEG_QUALITY, 92])
        (d / "done").write_text("ok")
    return d


def latency(args) -> dict:
    import cv2

    cv2.setNumThreads(1)
    from device.vision.pipeline import VisionPipeline

    t0 = time.perf_counter()
    pipe = VisionPipeline.from_bundle(args.bundle, args.threads)
    if args.max_separate is not None:
        pipe.max_separate = args.max_separate
    load_s = time.perf_counter() - t0
    files = sorted(Path(args.frames_dir).glob("*.jpg"))
    for p in files[:5]:
        pipe.process(cv2.imread(str(p)))  # warm-up
    ms = {k: [] for k in ("detect", "embed", "match", "total")}
    per_card_embed = []
    for p in files:  # one frame in memory at a time, like the camera loop
        r = pipe.process(cv2.imread(str(p)))
        for k in ms:
            ms[k].append(r.ms[k])
        if r.cards:
            per_card_embed.append(r.ms["embed"] / len(r.cards))
    out = {"frames": len(files), "frame_size": list(args.frame_size), "threads": args.threads, "bundle_load_s": round(load_s, 2),
           "median_ms": {k: round(float(np.median(v)), 2) for k, v in ms.items()},
           "p90_ms": {k: round(float(np.percentile(v, 90)), 2) for k, v in ms.items()},
           "embed_ms_per_card_median": round(float(np.median(per_card_embed)), 2) if per_card_embed else None}
    out["rss_mb"] = rss_mb()
    return out


def _sequence(args, seed: int, ids: list[str]):
    import cv2

    from models.synth.stack import StackConfig, simulate_stack

    rng = np.random.default_rng(seed)
    chosen = [ids[int(j)] for j in rng.choice(len(ids), 8, replace=False)]
    images = {c: cv2.imread(str(Path(args.catalog) / f"{c}.jpg")) for c in chosen}
    return simulate_stack(images, args.placements, rng, StackConfig(p_same_again=0.25, p_slide_on_top=0.25))


def trace(args) -> int:
    from device.vision.geometry import quad_iou
    from device.vision.pipeline import VisionPipeline
    from device.vision.stack import Observation, StackTracker
    from models.synth.dataset import catalog_ids

    pipe = VisionPipeline.from_bundle(args.bundle, args.threads)
    if args.max_separate is not None:
        pipe.max_separate = args.max_separate
    seq = _sequence(args, args.trace, catalog_ids(args.catalog))
    tr = StackTracker()
    for i, (frame, label) in enumerate(seq.frames()):
        res = pipe.process(frame)
        obs = Observation.from_frame_result(res)
        rest = tr.stack[-1] if tr.stack else None
        reads = []
        for c in obs.cards + obs.others:
            r = c.result
            row = [c.card_id, getattr(r, "decision", "rejected"), round(getattr(r, "score", 0.0), 3), c.flag]
            if getattr(r, "confidence", None) is not None:
                row.append(f"conf {r.confidence:.3f}")
            if getattr(r, "reprint_contest", False) and r.patch_fit is not None:
                row.append(f"fit {r.patch_fit:.3f}")  # a reprint contest: how well its patches were found
            if rest is not None:
                shift = float(np.linalg.norm(c.quad.mean(0) - rest.quad.mean(0))) / max(rest.height, 1.0)
                row += [f"area×{c.area / max(rest.area, 1e-6):.3f}", f"shift {shift:.3f}",
                        f"iou {quad_iou(c.quad, rest.quad):.2f}"]
            reads.append(row)
        events = [(e.kind, e.card_id) for e in tr.update(obs)]
        truth = [(c["card_id"], round(c["visible"], 2)) for c in label["cards"]]
        print(i, label["phase"], truth, "|", reads, "|", events)
    print("counted", tr.counts, "truth", seq.counts)
    return 0


def stack(args) -> dict:
    if not (args.catalog and Path(args.catalog, "index.jsonl").is_file()) or args.stacks <= 0:
        return {"skipped": "no rendered catalog (--catalog)"}
    from device.vision.pipeline import VisionPipeline
    from device.vision.stack import Observation, StackTracker
    from models.synth.dataset import catalog_ids

    pipe = VisionPipeline.from_bundle(args.bundle, args.threads)
    if args.max_separate is not None:
        pipe.max_separate = args.max_separate
    ids = catalog_ids(args.catalog)
    results = []
    busy_s, frames_n = 0.0, 0
    decisions: dict[str, int] = {}  # the decision recorded for each counted card (what the outbox gets)
    wrong: dict[str, int] = {}  # … of them naming another printing than the card on top in that frame
    for s in range(args.stacks):
        seq = _sequence(args, 5000 + s, ids)
        tr = StackTracker()
        for frame, label in seq.frames():
            t0 = time.perf_counter()
            events = tr.update(Observation.from_frame_result(pipe.process(frame)))
            busy_s += time.perf_counter() - t0  # device work only, not the simulator's rendering
            on_top = label["cards"][-1]["card_id"] if label["cards"] else None
            for e in events:
                if e.kind != "removed" and e.card is not None and e.card.result is not None:
                    d = e.card.result.decision
                    decisions[d] = decisions.get(d, 0) + 1
                    if e.card_id != on_top:
                        wrong[d] = wrong.get(d, 0) + 1
            frames_n += 1
        results.append({"seed": 5000 + s, "placements": sum(seq.counts.values()), "exact": tr.counts == seq.counts,
                        "placements_counted": sum(tr.counts.values()),
                        "expected": seq.counts, "counted": tr.counts})
    placements = sum(r["placements"] for r in results)
    # Cards/s the device sustains: placements over the time spent processing their frames (a sequence holds
    # ~12 frames per card: slide in, hold still, slide out), i.e. with a camera as fast as the pipeline.
    return {"sequences": len(results), "exact": sum(r["exact"] for r in results),
            "placement_count_exact": sum(r["placements"] == r["placements_counted"] for r in results),
            "frames": frames_n, "frames_per_card": round(frames_n / max(1, placements), 1),
            "cards_per_s": round(placements / busy_s, 2) if busy_s else None, "recorded_decisions": decisions,
            "recorded_wrong": wrong,
            "details": results}


def main() -> int:
    from models.eval import frame_size

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=str(ROOT / "models/bundles/demo"))
    ap.add_argument("--catalog", default=str(ROOT / "var/catalog"))
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stacks", type=int, default=3)
    ap.add_argument("--placements", type=int, default=12)
    ap.add_argument("--frame-size", type=frame_size, default=(640, 480), metavar="WxH",
                    help="simulated camera frame size of the latency frames (the appliance's picamera2 default is "
                         "1280x960; the stack sequences keep the simulator's own size)")
    ap.add_argument("--foreign", action="store_true",
                    help="latency frames of non-catalog cards (playing cards, card backs): what the second looks at "
                         "detections that match nothing cost")
    ap.add_argument("--out", default=str(ROOT / "var/reports/bench_device.json"), help="JSON report")
    ap.add_argument("--max-separate", type=int, default=None, metavar="N",
                    help="zoomed second passes for merged cards per frame (default: the pipeline's; 0 = none)")
    ap.add_argument("--trace", type=int, metavar="SEED", help="print one stack sequence frame by frame, then stop")
    ap.add_argument("--_child", choices=["latency", "stack"], help=argparse.SUPPRESS)
    ap.add_argument("--frames-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.trace is not None:
        return trace(args)
    if args._child:
        print(json.dumps(latency(args) if args._child == "latency" else stack(args)))
        return 0
    report = {}
    fdir = frames_dir(args)
    # each part in a fresh process: RSS is then the device pipeline's own, not this script's
    for part in ("latency", "stack"):
        r = subprocess.run([sys.executable, __file__, "--_child", part, "--frames-dir", str(fdir), *sys.argv[1:]],
                           capture_output=True, text=True,
                           # --threads is the whole pipeline's: TFLite, OpenCV (setNumThreads) and numpy's BLAS
                           # (the catalog product), which would otherwise take every core
                           env={**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": str(args.threads),
                                "OMP_NUM_THREADS": str(args.threads)})
        if r.returncode != 0:
            print(r.stderr[-3000:], file=sys.stderr)
            return 1
        report[part] = json.loads(r.stdout.strip().splitlines()[-1])
        print(part, json.dumps(report[part]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    lat = report["latency"]
    print(f"median total {lat['median_ms']['total']} ms with {lat['threads']} thread(s) "
          f"(detect {lat['median_ms']['detect']}, embed {lat['median_ms']['embed']}, match {lat['median_ms']['match']}); "
          f"peak RSS {lat['rss_mb'].get('VmHWM')} MB; stacks exact {report['stack'].get('exact', '-')}/"
          f"{report['stack'].get('sequences', '-')} (number of placements exact "
          f"{report['stack'].get('placement_count_exact', '-')}/{report['stack'].get('sequences', '-')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
