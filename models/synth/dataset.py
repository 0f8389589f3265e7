"""Write capture datasets to disk: ``OUT/images/NNNNNN.jpg``, ``OUT/labels.jsonl``, ``OUT/config.json``.

Frame ``i`` uses ``np.random.default_rng(seed + i)`` for everything (card choice included), so any frame
can be regenerated alone and the dataset is identical for any number of workers.
"""

from __future__ import annotations

import functools
import json
import multiprocessing as mp
import time
from pathlib import Path

import cv2
import numpy as np
from pydantic import ValidationError

from models.synth.capture import CaptureConfig, simulate_capture

LABELS_FILE = "labels.jsonl"


def load_config(path: str | Path) -> CaptureConfig:
    """A CaptureConfig from a JSON file; errors name the file and the offending field/line."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        return CaptureConfig.model_validate_json(text)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        line = next((i + 1 for i, ln in enumerate(text.splitlines()) if loc and f'"{err["loc"][0]}"' in ln), None)
        where = f"{path}" + (f":{line}" if line else "")
        raise ValueError(f"{where}: {loc}: {err['msg']}") from exc


def catalog_ids(catalog_dir: str | Path) -> list[str]:
    ids = sorted(p.stem for p in Path(catalog_dir).glob("*.jpg"))
    if not ids:
        raise FileNotFoundError(f"{catalog_dir}: no card JPEGs (render with `python -m models.synth catalog`)")
    return ids


@functools.lru_cache(maxsize=2048)
def _load_card(path: str) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(path)
    return img


def pick_cards(rng: np.random.Generator, ids: list[str], cfg: CaptureConfig) -> list[str]:
    """How many and which cards a frame shows (drawn from the frame's own rng)."""
    if cfg.mode == "grid":
        k = int(rng.integers(2, cfg.max_cards + 1))
    elif cfg.mode == "fan":
        k = int(rng.integers(max(2, cfg.fan_cards[0]), max(2, cfg.fan_cards[1]) + 1))
    elif cfg.mode == "free" and rng.random() < cfg.p_neighbours:
        k = 1 + int(rng.integers(1, 3))
    else:
        k = 1
    return [ids[int(j)] for j in rng.choice(len(ids), size=min(k, len(ids)), replace=False)]


def make_frame(catalog_dir: str, ids: list[str], seed: int, index: int, cfg: CaptureConfig) -> tuple[np.ndarray, dict]:
    rng = np.random.default_rng(seed + index)
    chosen = pick_cards(rng, ids, cfg)
    imgs = [_load_card(str(Path(catalog_dir) / f"{c}.jpg")) for c in chosen]
    return simulate_capture(imgs, chosen, rng, cfg)


def make_foreign_frame(seed: int, index: int, cfg: CaptureConfig) -> tuple[np.ndarray, dict]:
    """Like ``make_frame``, with non-catalog card faces (``models.synth.foreign``: playing cards, card backs)
    instead of catalog images; their ids are ``foreign-N``. Its own random stream, so frame ``index`` of a
    catalog dataset and of a foreign one differ."""
    from models.synth.foreign import foreign_card

    rng = np.random.default_rng([seed, index, 0xF0])
    chosen = pick_cards(rng, [f"foreign-{j}" for j in range(9)], cfg)
    return simulate_capture([foreign_card(rng) for _ in chosen], chosen, rng, cfg)


_W: dict = {}


def _init(catalog_dir, ids, seed, cfg, out) -> None:
    cv2.setNumThreads(1)
    _W.update(catalog_dir=catalog_dir, ids=ids, seed=seed, cfg=cfg, out=Path(out))


def _one(index: int) -> dict:
    frame, labels = make_frame(_W["catalog_dir"], _W["ids"], _W["seed"], index, _W["cfg"])
    name = f"images/{index:06d}.jpg"
    # The simulated JPEG artefacts are already in the pixels; store near-losslessly on top.
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
    (_W["out"] / name).write_bytes(buf.tobytes())
    return {"image": name, "index": index, "seed": _W["seed"] + index, **labels}


def write_captures(catalog_dir: str | Path, out: str | Path, n: int, seed: int, cfg: CaptureConfig,
                   workers: int = 1, progress: bool = True) -> dict:
    from tqdm import tqdm

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    ids = catalog_ids(catalog_dir)
    (out / "config.json").write_text(json.dumps({"seed": seed, "n": n, "catalog": str(catalog_dir),
                                                 "config": cfg.model_dump(mode="json")}, indent=2))
    t0 = time.perf_counter()
    rows: list[dict] = []
    args = (str(catalog_dir), ids, seed, cfg, str(out))
    bar = tqdm(total=n, unit="frame", disable=not progress)
    if workers <= 1:
        _init(*args)
        for i in range(n):
            rows.append(_one(i))
            bar.update()
    else:
        with mp.get_context("fork").Pool(workers, _init, args) as pool:
            for r in pool.imap(_one, range(n), chunksize=16):
                rows.append(r)
                bar.update()
    bar.close()
    dt = time.perf_counter() - t0
    with open(out / LABELS_FILE, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return {"n": n, "seconds": dt, "frames_per_s": n / dt if dt > 0 else float("inf")}


def read_labels(captures_dir: str | Path) -> list[dict]:
    p = Path(captures_dir) / LABELS_FILE
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
