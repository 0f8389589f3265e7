"""Put a new detector into an existing bundle (everything else unchanged), through ``device.bundle.write_bundle``.

    python -m models.detector.ship --tflite var/train/detector/ft/detector.tflite --bundle models/bundles/demo

``models.build_bundle`` rebuilds a bundle from scratch (catalog embeddings, embedder, calibration — an hour
on 2 cores); when only the detector changed this re-stages the same files with the new ``detector.tflite``
and writes a fresh manifest (file hashes and sizes recomputed by ``write_bundle``; version, thresholds and
specs carried over). The golden self-test images are kept when the new bundle still identifies every one of
them; otherwise they are regenerated with ``models.build_bundle.golden`` (same seeds, checked against the new
bundle). ``--edges`` adds or replaces the learned edge snap (``models.detector.edges``). ``--recalibrate`` also re-derives the accept / no_card thresholds with the new detector
(``models.build_bundle.calibrate``; several minutes). Without ``--tflite`` the bundle keeps its detector, so

    python -m models.detector.ship --bundle models/bundles/demo --recalibrate

re-derives the thresholds of the bundle as it is (e.g. after a change of the calibration sets or of the device
pipeline's decision policy); other threshold entries (a ``gate`` override) are kept.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import cv2
import numpy as np




def _stage(out: Path, files: dict, fields: dict) -> None:
    from device.bundle import write_bundle

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write_bundle(tmp, files, fields)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def golden_ok(bundle: Path) -> tuple[int, int]:
    from device.bundle import golden_expected
    from device.vision.pipeline import VisionPipeline

    pipe = VisionPipeline.from_bundle(bundle, num_threads=1)
    exp = golden_expected(bundle)
    hits = 0
    for name, cid in exp.items():
        res = pipe.process(cv2.imread(str(bundle / "golden" / name)))
        hits += bool(res.cards) and res.cards[0].candidates[0][0] == cid
    return hits, len(exp)


def main(argv: list[str] | None = None) -> int:
    from device.bundle import parse_manifest

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tflite", default=None, help="new detector.tflite (int8, models.export); default: keep the "
                    "bundle's own (with --recalibrate: re-derive the thresholds of the bundle as it is)")
    ap.add_argument("--edges", default=None, help="new detector_edges.npz (models.detector.edges) to add or replace; "
                    "train it on the detector the bundle will have")
    ap.add_argument("--closer", type=int, default=None, help="set the manifest's detector.closer (how many "
                    "detections a frame may look at closer; device.bundle.DetectorSpec); default: keep it")
    ap.add_argument("--closer-min-zoom", type=float, default=None, help="set detector.closer_min_zoom; default: keep it")
    ap.add_argument("--bundle", default="models/bundles/demo")
    ap.add_argument("--catalog", default="var/catalog", help="for regenerated goldens / recalibration")
    ap.add_argument("--recalibrate", action="store_true")
    ap.add_argument("--records-out", default=None, help="with --recalibrate: also write the calibration records "
                    "(JSON lines) for python -m models.confidence --records")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--version", default=None, help="new bundle version (devices update only to a version they do "
                    "not have: give one whenever the detector or the thresholds change); default: keep it")
    a = ap.parse_args(argv)
    bundle = Path(a.bundle)
    man = parse_manifest((bundle / "manifest.json").read_bytes())
    raw = json.loads((bundle / "manifest.json").read_text())
    fields = {k: v for k, v in raw.items() if k not in ("format", "files")}
    fields["created"] = man.created
    if a.version:
        fields["version"] = a.version
    if a.closer is not None or a.closer_min_zoom is not None:
        fields["detector"] = dict(fields["detector"])
        if a.closer is not None:
            fields["detector"]["closer"] = a.closer
        if a.closer_min_zoom is not None:
            fields["detector"]["closer_min_zoom"] = a.closer_min_zoom
    work = bundle.with_name(bundle.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    files: dict[str, Path | bytes] = {rel: (bundle / rel).read_bytes() for rel in man.files}
    if a.tflite:
        files["detector.tflite"] = Path(a.tflite).read_bytes()
    if a.edges:
        from device.vision.edges import FILE as EDGES_FILE, EdgeModel

        with np.load(a.edges, allow_pickle=False) as z:
            EdgeModel({k: z[k] for k in z.files})  # refuses a broken file before it is staged
        files[EDGES_FILE] = Path(a.edges).read_bytes()
    staged = work / "bundle"
    _stage(staged, files, fields)
    report: dict = {}
    if a.recalibrate:
        from models.build_bundle import CALIBRATION_FACTS, RULE, calibrate

        from models.eval import shared_data

        th = calibrate(argparse.Namespace(threads=a.threads, catalog=a.catalog, quick=False,
                                          pokemon_tcg_data=str(shared_data() / "pokemon-tcg-data")), staged,
                       records_out=Path(a.records_out) if a.records_out else None)
        kept = {k: v for k, v in fields["thresholds"].items()
                if k not in RULE + ("calibration",)}
        fields["thresholds"] = kept | {k: th[k] for k in RULE if k in th} | {
            "calibration": {k: th[k] for k in CALIBRATION_FACTS if k in th}}
        report["thresholds"] = fields["thresholds"]
        shutil.rmtree(staged)
        _stage(staged, files, fields)
    hits, n = golden_ok(staged)
    report["golden_kept"] = hits == n
    if hits < n:
        from models.build_bundle import golden

        for rel in [r for r in files if r.startswith("golden/")]:
            del files[rel]
        files.update(golden(argparse.Namespace(catalog=a.catalog, threads=a.threads), staged, bundle_for_check=staged))
        shutil.rmtree(staged)
        _stage(staged, files, fields)
        hits, n = golden_ok(staged)
    report["golden_hits"] = f"{hits}/{n}"
    _stage(bundle, files, fields)
    shutil.rmtree(work, ignore_errors=True)
    report["bundle"] = str(bundle)
    report["detector_bytes"] = len(files["detector.tflite"])
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
