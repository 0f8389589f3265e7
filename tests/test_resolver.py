"""Server resolver (issue 6): embedders, persisted FAISS index, verification, calibrated decisions, worker.

A tiny catalog (reprint pairs from Base Set / Base Set 2 plus a few others) is rendered on the fly from the
shared catalog data; the embedder is the committed checkpoint when present, else a random-init model saved
as a local checkpoint (so the real loading paths are exercised either way).
"""

from __future__ import annotations

import copy
import json
import uuid
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="resolver needs torch (pip install -e '.[resolver]')")
pytest.importorskip("open_clip", reason="resolver needs open_clip_torch")
pytest.importorskip("faiss", reason="resolver needs faiss-cpu")


@pytest.fixture(scope="module")
def tiny_catalog(shared_data, tmp_path_factory) -> Path:
    """~30 rendered printings incl. same-illustration reprint pairs, as <id>.jpg + index.jsonl."""
    from models.synth.catalog import index_row
    from models.synth.render import build_set_index, render_card
    from server.catalog.sources import PokemonTCGSource

    src = PokemonTCGSource(shared_data / "pokemon-tcg-data")
    set_index = build_set_index(src.sets())
    b1 = {c.illustration_id: c for c in src.cards("base1")}
    b4 = [c for c in src.cards("base4") if c.illustration_id in b1]
    cards = []
    for c in b4[:10]:
        cards += [b1[c.illustration_id], c]
    cards += list(src.cards("base1"))[40:50]
    out = tmp_path_factory.mktemp("catalog")
    rows = []
    for c in {c.id: c for c in cards}.values():
        cv2.imwrite(str(out / f"{c.id}.jpg"), render_card(c, set_index), [cv2.IMWRITE_JPEG_QUALITY, 92])
        rows.append(index_row(c, set_index))
    (out / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from server.resolver.embedders import DEFAULT_CHECKPOINT

    if DEFAULT_CHECKPOINT.is_file():
        return DEFAULT_CHECKPOINT
    import open_clip

    from server.resolver.embedders import register_model_configs, save_compact_checkpoint

    register_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model("scanemon-tiny-vit")
    from open_clip.factory import get_model_config

    p = tmp_path_factory.mktemp("ck") / "tiny.pt"
    return save_compact_checkpoint(model, "scanemon-tiny-vit", get_model_config("scanemon-tiny-vit"), p)


@pytest.fixture(scope="module")
def resolver(tiny_catalog, checkpoint, tmp_path_factory):
    from server.resolver.service import build_resolver

    r = build_resolver(tiny_catalog, tmp_path_factory.mktemp("data"), checkpoint=checkpoint)
    r.config.ocr = False  # deterministic and fast; OCR has its own test
    return r


# --- embedders -----------------------------------------------------------------------------------------


def test_openclip_embedder_loads_a_local_checkpoint_file(tmp_path):
    import open_clip

    from server.resolver.embedders import OpenClipEmbedder, register_model_configs

    register_model_configs()
    torch.manual_seed(1)
    model = open_clip.create_model("scanemon-tiny-vit")
    ck = tmp_path / "weights.pt"
    torch.save(model.state_dict(), ck)
    emb = OpenClipEmbedder("scanemon-tiny-vit", pretrained=str(ck))
    img = np.random.default_rng(0).integers(0, 255, (504, 360, 3), dtype=np.uint8)
    v = emb.embed_images([img])
    assert v.shape == (1, 128) and abs(np.linalg.norm(v) - 1) < 1e-4
    # Same weights -> same vector as the model we saved (the checkpoint really was loaded).
    from server.resolver.embedders import preprocess_batch

    model.eval()
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model.encode_image(preprocess_batch([img], 128)), dim=-1).numpy()
    assert np.allclose(v, ref, atol=1e-4)
    t = emb.embed_texts(["Charizard", "Pikachu"])
    assert t.shape == (2, 128)
    assert emb.model_id.startswith("scanemon-tiny-vit@")


