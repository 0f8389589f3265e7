"""Build a device bundle end to end (``make models``).

    python -m models.build_bundle --pokemon-tcg-data PATH --images DIR [--quick] [--out models/bundles/demo]

1. render the catalog (all printings) to ``var/catalog`` (skipped when already there)
2. detector: simulated captures (¼ of them with the real sv1 scans; overlapping cards, non-catalog faces) +
   playing-card TRAIN photos → train
   (soft coverage targets) → int8 TFLite; then the edge model that snaps its quads onto the card's outline
   (``models.detector.edges``, trained on that detector's own quads)
3. embedder: cached (capture, catalog, hard negative) triples → closed-form metric learning of the linear
   paths → optional InfoNCE fine-tuning of the CNN paths (``--finetune-steps``) → int8 TFLite
4. embed every printing of the catalog with the *exported* int8 embedder → ``catalog/embeddings.npy`` (int8)
5. reprint patches (``models.reprints``): where printings of one illustration differ, for the device's
   reprint re-ranking (``device.vision.reprints``)
6. calibrate accept / no_card thresholds on held-out simulated captures run through the device pipeline
7. golden images + ``write_bundle`` (``device.bundle``)

``--refresh-catalog`` keeps the models and embeddings of the bundle at ``--out`` and redoes 5-7 only (minutes:
after a change to the reprint patches or the accept rule; ``--retrain-edges`` also trains the edge model again).

Everything is seeded; each stage's output lives under ``var/build/`` and is reused when present (delete it
or pass ``--fresh`` to redo). ``--embedder-checkpoint`` / ``--detector-checkpoint`` skip training.
All non-sv1 catalog images are our own procedural renders (``models.synth.render``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[build_bundle {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd: list[str], env_python: str | None = None) -> None:
    log(" ".join(cmd))
    r = subprocess.run(cmd, cwd=ROOT, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    if r.returncode != 0:
        raise SystemExit(f"step failed ({r.returncode}): {' '.join(cmd)}")


def render_catalog(a) -> None:
    cat = Path(a.catalog)
    if (cat / "index.jsonl").is_file() and len(list(cat.glob("*.jpg"))) > 1000:
        log(f"catalog present: {cat}")
        return
    run([sys.executable, "-m", "models.synth", "catalog", "--pokemon-tcg-data", a.pokemon_tcg_data, "--images",
         a.images, "--out", str(cat), "--size", "240x336", "--workers", str(a.workers), "--quality", "92"])


def train_detector(a, work: Path) -> Path:
    if a.detector_checkpoint:
        return Path(a.detector_checkpoint)
    data = work / "detector_data.npz"
    if not data.is_file():
        run([sys.executable, "-m", "models.detector.data", "--catalog", a.catalog, "--out", str(data),
             "--n", str(600 if a.quick else 6000), "--seed", "1000", "--workers", str(a.workers),
             # the shares the shipped detector (demo-10) was fine-tuned on: overlapping cards and non-catalog
             # faces (playing cards, backs) with shadows, so it learns card outlines, not one frame design;
             # since demo-12 a quarter of the fan frames lay cards edge to edge (two side by side outline
             # one card's shape: docs/device-vision.md, thirteenth session)
             "--fan-frac", "0.35", "--foreign-frac", "0.35", "--p-shadow", "0.6",
             "--fan-layouts", "spread,hand,pile,row"])
    out = work / "detector"
    if not (out / "detector.pt").is_file():
        run([sys.executable, "-m", "models.detector.train", "--data", str(data), "--out", str(out),
             "--steps", str(150 if a.quick else 3000), "--threads", str(a.threads)])
    return out / "detector.pt"


def train_embedder(a, work: Path) -> Path:
    """Closed-form metric learning on cached (capture, catalog, hard negative) triples, then optional
    InfoNCE fine-tuning of the CNN paths (``--finetune-steps``; off by default: hours on 2 cores)."""
    if a.embedder_checkpoint:
        return Path(a.embedder_checkpoint)
    out = work / "embedder"
    out.mkdir(parents=True, exist_ok=True)
    pairs = work / "pairs.npz"
    if not pairs.is_file():
        run([sys.executable, "-m", "models.embedder.pairs", "--catalog", a.catalog, "--out", str(pairs),
             "--n", str(1500 if a.quick else 8000), "--seed", "12"])
    init = out / "closed_form.pt"
    if not init.is_file():
        run([sys.executable, "-m", "models.embedder.closed_form", "--catalog", a.catalog, "--pairs", str(pairs),
             "--out", str(init)])
    if a.finetune_steps <= 0:
        return init
    if not (out / "embedder.pt").is_file():
        run([sys.executable, "-m", "models.embedder.train", "--catalog", a.catalog, "--out", str(out),
             "--init", str(init), "--steps", str(a.finetune_steps), "--threads", str(a.threads)])
    return out / "embedder.pt"


def calib_inputs(a, work: Path) -> tuple[Path, Path]:
    """Representative inputs for int8 calibration (NHWC float32 in [0, 1])."""
    from device.vision.geometry import embedder_views
    from models.detector.data import sim_item
    from models.embedder.data import CatalogIndex, capture_crop, clean_views, load_card
    from models.synth.capture import CaptureConfig

    ce, cd = work / "calib_embedder.npz", work / "calib_detector.npz"
    rng = np.random.default_rng(5)
    index = CatalogIndex.load(a.catalog)
    if not ce.is_file():
        g, s = [], []
        for i in rng.choice(len(index.ids), 160, replace=False):
            img = load_card(a.catalog, index.ids[i])
            v = clean_views(img) if len(g) % 2 == 0 else embedder_views(capture_crop(img, rng))
            g.append(v[0][..., ::-1])
            s.append(v[1][..., ::-1])
        np.savez(ce, in0=np.stack(g).astype(np.float32) / 255, in1=np.stack(s).astype(np.float32) / 255)
    if not cd.is_file():
        xs = []
        for i in range(96):
            mode = ("free", "grid", "scanner_box")[i % 3]
            x, _, _ = sim_item((a.catalog, index.ids, 4242, i, CaptureConfig(size=(640, 480), mode=mode), False))
            xs.append(x[..., ::-1])
        np.savez(cd, in0=np.stack(xs).astype(np.float32) / 255)
    return ce, cd


def export(a, kind: str, ckpt: Path, calib: Path, out: Path) -> None:
    from models.export import export_python

    if out.is_file() and out.stat().st_mtime > ckpt.stat().st_mtime:
        log(f"{out} up to date")
        return
    run([export_python(), "-m", "models.export", "--kind", kind, "--checkpoint", str(ckpt), "--calib", str(calib),
         "--out", str(out)])


def embed_catalog(a, work: Path, embedder_tflite: Path, strip_weight: float) -> tuple[np.ndarray, list[str]]:
    from device.vision.embedder import Embedder
    from device.vision.matcher import quantize_int8
    from models.embedder.evaluate import catalog_views

    out = work / "catalog_embeddings.npy"
    G, S, ids = catalog_views(a.catalog)
    if out.is_file() and out.stat().st_mtime > embedder_tflite.stat().st_mtime:
        return np.load(out), ids
    emb = Embedder(str(embedder_tflite), strip_weight, num_threads=a.threads)
    t0 = time.time()
    E = np.stack([emb.embed_views(G[i], S[i]) for i in range(len(ids))])
    log(f"embedded {len(ids)} printings in {time.time() - t0:.0f} s")
    q = quantize_int8(E)
    np.save(out, q)
    return q, ids


def calibrate(a, bundle_tmp: Path, target_precision: float = 0.999, records_out: Path | None = None) -> dict:
    """Run the device pipeline over held-out simulated captures; pick thresholds for the accept rule.
    ``records_out``: also write every record the choice saw (JSON lines, ``kind`` card | hard | negative; and
    flagged: the soft-flagged cards — those with an ``ACCEPT_FLAGS`` flag join the confidence rule's choice, the
    others are never accepted), so that a change of the rule can be studied without running the captures again
    (``python -m models.confidence --records``)."""
    from device.vision.pipeline import VisionPipeline
    from models.embedder.data import CatalogIndex
    from models.vision_eval import run_captures

    pipe = VisionPipeline.from_bundle(bundle_tmp, a.threads)
    index = CatalogIndex.load(a.catalog)
    sv1 = [c for c, r in zip(index.ids, index.real_scan) if r]
    n = 60 if a.quick else 1500

    def captures(ids: list[str], count: int, seed: int, mode: str) -> list[dict]:
        rows = run_captures(pipe, a.catalog, ids, count, seed, mode)[0]
        return [r | {"set": f"{mode}/{seed}"} for r in rows]

    recs = captures(index.ids, n, 700_000, "free")
    recs += captures(sv1, n // 4, 710_000, "free")
    recs += captures(index.ids, n // 10, 720_000, "grid")
    n_hard = len(recs)  # hand-held and grid captures: the hardest conditions
    # the scanner box is the appliance's own setting and where most accepts happen: its reprint contests
    # (same illustration, small margin) must weigh in the accept rule too (seeds far from the evaluation's 900000)
    recs += captures(index.ids, n, 730_000, "scanner_box")
    recs += captures(sv1, n // 4, 740_000, "scanner_box")
    # soft-flagged cards (glare, slight blur, a sliver out of view) are never accepted: not part of the accept rule
    ok = [r for r in recs if r.get("identified") and not r.get("quality_flag")]
    scores = np.array([r["score"] for r in ok])
    margins = np.array([r["margin"] for r in ok])
    correct = np.array([r["top1"] == r["card_id"] for r in ok])
    contest = np.array([bool(r.get("reprint_contest")) for r in ok])
    heights = np.array([r["height"] for r in ok])
    # no_card_score is a floor for true cards in the worst conditions: taken over the hand-held and grid captures
    # only, so that adding the easy scanner-box captures does not raise it (a higher floor turns real cards with
    # bad corners or light into no_card answers, which the resolver never sees)
    hard = np.array([r["score"] for r in recs[:n_hard] if r.get("identified") and not r.get("quality_flag")
                     and r["top1"] == r["card_id"]])
    neg_rows = negative_records(a, pipe, 40 if a.quick else 400)
    clean_neg = [r for r in neg_rows if not r.get("quality_flag")]
    neg = tuple(np.array([r[k] for r in clean_neg], dtype=bool if k == "reprint_contest" else float)
                for k in ("score", "margin", "reprint_contest", "height"))
    if records_out is not None:
        records_out.parent.mkdir(parents=True, exist_ok=True)
        with open(records_out, "w") as f:
            flagged = [r for r in recs if r.get("identified") and r.get("quality_flag")]  # not fitted on: studies
            for kind, rows in (("card", ok), ("negative", neg_rows), ("flagged", flagged)):
                for r in rows:
                    f.write(json.dumps({"kind": kind} | r) + "\n")
            for s_ in hard:
                f.write(json.dumps({"kind": "hard", "score": float(s_)}) + "\n")
    rule = choose_thresholds(scores, margins, correct, target_precision, no_card_scores=hard, contest=contest,
                             negatives=neg, heights=heights)
    # the confidence rule decides accepts (models.confidence); the threshold rule stays in the manifest for
    # device software older than the confidence model, and its no_card_score serves both
    from models.confidence import ACCEPT_FLAGS, calibrate_rule

    # ... which also judges glare-flagged cards (ACCEPT_FLAGS): they join its calibration, cards and negatives
    judged = ok + [r for r in recs if r.get("identified") and r.get("quality_flag") in ACCEPT_FLAGS]
    conf = calibrate_rule(judged, neg_rows, target_precision, rule["reprint_min_height"]) | {
        "accept_flags": list(ACCEPT_FLAGS)}
    return rule | conf | {"threshold_rule_coverage": rule["calibrated_coverage"], "calibration_cards": len(judged),
                          "calibration_negatives": len(neg[0])}


def negative_records(a, pipe, n: int, seed: int = 950_000) -> list[dict]:
    """Records (score, margin, reprint_contest, height, sharpness, glare, quality_flag) of the detections — clean, or
    with a flag the confidence rule judges (``ACCEPT_FLAGS``) — in scanner-box frames of things that are not catalog
    cards (``models.eval.negatives``: playing cards, MTG photos, photo patches, plain cards; seeds far from
    its evaluation's 910000). Why: the accept rule must not take an MTG card for a Pokémon card, and catalog
    captures alone cannot say where that starts. Empty without the shared photos."""
    from models.eval.negatives import Objects, frames
    from models.synth.capture import CaptureConfig

    try:
        objects = Objects(Path(a.pokemon_tcg_data).parent)
    except FileNotFoundError as exc:
        log(f"no calibration negatives: {exc}")
        return []
    from device.vision.geometry import card_height
    from models.confidence import ACCEPT_FLAGS

    rows = []
    for _, _, frame, _ in frames(objects, n, seed, CaptureConfig(size=(640, 480), mode="scanner_box")):
        rows += [{"score": c.score, "margin": c.margin, "reprint_contest": bool(c.reprint_contest),
                  "height": round(card_height(c.quad), 1), "sharpness": c.quality.get("sharpness"),
                  "glare": c.quality.get("glare"), "quality_flag": c.quality_flag}
                 for c in pipe.process(frame).cards if not c.quality_flag or c.quality_flag in ACCEPT_FLAGS]
    return rows


# what calibrate() derives into the manifest's thresholds (models.detector.ship --recalibrate re-derives these)
RULE = ("accept_score", "accept_margin", "accept_reprint_margin", "reprint_min_height", "no_card_score",
        "confidence", "accept_confidence", "confidence_min_score", "accept_flags")
CALIBRATION_FACTS = ("calibrated_precision", "calibrated_coverage", "threshold_rule_coverage", "calibration_cards",
                     "calibration_negatives")

HEIGHT_GRID = (0.0, 120.0, 160.0, 200.0, 240.0, 280.0, 320.0)  # reprint_min_height candidates, frame px


def choose_thresholds(scores: np.ndarray, margins: np.ndarray, correct: np.ndarray, target: float = 0.999,
                      no_card_scores: np.ndarray | None = None, contest: np.ndarray | None = None,
                      negatives: tuple[np.ndarray, ...] | None = None, heights: np.ndarray | None = None,
                      grid: int = 200) -> dict:
    """Maximise the accepted fraction subject to empirical precision ≥ target on the calibration cards
    (so the calibration set must hold well over 1/(1 − target) cards for the target to mean anything).
    ``no_card_score``: the 0.5 % quantile of the correct cards' scores — of ``no_card_scores`` when given.

    ``contest``: which cards' margins are reprint-patch verdicts (``Match.contest``); they get a margin threshold
    of their own (``accept_reprint_margin``). ``negatives``: (scores, margins, contest) of detections of things
    that are not catalog cards (and their heights, a fourth array, with ``heights``); no threshold set that
    accepts one of them is chosen. ``heights``: the cards' heights in the frame (px); a reprint verdict is then
    accepted only on cards at least ``reprint_min_height`` tall (chosen from HEIGHT_GRID). Among equally good
    sets the strictest wins (the calibration cards cannot tell them apart; unseen objects can). ``grid``: the
    candidate thresholds are that many quantiles of the calibration's scores and margins (50 until bundle demo-6:
    the accept score then jumped between grid points 0.04 apart, and which two depended on the low-score cards'
    count; on demo-6's calibration records 50 → 200 quantiles moved the calibrated coverage 0.840 → 0.847)."""
    if len(scores) == 0:
        return {"accept_score": 0.99, "accept_margin": 0.5, "no_card_score": 0.0, "calibrated_precision": None,
                "calibrated_coverage": 0.0}
    C = np.zeros(len(scores), bool) if contest is None else np.asarray(contest, bool)
    s_grid = np.unique(np.quantile(scores, np.linspace(0, 0.98, grid)))

    def m_grid(m: np.ndarray) -> np.ndarray:
        return np.unique(np.concatenate([[0.0], np.quantile(m, np.linspace(0, 0.98, grid)) if len(m) else []]))

    mg, rg = m_grid(margins[~C]), m_grid(margins[C])
    ns, nm, nc = (np.zeros(0), np.zeros(0), np.zeros(0, bool)) if negatives is None else (
        np.asarray(negatives[0]), np.asarray(negatives[1]), np.asarray(negatives[2], bool))
    H = np.full(len(scores), np.inf) if heights is None else np.asarray(heights, float)
    nh = np.asarray(negatives[3], float) if negatives is not None and len(negatives) > 3 and heights is not None \
        else np.full(len(ns), np.inf)
    best = None  # (accepted, m, r, s, wrong, h)
    for h in (HEIGHT_GRID if heights is not None else (0.0,)):
        Ch, nch = C & (H >= h), nc & (nh >= h)  # contest cards whose verdict may be accepted at all
        for s in s_grid:
            a = scores >= s
            # accepted / wrong per margin threshold, for plain and for contest cards
            A = (margins[a & ~C][:, None] >= mg[None, :])
            Ar = (margins[a & Ch][:, None] >= rg[None, :])
            k1, w1 = A.sum(0), (A & ~correct[a & ~C][:, None]).sum(0)
            k2, w2 = Ar.sum(0), (Ar & ~correct[a & Ch][:, None]).sum(0)
            K, W = k1[:, None] + k2[None, :], w1[:, None] + w2[None, :]
            ok = (K > 0) & (W <= (1 - target) * K)
            neg = ns >= s
            ok &= ~(nm[neg & ~nc][:, None] >= mg[None, :]).any(0)[:, None]
            ok &= ~(nm[neg & nch][:, None] >= rg[None, :]).any(0)[None, :]
            if not ok.any():
                continue
            Kok = np.where(ok, K, -1)
            kmax = int(Kok.max())
            i, j = max(zip(*np.nonzero(Kok == kmax)))  # the strictest margins among the best
            if best is None or kmax > best[0] or (kmax == best[0] and (s, h) > (best[3], best[5])):
                best = (kmax, float(mg[i]), float(rg[j]), float(s), int(W[i, j]), h)
    if best is None:  # target unreachable on this data: accept (almost) nothing
        best = (0, min(float(margins.max()) + 1e-3, 2.0), min(float(margins.max()) + 1e-3, 2.0),
                min(float(scores.max()) + 1e-3, 1.0), 0, 0.0)
    k, m, r, s, w, h = best
    floor = scores[correct] if no_card_scores is None or len(no_card_scores) == 0 else np.asarray(no_card_scores)
    no_card = float(np.quantile(floor, 0.005)) if len(floor) else 0.0
    no_card = min(no_card, s)
    out = {"accept_score": round(s, 4), "accept_margin": round(m, 4), "no_card_score": round(no_card, 4),
           "calibrated_precision": round(1 - w / k, 5) if k else None,
           "calibrated_coverage": round(k / len(scores), 4)}
    if contest is not None:
        out["accept_reprint_margin"] = round(r, 4)
    if heights is not None:
        out["reprint_min_height"] = h
    return out


def golden_candidates(a, n: int = 12) -> list[tuple[str, bytes, str]]:
    """Clean scanner-box captures (half real sv1 scans, half renders): (name, JPEG bytes, card id)."""
    from models.embedder.data import CatalogIndex
    from models.synth.capture import CaptureConfig
    from models.synth.dataset import make_frame

    index = CatalogIndex.load(a.catalog)
    sv1 = [c for c, r in zip(index.ids, index.real_scan) if r]
    cfg = CaptureConfig(size=(640, 480), mode="scanner_box", p_glare=0.0, p_motion_blur=0.0, p_defocus=0.0,
                        p_fingers=0.0, noise_sigma=(1.0, 3.0), jpeg_quality=(85, 95))
    out = []
    for k in range(n):
        ids = sv1 if k % 2 == 0 else index.ids
        frame, labels = make_frame(a.catalog, ids, 31_000 + k, k, cfg)
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 88])
        out.append((f"golden_{k}.jpg", buf.tobytes(), labels["cards"][0]["card_id"]))
    return out


