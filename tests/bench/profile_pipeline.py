"""Where the device pipeline's time goes, per frame, at one or more frame sizes (cProfile, one thread).

    .venv/bin/python tests/bench/profile_pipeline.py [--bundle models/bundles/demo] [--catalog var/catalog]
        [--frames 80] [--sizes 640x480,1280x960] [--top 15]

Frames are the simulated hand-held and binder captures of ``bench_device.py`` (seed 424242, every fifth a
binder page). Prints, per size, the median total and the functions with the most own time per frame, and for
the OpenCV resampling calls (resize, warps, remap) who called them: what a bigger frame costs shows up there.
Profiling slows Python code more than the C++ calls, so compare sizes with one another, not with
``bench_device.py``'s figures.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

RESAMPLING = ("<resize>", "<warpPerspective>", "<warpAffine>", "<remap>")


def profile(pipe, frames: list[np.ndarray]) -> tuple[float, pstats.Stats]:
    for f in frames[:5]:
        pipe.process(f)  # warm-up
    pr = cProfile.Profile()
    pr.enable()
    totals = [pipe.process(f).ms["total"] for f in frames]
    pr.disable()
    return float(np.median(totals)), pstats.Stats(pr)


def main(argv: list[str] | None = None) -> int:
    import cv2

    from device.vision.pipeline import VisionPipeline
    from models.eval import frame_size
    from models.synth.capture import CaptureConfig
    from models.synth.dataset import catalog_ids, make_frame

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=str(ROOT / "models/bundles/demo"))
    ap.add_argument("--catalog", default=str(ROOT / "var/catalog"))
    ap.add_argument("--frames", type=int, default=80)
    ap.add_argument("--sizes", default="640x480,1280x960", help="comma-separated WxH")
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args(argv)
    if not Path(a.catalog, "index.jsonl").is_file():
        print(f"no rendered catalog at {a.catalog} (make var/catalog/index.jsonl)", file=sys.stderr)
        return 2
    cv2.setNumThreads(1)
    pipe = VisionPipeline.from_bundle(a.bundle, 1)
    ids = catalog_ids(a.catalog)
    for size in (frame_size(s) for s in a.sizes.split(",")):
        frames = [make_frame(a.catalog, ids, 424_242, i, CaptureConfig(size=size, mode="grid" if i % 5 == 4 else "free"))[0]
                  for i in range(a.frames)]
        median, st = profile(pipe, frames)
        n = len(frames)
        print(f"\n{size[0]}x{size[1]}: {n} frames, median total {median:.2f} ms (profiled)")
        rows = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:a.top]
        for (fn, line, name), (_, calls, own, cum, _) in rows:
            print(f"  {own / n * 1e3:7.2f} ms own {cum / n * 1e3:7.2f} ms cum  {calls / n:6.1f} calls  "
                  f"{Path(fn).name}:{line} {name}")
        print("  resampling calls by caller (ms a frame, calls a frame):")
        for (fn, line, name), (_, _, _, _, callers) in st.stats.items():
            if name in RESAMPLING:
                for (cf, cl, cn), v in sorted(callers.items(), key=lambda kv: -kv[1][3]):
                    print(f"    {name[1:-1]:16s} from {Path(cf).name}:{cn:20s} {v[3] / n * 1e3:6.2f} ms  {v[0] / n:5.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
