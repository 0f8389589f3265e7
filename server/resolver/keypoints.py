"""ORB keypoints of every catalog face, computed once per catalog version and memory-mapped at start-up.

Why: geometric verification needs the keypoints of ~10 catalog faces per ambiguous scan. Computed on demand
that is a JPEG decode, a resize and an ORB pass per candidate (~5 ms each, half the resolve budget), and
with a full catalog and random cards the in-memory LRU rarely hits. Stored, a candidate's keypoints are two
array slices of a memory map; the face image itself is only decoded for the few contenders compared by region.

On disk: ``data_dir/keypoints/<catalog_version>--<orb_id>/`` with ``des.npy`` (n, F, 32) uint8, ``kp.npy``
(n, F, 2) uint16 in 1/16 px, ``count.npy`` (n,) and ``ids.json`` + ``meta.json``; ``orb_id`` fingerprints the
ORB settings (``verify.ORB_PARAMS``), so changing them rebuilds. Folders of older catalog versions are pruned.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from server.resolver.staging import discard, publish, staging_folder

log = logging.getLogger(__name__)

DES_FILE, KP_FILE, COUNT_FILE, IDS_FILE, META_FILE = "des.npy", "kp.npy", "count.npy", "ids.json", "meta.json"
KP_SCALE = 16.0  # fixed point: 1/16 px is far below RANSAC's 4 px tolerance, and uint16 holds 4,096 px


def orb_id(params: dict) -> str:
    return "orb-" + hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]


class KeypointStore:
    """card_id -> (keypoints (n, 2) float32, descriptors (n, 32) uint8) from the memory-mapped arrays."""

    def __init__(self, ids: Sequence[str], des: np.ndarray, kp: np.ndarray, count: np.ndarray, meta: dict):
        self.ids = list(ids)
        self.pos = {c: i for i, c in enumerate(self.ids)}
        self.des, self.kp, self.count, self.meta = des, kp, count, meta

    def __contains__(self, card_id: str) -> bool:
        return card_id in self.pos

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, card_id: str) -> tuple[np.ndarray, np.ndarray | None]:
        i = self.pos[card_id]
        n = int(self.count[i])
        if n == 0:
            return np.zeros((0, 2), np.float32), None
        return (self.kp[i, :n].astype(np.float32) / KP_SCALE), np.ascontiguousarray(self.des[i, :n])

    @classmethod
    def load(cls, folder: Path) -> "KeypointStore":
        folder = Path(folder)
        meta = json.loads((folder / META_FILE).read_text())
        return cls(json.loads((folder / IDS_FILE).read_text()), np.load(folder / DES_FILE, mmap_mode="r"),
                   np.load(folder / KP_FILE, mmap_mode="r"), np.load(folder / COUNT_FILE), meta)


def store_folder(data_dir: Path, catalog_version: str, params: dict) -> Path:
    from server.resolver.index import _safe

    return Path(data_dir) / "keypoints" / f"{_safe(catalog_version)}--{orb_id(params)}"


def load_or_build(data_dir: Path, catalog_version: str, params: dict, card_ids: Sequence[str],
                  compute: Callable[[str], tuple[np.ndarray, np.ndarray | None]], *, workers: int | None = None,
                  prune: bool = True) -> KeypointStore:
    """Load the store for this catalog version and ORB settings, or build it with ``compute(card_id)``.

    ``compute`` runs in a thread pool: OpenCV's decode and ORB release the GIL, so the cores are used."""
    folder = store_folder(data_dir, catalog_version, params)
    if (folder / META_FILE).is_file():
        try:
            ks = KeypointStore.load(folder)
            if ks.meta.get("catalog_version") == catalog_version and ks.meta.get("orb") == params \
                    and len(ks) == len(ks.count) == ks.des.shape[0]:
                log.info("catalog keypoints loaded: %s (%d faces)", folder, len(ks))
                return ks
        except Exception as exc:  # a corrupt folder is rebuilt, never fatal
            log.warning("catalog keypoints at %s unreadable (%s); rebuilding", folder, exc)
    discard(folder)  # unusable (or absent): the build below takes its place
    t0 = time.perf_counter()
    ids = list(card_ids)
    cap = int(params["nfeatures"])
    tmp = staging_folder(folder)
    # Written straight into memory maps: the full catalog is ~20k × F × 36 bytes, no need to hold it twice.
    des = np.lib.format.open_memmap(tmp / DES_FILE, "w+", np.uint8, (len(ids), cap, 32))
    kp = np.lib.format.open_memmap(tmp / KP_FILE, "w+", np.uint16, (len(ids), cap, 2))
    count = np.zeros(len(ids), np.uint16)

    def one(i: int) -> None:
        pts, d = compute(ids[i])
        n = 0 if d is None else min(len(d), cap)
        if n:
            des[i, :n] = d[:n]
            kp[i, :n] = np.clip(np.round(pts[:n] * KP_SCALE), 0, 65535).astype(np.uint16)
        count[i] = n

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for done, _ in enumerate(pool.map(one, range(len(ids))), 1):
            if done % 5000 == 0:
                log.info("catalog keypoints: %d/%d faces", done, len(ids))
    des.flush()
    kp.flush()
    del des, kp
    np.save(tmp / COUNT_FILE, count)
    meta = {"catalog_version": catalog_version, "orb": params, "n": len(ids),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "build_s": round(time.perf_counter() - t0, 1)}
    (tmp / IDS_FILE).write_text(json.dumps(ids))
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
    if publish(tmp, folder):
        log.info("catalog keypoints built: %s (%d faces in %.1f s)", folder, len(ids), meta["build_s"])
    else:
        log.info("catalog keypoints: another process published %s first; using that", folder)
    if prune:
        for other in folder.parent.glob(f"*--{orb_id(params)}"):
            if other != folder and other.is_dir():
                shutil.rmtree(other, ignore_errors=True)
    return KeypointStore.load(folder)


__all__ = ["KeypointStore", "load_or_build", "orb_id", "store_folder"]
