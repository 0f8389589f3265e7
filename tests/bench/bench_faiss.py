"""FAISS benchmark for the resolver's catalog index (``make bench-faiss``).

Prints recall@10 (vs exact search) and p50/p99 single-query latency at 20k, 100k and 1M vectors, using the
index kind ``server.resolver.index.build_faiss`` picks by size (exact flat up to 200k, IVF-SQ8 above).
Vectors are synthetic and clustered like card embeddings (many small clusters = illustrations with
reprints); queries are noisy copies of catalog vectors, as captures are. One search thread: the server
answers one scan per request, concurrency comes from requests, not from splitting one search.

    .venv/bin/python tests/bench/bench_faiss.py [--sizes 20000,100000,1000000] [--dim 128] [--also-hnsw]

Goal (issue 6): 1M vectors p99 <= 10 ms and recall@10 >= 0.95. Runs in a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def clustered(n: int, d: int, rng: np.random.Generator, themes: int = 2000, cluster_size: int = 4) -> np.ndarray:
    """Hierarchical clusters like card embeddings: themes (look-alike cards) > illustrations > printings."""
    top = rng.standard_normal((themes, d), dtype=np.float32)
    top /= np.linalg.norm(top, axis=1, keepdims=True)
    n_ill = max(1, n // cluster_size)
    ill = top[rng.integers(0, themes, n_ill)] + 0.5 / np.sqrt(d) * rng.standard_normal((n_ill, d), dtype=np.float32)
    x = ill[rng.integers(0, n_ill, n)]
    x += 0.25 / np.sqrt(d) * rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def exact_topk(db: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    import faiss

    flat = faiss.IndexFlatIP(db.shape[1])
    flat.add(db)
    return flat.search(q, k)[1]


def bench(index, q: np.ndarray, gt: np.ndarray, k: int = 10) -> dict:
    import faiss

    faiss.omp_set_num_threads(1)
    for i in range(min(50, len(q))):  # warm-up
        index.search(q[i:i + 1], k)
    lat = []
    found = np.empty((len(q), k), np.int64)
    for i in range(len(q)):
        t = time.perf_counter()
        _, idx = index.search(q[i:i + 1], k)
        lat.append((time.perf_counter() - t) * 1000)
        found[i] = idx[0]
    rec = np.mean([len(set(found[i]) & set(gt[i])) / k for i in range(len(q))])
    return {"recall@10": float(rec), "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="20000,100000,1000000")
    ap.add_argument("--dim", type=int, default=128, help="embedding size (the server model's embed_dim)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--also-hnsw", action="store_true", help="also time HNSW at sizes above the flat limit (slow build)")
    ap.add_argument("--threads", type=int, default=2, help="threads for building (search is timed on 1)")
    ap.add_argument("--json-out", default=None, help="also write the figures as JSON (for make bench's report)")
    a = ap.parse_args(argv)

    import faiss

    from server.resolver.index import FLAT_MAX, build_faiss, index_kind

    rng = np.random.default_rng(0)
    rows = []
    print(f"{'vectors':>9} {'index':>16} {'build_s':>8} {'recall@10':>10} {'p50_ms':>8} {'p99_ms':>8}")
    for n in (int(s) for s in a.sizes.split(",")):
        faiss.omp_set_num_threads(a.threads)
        db = clustered(n, a.dim, rng)
        src = rng.integers(0, n, a.queries)
        q = db[src] + 0.2 / np.sqrt(a.dim) * rng.standard_normal((a.queries, a.dim), dtype=np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        gt = exact_topk(db, q, 10)
        kinds = ["auto"] + (["hnsw"] if a.also_hnsw and n > FLAT_MAX else [])
        for kind in kinds:
            faiss.omp_set_num_threads(a.threads)
            t = time.perf_counter()
            index = build_faiss(db, kind)
            build_s = time.perf_counter() - t
            r = bench(index, q, gt)
            name = index_kind(index) + (f"(nprobe={index.nprobe})" if hasattr(index, "nprobe") else "")
            rows.append((n, name, build_s, r))
            print(f"{n:>9} {name:>16} {build_s:>8.1f} {r['recall@10']:>10.4f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f}",
                  flush=True)
            del index
        del db
    big = [r for n, _, _, r in rows if n >= 1_000_000]
    if big:
        ok = big[0]["p99_ms"] <= 10 and big[0]["recall@10"] >= 0.95
        print(f"goal 1M: p99 <= 10 ms and recall@10 >= 0.95: {'met' if ok else 'NOT met'}")
    if a.json_out:
        import json
        from pathlib import Path

        Path(a.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json_out).write_text(json.dumps({"dim": a.dim, "queries": a.queries, "rows": [
            {"vectors": n, "index": name, "build_s": round(b, 2), **{k: round(v, 4) for k, v in r.items()}}
            for n, name, b, r in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
