"""Snap a detected quad's sides to the card's outline with a learned edge model (``detector_edges.npz``).

Why: the detector's maps are 40×30 (a cell is 16 px of a 640×480 frame), so its corners are ≈ 5 px off
(median mean-corner error on simulated scanner-box captures, bundle demo-5). The classical snap
(``detector.refine_quad``: the *outermost* strong edge near each side) halves that for a bare card but
snaps to the plastic's edge for a card in a sleeve or a top-loader (3–9 % of the card's width outside it):
7.9 px median for sleeved cards, worse than no snap at all. Those errors decide reprint contests wrongly
(the collector number's box lands beside it). What an edge is — the card's cut edge against a sleeve's
tinted margin, a border's inner line, a top-loader's rim, a finger — is learned here from simulated captures
with exact corners (``models.detector.edges``) instead of written as rules.

How: along each side of the quad, ``samples`` short profiles across the side (BGR, sampled in steps of
1/400 of the card's diagonal, so one model serves every card size and frame size). Each position on a
profile is scored by a small MLP from the colours around it and its distance from the detector's side;
a softmax over the profile gives the edge's position there (expected offset around the best position);
a robust line through the confident positions is the side; adjacent sides intersect in the corners. The
MLP runs in numpy (two matrix products of a few thousand rows): no second interpreter on the device.
"""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np

FILE = "detector_edges.npz"
DIAG_STEPS = 400.0  # profile steps per card diagonal


