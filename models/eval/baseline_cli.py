"""The hash baseline behind the device CLI's JSON-lines interface, so the subprocess adapter (and any
harness expecting ``scanemon-device identify --json``) can be exercised without a bundle:

    python -m models.eval.baseline_cli --catalog DIR --json IMAGE...
"""

from __future__ import annotations

import argparse
import json
import sys

import cv2

from models.eval.identifiers import HashIdentifier


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.eval.baseline_cli")
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--json", action="store_true", help="JSON lines output (the only format)")
    ap.add_argument("images", nargs="+")
    a = ap.parse_args(argv)
    ident = HashIdentifier(a.catalog)
    for path in a.images:
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            print(json.dumps({"image": path, "cards": [], "reject_reason": "unreadable", "ms": {}}))
            continue
        cards, ms = ident.identify_timed(img)
        print(json.dumps({"image": path, "cards": [c.to_json() for c in cards],
                          "reject_reason": None if cards else "no_card", "ms": ms}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
