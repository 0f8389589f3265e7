"""CLI: ``python -m models.synth {catalog,captures,stack} …`` (see ``--help`` of each)."""

from __future__ import annotations

import argparse
import sys


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = text.lower().split("x")
        return int(w), int(h)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size must look like 640x480, got {text!r}") from exc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.synth", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("catalog", help="render catalog printings to DIR/<card_id>.jpg + index.jsonl")
    c.add_argument("--pokemon-tcg-data", required=True, help="pokemon-tcg-data checkout (sets/en.json, cards/en/*.json)")
    c.add_argument("--images", default=None, help="folder with real scans <id>/<id>.png (used instead of rendering)")
    c.add_argument("--out", required=True)
    c.add_argument("--size", type=_size, default=(360, 504), help="WxH, default 360x504")
    c.add_argument("--limit", type=int, default=None)
    c.add_argument("--sets", default=None, help="comma-separated set ids, e.g. sv1,base1")
    c.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    c.add_argument("--quality", type=int, default=90, help="JPEG quality")

    p = sub.add_parser("captures", help="simulate camera frames of catalog cards: DIR/images/*.jpg + labels.jsonl")
    p.add_argument("--catalog", required=True, help="folder of rendered card JPEGs (from `catalog`)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=_size, default=(640, 480))
    p.add_argument("--multi", action="store_true", help="grid / binder page mode with up to 9 cards")
    p.add_argument("--scanner-box", action="store_true", help="fixed-camera tray mode (±10°, fixed distance)")
    p.add_argument("--config", default=None, help="JSON file with CaptureConfig fields (overrides defaults)")
    p.add_argument("--workers", type=int, default=1)

    s = sub.add_parser("stack", help="frame sequence of a counter scan with ground-truth events and counts")
    s.add_argument("--catalog", required=True)
    s.add_argument("--cards", type=int, default=20, help="number of card placements")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--out", required=True)
    s.add_argument("--size", type=_size, default=(640, 480))

    a = ap.parse_args(argv)
    if a.cmd == "catalog":
        from models.synth.catalog import load_cards, render_catalog

        cards, set_index = load_cards(a.pokemon_tcg_data, a.images, a.sets.split(",") if a.sets else None, a.limit)
        r = render_catalog(cards, set_index, a.out, a.size, a.workers, a.quality)
        print(f"rendered {r['n']} cards in {r['seconds']:.1f} s: {r['cards_per_s']:.1f} cards/s -> {a.out}")
        return 0
    if a.cmd == "captures":
        from models.synth.capture import CaptureConfig
        from models.synth.dataset import load_config, write_captures

        cfg = load_config(a.config) if a.config else CaptureConfig()
        cfg = cfg.model_copy(update={"size": a.size, "mode": "grid" if a.multi else ("scanner_box" if a.scanner_box else cfg.mode)})
        r = write_captures(a.catalog, a.out, a.n, a.seed, cfg, workers=a.workers)
        print(f"wrote {r['n']} frames in {r['seconds']:.1f} s: {r['frames_per_s']:.1f} frames/s -> {a.out}")
        return 0
    if a.cmd == "stack":
        from models.synth.stack import StackConfig, write_stack

        r = write_stack(a.catalog, a.out, a.cards, a.seed, StackConfig(size=a.size))
        print(f"wrote {r['frames']} frames, {r['events']} events, {r['placements']} placements -> {a.out}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