def test_compact_checkpoint_round_trip(tmp_path):
    import open_clip
    from open_clip.factory import get_model_config

    from server.resolver.embedders import OwnCheckpointEmbedder, register_model_configs, save_compact_checkpoint

    register_model_configs()
    model = open_clip.create_model("scanemon-tiny-vit").eval()
    tok = open_clip.get_tokenizer("scanemon-tiny-vit")(["Pikachu"])
    p = save_compact_checkpoint(model, "scanemon-tiny-vit", get_model_config("scanemon-tiny-vit"), tmp_path / "c.pt",
                                used_tokens=tok.numpy())
    assert p.stat().st_size < 5_000_000  # token table pruned, fp16
    emb = OwnCheckpointEmbedder(p)
    img = np.full((504, 360, 3), 128, np.uint8)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model.encode_image(__import__("server.resolver.embedders", fromlist=["x"])
                                                               .preprocess_batch([img], 128)), dim=-1).numpy()
    assert np.allclose(emb.embed_images([img]), ref, atol=2e-2)  # fp16 storage
    with pytest.raises(FileNotFoundError):
        OwnCheckpointEmbedder(tmp_path / "missing.pt")


# --- index ---------------------------------------------------------------------------------------------


def test_index_kind_by_size_and_search():
    from server.resolver.index import CardIndex, build_faiss, index_kind

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert index_kind(build_faiss(x)) == "flat"
    ivf = build_faiss(x, flat_max=1000)
    assert index_kind(ivf) == "ivf"
    ci = CardIndex([f"c{i}" for i in range(len(x))], ivf)
    _, ids = ci.search(x[:20], 5)
    assert sum(row[0] == f"c{i}" for i, row in enumerate(ids)) >= 18


