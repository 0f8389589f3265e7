"""Match one embedding against the whole on-device catalog: top-k printings with cosine scores.

The bundle stores ``catalog/embeddings.npy`` as int8 (or float16) rows. At load the matrix is turned into
float32 rows of unit length once (19,783 × 192 floats ≈ 15 MB), so each query is a single BLAS
vector-matrix product (≈ 4 M multiply-adds, well under a millisecond on a Pi 5 core) plus an
``argpartition`` for the top-k. Cosine on the de-quantised rows is exact for what is stored.

The rows are kept transposed (192 × 19,783, C order): OpenBLAS's vector × matrix over that layout is 2–3×
faster on one thread than matrix × vector over the rows, and a few queries one at a time beat one
matrix-matrix product with a skinny side (docs/device-vision.md, fifteenth session, has the figures and the
command).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


GEMV_MAX = 6  # queries above which one matrix-matrix product is faster (OpenBLAS, one thread, 192-d)


@dataclass
class Match:
    card_ids: list[str]
    scores: list[float]
    # the two best are printings of one reprint contest and the margin is their patches' verdict
    # (device.vision.reprints), not an embedding gap: the accept rule has a threshold of its own for it
    contest: bool = False
    # how well the leading printing's difference patches were found on the card: their area-weighted best
    # normalised cross-correlation (device.vision.reprints); None where no contest was read
    patch_fit: float | None = None

    @property
    def score(self) -> float:
        return self.scores[0] if self.scores else -1.0

    @property
    def margin(self) -> float:
        return self.scores[0] - self.scores[1] if len(self.scores) > 1 else self.score


class CatalogMatcher:
    def __init__(self, embeddings: np.ndarray, ids: list[str]):
        if embeddings.ndim != 2 or embeddings.shape[0] != len(ids):
            raise ValueError(f"embeddings {embeddings.shape} do not match {len(ids)} ids")
        m = embeddings.astype(np.float32)
        m /= np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-8)
        self.columns = np.ascontiguousarray(m.T)  # [dim, N]: one catalog printing per column
        self.ids = list(ids)
        self.dim = m.shape[1]

    @property
    def matrix(self) -> np.ndarray:
        """The unit rows [N, dim] (a view of ``columns``, no copy)."""
        return self.columns.T

    @classmethod
    def load(cls, bundle_dir: str | Path) -> "CatalogMatcher":
        d = Path(bundle_dir) / "catalog"
        emb = np.load(d / "embeddings.npy", allow_pickle=False)
        ids = json.loads((d / "ids.json").read_text(encoding="utf-8"))
        return cls(emb, ids)

    def scores(self, query: np.ndarray) -> np.ndarray:
        q = np.asarray(query, np.float32).reshape(-1)
        q = q / max(float(np.linalg.norm(q)), 1e-8)
        return q @ self.columns

    def topk(self, query: np.ndarray, k: int = 5) -> Match:
        return self.topk_many(np.asarray(query, np.float32).reshape(1, -1), k)[0]

    def topk_many(self, queries: np.ndarray, k: int = 5) -> list[Match]:
        """All cards of a frame in one matrix product: the catalog matrix is read once, not once per card."""
        q = np.asarray(queries, np.float32)
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-8)
        # up to GEMV_MAX queries (a frame's cards and their quarter-turn readings, mostly) one vector × matrix
        # product each: the matrix-matrix product with a side that skinny is 2–3× slower on one OpenBLAS thread;
        # a binder page's many queries amortise it
        S = np.stack([x @ self.columns for x in q]) if len(q) <= GEMV_MAX else q @ self.columns
        k = min(k, S.shape[1])
        out = []
        for s in S:
            part = np.argpartition(-s, k - 1)[:k]
            order = part[np.argsort(-s[part], kind="stable")]
            out.append(Match([self.ids[i] for i in order], [float(s[i]) for i in order]))
        return out


def quantize_int8(x: np.ndarray) -> np.ndarray:
    """Rows of unit vectors → int8 with one symmetric scale (cosine is scale-free)."""
    m = float(np.abs(x).max()) or 1.0
    return np.clip(np.round(x / m * 127.0), -127, 127).astype(np.int8)
