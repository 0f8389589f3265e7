"""Identifiers under evaluation: one small abstract base, one class per backend.

* ``HashIdentifier``: a real but trivial baseline (classical contour detector or labelled quads ->
  rectify -> dHash+pHash -> nearest catalog hashes by Hamming distance).
* ``SubprocessIdentifier``: any CLI that prints the device CLI's JSON lines
  (``scanemon-device identify --bundle DIR --json IMAGE...``).
* ``HttpIdentifier``: the server's ``POST /api/v1/identify`` (multipart image upload).
"""

from __future__ import annotations

import abc
import json
import shlex
import subprocess
import tempfile
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

RECT_W, RECT_H = 180, 252  # rectified card size used by the baseline


@dataclass
class IdentifiedCard:
    """One card found in an image."""

    card_id: str | None
    score: float
    margin: float
    decision: str  # accept | ambiguous | no_card
    candidates: list[tuple[str, float]] = field(default_factory=list)
    quad: list[list[float]] | None = None  # TL, TR, BR, BL in image pixels

    def to_json(self) -> dict:
        d = asdict(self)
        d["candidates"] = [{"card_id": c, "score": s} for c, s in self.candidates]
        return d


class Identifier(abc.ABC):
    """Identify the cards in one camera image."""

    name = "identifier"

    @abc.abstractmethod
    def identify_timed(self, image_bgr: np.ndarray, hints: dict | None = None) -> tuple[list[IdentifiedCard], dict[str, float]]:
        """(cards, stage timings in ms: detect/embed/match/total where known). ``hints`` may carry
        ``quads`` (labelled quads) for oracle-detector runs; backends are free to ignore it."""

    def identify(self, image_bgr: np.ndarray, hints: dict | None = None) -> list[IdentifiedCard]:
        return self.identify_timed(image_bgr, hints)[0]

    def identify_paths(self, paths: list[Path], hints: list[dict | None] | None = None) -> list[tuple[list[IdentifiedCard], dict[str, float]]]:
        """Batch over image files; backends with a per-call start-up cost override this."""
        hints = hints or [None] * len(paths)
        return [self.identify_timed(cv2.imread(str(p), cv2.IMREAD_COLOR), h) for p, h in zip(paths, hints)]

    def detect(self, image_bgr: np.ndarray) -> list[np.ndarray]:
        """Card quads only (for detector-IoU on photos without card ids)."""
        return [np.asarray(c.quad, np.float32) for c in self.identify(image_bgr) if c.quad is not None]


# ------------------------------------------------------------------------------------------- classical detector


def order_quad(pts: np.ndarray) -> np.ndarray:
    """Order 4 points clockwise from top-left, then make the first edge a short one (portrait card)."""
    pts = np.asarray(pts, np.float32).reshape(4, 2)
    c = pts.mean(0)
    ang = np.arctan2(pts[:, 1] - c[1], pts[:, 0] - c[0])
    pts = pts[np.argsort(ang)]  # clockwise in image coordinates (y down)
    start = int(np.argmin(pts.sum(1)))
    pts = np.roll(pts, -start, 0)
    if np.linalg.norm(pts[1] - pts[0]) > np.linalg.norm(pts[2] - pts[1]):
        pts = np.roll(pts, -1, 0)
    return pts


