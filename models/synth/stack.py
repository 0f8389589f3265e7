"""Counter-scan sequences: a fixed overhead camera over a mat while cards are placed, held, removed,
re-placed (N copies must count N) or slid on top of the previous card.

``simulate_stack`` first *plans* the whole sequence (per-frame scene + ground-truth events + expected
counts), then ``StackSequence.frames()`` renders frame by frame, so long sequences never sit in memory.
"""

from __future__ import annotations

import json
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from models.synth.capture import (CaptureConfig, _camera_effects, _composite, _motion_blur, _wrap_object, background,
                                  polygon_area, project_plane)


class StackConfig(BaseModel):
    """Distribution of counter-scan sequences."""

    model_config = ConfigDict(extra="forbid")
    size: tuple[int, int] = Field((640, 480), description="Frame size (W, H).")
    card_scale: float = Field(0.75, gt=0, le=1, description="Card height / frame height at rest (fixed camera).")
    empty_frames: tuple[int, int] = Field((2, 4), description="Range of empty-mat frames between cards.")
    hold_frames: tuple[int, int] = Field((4, 8), description="Range of frames a card is held still.")
    move_frames: int = Field(2, ge=1, description="Frames while a card slides in or out (motion blurred).")
    p_same_again: float = Field(0.2, ge=0, le=1, description="Probability the next card is another copy of the same card.")
    p_slide_on_top: float = Field(0.2, ge=0, le=1, description="Probability the next card is slid on top of the current one.")
    jitter_px: float = Field(2.0, ge=0, description="Hand/camera jitter of a held card, pixels (std).")
    camera: CaptureConfig = Field(
        default_factory=lambda: CaptureConfig(mode="scanner_box", p_sleeve=0.2, p_toploader=0.05, p_glare=0.15,
                                              p_motion_blur=0.0, p_defocus=0.05, p_fingers=0.0, light_gradient=(0.0, 0.2),
                                              brightness=(0.9, 1.1), colour_temperature=(-0.05, 0.05),
                                              noise_sigma=(1.0, 3.0), jpeg_quality=(80, 95)),
        description="Per-frame camera effects (mode/size are taken from this config).")
    lit_placements: tuple[int, ...] = Field(
        (), description="Placements (0-based, in order) under a lamp mirrored in the card: every frame in which "
                        "such a card lies on top gets a glare spot on it (a holo card under a badly placed light).")


@dataclass
class _Placed:
    card_id: str
    holder: str
    offset: tuple[float, float]
    rot: float
    lit: bool = False  # StackConfig.lit_placements


@dataclass
class StackSequence:
    """A planned sequence: ``plan[i]`` describes frame i; ``events`` and ``counts`` are the ground truth."""

    plan: list[dict]
    events: list[dict]
    counts: dict[str, int]
    config: StackConfig
    seed_base: int
    card_images: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    mat: tuple[str, int] = ("playmat", 0)

    def frames(self):
        """Yield (frame BGR, label) per frame; label = {frame, phase, cards: [{card_id, quad, visible}]}."""
        w, h = self.config.size
        bg = background(self.mat[0], self.mat[1], (w, h))
        focal = float(w)
        for i, spec in enumerate(self.plan):
            rng = np.random.default_rng(self.seed_base + i)
            frame = bg.copy()
            ls = 0.25
            lab = np.zeros((int(h * ls), int(w * ls)), np.uint8)
            quads = []
            for k, c in enumerate(spec["cards"]):
                img = self.card_images[c["card_id"]]
                obj, alpha, face_obj = _wrap_object(img, c["holder"], np.random.default_rng(zlib.crc32(c["card_id"].encode())))
                oh, ow = obj.shape[:2]
                kk = self.config.card_scale * h / img.shape[0]
                fc = face_obj.mean(0)
                outline = (np.array([[0, 0], [ow, 0], [ow, oh], [0, oh]], np.float32) - fc) * kk
                jit = rng.normal(0, self.config.jitter_px, 2) if spec["phase"] == "held" else (0, 0)
                centre = (w / 2 + c["offset"][0] + jit[0], h / 2 + c["offset"][1] + jit[1])
                proj = project_plane(np.vstack([outline, (face_obj - fc) * kk]), centre, c["rot"], 0, 0, focal)
                _composite(frame, obj, alpha, proj[:4])
                cv2.fillConvexPoly(lab, np.round(proj[4:] * ls * 16).astype(np.int32), k + 1, cv2.LINE_8, 4)
                quads.append(proj[4:])
            p: dict = {}
            cam = self.config.camera.model_copy(update={"size": (w, h)})
            glare_at = quads[-1] if quads else np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
            frame = _camera_effects(frame, rng, cam, glare_at, p, [], scale=w / 640)
            if spec["cards"] and spec["cards"][-1].get("lit"):
                frame = _lamp(frame, quads[-1])
            if spec["phase"] in ("entering", "leaving"):
                ang = 0.0 if abs(spec["direction"][0]) > abs(spec["direction"][1]) else 90.0
                frame = _motion_blur(frame, 9, ang)
            cards = []
            for k, (c, q) in enumerate(zip(spec["cards"], quads)):
                area = polygon_area(q * ls)
                vis = float(np.count_nonzero(lab == k + 1)) / area if area else 0.0
                cards.append({"card_id": c["card_id"], "quad": np.round(q, 2).tolist(), "visible": round(min(1.0, vis), 4)})
            yield frame, {"frame": i, "phase": spec["phase"], "cards": cards}


