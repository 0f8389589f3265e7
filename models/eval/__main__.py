"""``python -m models.eval``: evaluate an identifier on simulated captures and write a report.

Default pipeline (what ``make eval`` runs): render a catalog subset into ``var/eval/catalog`` if it is
missing, generate ``--n`` captures with ``--seed`` into ``var/eval/captures-<mode>-<seed>-<n>`` if missing,
run the chosen identifier, write ``var/reports/eval/REPORT.md`` with plots and contact sheets.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from models.eval import shared_data

DEFAULT_SETS = "base1,base4,sv1,sv3pt5,swsh1,cel25,xy12"


def reprint_pair(cards, set_index):
    """Two printings of one illustration from different sets (rendered, not real scans), same layout if possible."""
    from models.synth.render import layout_family

    by_ill = defaultdict(list)
    for c in cards:
        if not c.image_path:
            by_ill[c.illustration_id].append(c)
    best = None
    for group in by_ill.values():
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                if a.set_id != b.set_id and a.supertype == "Pokémon":
                    same = layout_family(a, set_index) == layout_family(b, set_index)
                    if same:
                        return a, b
                    best = best or (a, b)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--identifier", default="hash", choices=["hash", "subprocess", "http"])
    ap.add_argument("--cmd", help="subprocess: command printing device JSON lines, images appended "
                    "(e.g. 'scanemon-device identify --bundle DIR --json')")
    ap.add_argument("--url", help="http: identify endpoint, e.g. http://localhost:8000/api/v1/identify")
    ap.add_argument("--quad-source", default="detector", choices=["detector", "labels"],
                    help="hash baseline: classical contour detector or labelled quads (oracle detector)")
    ap.add_argument("--catalog", default="var/eval/catalog", help="rendered catalog (<card_id>.jpg + index.jsonl)")
    ap.add_argument("--pokemon-tcg-data", default=None, help="catalog source used to render --catalog when missing")
    ap.add_argument("--images", default=None, help="real scans folder for rendering (PTCGextension/cards)")
    ap.add_argument("--sets", default=DEFAULT_SETS, help="sets rendered when --catalog is missing")
    ap.add_argument("--captures", default=None, help="labelled captures (labels.jsonl); generated when missing")
    ap.add_argument("--n", type=int, default=300, help="captures to generate")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mode", default="free", choices=["free", "scanner_box", "grid"], help="capture mode to generate")
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--photos", default=None, help="real playing-card photos (VOC xml / <split>_labels.csv) for detector IoU")
    ap.add_argument("--limit", type=int, default=None, help="evaluate only the first N captures")
    ap.add_argument("--out", default="var/reports/eval")
    a = ap.parse_args(argv)

    from models.eval.identifiers import make_identifier
    from models.eval.report import write_report
    from models.synth.capture import CaptureConfig
    from models.synth.dataset import read_labels, write_captures
    from models.synth.sheets import captures_sheet, printings_sheet

    sd = shared_data()
    ptcg = Path(a.pokemon_tcg_data) if a.pokemon_tcg_data else sd / "pokemon-tcg-data"
    images = a.images or (str(sd / "PTCGextension" / "cards") if (sd / "PTCGextension" / "cards").is_dir() else None)
    catalog = Path(a.catalog)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    sheets: dict[str, str] = {}

    cards = set_index = None
    if ptcg.is_dir():
        from models.synth.catalog import load_cards

        cards, set_index = load_cards(ptcg, images, a.sets.split(","))
    if not any(catalog.glob("*.jpg")):
        if cards is None:
            print(f"no catalog at {catalog} and no pokemon-tcg-data at {ptcg} to render one", file=sys.stderr)
            return 2
        from models.synth.catalog import render_catalog

        r = render_catalog(cards, set_index, catalog)
        print(f"rendered {r['n']} cards at {r['cards_per_s']:.0f} cards/s -> {catalog}")
    if cards is not None:
        pair = reprint_pair(cards, set_index)
        sample = list(pair) if pair else []
        by_set = {}
        for c in cards:
            by_set.setdefault((c.set_id, c.supertype), c)
        holo = next((c for c in cards if (c.rarity or "").startswith("Rare Holo") and not c.image_path
                     and c not in sample), None)
        sample += [c for c in by_set.values() if c not in sample][:8]
        if holo is not None:
            sample.insert(0, holo)  # printings_sheet adds normal/holo/reverse_holo variants of the first card
        if sample:
            printings_sheet(sample, set_index, out / "sheet_printings.png")
            sheets["rendered printings (first: holo/reverse-holo variants at the end; reprint pair "
                   f"{pair[0].id} / {pair[1].id})" if pair else "rendered printings"] = "sheet_printings.png"

    w, h = (int(v) for v in a.size.lower().split("x"))
    captures = Path(a.captures) if a.captures else Path(f"var/eval/captures-{a.mode}-{a.seed}-{a.n}-{w}x{h}")
    if not (captures / "labels.jsonl").is_file():
        cfg = CaptureConfig(size=(w, h), mode=a.mode)
        r = write_captures(catalog, captures, a.n, a.seed, cfg)
        print(f"generated {r['n']} captures at {r['frames_per_s']:.0f} frames/s -> {captures}")
    captures_sheet(captures, read_labels(captures), out / "sheet_captures.png", n=12)
    sheets["simulated captures (green = labelled quad, red dot = card TL)"] = "sheet_captures.png"

    photos = Path(a.photos) if a.photos else sd / "TensorFlow-Object-Detection-API-Tutorial-Train-Multiple-Objects-Windows-10" / "images" / "test"
    ident = make_identifier(a.identifier, catalog=catalog, command=a.cmd, url=a.url, quad_source=a.quad_source)
    s = write_report(ident, captures, catalog, out, photos if photos.is_dir() else None, sheets, a.limit,
                     title=f"Identifier evaluation: {a.identifier}" + (f" ({a.quad_source} quads)" if a.identifier == "hash" else ""))
    print(f"top-1 {s['top1']:.3f} top-3 {s['top3_hit']:.3f} name top-1 {s['name_top1']:.3f} "
          f"detector IoU {s['detector_mean_iou']:.3f} -> {out / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