def detect_quads(image_bgr: np.ndarray, max_cards: int = 9, min_area_frac: float = 0.015) -> list[np.ndarray]:
    """Classical card detector: edges -> contours -> 4-gons (or min-area rectangles of card-like blobs)."""
    h, w = image_bgr.shape[:2]
    f = 640.0 / max(w, h)
    small = cv2.resize(image_bgr, (int(w * f), int(h * f)), interpolation=cv2.INTER_AREA) if f < 1 else image_bgr
    f = min(f, 1.0)
    gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    gray = cv2.GaussianBlur(gray, (5, 5), 0)
    v = float(np.median(gray))
    edges = cv2.Canny(gray, int(max(0, 0.66 * v)), int(min(255, 1.33 * v)))
    edges = cv2.dilate(edges, np.ones((3, 3), np.uint8), iterations=2)
    contours, _ = cv2.findContours(edges, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    area_min = min_area_frac * small.shape[0] * small.shape[1]
    found: list[tuple[float, np.ndarray]] = []
    for cnt in contours:
        a = cv2.contourArea(cnt)
        if a < area_min:
            continue
        hull = cv2.convexHull(cnt)
        approx = cv2.approxPolyDP(hull, 0.03 * cv2.arcLength(hull, True), True)
        if len(approx) == 4:
            quad = approx.reshape(4, 2).astype(np.float32)
        else:
            quad = cv2.boxPoints(cv2.minAreaRect(hull)).astype(np.float32)
        q = order_quad(quad)
        sides = [np.linalg.norm(q[(i + 1) % 4] - q[i]) for i in range(4)]
        ratio = (sides[0] + sides[2]) / max(1e-6, sides[1] + sides[3])
        if 0.45 < ratio < 1.0:  # card-like aspect (63/88 = 0.72) with perspective slack
            found.append((a, q / f))
    found.sort(key=lambda t: -t[0])
    kept: list[np.ndarray] = []
    for _, q in found:
        c = q.mean(0)
        if any(cv2.pointPolygonTest(k.astype(np.float32), (float(c[0]), float(c[1])), False) >= 0 for k in kept):
            continue  # the art window inside an already-found card
        kept.append(q)
        if len(kept) >= max_cards:
            break
    return kept


def rectify(image_bgr: np.ndarray, quad: np.ndarray, size: tuple[int, int] = (RECT_W, RECT_H)) -> np.ndarray:
    w, h = size
    dst = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    m = cv2.getPerspectiveTransform(np.asarray(quad, np.float32), dst)
    return cv2.warpPerspective(image_bgr, m, size, flags=cv2.INTER_AREA)


# ------------------------------------------------------------------------------------------- hash baseline

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def card_hash(card_bgr: np.ndarray) -> np.ndarray:
    """256-bit dHash (16x16 gradient signs) + 64-bit pHash (8x8 low DCT vs median), packed to 40 bytes."""
    g = cv2.cvtColor(card_bgr, cv2.COLOR_BGR2GRAY) if card_bgr.ndim == 3 else card_bgr
    g = cv2.resize(g, (RECT_W, RECT_H), interpolation=cv2.INTER_AREA)
    g = cv2.equalizeHist(g)  # exposure / colour-temperature invariance
    d = cv2.resize(g, (17, 16), interpolation=cv2.INTER_AREA).astype(np.int16)
    dbits = (d[:, 1:] > d[:, :-1]).ravel()
    p = cv2.resize(g, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    dct = cv2.dct(p)[:8, :8].ravel()[1:]
    pbits = np.r_[dct > np.median(dct), False]
    return np.packbits(np.r_[dbits, pbits])


class HashIdentifier(Identifier):
    """Perceptual-hash nearest neighbour over a folder of catalog card images (``<card_id>.jpg``)."""

    name = "hash"
    BITS = 320

    def __init__(self, catalog_dir: str | Path, quad_source: str = "detector", accept_score: float = 0.8,
                 accept_margin: float = 0.02, top_k: int = 5, cache: bool = True):
        if quad_source not in ("detector", "labels"):
            raise ValueError("quad_source must be 'detector' or 'labels'")
        self.catalog_dir = Path(catalog_dir)
        self.quad_source = quad_source
        self.accept_score, self.accept_margin, self.top_k = accept_score, accept_margin, top_k
        self.ids, self.hashes = self._load(cache)

    def _load(self, cache: bool) -> tuple[list[str], np.ndarray]:
        files = sorted(self.catalog_dir.glob("*.jpg"))
        if not files:
            raise FileNotFoundError(f"{self.catalog_dir}: no catalog images (*.jpg)")
        ids = [f.stem for f in files]
        cache_file = self.catalog_dir / ".hash_index.npz"
        stamp = f"{len(files)}:{max(f.stat().st_mtime_ns for f in files)}"
        if cache and cache_file.is_file():
            z = np.load(cache_file, allow_pickle=False)
            if str(z["stamp"]) == stamp and list(z["ids"]) == ids:
                return ids, z["hashes"]
        hashes = np.stack([card_hash(cv2.imread(str(f), cv2.IMREAD_COLOR)) for f in files])
        if cache:
            try:
                np.savez(cache_file, ids=np.array(ids), hashes=hashes, stamp=np.array(stamp))
            except OSError:  # read-only catalog folder: just don't cache
                pass
        return ids, hashes

    def match(self, rect_bgr: np.ndarray) -> list[tuple[str, float]]:
        """Top-k (card_id, similarity in [0, 1]) for one rectified card, trying both 180° orientations."""
        best = None
        for img in (rect_bgr, cv2.rotate(rect_bgr, cv2.ROTATE_180)):
            dist = _POPCOUNT[np.bitwise_xor(self.hashes, card_hash(img)[None, :])].sum(1, dtype=np.int32)
            best = dist if best is None else np.minimum(best, dist)
        k = min(self.top_k, len(self.ids))
        idx = np.argpartition(best, k - 1)[:k]
        idx = idx[np.argsort(best[idx])]
        return [(self.ids[i], 1.0 - float(best[i]) / self.BITS) for i in idx]

    def identify_timed(self, image_bgr, hints=None):
        t0 = time.perf_counter()
        if self.quad_source == "labels" and hints and hints.get("quads") is not None:
            quads = [np.asarray(q, np.float32) for q in hints["quads"]]
        else:
            quads = detect_quads(image_bgr)
        t1 = time.perf_counter()
        rects = [rectify(image_bgr, q) for q in quads]
        t2 = time.perf_counter()
        out = []
        for q, r in zip(quads, rects):
            cands = self.match(r)
            score = cands[0][1]
            margin = score - cands[1][1] if len(cands) > 1 else score
            decision = "accept" if score >= self.accept_score and margin >= self.accept_margin else "ambiguous"
            out.append(IdentifiedCard(cands[0][0], score, margin, decision, cands, np.round(q, 2).tolist()))
        t3 = time.perf_counter()
        ms = {"detect": (t1 - t0) * 1e3, "embed": (t2 - t1) * 1e3, "match": (t3 - t2) * 1e3, "total": (t3 - t0) * 1e3}
        return out, ms

    def detect(self, image_bgr):
        return detect_quads(image_bgr)


# ------------------------------------------------------------------------------------------- subprocess adapter


def parse_device_json(obj: dict) -> tuple[list[IdentifiedCard], dict[str, float]]:
    """One JSON line of the device CLI -> cards + timings."""
    cards = []
    for c in obj.get("cards") or []:
        cands = [(x["card_id"], float(x.get("score", 0.0))) for x in c.get("candidates") or []]
        cards.append(IdentifiedCard(c.get("card_id"), float(c.get("score", cands[0][1] if cands else 0.0)),
                                    float(c.get("margin", 0.0)), c.get("decision", "accept"), cands, c.get("quad")))
    ms = {k: float(v) for k, v in (obj.get("ms") or {}).items() if isinstance(v, (int, float))}
    return cards, ms


class SubprocessIdentifier(Identifier):
    """Runs ``command IMAGE...`` and reads one JSON object per line (``image``, ``cards``, ``reject_reason``, ``ms``)."""

    name = "subprocess"

    def __init__(self, command: str | list[str], batch: int = 64, timeout: float = 600.0):
        self.command = shlex.split(command) if isinstance(command, str) else list(command)
        self.batch, self.timeout = batch, timeout

    def identify_paths(self, paths, hints=None):
        results: dict[str, tuple[list[IdentifiedCard], dict[str, float]]] = {}
        for i in range(0, len(paths), self.batch):
            chunk = [str(p) for p in paths[i:i + self.batch]]
            t0 = time.perf_counter()
            proc = subprocess.run(self.command + chunk, capture_output=True, text=True, timeout=self.timeout)
            wall = (time.perf_counter() - t0) * 1e3 / max(1, len(chunk))
            if proc.returncode != 0:
                raise RuntimeError(f"{self.command[0]} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
            for line in proc.stdout.splitlines():
                line = line.strip()
                if not line.startswith("{"):
                    continue
                obj = json.loads(line)
                cards, ms = parse_device_json(obj)
                ms.setdefault("total", wall)
                results[str(obj.get("image"))] = (cards, ms)
        out = []
        for p in paths:
            r = results.get(str(p)) or results.get(Path(p).name)
            out.append(r if r is not None else ([], {}))
        return out

    def identify_timed(self, image_bgr, hints=None):
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "frame.jpg"
            cv2.imwrite(str(p), image_bgr)
            return self.identify_paths([p])[0]


# ------------------------------------------------------------------------------------------- HTTP adapter


class HttpIdentifier(Identifier):
    """``POST {url}`` with a multipart ``image`` field; reads {cards: [{card_id, confidence, candidates, quad}]}."""

    name = "http"

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0, accept_confidence: float = 0.5):
        self.url, self.token, self.timeout, self.accept_confidence = url, token, timeout, accept_confidence

    def identify_timed(self, image_bgr, hints=None):
        ok, buf = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, 92])
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"frame.jpg\"\r\n"
                f"Content-Type: image/jpeg\r\n\r\n").encode() + buf.tobytes() + f"\r\n--{boundary}--\r\n".encode()
        req = urllib.request.Request(self.url, data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            obj = json.loads(resp.read().decode())
        total = (time.perf_counter() - t0) * 1e3
        cards = []
        for c in obj.get("cards") or []:
            cands = [(x["card_id"], float(x.get("score", x.get("confidence", 0.0)))) for x in c.get("candidates") or []]
            conf = float(c.get("confidence", cands[0][1] if cands else 0.0))
            margin = conf - cands[1][1] if len(cands) > 1 else conf
            decision = c.get("decision") or ("accept" if conf >= self.accept_confidence else "ambiguous")
            cards.append(IdentifiedCard(c.get("card_id"), conf, margin, decision, cands, c.get("quad")))
        ms = {k: float(v) for k, v in (obj.get("ms") or {}).items() if isinstance(v, (int, float))}
        ms["total"] = total
        return cards, ms


def make_identifier(kind: str, *, catalog: str | Path | None = None, command: str | None = None,
                    url: str | None = None, quad_source: str = "detector") -> Identifier:
    if kind == "hash":
        if not catalog:
            raise ValueError("--catalog is required for the hash identifier")
        return HashIdentifier(catalog, quad_source=quad_source)
    if kind == "subprocess":
        if not command:
            raise ValueError("--cmd is required for the subprocess identifier")
        return SubprocessIdentifier(command)
    if kind == "http":
        if not url:
            raise ValueError("--url is required for the http identifier")
        return HttpIdentifier(url)
    raise ValueError(f"unknown identifier {kind!r} (hash, subprocess, http)")
