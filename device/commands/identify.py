"""``scanemon-device identify --bundle DIR --json IMAGE...``: identify the cards in image files.

With ``--json`` one JSON object per input line: ``image``, ``cards`` [{card_id, decision, score, margin,
candidates [{card_id, score}]×5, quad [[x, y]×4], ``quality_flag`` only when the card passed the quality gate
softly (glare | too_blurry | partially_out_of_view) or matched nothing on a confident detection (low_score):
identified, never accepted, decision ambiguous}],
``reject_reason`` when no card passes the quality gate, ``ms`` {detect, embed, match, total}. A bad input
(missing, unreadable, corrupt, too large) gives a line with ``error`` instead, and the exit status is 1 at the end; there is never a traceback.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

DEFAULT_BUNDLE = os.environ.get("SCANEMON_BUNDLE", str(Path(__file__).resolve().parents[2] / "models/bundles/demo"))
MAX_FILE_BYTES = 64 << 20
MAX_PIXELS = 40_000_000  # 40 MP: bigger than any camera we support, small enough to never exhaust a Pi's RAM


def register(sub) -> None:
    p = sub.add_parser("identify", help="identify cards in image files", description=__doc__)
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, …)")
    p.add_argument("--bundle", default=DEFAULT_BUNDLE, help="bundle directory (default: $SCANEMON_BUNDLE or the demo bundle)")
    p.add_argument("--json", action="store_true", help="one JSON object per image (machine-readable)")
    p.add_argument("--threads", type=int, default=None, help="TFLite threads (default: all cores)")
    p.add_argument("--detector", choices=["auto", "cnn", "contour"], default="auto",
                   help="auto = CNN with the contour detector as cross-check/fallback")
    p.add_argument("--public-key", default=None, help="fleet public key (PEM): verify the bundle signature first")
    p.add_argument("--save-crops", default=None, help="write each card's rectified crop here (JPEG)")
    p.set_defaults(func=run)


class InputError(Exception):
    pass


def image_size(data: bytes) -> tuple[int, int] | None:
    """(W, H) from a PNG/JPEG/GIF/BMP/WebP header without decoding; None when unknown."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            seglen = struct.unpack(">H", data[i + 2:i + 4])[0]
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                h, w = struct.unpack(">HH", data[i + 5:i + 9])
                return w, h
            i += 2 + seglen
        return None
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return abs(w), abs(h)
    return None


def load_image(path: str):
    import cv2
    import numpy as np

    p = Path(path)
    if not p.exists():
        raise InputError("file not found")
    if not p.is_file():
        raise InputError("not a regular file")
    size = p.stat().st_size
    if size == 0:
        raise InputError("empty file")
    if size > MAX_FILE_BYTES:
        raise InputError(f"file too large ({size} bytes, limit {MAX_FILE_BYTES})")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}") from None
    dims = image_size(data)
    if dims and dims[0] * dims[1] > MAX_PIXELS:
        raise InputError(f"image too large ({dims[0]}x{dims[1]} pixels, limit {MAX_PIXELS})")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise InputError("cannot decode image (corrupt or unsupported format)")
    if img.shape[0] * img.shape[1] > MAX_PIXELS:
        raise InputError(f"image too large ({img.shape[1]}x{img.shape[0]} pixels, limit {MAX_PIXELS})")
    if min(img.shape[:2]) < 32:
        raise InputError(f"image too small ({img.shape[1]}x{img.shape[0]} pixels)")
    return img


def _emit(obj: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj), flush=True)
        return
    if "error" in obj:
        print(f"{obj['image']}: ERROR {obj['error']}", flush=True)
        return
    ms = obj.get("ms", {})
    head = f"{obj['image']}: {len(obj['cards'])} card(s), {ms.get('total', 0):.1f} ms"
    if obj.get("reject_reason"):
        head += f" (rejected: {obj['reject_reason']})"
    print(head)
    for c in obj["cards"]:
        cands = ", ".join(f"{x['card_id']} {x['score']:.3f}" for x in c["candidates"][:3])
        flag = f"  ({c['quality_flag']})" if c.get("quality_flag") else ""
        conf = f" confidence {c['confidence']:.3f}" if c.get("confidence") is not None else ""
        print(f"  {c['decision']:9s} {c['card_id'] or '-':14s} score {c['score']:.3f} margin {c['margin']:.3f}{conf}  "
              f"[{cands}]{flag}")
    sys.stdout.flush()


def run(args) -> int:
    try:
        from device.vision.pipeline import VisionPipeline

        pipe = VisionPipeline.from_bundle(args.bundle, args.threads, public_key=args.public_key, detector=args.detector)
    except Exception as exc:  # a broken bundle is an error line, not a traceback
        _emit({"image": None, "error": f"cannot load bundle {args.bundle}: {type(exc).__name__}: {exc}"}, args.json)
        return 2
    failed = 0
    for path in args.images:
        try:
            img = load_image(path)
            res = pipe.process(img)
            obj = {"image": path, **res.to_json()}
            if args.save_crops:
                out = Path(args.save_crops)
                out.mkdir(parents=True, exist_ok=True)
                for k, c in enumerate(res.cards):
                    jpg = c.crop_jpeg()
                    if jpg:
                        (out / f"{Path(path).stem}_{k}.jpg").write_bytes(jpg)
        except InputError as exc:
            obj = {"image": path, "error": str(exc)}
            failed += 1
        except MemoryError:
            obj = {"image": path, "error": "out of memory"}
            failed += 1
        except Exception as exc:  # keep going: one bad frame must not stop a batch
            obj = {"image": path, "error": f"{type(exc).__name__}: {exc}"}
            failed += 1
        _emit(obj, args.json)
    return 1 if failed else 0
