"""What the device does with card-shaped things that are not in the catalog (simulated scanner-box frames).

    .venv/bin/python -m models.eval.negatives --bundle models/bundles/demo --n 300 --seed 910000

Each frame holds one object where a card would lie, drawn from four kinds (a quarter each):

* ``playing_card``: a real playing card cut from the TRAIN photos by its box (TEST is never used);
* ``mtg_photo``: a card-shaped cut of a real Magic: The Gathering photo (CollectorVision, magic_card_detector);
* ``photo_patch``: a card-shaped patch of a real photo (TRAIN photos, away from the boxes' centres);
* ``plain_card``: a blank card — one colour, a border, sensor-like noise.

The frame goes through the capture simulator (lighting, blur, noise, JPEG) and the device pipeline. Reported
per kind: frames, detections, and how many of them the device accepted (always wrong here), sent to the
server as ambiguous (and of those ``low_score``: a clean confident detection below ``no_card_score``, see
``GateConfig.unmatched_to_server``), called no_card, or rejected at its gate; with ``--resolver`` also what the server's resolver then answers
(``final_resolved`` = a false entry in a collection, ``final_needs_review`` = a person is asked; with
``--low-score-accept-confidence 0.9`` as before that bar existed); with ``--catalog-frames N`` also the low_score
scans on ordinary catalog frames that lie on no labelled card; with ``--scans-out FILE`` the ambiguous scans as
stored rows (``card_id`` null), in ``tests.bench.resolver_scans``' format, so the resolver's calibration can be fitted
with them as "none of these" samples (use a seed far from the evaluation's 910000). Everything here is a real
image except the plain cards; the Pokémon catalog is not involved, so an accept is a false accept.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from models.eval import frame_size, shared_data

KINDS = ("playing_card", "mtg_photo", "photo_patch", "plain_card")
CARD_ASPECT = 88 / 63  # height / width


def _card_cut(img: np.ndarray, cx: float, cy: float, w: float) -> np.ndarray | None:
    h = w * CARD_ASPECT
    x0, y0 = int(round(cx - w / 2)), int(round(cy - h / 2))
    x1, y1 = int(round(cx + w / 2)), int(round(cy + h / 2))
    if w < 24 or x0 < 0 or y0 < 0 or x1 > img.shape[1] or y1 > img.shape[0]:
        return None
    return cv2.resize(img[y0:y1, x0:x1], (360, 504), interpolation=cv2.INTER_AREA)


class Objects:
    """Card-sized images of non-catalog things (see the module docstring)."""

    def __init__(self, data: Path):
        photos = data / "TensorFlow-Object-Detection-API-Tutorial-Train-Multiple-Objects-Windows-10" / "images"
        self.train = photos / "train"
        self.boxes = list(csv.DictReader(open(photos / "train_labels.csv", newline="")))
        self.mtg = sorted((data / "CollectorVision" / "examples" / "images").glob("*.jpg")) + \
            sorted((data / "magic_card_detector" / "example").glob("*.jpg"))
        self.train_imgs = sorted(self.train.glob("*.jpg"))
        if not self.boxes or not self.mtg or not self.train_imgs:
            raise FileNotFoundError(f"negatives need the playing-card TRAIN photos and the MTG photos under {data}")

    def draw(self, kind: str, rng: np.random.Generator) -> np.ndarray:
        for _ in range(50):
            out = self._try(kind, rng)
            if out is not None:
                return out
        raise RuntimeError(f"no {kind} object found")

    def _try(self, kind: str, rng: np.random.Generator) -> np.ndarray | None:
        if kind == "playing_card":
            b = self.boxes[int(rng.integers(len(self.boxes)))]
            img = cv2.imread(str(self.train / b["filename"]))
            if img is None:
                return None
            x0, y0, x1, y1 = (int(b[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
            if x1 - x0 < 20 or y1 - y0 < 28:
                return None
            return cv2.resize(img[y0:y1, x0:x1], (360, 504), interpolation=cv2.INTER_AREA)
        if kind in ("mtg_photo", "photo_patch"):
            pool = self.mtg if kind == "mtg_photo" else self.train_imgs
            img = cv2.imread(str(pool[int(rng.integers(len(pool)))]))
            if img is None:
                return None
            h, w = img.shape[:2]
            cw = float(rng.uniform(0.2, 0.6)) * min(w, h / CARD_ASPECT)
            return _card_cut(img, rng.uniform(cw / 2, w - cw / 2), rng.uniform(cw * CARD_ASPECT / 2, h - cw * CARD_ASPECT / 2), cw)
        card = np.empty((504, 360, 3), np.uint8)
        card[:] = rng.integers(30, 240, 3)
        cv2.rectangle(card, (0, 0), (359, 503), tuple(int(v) for v in rng.integers(0, 256, 3)), int(rng.integers(6, 30)))
        noise = rng.normal(0, 6, card.shape)
        return np.clip(card + noise, 0, 255).astype(np.uint8)


def frames(objects: Objects, n: int, seed: int, cfg):
    """(i, kind, frame, labels) for ``n`` capture frames of one non-catalog object each, the kinds in turn;
    frame ``i`` is seeded ``seed + i``."""
    from models.synth.capture import simulate_capture

    for i in range(n):
        rng = np.random.default_rng(seed + i)
        kind = KINDS[i % len(KINDS)]
        frame, labels = simulate_capture([objects.draw(kind, rng)], [f"not-a-card-{i}"], rng, cfg)
        yield i, kind, frame, labels


def run(a) -> dict:
    from device.vision.geometry import quad_iou
    from device.vision.pipeline import VisionPipeline
    from models.synth.capture import CaptureConfig

    objects = Objects(Path(a.shared_data))
    system = None
    if a.resolver:  # the server's answer too: a "resolved" here is a false entry in a collection
        from models.eval.final import FinalAnswerSystem

        system = FinalAnswerSystem.build(a.bundle, a.catalog, a.data_dir, calibration=a.calibration)
        if a.low_score_accept_confidence is not None:  # e.g. 0.9: what the resolver did before that bar
            system.resolver.config.low_score_accept_confidence = a.low_score_accept_confidence
        pipe = system.pipeline
    else:
        pipe = VisionPipeline.from_bundle(a.bundle, num_threads=1)
    if a.unmatched_to_server != "bundle":  # A/B of that policy on the same frames
        pipe.gate = pipe.gate.model_copy(update={"unmatched_to_server": a.unmatched_to_server == "on"})
    cfg = CaptureConfig(size=a.frame_size, mode="scanner_box")
    scans_out = open(a.scans_out, "w") if a.scans_out else None
    per: dict[str, Counter] = {k: Counter() for k in KINDS}
    resolved_conf: dict[str, list[float]] = {}  # the resolver's confidence in each false resolution
    for i, kind, frame, labels in frames(objects, a.n, a.seed, cfg):
        res = pipe.process(frame)
        c = per[kind]
        if system is not None:
            for card in res.cards:
                if scans_out is not None and card.decision == "ambiguous":
                    scans_out.write(json.dumps(system.scan_record(card, None, kind=kind, frame=i)) + "\n")
                fc = system.decide(card)
                c["final_" + fc.status] += 1
                if card.quality_flag == "low_score":
                    c["low_score_final_" + fc.status] += 1
                if fc.status == "resolved":
                    resolved_conf.setdefault(kind, []).append(round(float(fc.confidence), 4))
        c["frames"] += 1
        quad = np.array(labels["cards"][0]["quad"], np.float32)
        for card in res.cards:
            c["detections"] += 1
            c[card.decision] += 1
            if card.quality_flag == "low_score":
                c["low_score"] += 1
            c["on_the_object"] += quad_iou(card.quad, quad) >= 0.5
        for _, reason in res.rejected:
            c["detections"] += 1
            c["rejected"] += 1
        c["frames_with_a_scan"] += any(card.decision != "no_card" for card in res.cards)
    if scans_out is not None:
        scans_out.close()
    total = sum(per.values(), Counter())
    out = {"bundle": a.bundle, "n": a.n, "seed": a.seed, "frame_size": list(a.frame_size), "per_kind": {k: dict(v) for k, v in per.items()},
           "total": dict(total), "false_resolution_confidences": resolved_conf}
    if a.catalog_frames:
        out["catalog_frames"] = catalog_low_score(pipe, a)
    return out


def catalog_low_score(pipe, a) -> dict:
    """The other side of the low_score policy: on ordinary frames of catalog cards, how many low_score scans lie
    on a labelled card (a card rescued) and how many on none (a review item for nothing)."""
    from device.vision.geometry import quad_iou
    from models.synth.capture import CaptureConfig
    from models.synth.dataset import make_frame

    ids = sorted(json.loads(x)["card_id"] for x in (Path(a.catalog) / "index.jsonl").read_text().splitlines() if x.strip())
    out = {}
    for mode in ("scanner_box", "grid", "free"):
        cfg = CaptureConfig(size=a.frame_size, mode=mode)
        c = Counter()
        for i in range(a.catalog_frames):
            frame, labels = make_frame(a.catalog, ids, a.catalog_seed, i, cfg)
            quads = [np.array(x["quad"], np.float32) for x in labels["cards"]]
            c["frames"] += 1
            for card in pipe.process(frame).cards:
                if card.quality_flag == "low_score":
                    on = max((quad_iou(card.quad, q) for q in quads), default=0.0) >= 0.5
                    c["low_score_on_a_card" if on else "low_score_on_no_card"] += 1
        out[mode] = dict(c)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="models/bundles/demo")
    ap.add_argument("--n", type=int, default=300, help="frames (kinds in turn)")
    ap.add_argument("--seed", type=int, default=910_000)
    ap.add_argument("--frame-size", type=frame_size, default=(640, 480), metavar="WxH",
                    help="simulated camera frame size (the appliance's picamera2 default is 1280x960)")
    ap.add_argument("--shared-data", default=str(shared_data()))
    ap.add_argument("--resolver", action="store_true", help="also resolve the ambiguous scans (server resolver)")
    ap.add_argument("--catalog", default="var/catalog", help="rendered catalog (with --resolver)")
    ap.add_argument("--data-dir", default="var", help="resolver index and keypoint store (with --resolver)")
    ap.add_argument("--calibration", default=None, help="resolver calibration JSON (default: the committed one)")
    ap.add_argument("--low-score-accept-confidence", type=float, default=None,
                    help="override resolver.low_score_accept_confidence (with --resolver)")
    ap.add_argument("--catalog-frames", type=int, default=0,
                    help="also run this many frames of catalog cards per capture mode (scanner box, grid, hand-held) "
                         "and count the low_score scans on / off a labelled card")
    ap.add_argument("--catalog-seed", type=int, default=920_000)
    ap.add_argument("--unmatched-to-server", choices=["bundle", "on", "off"], default="bundle",
                    help="override GateConfig.unmatched_to_server (A/B of that policy on the same frames)")
    ap.add_argument("--scans-out", default=None, metavar="JSONL",
                    help="write the ambiguous scans here as stored rows with card_id null (needs --resolver), "
                         "for `tests.bench.resolver_scans fit --scans …`")
    a = ap.parse_args(argv)
    if a.scans_out and not a.resolver:
        ap.error("--scans-out needs --resolver (the rows are built as the server stores them)")
    out = run(a)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
