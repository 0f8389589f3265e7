"""One benchmark report from the recorded runs: ``var/reports/bench/REPORT.md`` + ``report.json``.

    python -m tests.bench.report [--results var/reports/bench] [--copy-to docs/bench]

Each ``NAME.json`` written by ``tests.bench.results run`` becomes one or more rows: what was measured, the
figure, the goal (from the issues) and whether it is met, the command that produced it and the machine it
ran on. A benchmark that has not been run is listed as missing, never silently left out.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from tests.bench.results import RESULTS, ROOT, describe

DATA_NOTE = ("Catalog images outside set sv1 are our own renders; every camera frame is a simulated capture "
             "(models/synth/capture.py); the real sv1 scans are official card images, not photos.")

Row = dict


def _row(area: str, what: str, figure: str, goal: str | None = None, met: bool | None = None,
         value: float | None = None, unit: str | None = None) -> Row:
    return {"area": area, "what": what, "figure": figure, "goal": goal, "met": met, "value": value, "unit": unit}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _ci(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f} %"


def device_rows(raw: dict) -> list[Row]:
    lat, st = raw.get("latency", {}), raw.get("stack", {})
    med, p90 = lat.get("median_ms", {}), lat.get("p90_ms", {})
    total = med.get("total")
    rows = [
        _row("device", f"frame → identification, {lat.get('threads')} thread, 640×480 ({lat.get('frames')} frames)",
             f"median {total} ms (detect {med.get('detect')}, embed {med.get('embed')}, match {med.get('match')}); "
             f"p90 {p90.get('total')} ms", "≤ 15 ms median", total is not None and total <= 15, total, "ms"),
        _row("device", "pipeline throughput, 1 thread", f"{1000 / total:.0f} frames/s" if total else "–",
             value=round(1000 / total, 1) if total else None, unit="frames/s"),
        _row("device", "peak RSS of the device pipeline (bundle loaded)", f"{lat.get('rss_mb', {}).get('VmHWM')} MB",
             "≤ 300 MB", (lat.get("rss_mb", {}).get("VmHWM") or 1e9) <= 300, lat.get("rss_mb", {}).get("VmHWM"), "MB"),
    ]
    if st.get("sequences"):
        cps = st.get("cards_per_s")
        rows.append(_row("device", f"stack sequences ({st['sequences']} × {st['details'][0]['placements']} placements)",
                         f"per-card counts exact {st['exact']}/{st['sequences']}, number of placements exact "
                         f"{st['placement_count_exact']}/{st['sequences']}"
                         + (f"; {cps:.1f} cards/s processed (1 thread)" if cps else "")
                         + "".join(f"; {d} recorded {n}, naming another printing {st['recorded_wrong'].get(d, 0)}"
                                   for d, n in sorted(st.get("recorded_decisions", {}).items())
                                   if "recorded_wrong" in st),
                         "counts exactly right, ≥ 1 card/s", st["exact"] == st["sequences"]))
    return rows


def accuracy_device_rows(raw: dict) -> list[Row]:
    names = {"full_catalog_scanner_box": "full catalog (19,783), scanner box",
             "sv1_real_scans_scanner_box": "real sv1 scans, scanner box",
             "full_catalog_grid": "full catalog, binder grid (≤ 9 per frame)",
             "full_catalog_free": "full catalog, hand-held", "sv1_real_scans_free": "real sv1 scans, hand-held"}
    rows = []
    for key, label in names.items():
        s = raw.get(key)
        if not s:
            continue
        rows.append(_row("accuracy (device only)", f"top-1, {label}, {s.get('cards')} cards",
                         f"{_pct(s.get('top1_all'))} (top-5 {_pct(s.get('top5_all'))}); accept precision "
                         f"{_pct(s.get('accept_precision'))} at {_pct(s.get('accept_coverage_all'))} accepted",
                         "≥ 97 % top-1; ≥ 99.9 % precision at ≥ 90 % accepted",
                         (s.get("top1_all") or 0) >= 0.97, s.get("top1_all"), "fraction"))
    ph = raw.get("photos_test")
    if ph:
        rows.append(_row("detector", f"real playing-card photos, test split ({ph.get('images')} photos, "
                         f"{ph.get('gt_boxes')} cards)", f"mean box IoU {ph.get('mean_iou')}, recall@IoU0.5 "
                         f"{_pct(ph.get('recall_iou50'))}"
                         + (f" (cards lying free: {ph.get('mean_iou_free')} of {ph.get('free_boxes')}; cards "
                            f"overlapping another: {ph.get('mean_iou_overlapping')} of {ph.get('overlapping_boxes')})"
                            if ph.get("free_boxes") is not None else ""), "mean IoU ≥ 0.9", (ph.get("mean_iou") or 0) >= 0.9,
                         ph.get("mean_iou"), "IoU"))
    found = [raw[k].get("found_rate") for k in names if raw.get(k)]
    if found:
        rows.append(_row("detector", "simulated captures found (all capture sets)", _pct(min(found)) + " (worst set)",
                         "≥ 99 %", min(found) >= 0.99, min(found), "fraction"))
    return rows


FINAL_LABELS = {"full_catalog_scanner_box": "full catalog (19,783), scanner box",
                "sv1_real_scans_scanner_box": "real sv1 scans, scanner box",
                "full_catalog_free": "full catalog, hand-held"}


def final_rows(raw: dict) -> list[Row]:
    """Device + server final answer (``models.eval.final``: the worker's own resolve path)."""
    rows = []
    for key, s in raw.get("sets", {}).items():
        label = FINAL_LABELS.get(key, key)
        ci = s.get("final_top1_ci95") or [None, None]
        # Met only where the 95 % interval's lower bound clears the goal: at n = 1,000 a point estimate of
        # 99.6 % is as consistent with 99.2 % as with 99.9 %.
        met = (ci[0] or 0) >= 0.995 and (s.get("final_top1_reprints") or 0) >= 0.99
        rows.append(_row("accuracy (device + server)", f"final top-1, {label}, {s.get('cards')} cards",
                         f"{_pct(s.get('final_top1'))} [95 % CI {_ci(ci[0])}–{_ci(ci[1])}] (device only "
                         f"{_pct(s.get('device_top1'))}); reprints "
                         f"{_pct(s.get('final_top1_reprints'))} of {s.get('reprint_cards')}; automatic "
                         f"{_pct(s.get('automatic_rate'))} at {_pct(s.get('automatic_precision'))} precision; "
                         f"needs review {_pct(s.get('needs_review_rate'))}",
                         "≥ 99.5 % (95 % CI lower bound); reprints ≥ 99 %", met, s.get("final_top1"), "fraction"))
        if s.get("resolver_ms_median") is not None:
            med = s["resolver_ms_median"]
            rows.append(_row("resolver", f"resolve one ambiguous device scan, {label}, {s.get('resolver_calls')} scans",
                             f"median {med:.0f} ms, p90 {s.get('resolver_ms_p90', 0):.0f} ms wall (CPU median "
                             f"{s.get('resolver_cpu_ms_median', 0):.0f} ms, all threads)",
                             "≤ 200 ms median", med <= 200, med, "ms"))
    return rows


def resolver_rows(raw: dict) -> list[Row]:
    rows = []
    labels = {"server": "server alone (FAISS shortlist)",
              "device": "with the printings of the true illustration as device candidates"}
    for mode, s in raw.items():
        if not isinstance(s, dict):
            continue
        rows.append(_row("resolver", f"augmented catalog crops, {labels.get(mode, mode)}, {s.get('n')} crops "
                         f"({s.get('n_reprints')} reprints)", f"top-1 {_pct(s.get('top1'))}, reprints "
                         f"{_pct(s.get('top1_reprints'))}; median {s.get('ms_p50', 0):.0f} ms",
                         "≤ 200 ms median", (s.get("ms_p50") or 1e9) <= 200, s.get("ms_p50"), "ms"))
    return rows


def faiss_rows(raw: dict) -> list[Row]:
    out = []
    for r in raw.get("rows", []):
        big = r["vectors"] >= 1_000_000
        out.append(_row("FAISS", f"{r['vectors']:,} vectors × {raw.get('dim')} d, {r['index']}",
                        f"recall@10 {r['recall@10']:.3f}; p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms "
                        f"(1 thread); build {r['build_s']:.0f} s",
                        "1M: p99 ≤ 10 ms, recall@10 ≥ 0.95" if big else None,
                        (r["p99_ms"] <= 10 and r["recall@10"] >= 0.95) if big else None, r["p99_ms"], "ms"))
    return out


def ingest_rows(raw: dict) -> list[Row]:
    cpu = raw.get("cpu_share_of_one_core", {})
    return [_row("ingest", f"{raw.get('devices')} devices × {raw.get('offered_per_s', 0) / max(1, raw.get('devices', 1)):.0f}"
                 f" scans/s offered, {raw.get('workers')} workers, Mosquitto + PostgreSQL",
                 f"{raw.get('stored_per_s'):,.0f} scans/s stored, lost {raw.get('lost')}, duplicated "
                 f"{raw.get('duplicated')}; scan→ack p50 {raw.get('ack_p50_ms'):.0f} ms, p99 {raw.get('ack_p99_ms'):.0f} ms; "
                 f"CPU broker {100 * cpu.get('broker', 0):.0f} %, ingest {100 * cpu.get('ingest', 0):.0f} %, "
                 f"postgres {100 * cpu.get('postgres', 0):.0f} % of a core",
                 "≥ 2,000 scans/s, zero loss", raw.get("goal_met"), raw.get("stored_per_s"), "scans/s")]


def collection_rows(raw: dict) -> list[Row]:
    kinds = "; ".join(f"{k}: p99 {v['p99_ms']:.0f} ms" for k, v in raw.get("by_kind", {}).items())
    return [_row("collection API", f"{raw.get('items'):,} items, {raw.get('database')}, filter + search",
                 f"p99 {raw.get('filter_search_p99_ms')} ms ({kinds})", "p99 ≤ 50 ms", raw.get("goal_met"),
                 raw.get("filter_search_p99_ms"), "ms")]


ADAPTERS: dict[str, Callable[[dict], list[Row]]] = {
    "device": device_rows, "accuracy_device": accuracy_device_rows, "final": final_rows, "resolver": resolver_rows,
    "faiss": faiss_rows, "ingest": ingest_rows, "collection": collection_rows,
}
TARGETS = {"device": "make bench-device", "accuracy_device": "make bench-accuracy", "final": "make bench-final",
           "resolver": "make bench-resolver", "faiss": "make bench-faiss", "ingest": "make bench-ingest",
           "collection": "make bench-collection"}


def build(results: Path) -> dict:
    rows, missing = [], []
    for name, adapt in ADAPTERS.items():
        f = results / f"{name}.json"
        if not f.is_file():
            missing.append({"name": name, "target": TARGETS[name]})
            continue
        rec = json.loads(f.read_text())
        for r in adapt(rec["raw"]):
            r |= {"bench": name, "command": rec["command"], "target": rec.get("target") or TARGETS[name],
                  "machine": describe(rec["machine"]), "measured_at": rec["started_at"]}
            rows.append(r)
    return {"data": DATA_NOTE, "rows": rows, "missing": missing}


def markdown(report: dict) -> str:
    def cell(s) -> str:
        return str(s).replace("|", "\\|")

    lines = ["# Scanemon benchmark report", "", f"Generated by `python -m tests.bench.report` (`make bench`). "
             f"{report['data']}", "",
             "| area | what | figure | goal | met | reproduce | machine, measured at |",
             "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        met = {True: "yes", False: "**no**", None: ""}[r["met"]]
        lines.append(f"| {cell(r['area'])} | {cell(r['what'])} | {cell(r['figure'])} | {cell(r['goal'] or '')} | {met} "
                     f"| `{cell(r['target'])}`: `{cell(r['command'])}` | {cell(r['machine'])}, {r['measured_at']} |")
    if report["missing"]:
        lines += ["", "Not run yet: " + ", ".join(f"{m['name']} (`{m['target']}`)" for m in report["missing"]) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.report", description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--copy-to", type=Path, default=None, help="also copy REPORT.md and report.json here (docs/bench)")
    a = ap.parse_args(argv)
    report = build(a.results)
    a.results.mkdir(parents=True, exist_ok=True)
    (a.results / "report.json").write_text(json.dumps(report, indent=2))
    md = markdown(report)
    (a.results / "REPORT.md").write_text(md)
    print(md)
    if a.copy_to:
        a.copy_to.mkdir(parents=True, exist_ok=True)
        for f in ("REPORT.md", "report.json"):
            shutil.copy(a.results / f, a.copy_to / f)
    try:
        shown = (a.results / "REPORT.md").relative_to(ROOT)
    except ValueError:
        shown = a.results / "REPORT.md"
    print(f"report: {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