def _lamp(frame: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """A lamp mirrored in the card: a soft white spot over about a third of its face (≈ 0.26 of the crop
    blown out: below the gate's glare flag, enough to spoil the match). No random draws, so the sequence's other
    frames stay as they were."""
    h, w = frame.shape[:2]
    spot = np.zeros((h, w), np.uint8)
    c = quad.mean(0)
    side = float(np.linalg.norm(quad[1] - quad[0]))
    cv2.ellipse(spot, (int(c[0]), int(c[1] - 0.1 * side)), (int(0.3 * side), int(0.36 * side)), 0.0, 0, 360, 255, -1)
    spot = cv2.GaussianBlur(spot, (0, 0), max(1.0, 0.06 * side))
    return cv2.add(frame, cv2.merge([spot, spot, spot]))


def simulate_stack(card_images: dict[str, np.ndarray], n_placements: int, rng: np.random.Generator,
                   config: StackConfig | None = None, order: list[str] | None = None) -> StackSequence:
    """Plan a counter scan of ``n_placements`` card placements drawn from ``card_images`` (id -> image).

    ``order`` scripts the placements instead (one card id per placement, e.g. a demo that must show a
    duplicate copy and a reprint); a repeated id right after itself is another copy of the same card.
    """
    cfg = config or StackConfig()
    if order is not None:
        missing = sorted(set(order) - set(card_images))
        if missing:
            raise ValueError(f"order names cards without an image: {', '.join(missing)}")
        n_placements = len(order)
    w, h = cfg.size
    ids = sorted(card_images)
    plan: list[dict] = []
    events: list[dict] = []
    counts: Counter[str] = Counter()
    on_mat: list[_Placed] = []

    def snap(phase: str, cards: list[_Placed], direction=(0, 0)) -> None:
        plan.append({"phase": phase, "direction": list(direction),
                     "cards": [{"card_id": c.card_id, "holder": c.holder, "offset": list(c.offset), "rot": c.rot}
                               | ({"lit": True} if c.lit else {}) for c in cards]})

    def empty() -> None:
        for _ in range(int(rng.integers(cfg.empty_frames[0], cfg.empty_frames[1] + 1))):
            snap("empty", [])

    def slide(card: _Placed, under: list[_Placed], phase: str) -> tuple[float, float]:
        d = [(1, 0), (-1, 0), (0, 1), (0, -1)][int(rng.integers(4))]
        for m in range(cfg.move_frames):
            f = (cfg.move_frames - m) / (cfg.move_frames + 1) if phase == "entering" else (m + 1) / (cfg.move_frames + 1)
            moving = _Placed(card.card_id, card.holder, (card.offset[0] + d[0] * f * w * 0.6, card.offset[1] + d[1] * f * h * 0.6), card.rot,
                             card.lit)
            snap(phase, under + [moving], d)
        return d

    def hold(cards: list[_Placed]) -> None:
        for _ in range(int(rng.integers(cfg.hold_frames[0], cfg.hold_frames[1] + 1))):
            snap("held", cards)

    empty()
    prev: str | None = None
    for i in range(n_placements):
        if order is not None:
            cid = order[i]
        else:
            same = prev is not None and rng.random() < cfg.p_same_again
            cid = prev if same else ids[int(rng.integers(len(ids)))]
        holder = ["none", "sleeve", "toploader"][int(rng.choice(3, p=[0.75, 0.2, 0.05]))]
        card = _Placed(cid, holder, (float(rng.normal(0, w * 0.01)), float(rng.normal(0, h * 0.01))), float(rng.uniform(-6, 6)),
                       lit=i in cfg.lit_placements)
        on_top = bool(on_mat) and rng.random() < cfg.p_slide_on_top
        if on_mat and not on_top:
            # Take the whole stack away before the next card.
            top = on_mat[-1]
            slide(top, on_mat[:-1], "leaving")
            for c in reversed(on_mat):
                events.append({"frame": len(plan), "event": "removed", "card_id": c.card_id})
            on_mat = []
            empty()
        slide(card, list(on_mat), "entering")
        events.append({"frame": len(plan), "event": "slid_on_top" if on_top else "placed", "card_id": cid})
        counts[cid] += 1
        on_mat = on_mat + [card]
        hold(list(on_mat))
        prev = cid
    if on_mat:
        slide(on_mat[-1], on_mat[:-1], "leaving")
        for c in reversed(on_mat):
            events.append({"frame": len(plan), "event": "removed", "card_id": c.card_id})
        empty()
    mats = ["playmat", "cloth", "wood", "noise"]
    return StackSequence(plan=plan, events=events, counts=dict(counts), config=cfg,
                         seed_base=int(rng.integers(0, 2**31)), card_images=card_images,
                         mat=(mats[int(rng.integers(len(mats)))], int(rng.integers(0, 6))))


def write_stack(catalog_dir: str | Path, out: str | Path, n_placements: int, seed: int,
                config: StackConfig | None = None, pool_size: int = 12, order: list[str] | None = None) -> dict:
    """Render a sequence from a folder of card JPEGs: OUT/frames/*.jpg, frames.jsonl, events.jsonl, counts.json.

    ``order``: scripted placements (card ids of ``catalog_dir``) instead of ``n_placements`` random ones.
    """
    from models.synth.dataset import catalog_ids

    cfg = config or StackConfig()
    rng = np.random.default_rng(seed)
    if order is not None:
        chosen = list(dict.fromkeys(order))
        n_placements = len(order)
    else:
        ids = catalog_ids(catalog_dir)
        chosen = [ids[int(j)] for j in rng.choice(len(ids), size=min(pool_size, len(ids)), replace=False)]
    images = {c: cv2.imread(str(Path(catalog_dir) / f"{c}.jpg")) for c in chosen}
    unreadable = sorted(c for c, im in images.items() if im is None)
    if unreadable:
        raise FileNotFoundError(f"no readable image in {catalog_dir} for: {', '.join(unreadable)}")
    seq = simulate_stack(images, n_placements, rng, cfg, order=order)
    out = Path(out)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(out / "frames.jsonl", "w") as f:
        for frame, label in seq.frames():
            name = f"frames/{label['frame']:06d}.jpg"
            cv2.imwrite(str(out / name), frame, [cv2.IMWRITE_JPEG_QUALITY, 92])
            f.write(json.dumps({"image": name, **label}) + "\n")
    with open(out / "events.jsonl", "w") as f:
        for e in seq.events:
            f.write(json.dumps(e) + "\n")
    (out / "counts.json").write_text(json.dumps(seq.counts, indent=2, sort_keys=True))
    (out / "config.json").write_text(json.dumps({"seed": seed, "cards": n_placements, "catalog": str(catalog_dir),
                                                 "mat": list(seq.mat), "config": cfg.model_dump(mode="json")}, indent=2))
    return {"frames": len(seq.plan), "events": len(seq.events), "placements": sum(seq.counts.values()),
            "seconds": time.perf_counter() - t0}


__all__ = ["StackConfig", "StackSequence", "simulate_stack", "write_stack"]
