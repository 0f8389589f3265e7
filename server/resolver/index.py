"""Catalog embedding index (FAISS), chosen by size, persisted per catalog version and model.

* up to ``flat_max`` vectors (default 200k): exact ``IndexFlatIP`` (20k cards x 128 d is ~10 MB and a
  search is well under a millisecond: nothing approximate is needed);
* above: ``IVF{nlist},SQ8`` (inverted lists, 8-bit scalar-quantised vectors: 4x smaller than float, recall
  ~0.99 of exact at nprobe 32) or HNSW (``kind="hnsw"``), measured by ``tests/bench/bench_faiss.py``.

On disk: ``data_dir/index/<catalog_version>--<model_id>/`` holding ``index.faiss``, ``ids.json``,
``embeddings.npy`` (fp16, so a different index kind never needs the model again) and ``meta.json``.
``load_or_build`` loads that folder at start-up without touching the model; when the catalog version
(or the model) changes the folder name changes, the index is rebuilt once and older folders are pruned.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from server.resolver.staging import discard, publish, staging_folder

log = logging.getLogger(__name__)

FLAT_MAX = 200_000
INDEX_FILE, IDS_FILE, EMB_FILE, META_FILE = "index.faiss", "ids.json", "embeddings.npy", "meta.json"


def build_faiss(vectors: np.ndarray, kind: str = "auto", flat_max: int = FLAT_MAX, nprobe: int = 32,
                hnsw_m: int = 32, ef_search: int = 64, train_max: int = 64_000, seed: int = 0):
    """A FAISS inner-product index over unit ``vectors`` (N, d). kind: auto | flat | ivf | hnsw."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    if kind == "auto":
        kind = "flat" if n <= flat_max else "ivf"
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 40
        index.hnsw.efSearch = ef_search
    elif kind == "ivf":
        nlist = ivf_nlist(n)
        index = faiss.index_factory(d, f"IVF{nlist},SQ8", faiss.METRIC_INNER_PRODUCT)
        rs = np.random.default_rng(seed)
        sample = x[rs.choice(n, size=train_max, replace=False)] if n > train_max else x
        index.train(sample)
        index.nprobe = nprobe
    else:
        raise ValueError(f"unknown index kind {kind!r}: auto | flat | ivf | hnsw")
    index.add(x)
    return index


def ivf_nlist(n: int) -> int:
    """~2 sqrt(N) inverted lists (1M -> 2048), a power of two, at least 64."""
    return max(64, 2 ** int(round(math.log2(2 * math.sqrt(n)))))


def index_kind(index) -> str:
    import faiss

    if isinstance(index, faiss.IndexFlat):
        return "flat"
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    return "ivf"