def test_index_persisted_loaded_without_embedding_and_rebuilt_on_new_catalog_version(tmp_path):
    from server.resolver.index import index_folder, load_or_build

    calls = []

    def embed(chunk):
        calls.append(len(chunk))
        v = np.random.default_rng(len(calls)).standard_normal((len(chunk), 16)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    ids = [f"x-{i}" for i in range(50)]
    a = load_or_build(tmp_path, "v1", "m", ids, embed)
    assert sum(calls) == 50 and index_folder(tmp_path, "v1", "m").is_dir()
    b = load_or_build(tmp_path, "v1", "m", ids, embed)  # start-up: loaded, nothing recomputed
    assert sum(calls) == 50 and b.ids == a.ids and b.index.ntotal == 50
    c = load_or_build(tmp_path, "v2", "m", ids + ["x-50"], embed)  # catalog changed: rebuilt, old pruned
    assert sum(calls) == 101 and len(c) == 51
    assert not index_folder(tmp_path, "v1", "m").exists()


def test_keypoint_store_matches_fresh_orb_persists_and_rebuilds(tiny_catalog, tmp_path):
    from server.resolver import keypoints as K
    from server.resolver import verify as V

    cat = V.CatalogImages.from_dir(tiny_catalog)
    ids = sorted(cat.paths)
    calls = []

    def compute(cid):
        calls.append(cid)
        return cat.keypoints(cid)

    store = K.load_or_build(tmp_path, "v1", V.ORB_PARAMS, ids, compute, workers=2)
    assert sorted(calls) == ids and len(store) == len(ids)
    for cid in ids[:5]:  # what the store gives is what ORB gives, to its 1/16 px fixed point
        kp, des = cat.keypoints(cid)
        skp, sdes = store.get(cid)
        assert np.array_equal(sdes, des) and np.abs(skp - kp).max() <= 1 / 32 + 1e-6
    again = K.load_or_build(tmp_path, "v1", V.ORB_PARAMS, ids, compute)  # start-up: loaded, not recomputed
    assert len(calls) == len(ids) and again.ids == store.ids
    other = dict(V.ORB_PARAMS, nfeatures=300)  # other ORB settings: a folder of their own
    assert K.store_folder(tmp_path, "v1", other) != K.store_folder(tmp_path, "v1", V.ORB_PARAMS)
    folder = K.store_folder(tmp_path, "v1", V.ORB_PARAMS)
    (folder / K.DES_FILE).write_bytes(b"not a numpy file")  # corrupt: rebuilt, never fatal
    K.load_or_build(tmp_path, "v1", V.ORB_PARAMS, ids, compute)
    assert len(calls) == 2 * len(ids)
    K.load_or_build(tmp_path, "v2", V.ORB_PARAMS, ids, compute)  # new catalog version: rebuilt, old pruned
    assert len(calls) == 3 * len(ids) and not folder.exists()


def test_two_processes_building_the_same_keypoint_store_at_once_both_get_it(tiny_catalog, tmp_path):
    """The ingest and resolver workers (or two evaluations) start together and both build the catalog keypoints:
    each builds in a staging folder of its own, so neither deletes the other's half-written files (with one shared
    ``.tmp`` folder one builder died on a vanished ``count.npy``), and both end with the whole store."""
    import threading

    from server.resolver import keypoints as K
    from server.resolver import verify as V

    cat = V.CatalogImages.from_dir(tiny_catalog)
    ids = sorted(cat.paths)
    both_started = threading.Barrier(2, timeout=30)
    first = threading.local()

    def compute(cid):
        if not getattr(first, "done", False):  # each builder's first face: wait until the other builds too
            first.done = True
            both_started.wait()
        return cat.keypoints(cid)

    stores, errors = [], []

    def build():
        try:
            stores.append(K.load_or_build(tmp_path, "v1", V.ORB_PARAMS, ids, compute, workers=1))
        except Exception as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(stores) == 2
    for store in stores:
        assert store.ids == ids
        kp, des = cat.keypoints(ids[0])
        assert np.array_equal(store.get(ids[0])[1], des)
    assert [p.name for p in tmp_path.rglob("*") if ".tmp-" in p.name or ".old-" in p.name] == []


def test_resolver_with_keypoint_store_decides_like_without(tiny_catalog, checkpoint, resolver, tmp_path):
    from models.synth.capture import augment_crop
    from server.resolver.service import build_resolver

    plain = build_resolver(tiny_catalog, tmp_path, checkpoint=checkpoint, keypoint_store=False)
    plain.config.ocr = False
    assert resolver.catalog.store is not None and plain.catalog.store is None
    rng = np.random.default_rng(11)
    for group in _reprint_pairs(resolver)[:4]:
        crop = augment_crop(resolver.catalog.image(group[0]), rng, 0.8)
        a, b = resolver.resolve_crop(crop, group), plain.resolve_crop(crop, group)
        assert a.card_id == b.card_id and abs(a.confidence - b.confidence) < 0.02


# --- verification and resolution ----------------------------------------------------------------------


def _reprint_pairs(resolver) -> list[list[str]]:
    return [g for g in resolver.by_ill.values() if len(g) >= 2]


def test_catalog_has_reprints_whose_faces_differ_only_in_small_regions(resolver):
    from server.resolver import verify as V

    pairs = _reprint_pairs(resolver)
    assert len(pairs) >= 5
    a, b = pairs[0][:2]
    m = V.diff_mask(resolver.catalog.features(a), resolver.catalog.features(b))
    assert m is not None and m.mean() < 0.6  # same art: most of the face is identical


def test_region_win_compares_each_differing_patch_on_its_own(resolver):
    """Reprints differ in a set symbol mid-card and a number at the foot. One box around both is mostly
    identical art and dilutes the difference; matched patch by patch, the true printing wins clearly more —
    here on a shifted, blurred, noisy view of each printing (what alignment leaves of a device crop)."""
    from server.resolver import verify as V

    rng = np.random.default_rng(3)
    old_total = new_total = 0.0
    checked = 0
    for group in _reprint_pairs(resolver)[:6]:
        a, b = group[:2]
        fa, fb = resolver.catalog.features(a), resolver.catalog.features(b)
        m = V.diff_mask(fa, fb, grow=2)
        if m is None or cv2.connectedComponents(m.astype(np.uint8))[0] < 3:
            continue  # one differing patch only: nothing to split
        for truth, other, ft in ((a, b, fa), (b, a, fb)):
            g = cv2.warpAffine(ft.gray.astype(np.float32), np.float32([[1, 0, 2.5], [0, 1, -2.0]]),
                               (ft.gray.shape[1], ft.gray.shape[0]), borderMode=cv2.BORDER_REPLICATE)
            g = cv2.GaussianBlur(g, (0, 0), 2.0) + rng.normal(0, 6, g.shape)
            q = V.normalise(np.clip(g, 0, 255).astype(np.uint8))
            nt, no = resolver.catalog.features(truth).norm_at(2.0), resolver.catalog.features(other).norm_at(2.0)
            new = V._region_win([q], nt, no, m)
            old = V._patch_win([q], nt, no, m)  # one template over the box around every difference
            assert new > 0, (truth, other, new)
            new_total += new
            old_total += old if old is not None else V.ncc(q, nt, m) - V.ncc(q, no, m)
            checked += 1
    assert checked >= 4
    assert new_total > 1.5 * old_total, (new_total, old_total)


def test_sibling_region_is_the_reprint_contest_alone(resolver):
    """``sibling_region`` counts only the region wins against printings of the same illustration: with other
    arts in the contest as well, a reprint pair's feature is still their pairwise win (antisymmetric, the true
    printing ahead), while ``region`` (mean over every contender) mixes the other arts in."""
    from models.synth.capture import augment_crop
    from server.resolver import verify as V
    from server.resolver.resolver import sibling_region

    rng = np.random.default_rng(5)
    art = {c: resolver.meta[c]["illustration_id"] for c in resolver.catalog.paths}
    singles = [g[0] for g in resolver.by_ill.values() if len(g) == 1]
    checked = ahead = 0
    for group in _reprint_pairs(resolver)[:8]:
        a, b = group[:2]
        contenders = [a, b] + singles[:3]
        feats = {c: resolver.catalog.features(c) for c in contenders}
        g = cv2.GaussianBlur(V.gray_canon(augment_crop(resolver.catalog.image(a), rng, 0.6)), (0, 0), 1.0)
        pairs: dict = {}
        region = V.pairwise_region_scores([V.normalise(g)], feats, contenders, pairs_out=pairs)
        sib = sibling_region(pairs, art)
        assert sib[a] == pytest.approx(pairs[(a, b)]) and sib[b] == pytest.approx(-pairs[(a, b)])
        assert all(c not in sib for c in singles[:3])  # no sibling in the contest: no feature
        assert sib[a] - sib[b] != pytest.approx(region[a] - region[b], abs=1e-4)
        checked += 1
        ahead += sib[a] > sib[b]
    assert checked >= 4 and ahead >= checked - 1, (checked, ahead)


def test_reprints_told_apart_on_simulated_captures(resolver):
    from models.synth.capture import augment_crop

    rng = np.random.default_rng(7)
    ok = total = 0
    for group in _reprint_pairs(resolver)[:8]:
        for cid in group:
            crop = augment_crop(resolver.catalog.image(cid), rng, 0.8)
            res = resolver.resolve_crop(crop, device_candidates=group)  # what an ambiguous scan carries
            ok += res.card_id == cid
            total += 1
            assert res.candidates[0]["card_id"] == res.card_id and 0 <= res.confidence <= 1
    assert ok / total >= 0.85, f"{ok}/{total} reprints resolved"


def test_geometric_verification_rejects_wrong_art(resolver):
    from server.resolver import verify as V

    ids = resolver.index.ids
    q = V.extract(resolver.catalog.image(ids[0]))
    same = V.geometric(q, resolver.catalog.features(ids[0]))
    other_ill = next(c for c in ids if resolver.meta[c]["illustration_id"] != resolver.meta[ids[0]]["illustration_id"])
    other = V.geometric(q, resolver.catalog.features(other_ill))
    assert same.inliers > 3 * max(other.inliers, 5)


def test_identify_whole_photo_finds_the_card(resolver):
    from models.synth.capture import CaptureConfig, simulate_capture

    rng = np.random.default_rng(3)
    cid = resolver.index.ids[5]
    cfg = CaptureConfig(mode="scanner_box", p_fingers=0, p_glare=0, p_motion_blur=0, p_defocus=0,
                        backgrounds=["wood", "cloth"])
    frame, labels = simulate_capture([resolver.catalog.image(cid)], [cid], rng, cfg)
    out = resolver.identify_image(frame)
    assert out, "no card detected"
    assert any(r.card_id == cid for r in out) or any(c["card_id"] == cid for r in out for c in r.candidates)
    assert out[0].quad is not None and len(out[0].quad) == 4


def test_ocr_number_reader_is_optional(resolver):
    from server.resolver import verify as V

    img = resolver.catalog.image(resolver.index.ids[0])
    read = V.ocr_numbers(img)  # [] when tesseract/pytesseract are absent: never an error
    assert isinstance(read, list)
    assert V.number_matches(["4"], "004") and not V.number_matches(["4"], "14")


# --- worker: pending -> resolved / needs_review, degradation ---------------------------------------------


@pytest.fixture
def db(sqlite_url):
    from server.db.migrate import upgrade
    from server.db.session import Database

    upgrade(sqlite_url)
    d = Database(sqlite_url)
    yield d
    d.dispose()


def _add_scan(db, crop: bytes | None, candidates: list[str], crop_margin: float = 0.0,
              quality_flag: str | None = None) -> str:
    from server.db.models import Scan

    sid = str(uuid.uuid4())
    with db.session() as s:
        s.add(Scan(scan_id=sid, device_id="dev-1", seq=1, captured_at=datetime.now(timezone.utc), decision="ambiguous",
                   candidates=[{"card_id": c, "score": 0.5} for c in candidates], crop=crop, crop_margin=crop_margin,
                   quality_flag=quality_flag, status="pending"))
        s.commit()
    return sid


def test_worker_resolves_pending_and_keeps_them_when_resolver_is_down(db, resolver):
    from device.protocol import ScanResult
    from models.synth.capture import augment_crop
    from server.db.models import Scan
    from server.resolver.worker import ResolverWorker

    from server.db.models import Card, CardSet

    group = _reprint_pairs(resolver)[1]
    with db.session() as s:  # the catalog rows apply_scan checks against
        for sid in {resolver.meta[c]["set_id"] for c in group}:
            s.add(CardSet(id=sid, game="pokemon", name=sid))
        for c in group:
            m = resolver.meta[c]
            s.add(Card(id=c, game="pokemon", set_id=m["set_id"], name=m["name"], number=m["number"],
                       illustration_id=m["illustration_id"]))
        s.commit()
    crop = augment_crop(resolver.catalog.image(group[0]), np.random.default_rng(1), 0.5)
    jpg = cv2.imencode(".jpg", crop)[1].tobytes()
    s1 = _add_scan(db, jpg, group)
    s2 = _add_scan(db, None, group)  # no crop: nothing to look at -> a person decides
    # a crop too small to hold a card inside its margin: bad input, a person decides (not retried forever)
    s3 = _add_scan(db, cv2.imencode(".jpg", crop[:8, :8])[1].tobytes(), group, crop_margin=0.25)
    # the same crop, but the device matched it to nothing (low_score): it needs low_score_accept_confidence
    s4 = _add_scan(db, jpg, group, quality_flag="low_score")

    def down():
        raise ConnectionError("resolver unavailable")

    published: list[ScanResult] = []
    broken = ResolverWorker(db, down, published.append)
    with pytest.raises(ConnectionError):
        broken.run_once()
    with db.session() as s:
        assert {x.status for x in s.query(Scan).all()} == {"pending"}  # nothing lost, nothing decided

    w = ResolverWorker(db, lambda: resolver, published.append, accept_confidence=0.0)
    keep = resolver.config.low_score_accept_confidence
    resolver.config.low_score_accept_confidence = 1.01  # beyond any confidence: such scans always go to a person
    try:
        assert w.run_once() == 4
    finally:
        resolver.config.low_score_accept_confidence = keep
    with db.session() as s:
        rows = {x.scan_id: x for x in s.query(Scan).all()}
        assert rows[s1].status == "resolved" and rows[s1].resolved_card_id == group[0]
        assert rows[s2].status == rows[s3].status == rows[s4].status == "needs_review"
        assert rows[s4].confidence == rows[s1].confidence  # same answer, only the bar differs
    assert {p.scan_id: p.status for p in published} == {s1: "resolved", s2: "needs_review", s3: "needs_review",
                                                        s4: "needs_review"}
    assert all(isinstance(p, ScanResult) for p in published)
    assert w.run_once() == 0  # decided scans are not picked up again


def test_resolver_settings_validate():
    from pydantic import ValidationError

    from server.config import ResolverSettings

    assert ResolverSettings().accept_confidence == 0.9
    with pytest.raises(ValidationError):
        ResolverSettings(bogus=1)


def test_device_evidence_crop_size_is_the_resolvers_comparison_size():
    """The device cannot import the server: its cap on the crop it sends mirrors the resolver's size."""
    from device.vision.geometry import CANONICAL_SIZE, EVIDENCE_MAX_SIZE
    from server.resolver import verify as V

    assert EVIDENCE_MAX_SIZE == V.CANON and V.SEARCH_HEIGHT == CANONICAL_SIZE[1]
    big = np.zeros((480, 344, 3), np.uint8)
    assert V.search_res(big).shape[:2] == (CANONICAL_SIZE[1], round(344 * CANONICAL_SIZE[1] / 480))


def test_surround_aligns_like_the_card_and_adds_the_border():
    """With the identity homography the surround's warp is the card itself; beyond the card it holds the frame."""
    from device.vision.geometry import margin_box, padded_size
    from server.resolver import verify as V

    rng = np.random.default_rng(5)
    m = 0.1
    padded = rng.integers(0, 255, (*padded_size(V.CANON, m)[::-1], 3), dtype=np.uint8)
    padded = cv2.GaussianBlur(padded, (0, 0), 3)
    card, whole = V.split_margin(padded, m)
    x0, y0, x1, y1 = margin_box((padded.shape[1], padded.shape[0]), m)
    assert whole is padded and abs(card.shape[1] - (x1 - x0)) <= 1 and abs(card.shape[0] - (y1 - y0)) <= 1
    s = V.Surround.of(padded, m)
    same = s.align("gray", np.eye(3))
    assert np.abs(same.astype(np.int16) - V.gray_canon(card).astype(np.int16)).mean() < 3
    # a homography that shrinks the card by 20 % about its centre shows the border in the margin's place
    c = np.array([[0.8, 0, 0.1 * V.CANON[0]], [0, 0.8, 0.1 * V.CANON[1]], [0, 0, 1]])
    shrunk = s.align("gray", c)
    assert np.abs(shrunk.astype(np.int16) - cv2.resize(s.gray, V.CANON, interpolation=cv2.INTER_AREA)
                  .astype(np.int16)).mean() < 8
    assert V.split_margin(padded, 0.0) == (padded, None)
    with pytest.raises(V.CropError):
        V.split_margin(padded[:10, :10], 0.25)


def test_margin_lets_the_resolver_compare_a_foot_the_quad_cut_off(resolver):
    """A device quad drawn 12 % short leaves the collector number out of the crop. Sent with a margin
    (``Scan.crop_margin``), the homography alignment takes the foot from the frame around the quad: the true
    printing's footer matches again, and the answers are as right as the cut crop's or better."""
    from device.vision.geometry import EVIDENCE_MARGIN, rectify
    from models.synth.capture import CaptureConfig, simulate_capture
    from server.resolver.resolver import FEATURES

    cfg = CaptureConfig(mode="scanner_box", p_fingers=0, p_glare=0, p_motion_blur=0, p_defocus=0,
                        backgrounds=["wood", "cloth"])
    rng = np.random.default_rng(11)
    fi = FEATURES.index("footer")
    right = {"margin": 0, "cut": 0}
    footer = {"margin": [], "cut": []}
    for group in _reprint_pairs(resolver)[:6]:
        for cid in group[:2]:
            frame, labels = simulate_capture([resolver.catalog.image(cid)], [cid], rng, cfg)
            q = np.array(labels["cards"][0]["quad"], np.float32)
            short = q.copy()
            short[3] = q[0] + 0.88 * (q[3] - q[0])
            short[2] = q[1] + 0.88 * (q[2] - q[1])
            crops = {"margin": (rectify(frame, short, (360, 504), EVIDENCE_MARGIN), EVIDENCE_MARGIN),
                     "cut": (rectify(frame, short, (360, 504)), 0.0)}
            for k, (crop, m) in crops.items():
                _, ids, X, _ = resolver.evidence(crop, group, margin=m)
                footer[k].append(X[ids.index(cid), fi] if cid in ids else 0.0)
                right[k] += resolver.resolve_crop(crop, device_candidates=group, margin=m).card_id == cid
    n = len(footer["cut"])
    assert n >= 8
    assert np.mean(footer["margin"]) > np.mean(footer["cut"]) + 0.2, footer
    assert right["margin"] >= right["cut"] and right["margin"] >= 0.8 * n, (right, n)


def test_required_confidence_is_higher_for_scans_the_device_matched_to_nothing(resolver):
    from server.db.models import Scan
    from server.resolver.worker import required_confidence

    cfg = resolver.config
    assert cfg.low_score_accept_confidence > cfg.accept_confidence
    assert required_confidence(resolver, Scan(quality_flag=None)) == cfg.accept_confidence
    assert required_confidence(resolver, Scan(quality_flag="glare")) == cfg.accept_confidence
    assert required_confidence(resolver, Scan(quality_flag="low_score")) == cfg.low_score_accept_confidence
    assert required_confidence(resolver, Scan(quality_flag=None), 0.5) == 0.5  # a worker's own threshold
    assert required_confidence(resolver, Scan(quality_flag="low_score"), 0.5) == cfg.low_score_accept_confidence


def test_device_ranking_is_a_feature(resolver):
    """The device's top-1 and its top-5 membership are features (``device_top1``, ``device_listed``): with the
    committed calibration, the same crop scores the device's top-1 higher when the device ranked it first."""
    from models.synth.capture import augment_crop
    from server.resolver.resolver import FEATURES, Calibration

    cal = Calibration.load()
    assert cal.weights["device_top1"] > 0 and cal.weights["device_listed"] > 0
    resolver = copy.copy(resolver)
    resolver.calibration = cal
    t1, listed = FEATURES.index("device_top1"), FEATURES.index("device_listed")
    a, b = _reprint_pairs(resolver)[2][:2]
    crop = augment_crop(resolver.catalog.image(a), np.random.default_rng(2), 0.8)
    _, ids, X, _ = resolver.evidence(crop, [a, b])
    assert X[ids.index(a), t1] == 1 and X[ids.index(b), t1] == 0
    assert X[ids.index(a), listed] == X[ids.index(b), listed] == 1
    assert all(X[i, listed] == 0 and X[i, t1] == 0 for i, c in enumerate(ids) if c not in (a, b))
    _, ids2, X2, _ = resolver.evidence(crop, [b, a])
    p, p2 = resolver.probabilities(X), resolver.probabilities(X2)
    assert p[ids.index(a)] > p2[ids2.index(a)] and p[ids.index(b)] < p2[ids2.index(b)]


def test_calibration_learns_none_of_these_from_non_catalog_scans(resolver, shared_data):
    """Scans of things that are not in the catalog (real playing cards, MTG photos and photo patches, as
    ``models.eval.negatives --scans-out`` writes them: ``card_id`` null) teach the "none of these" model
    (``calibrate.fit_null``, weights on the leading candidate's evidence): held-out crops of such things then
    get a far lower confidence, while the ranking of every catalog capture, hence its answer, stays the same."""
    from models.eval.negatives import Objects
    from models.server_model.calibrate import fit, fit_null, simulate
    from models.synth.capture import augment_crop
    from server.resolver.resolver import FEATURES, Calibration

    pos = simulate(resolver, sorted(resolver.index.ids)[:16], seed=5, device_group=0.5)
    objects, rng = Objects(shared_data), np.random.default_rng(7)

    def negatives(n: int) -> list[dict]:
        rows = []
        for i in range(n):
            img = augment_crop(objects.draw(("playing_card", "mtg_photo", "photo_patch")[i % 3], rng), rng, 0.6)
            _, ids, X, _ = resolver.evidence(img, [])
            rows.append({"card_id": None, "ids": ids, "X": X})
        return rows

    train_neg, held_out_neg = negatives(18), negatives(12)
    w, nb = fit(pos, iters=600)
    weights = {f: float(v) for f, v in zip(FEATURES, w)}
    v, nb2 = fit_null(pos + train_neg, w, iters=600)
    before = copy.copy(resolver)
    before.calibration = Calibration(weights, 1.0, {}, nb)
    after = copy.copy(resolver)
    after.calibration = Calibration(weights, 1.0, {}, nb2, {f: float(x) for f, x in zip(FEATURES, v)})
    for x in pos:
        assert np.argmax(before.probabilities(x["X"])) == np.argmax(after.probabilities(x["X"]))
    conf = {name: float(np.mean([r.probabilities(x["X"]).max() for x in held_out_neg]))
            for name, r in (("before", before), ("after", after))}
    pos_after = float(np.mean([after.probabilities(x["X"]).max() for x in pos if x["card_id"] in x["ids"]]))
    assert conf["after"] < conf["before"] - 0.1, conf
    assert pos_after > 0.8


def test_broken_calibration_file_says_what_and_where(tmp_path):
    from server.resolver.resolver import Calibration

    good = Calibration.load()
    p = tmp_path / "cal.json"
    good.save(p)
    again = Calibration.load(p)
    assert again.weights == good.weights and again.null_weights == good.null_weights
    assert again.null_bias == good.null_bias
    p.write_text('{"weights": {"emb": 1.0,\n "region": }\n}')
    with pytest.raises(ValueError, match=r"cal.json: line 2"):
        Calibration.load(p)
    p.write_text(json.dumps({"weights": {"emb": 1.0}, "null_weights": {"inlier_ratoi": 2.0}}))
    with pytest.raises(ValueError, match="unknown feature.*null_weights: inlier_ratoi"):
        Calibration.load(p)
    p.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected an object"):
        Calibration.load(p)
    with pytest.raises(FileNotFoundError):
        Calibration.load(tmp_path / "missing.json")
