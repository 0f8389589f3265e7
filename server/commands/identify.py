"""``scanemon-server identify --json IMAGE...``: the resolver on image files, one JSON line per image.

Same line format as the device CLI: {image, cards[{card_id, decision, score, margin, candidates[{card_id,
score}], quad}], reject_reason, ms}; decision = accept (resolved) | ambiguous (needs review) | no_card.
"""

from __future__ import annotations

import json
import sys
import time


def register(sub) -> None:
    p = sub.add_parser("identify", help="identify cards in image files with the server resolver")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--json", action="store_true", help="JSON lines (the default output; kept for parity with the device CLI)")
    p.add_argument("--catalog-dir", help="override resolver.catalog_dir")
    p.set_defaults(func=_identify)


def result_line(path: str, results, ms: float, reject_reason: str | None = None) -> dict:
    cards = []
    for r in results:
        scores = [c["score"] for c in r.candidates]
        margin = scores[0] - scores[1] if len(scores) > 1 else (scores[0] if scores else 0.0)
        cards.append({"card_id": r.card_id, "decision": "accept" if r.status == "resolved" else "ambiguous",
                      "score": r.confidence, "margin": round(float(margin), 4),
                      "candidates": [{"card_id": c["card_id"], "score": c["score"]} for c in r.candidates],
                      "quad": r.quad})
    if not cards and reject_reason is None:
        reject_reason = "no_card"
    return {"image": path, "cards": cards, "reject_reason": reject_reason, "ms": round(ms, 1)}


def _identify(args) -> int:
    import cv2

    from server.cli import settings_from_args
    from server.resolver.service import resolver_from_settings

    settings = settings_from_args(args)
    if args.catalog_dir:
        settings = settings.model_copy(update={"resolver": settings.resolver.model_copy(update={"catalog_dir": args.catalog_dir})})
    try:
        resolver = resolver_from_settings(settings)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rc = 0
    for path in args.images:
        t = time.perf_counter()
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            line = {"image": path, "cards": [], "reject_reason": "unreadable", "ms": 0.0}
            rc = 1
        else:
            results = resolver.identify_image(img)
            line = result_line(path, results, (time.perf_counter() - t) * 1000)
        print(json.dumps(line), flush=True)
    return rc