def golden(a, out: Path, bundle_for_check: Path | None = None, keep: int = 4) -> dict[str, Path | bytes]:
    """Golden self-test images. With ``bundle_for_check`` only candidates that bundle identifies correctly
    are kept (the self-test guards against a broken install, it is not an accuracy measure)."""
    cands = golden_candidates(a)
    if bundle_for_check is not None:
        from device.vision.pipeline import VisionPipeline

        pipe = VisionPipeline.from_bundle(bundle_for_check, a.threads)
        good = []
        for name, data, cid in cands:
            res = pipe.process(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
            if res.cards and res.cards[0].candidates[0][0] == cid:
                good.append((name, data, cid))
        cands = good or cands
    cands = cands[:keep]
    files: dict[str, Path | bytes] = {f"golden/{n}": d for n, d, _ in cands}
    files["golden/expected.json"] = json.dumps({n: c for n, _, c in cands}, indent=2, sort_keys=True).encode()
    return files


def catalog_version(ids: list[str]) -> str:
    return "ptcg-" + hashlib.sha256("\n".join(ids).encode()).hexdigest()[:12]


def train_edges(a, work: Path, det_tflite: Path) -> Path:
    """The learned edge snap for this detector's quads (``models.detector.edges``; a few CPU-minutes)."""
    from models.detector import edges

    out = work / "edges"
    if (out / "detector_edges.npz").is_file():
        log(f"edge model: reusing {out}")
        return out / "detector_edges.npz"
    log("edge model: training")
    q = a.quick
    # the shipped edge model's recipe (bundle demo-11): 40 % of the frames show the real sv1 scans, whose
    # outline no render has, on top of the 2,400 other frames, and 64 hidden units to learn both
    # (docs/device-vision.md, twelfth session)
    return edges.build(det_tflite, a.catalog, out, frames=60 if q else 4000, held_out=20 if q else 300,
                       hidden=64, steps=100 if q else 6000, threads=a.threads, real_frac=0.4)


def assemble(a, out: Path, det_tflite: Path, emb_tflite: Path, emb: np.ndarray, ids: list[str],
             thresholds: dict, extra_files: dict | None = None, reprints: bytes | None = None,
             edges: Path | None = None) -> None:
    from device.bundle import write_bundle
    from device.vision import detector as D
    from device.vision import geometry as G
    from models.embedder.model import GLOBAL_DIM, STRIP_DIM, STRIP_WEIGHT

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    files: dict[str, Path | bytes] = {
        "detector.tflite": det_tflite, "embedder.tflite": emb_tflite,
        "catalog/ids.json": json.dumps(ids).encode(),
    }
    buf = __import__("io").BytesIO()
    np.save(buf, emb)
    files["catalog/embeddings.npy"] = buf.getvalue()
    if edges is not None:
        from device.vision.edges import FILE as EDGES_FILE

        files[EDGES_FILE] = edges
    if reprints is not None:
        from device.vision.reprints import FILE as REPRINTS_FILE

        files[REPRINTS_FILE] = reprints
    files.update(extra_files or golden(a, out))
    fields = {
        "version": a.version, "catalog_version": catalog_version(ids), "catalog_source": "pokemon-tcg-data",
        "thresholds": thresholds,
        "embedder": {"input_size": [G.GLOBAL_SIZE[1], G.GLOBAL_SIZE[0]], "embedding_dim": int(emb.shape[1]),
                     "normalization": "unit", "strip_input_size": [G.STRIP_SIZE[1], G.STRIP_SIZE[0]],
                     "strip_y": list(G.STRIP_Y), "canonical_size": list(G.CANONICAL_SIZE),
                     "global_dim": GLOBAL_DIM, "strip_dim": STRIP_DIM, "strip_weight": STRIP_WEIGHT,
                     "dtype": str(emb.dtype), "layout": "NHWC RGB"},
        "detector": {"input_size": [D.INPUT_SIZE[1], D.INPUT_SIZE[0]], "output_stride": D.OUTPUT_STRIDE,
                     "kernel_shrink": D.KERNEL_SHRINK, "kernel_threshold": 0.5, "outputs": ["face", "kernel", "top"],
                     "normalization": "unit", "layout": "NHWC RGB letterboxed"},
    }
    if a.created:
        from datetime import datetime

        fields["created"] = datetime.fromisoformat(a.created)
    write_bundle(tmp, files, fields)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pokemon-tcg-data", required=True)
    ap.add_argument("--images", required=True, help="real sv1 scans (PTCGextension/cards)")
    ap.add_argument("--catalog", default="var/catalog", help="rendered catalog dir (made when missing)")
    ap.add_argument("--work", default="var/build")
    ap.add_argument("--out", default="models/bundles/demo")
    ap.add_argument("--version", default="demo-1")
    ap.add_argument("--created", default="2026-01-01T00:00:00+00:00", help="manifest time (fixed: reproducible)")
    ap.add_argument("--quick", action="store_true", help="tiny training runs (smoke test, minutes)")
    ap.add_argument("--fresh", action="store_true", help="delete --work first")
    ap.add_argument("--embedder-checkpoint")
    ap.add_argument("--detector-checkpoint")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--finetune-steps", type=int, default=0, help="InfoNCE fine-tuning steps of the embedder CNN paths")
    ap.add_argument("--parity-checkpoint", default="models/embedder/demo_embedder.pt",
                    help="where to save the compact PyTorch weights of the exported embedder ('' = skip)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--refresh-catalog", action="store_true",
                    help="reuse --out's detector, edge model, embedder and embeddings; redo reprint patches, thresholds, golden")
    ap.add_argument("--retrain-edges", action="store_true",
                    help="with --refresh-catalog: train the edge model again (else --out's is kept, if it has one)")
    a = ap.parse_args(argv)
    work = Path(a.work)
    if a.fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    cv2.setNumThreads(1)
    render_catalog(a)
    emb_ckpt = None
    if a.refresh_catalog:
        src = work / "bundle_source"  # the models being kept (--out is rewritten below)
        shutil.rmtree(src, ignore_errors=True)
        shutil.copytree(a.out, src)
        det_tfl, emb_tfl = src / "detector.tflite", src / "embedder.tflite"
        from device.vision.edges import FILE as EDGES_FILE

        edges = src / EDGES_FILE if (src / EDGES_FILE).is_file() and not a.retrain_edges else train_edges(a, work, det_tfl)
        emb = np.load(src / "catalog" / "embeddings.npy", allow_pickle=False)
        ids = json.loads((src / "catalog" / "ids.json").read_text())
    else:
        det_ckpt = train_detector(a, work)
        emb_ckpt = train_embedder(a, work)
        ce, cd = calib_inputs(a, work)
        det_tfl, emb_tfl = work / "detector.tflite", work / "embedder.tflite"
        export(a, "detector", det_ckpt, cd, det_tfl)
        export(a, "embedder", emb_ckpt, ce, emb_tfl)
        edges = train_edges(a, work, det_tfl)
        from models.embedder.model import STRIP_WEIGHT

        emb, ids = embed_catalog(a, work, emb_tfl, STRIP_WEIGHT)
    from device.vision.reprints import RerankConfig
    from models import reprints as RP

    rp_arrays = RP.build(a.catalog, ids)
    reprints = RP.to_bytes(rp_arrays)
    log(f"reprint patches: {len(rp_arrays['member_row'])} printings, {len(reprints) / 1e6:.2f} MB")
    rerank = RerankConfig().model_dump()
    # provisional bundle (loose thresholds) to calibrate with the device pipeline itself
    prov = work / "bundle_provisional"
    provisional = {"accept_score": 0.5, "accept_margin": 0.05, "no_card_score": -1.0, "reprints": rerank}
    gold = golden(a, prov)
    assemble(a, prov, det_tfl, emb_tfl, emb, ids, provisional, gold, reprints, edges)
    th = calibrate(a, prov)
    log(f"thresholds {th}")
    thresholds = {k: th[k] for k in RULE}
    thresholds["calibration"] = {k: th[k] for k in CALIBRATION_FACTS}
    thresholds["reprints"] = rerank
    gold = golden(a, Path(a.out), bundle_for_check=prov)
    assemble(a, Path(a.out), det_tfl, emb_tfl, emb, ids, thresholds, gold, reprints, edges)
    log(f"bundle written: {a.out}")
    if a.parity_checkpoint and emb_ckpt is not None:
        import torch

        from models.embedder.model import CardEmbedder

        m = CardEmbedder()
        m.load_state_dict(torch.load(emb_ckpt, map_location="cpu", weights_only=True))
        torch.save(m.compact_state(), a.parity_checkpoint)
        log(f"parity checkpoint: {a.parity_checkpoint} ({Path(a.parity_checkpoint).stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
