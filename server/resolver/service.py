"""Build the resolver from settings (model + catalog folder + persisted index); one per process."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from server.resolver import verify as V
from server.resolver.embedders import load_embedder
from server.resolver import keypoints as K
from server.resolver.index import catalog_version_of_dir, load_or_build
from server.resolver.resolver import Calibration, Resolver, ResolverConfig

log = logging.getLogger(__name__)

_lock = threading.Lock()
_cache: dict[tuple, Resolver] = {}


def read_card_meta(catalog_dir: Path) -> dict[str, dict]:
    from models.synth.catalog import read_index

    return read_index(catalog_dir)


def build_resolver(catalog_dir: str | Path, data_dir: str | Path, *, checkpoint=None, model_name=None,
                   pretrained=None, calibration=None, index_kind: str = "auto", config: ResolverConfig | None = None,
                   catalog_version: str | None = None, keypoint_store: bool = True) -> Resolver:
    catalog_dir = Path(catalog_dir)
    if not catalog_dir.is_dir():
        raise FileNotFoundError(f"resolver catalog folder not found: {catalog_dir} "
                                "(render it: python -m models.synth catalog … --out var/catalog)")
    embedder = load_embedder(checkpoint, model_name, pretrained)
    catalog = V.CatalogImages.from_dir(catalog_dir)
    meta = read_card_meta(catalog_dir)
    ids = sorted(c for c in catalog.paths if c in meta or not meta)
    version = catalog_version or catalog_version_of_dir(catalog_dir)

    def embed(chunk):
        return embedder.embed_images([catalog.image(c) for c in chunk])

    index = load_or_build(Path(data_dir), version, embedder.model_id, ids, embed, kind=index_kind)
    if keypoint_store:  # ORB of every face once per catalog version, not per scan (server/resolver/keypoints.py)
        catalog.use_store(K.load_or_build(Path(data_dir), version, V.ORB_PARAMS, ids, catalog.keypoints))
    return Resolver(embedder, index, catalog, meta, Calibration.load(calibration), config)


def resolver_from_settings(settings) -> Resolver:
    """The process-wide resolver for ``settings.resolver`` (built or loaded once, then cached)."""
    rs = settings.resolver
    key = (str(rs.catalog_dir), str(settings.data_dir), str(rs.checkpoint), rs.model_name, rs.pretrained,
           str(rs.calibration))
    with _lock:
        r = _cache.get(key)
        if r is None:
            cfg = ResolverConfig(top_k=rs.top_k, max_candidates=rs.max_candidates,
                                 accept_confidence=rs.accept_confidence,
                                 low_score_accept_confidence=rs.low_score_accept_confidence, ocr=rs.ocr)
            r = build_resolver(rs.catalog_dir, settings.data_dir, checkpoint=rs.checkpoint, model_name=rs.model_name,
                               pretrained=rs.pretrained, calibration=rs.calibration, index_kind=rs.index_kind,
                               config=cfg, keypoint_store=rs.keypoint_store)
            _cache[key] = r
        return r