class CardIndex:
    """Card ids + a FAISS index over their catalog-image embeddings."""

    def __init__(self, ids: Sequence[str], index, meta: dict | None = None, embeddings: np.ndarray | None = None):
        if len(ids) != index.ntotal:
            raise ValueError(f"{len(ids)} ids for {index.ntotal} vectors")
        self.ids = list(ids)
        self.index = index
        self.meta = dict(meta or {})
        self.embeddings = embeddings  # fp16 rows aligned with ids (for exact re-scoring), may be None
        self.pos = {cid: i for i, cid in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return self.index.d

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, list[list[str]]]:
        """(scores (Q, k), card ids per query); ids of missing results (-1) are dropped."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        scores, idx = self.index.search(q, min(k, len(self.ids)))
        return scores, [[self.ids[j] for j in row if j >= 0] for row in idx]

    def vector(self, card_id: str) -> np.ndarray | None:
        i = self.pos.get(card_id)
        if i is None or self.embeddings is None:
            return None
        return self.embeddings[i].astype(np.float32)

    # --- persistence -----------------------------------------------------------------------------------

    def save(self, folder: Path) -> bool:
        """Write the index to ``folder`` through a staging folder of its own (``server.resolver.staging``).
        False when ``folder`` was already there (another process's build of it, which stays): ``discard`` an
        unusable one first."""
        import faiss

        folder = Path(folder)
        tmp = staging_folder(folder)
        faiss.write_index(self.index, str(tmp / INDEX_FILE))
        (tmp / IDS_FILE).write_text(json.dumps(self.ids))
        if self.embeddings is not None:
            np.save(tmp / EMB_FILE, self.embeddings.astype(np.float16))
        (tmp / META_FILE).write_text(json.dumps(self.meta, indent=1))
        return publish(tmp, folder)

    @classmethod
    def load(cls, folder: Path) -> "CardIndex":
        import faiss

        folder = Path(folder)
        index = faiss.read_index(str(folder / INDEX_FILE))
        meta = json.loads((folder / META_FILE).read_text())
        if "nprobe" in meta and hasattr(index, "nprobe"):
            index.nprobe = meta["nprobe"]
        emb = np.load(folder / EMB_FILE) if (folder / EMB_FILE).is_file() else None
        return cls(json.loads((folder / IDS_FILE).read_text()), index, meta, emb)


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s)[:80]


def index_folder(data_dir: Path, catalog_version: str, model_id: str) -> Path:
    return Path(data_dir) / "index" / f"{_safe(catalog_version)}--{_safe(model_id)}"


def catalog_version_of_dir(catalog_dir: Path) -> str:
    """Fingerprint of a rendered-catalog folder: its index.jsonl when present, else names + sizes."""
    catalog_dir = Path(catalog_dir)
    h = hashlib.sha1()
    idx = catalog_dir / "index.jsonl"
    if idx.is_file():
        h.update(idx.read_bytes())
    for p in sorted(catalog_dir.glob("*.jpg")):
        h.update(f"{p.name}:{p.stat().st_size};".encode())
    return "dir-" + h.hexdigest()[:12]


def load_or_build(data_dir: Path, catalog_version: str, model_id: str, card_ids: Sequence[str],
                  embed: Callable[[Sequence[str]], np.ndarray], kind: str = "auto", prune: bool = True,
                  batch: int = 256) -> CardIndex:
    """Load ``data_dir/index/<version>--<model>`` or build it with ``embed(card_ids_chunk) -> (n, d)``."""
    folder = index_folder(data_dir, catalog_version, model_id)
    if (folder / META_FILE).is_file():
        try:
            ci = CardIndex.load(folder)
            if ci.meta.get("catalog_version") == catalog_version and ci.meta.get("model_id") == model_id:
                log.info("index loaded: %s (%d cards, %s)", folder, len(ci), ci.meta.get("kind"))
                return ci
        except Exception as exc:  # a corrupt folder is rebuilt, never fatal
            log.warning("index at %s unreadable (%s); rebuilding", folder, exc)
    discard(folder)  # unusable (or absent): the build below takes its place
    t0 = time.perf_counter()
    ids = list(card_ids)
    chunks = [embed(ids[i:i + batch]) for i in range(0, len(ids), batch)]
    emb = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, 1), np.float32)
    index = build_faiss(emb, kind)
    meta = {"catalog_version": catalog_version, "model_id": model_id, "kind": index_kind(index), "n": len(ids),
            "dim": int(emb.shape[1]), "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_s": round(time.perf_counter() - t0, 1), "nprobe": getattr(index, "nprobe", None)}
    ci = CardIndex(ids, index, meta, emb.astype(np.float16))
    if ci.save(folder):
        log.info("index built: %s (%d cards in %.1f s)", folder, len(ids), meta["build_s"])
    else:  # another process published the same index first; this one is as good and already in memory
        log.info("index: another process published %s first", folder)
    if prune:  # older catalog versions of the same model are dead weight
        for other in folder.parent.glob(f"*--{_safe(model_id)}"):
            if other != folder and other.is_dir():
                shutil.rmtree(other, ignore_errors=True)
    return ci


__all__ = ["CardIndex", "FLAT_MAX", "build_faiss", "catalog_version_of_dir", "index_folder", "ivf_nlist",
           "load_or_build"]