class EdgeModel:
    """Per-position edge scores on profiles across a quad's sides (weights from ``models.detector.edges``)."""

    def __init__(self, data: dict[str, np.ndarray]):
        try:
            self.w1, self.b1 = data["w1"].astype(np.float32), data["b1"].astype(np.float32)
            self.w2, self.b2 = data["w2"].astype(np.float32), data["b2"].astype(np.float32)
            self.radius = int(data["radius"])  # positions each side of the detector's line
            self.half = int(data["half_window"])  # colours each side of a position that score it
            self.samples = int(data["samples"])  # profiles per side
        except KeyError as exc:
            raise ValueError(f"{FILE}: missing array {exc}") from None
        if self.w1.shape[0] != feature_count(self.half) or self.w1.shape[1] != self.w2.shape[0]:
            raise ValueError(f"{FILE}: weights do not fit half_window={self.half}")
        self._conv = self._as_convolution()

    @classmethod
    def load(cls, bundle_dir: str | Path) -> "EdgeModel | None":
        p = Path(bundle_dir) / FILE
        if not p.is_file():
            return None  # an older bundle: the classical snap
        with np.load(p, allow_pickle=False) as z:
            return cls({k: z[k] for k in z.files})

    def save(self, path: str | Path) -> None:
        np.savez(path, w1=self.w1, b1=self.b1, w2=self.w2, b2=self.b2, radius=np.int32(self.radius),
                 half_window=np.int32(self.half), samples=np.int32(self.samples))

    def logits(self, feats: np.ndarray) -> np.ndarray:
        """[..., F] features (``features``) → [...] edge logits."""
        h = np.maximum(feats @ self.w1 + self.b1, 0.0)
        return (h @ self.w2)[..., 0] + self.b2[0]

    def profile_logits(self, vals: np.ndarray) -> np.ndarray:
        """[..., 2·(radius + half) + 1, 3] profiles → [..., 2·radius + 1] logits; the same as
        ``logits(features(vals, …))`` but without building the features: they are linear in the profile, so the
        first layer is a convolution along it: one matrix product over the profile's windows (33 wide, not 68)."""
        kernels, bias = self._conv  # [w, 3, hidden], [P, hidden]
        w = len(kernels)
        vals = np.ascontiguousarray(vals)
        P = vals.shape[-2] - w + 1
        # the windows as a strided view ([..., P, w, 3]; sliding_window_view's checks cost as much as the product)
        win = np.lib.stride_tricks.as_strided(vals, vals.shape[:-2] + (P, w, vals.shape[-1]),
                                              vals.strides[:-1] + vals.strides[-2:], writeable=False)
        lead = vals.shape[:-2]
        hid = kernels.shape[-1]
        # 2-D products: numpy multiplies stacked (4-D) operands one small matrix at a time (with 64 hidden units
        # that doubled refine's time a quad: docs/device-vision.md, twelfth session); in place after the first
        h = (win.reshape(-1, w * vals.shape[-1]) @ kernels.reshape(w * 3, hid)).reshape(lead + (P, hid))
        h += bias
        np.maximum(h, 0.0, out=h)
        return (h.reshape(-1, hid) @ self.w2[:, 0]).reshape(lead + (P,)) + self.b2[0]

    def _as_convolution(self) -> tuple[np.ndarray, np.ndarray]:
        """The first layer rewritten over the raw profile (see ``features`` for the feature layout)."""
        w, half, hid = 2 * self.half + 1, self.half, self.w1.shape[1]
        W = self.w1
        rel = W[:3 * w].reshape(w, 3, hid)  # colours minus the centre's
        steps = W[3 * w:3 * w + 3 * (w - 1)].reshape(w - 1, 3, hid) * 4.0
        centre = W[3 * w + 3 * (w - 1):3 * w + 3 * (w - 1) + 3]
        prior = W[-2:]
        k = rel.copy()
        k[half] -= rel.sum(0)
        k[1:] += steps
        k[:-1] -= steps
        k[half] += centre
        pos = (np.arange(2 * self.radius + 1, dtype=np.float32) - self.radius) / self.radius
        bias = self.b1 - 0.5 * centre.sum(0) + np.stack([pos, pos * pos], -1) @ prior
        return k.astype(np.float32), bias.astype(np.float32)

    def _edges(self, frame: np.ndarray, q: np.ndarray, sides: tuple[int, ...] = (0, 1, 2, 3)):
        """Where each profile across ``q``'s ``sides`` puts the edge: (points on the sides [n, S, 2], outward
        normals [n, 2], the step in frame px, the best position [n, S] and the probability within ±2 positions of
        it [n, S], the expected offset there [n, S], in steps) — None for a degenerate quad."""
        prof = side_profiles(frame, q, self.radius, self.half, self.samples, sides)
        if prof is None:
            return None
        pts, normals, step, vals = prof
        logit = self.profile_logits(vals)  # [n, S, P]
        logit -= logit.max(-1, keepdims=True)
        p = np.exp(logit)
        p /= p.sum(-1, keepdims=True)
        k = p.argmax(-1)
        pos = np.arange(p.shape[-1], dtype=np.float32) - self.radius
        # expected offset within ±2 positions of the best one: sub-step precision without letting a second
        # edge far away (a sleeve's rim) pull the estimate between the two
        near = np.abs(pos[None, None, :] - pos[k][..., None]) <= 2
        pn = p * near
        conf = pn.sum(-1)
        off = (pn * pos).sum(-1) / np.maximum(conf, 1e-6)
        return pts, normals, step, pos[k], conf, off

    def side_support(self, frame: np.ndarray, quad: np.ndarray, sides: tuple[int, ...] = (0, 1, 2, 3),
                     min_conf: float = 0.5, within: int = 3) -> np.ndarray:
        """[len(sides)]: per side of ``quad`` asked for, the fraction of its profiles that put a confident edge
        (≥ ``min_conf``) within ``within`` positions of the side — whether an edge runs there at all, not where it
        lies best."""
        found = self._edges(frame, np.asarray(quad, np.float32), sides)
        if found is None:
            return np.zeros(len(sides), np.float32)
        _, _, _, best, conf, _ = found
        return ((conf >= min_conf) & (np.abs(best) <= within)).mean(-1).astype(np.float32)

    def refine(self, frame: np.ndarray, quad: np.ndarray, min_conf: float = 0.25,
               sides: tuple[int, ...] = (0, 1, 2, 3)) -> tuple[np.ndarray, dict]:
        """``quad`` with each of its ``sides`` moved onto the card's edge (the others stay where they are, their
        corners with a moved side move along them); the input where a side has too few confident positions or the
        result is not a plausible card outline. Returns (quad, info)."""
        q = np.asarray(quad, np.float32)
        found = self._edges(frame, q, sides)
        if found is None:
            return q, {"edges": 0}
        pts, normals, step, best, conf, off = found
        off = off * step  # frame px along the outward normal
        # a side not refined: the quad's own
        lines = [(q[i], (q[(i + 1) % 4] - q[i]) / max(float(np.linalg.norm(q[(i + 1) % 4] - q[i])), 1e-6))
                 for i in range(4)]
        for k, i in enumerate(sides):
            good = conf[k] >= min_conf
            if good.sum() < max(4, self.samples // 3):
                lines[i] = None
                continue
            xy = pts[k][good] + off[k][good, None] * normals[k][None, :]
            vx, vy, x0, y0 = cv2.fitLine(xy.reshape(-1, 1, 2).astype(np.float32), cv2.DIST_HUBER, 0, 0.01, 0.01).ravel()
            lines[i] = (np.array([x0, y0], np.float32), np.array([vx, vy], np.float32))
        out = q.copy()
        moved = 0
        for i in range(4):
            if (i - 1) % 4 not in sides and i not in sides:
                continue  # neither side refined: the corner stays
            x = intersect(lines[(i - 1) % 4], lines[i])  # corner i joins side i-1 and side i
            if x is not None and np.linalg.norm(x - q[i]) <= 1.5 * self.radius * step:
                out[i] = x
                moved += 1
        if not cv2.isContourConvex(out.reshape(-1, 1, 2)) or abs(cv2.contourArea(out)) < 0.7 * abs(cv2.contourArea(q)):
            return q, {"edges": 0}
        return out, {"edges": moved, "edge_conf": round(float(conf.mean()), 3)}


def feature_count(half: int) -> int:
    return 3 * (2 * half + 1) + 3 * 2 * half + 3 + 2


def side_profiles(frame: np.ndarray, quad: np.ndarray, radius: int, half: int, samples: int,
                  sides: tuple[int, ...] = (0, 1, 2, 3)) -> tuple[np.ndarray, np.ndarray, float, np.ndarray] | None:
    """Colour profiles across each of ``sides`` (side i runs from corner i to corner i + 1): (points on the sides
    [n, S, 2], outward unit normals [n, 2], the step in frame px, values [n, S, 2·(radius + half) + 1, 3] float32
    in 0..1) — None for a degenerate quad."""
    q = np.asarray(quad, np.float32)
    diag = 0.5 * (np.linalg.norm(q[2] - q[0]) + np.linalg.norm(q[3] - q[1]))
    step = float(diag) / DIAG_STEPS
    if step < 0.1:
        return None
    n_off = radius + half
    offs = np.arange(-n_off, n_off + 1, dtype=np.float32) * step
    ts = (np.arange(samples, dtype=np.float32) + 0.5) / samples * 0.84 + 0.08  # keep off the rounded corners
    c = q.mean(0)
    pts, normals = [], []
    for i in sides:
        a, b = q[i], q[(i + 1) % 4]
        d = b - a
        ln = float(np.linalg.norm(d))
        if ln < 4:
            return None
        d = d / ln
        n = np.array([d[1], -d[0]], np.float32)
        if np.dot(n, (a + b) / 2 - c) < 0:
            n = -n  # outward
        pts.append(a[None, :] + ts[:, None] * (b - a)[None, :])
        normals.append(n)
    P, N = np.stack(pts), np.stack(normals)  # [n, S, 2], [n, 2]
    grid = P[:, :, None, :] + offs[None, None, :, None] * N[:, None, None, :]  # [n, S, O, 2]
    flat = grid.reshape(-1, len(offs), 2)
    vals = cv2.remap(frame, flat[..., 0].astype(np.float32), flat[..., 1].astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)
    vals = vals.reshape(len(sides), samples, len(offs), -1).astype(np.float32) / 255.0
    if vals.shape[-1] == 1:
        vals = np.repeat(vals, 3, -1)
    return P, N, step, vals


def features(vals: np.ndarray, half: int, radius: int) -> np.ndarray:
    """[..., 2·(radius + half) + 1, 3] profile → [..., 2·radius + 1, F]: per position the colours around it
    (raw and minus the position's own), their steps, and the position's distance from the detector's line.
    The same function builds the training features (``models.detector.edges``)."""
    P = 2 * radius + 1
    w = 2 * half + 1
    idx = np.arange(P)[:, None] + np.arange(w)[None, :]  # [P, w]
    win = vals[..., idx, :]  # [..., P, w, 3]
    centre = win[..., half:half + 1, :]
    steps = np.diff(win, axis=-2)  # [..., P, w-1, 3]
    pos = (np.arange(P, dtype=np.float32) - radius) / radius
    lead = win.shape[:-3]
    prior = np.broadcast_to(np.stack([pos, pos * pos], -1), lead + (P, 2))
    return np.concatenate([(win - centre).reshape(lead + (P, -1)), steps.reshape(lead + (P, -1)) * 4.0,
                           centre.reshape(lead + (P, 3)) - 0.5, prior], -1).astype(np.float32)


def intersect(l1, l2) -> np.ndarray | None:
    """Where two (point, direction) lines meet; None for a missing or (nearly) parallel one."""
    if l1 is None or l2 is None:
        return None
    (p1, d1), (p2, d2) = l1, l2
    den = d1[0] * d2[1] - d1[1] * d2[0]
    if abs(den) < 1e-3:
        return None
    t = ((p2[0] - p1[0]) * d2[1] - (p2[1] - p1[1]) * d2[0]) / den
    return p1 + t * d1


SEAM_MIN_LINE = 2.0 / 255  # a seam's contrast floor (grey levels of 0..1)
SEAM_NOISE_TIMES = 3.0  # … and this many times the profile's median response


@functools.lru_cache(maxsize=16)
def _lines(n: int, o: int, max_tilt: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The straight lines ``seam`` tries across ``n`` profiles of ``o`` positions: (each profile's place along the
    side [n], each line's position per profile as a flat index into [n, o] [o, tilts, n], whether it lies inside)."""
    t = (np.arange(n, dtype=np.float32) + 0.5) / n
    a = np.arange(o)[:, None, None]
    b = a + np.arange(-max_tilt, max_tilt + 1)[None, :, None]
    pos = np.rint(a + (b - a) * t[None, None, :]).astype(np.intp)  # [o, tilts, n]
    return t, np.arange(n) * o + np.clip(pos, 0, o - 1), (pos >= 0) & (pos < o)


def seam(frame: np.ndarray, quad: np.ndarray, side: int, radius: int, samples: int = 16,
         max_tilt: int = 8) -> tuple[float, np.ndarray | None]:
    """A straight seam — a thin line, dark or bright — running along ``quad``'s ``side`` within ``radius`` profile
    steps of it: (the fraction of the side's profiles it crosses, the side moved onto it: its two ends [2, 2], or
    None).

    Why beside the edge model: a card lying on a card of the same colour has no step at its edge — white face on
    white face — only its cut edge's thin shadow or glint (real playing-card photos: 80–150 grey levels dark, or
    5–10 bright, one or two pixels wide). The edge model, which learned a card's edge as a step against what lies
    around it, sees nothing there; and only a line, not a step, is looked for here: a step is the edge model's to
    see, and a step runs along a row of pips as straight as along a card (TRAIN photos: looking for both found fewer
    of the pairs and parted more single cards). Found classically: per profile (grey, smoothed over a pixel) the
    second difference over ±1 pixel; a position is on a line where that exceeds ``SEAM_MIN_LINE`` and
    ``SEAM_NOISE_TIMES`` its profile's median; the seam is the straight line (its ends up to ``max_tilt`` steps
    apart) through the most such positions, give or take one."""
    prof = side_profiles(frame, quad, radius, 0, samples, (side,))
    if prof is None:
        return 0.0, None
    pts, normals, step, vals = prof
    k = max(1, int(round(1.0 / max(step, 1e-6))))  # one pixel in profile steps
    g = cv2.GaussianBlur(vals[0].mean(-1), (0, 0), sigmaX=max(0.5, 0.7 * k), sigmaY=1e-3)  # [S, O]
    pad = np.pad(g, ((0, 0), (k, k)), mode="edge")
    r = np.abs(pad[:, 2 * k:] + pad[:, :-2 * k] - 2 * g)
    on = r >= np.maximum(SEAM_MIN_LINE, SEAM_NOISE_TIMES * np.median(r, axis=1, keepdims=True))
    on[:, 1:] |= on[:, :-1].copy()  # a position of slack each way: the seam need not be exactly straight
    on[:, :-1] |= on[:, 1:].copy()
    n, o = on.shape
    t, at, inside = _lines(n, o, max_tilt)
    hits = (on.ravel()[at] & inside).sum(-1)
    along = (r.ravel()[at] * inside).sum(-1)  # among lines crossing as many, the one on the seam's middle
    ia, ib = np.unravel_index(int((hits + 0.999 * along / max(float(along.max()), 1e-9)).argmax()), hits.shape)
    found = float(hits[ia, ib]) / n
    if found == 0:
        return 0.0, None
    off = (ia + float(ib - max_tilt) * t[[0, -1]] - radius) * step  # at the first and last profile, frame px
    ends = pts[0][[0, -1]] + off[:, None] * normals[0][None, :]
    return found, ends.astype(np.float32)
