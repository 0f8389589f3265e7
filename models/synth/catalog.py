"""Render a whole catalog to ``DIR/<card_id>.jpg`` plus ``DIR/index.jsonl`` (metadata the eval needs)."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from collections.abc import Iterable
from pathlib import Path

import cv2

from models.synth.render import DEFAULT_SIZE, build_set_index, default_finish, layout_family, render_card
from server.catalog.sources import CardRecord, PokemonTCGSource, SetRecord

INDEX_FILE = "index.jsonl"

_worker_state: dict = {}


def load_cards(pokemon_tcg_data: str | Path, images: str | Path | None = None,
               sets: Iterable[str] | None = None, limit: int | None = None) -> tuple[list[CardRecord], dict[str, SetRecord]]:
    """Catalog records (optionally a subset of sets, first ``limit`` cards) and the set index."""
    src = PokemonTCGSource(pokemon_tcg_data, images=images)
    set_index = build_set_index(src.sets())
    wanted = [s.strip() for s in sets if s.strip()] if sets else [s.id for s in src.sets()]
    unknown = [s for s in wanted if s not in set_index]
    if unknown:
        raise SystemExit(f"unknown set id(s): {', '.join(unknown)}")
    cards: list[CardRecord] = []
    for sid in wanted:
        cards.extend(src.cards(sid))
        if limit and len(cards) >= limit:
            break
    return (cards[:limit] if limit else cards), set_index


def index_row(card: CardRecord, set_index: dict[str, SetRecord]) -> dict:
    return {
        "card_id": card.id, "name": card.name, "illustration_id": card.illustration_id, "set_id": card.set_id,
        "number": card.number, "rarity": card.rarity, "supertype": card.supertype,
        "layout": layout_family(card, set_index), "finish": default_finish(card),
        "real_scan": bool(card.image_path),
    }


def _init_worker(set_index, size, out, quality) -> None:
    cv2.setNumThreads(1)
    _worker_state.update(set_index=set_index, size=size, out=Path(out), quality=quality)


def _render_one(card: CardRecord) -> str:
    st = _worker_state
    img = render_card(card, st["set_index"], st["size"])
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, st["quality"]])
    if not ok:
        raise RuntimeError(f"JPEG encode failed for {card.id}")
    (st["out"] / f"{card.id}.jpg").write_bytes(buf.tobytes())
    return card.id


def render_catalog(cards: list[CardRecord], set_index: dict[str, SetRecord], out: str | Path,
                   size: tuple[int, int] = DEFAULT_SIZE, workers: int = 1, quality: int = 90,
                   progress: bool = True) -> dict:
    """Render ``cards`` into ``out``; returns {'n', 'seconds', 'cards_per_s'}."""
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    bar = tqdm(total=len(cards), unit="card", disable=not progress)
    if workers <= 1:
        _init_worker(set_index, size, out, quality)
        for c in cards:
            _render_one(c)
            bar.update()
    else:
        with mp.get_context("fork").Pool(workers, _init_worker, (set_index, size, str(out), quality)) as pool:
            for _ in pool.imap_unordered(_render_one, cards, chunksize=64):
                bar.update()
    bar.close()
    dt = time.perf_counter() - t0
    with open(out / INDEX_FILE, "w", encoding="utf-8") as f:
        for c in cards:
            f.write(json.dumps(index_row(c, set_index)) + "\n")
    return {"n": len(cards), "seconds": dt, "cards_per_s": len(cards) / dt if dt > 0 else float("inf")}


def read_index(catalog_dir: str | Path) -> dict[str, dict]:
    """``index.jsonl`` of a rendered catalog (card_id -> row); rows are minimal when the file is absent."""
    p = Path(catalog_dir) / INDEX_FILE
    if p.is_file():
        return {r["card_id"]: r for r in (json.loads(line) for line in p.read_text().splitlines() if line.strip())}
    return {f.stem: {"card_id": f.stem} for f in sorted(Path(catalog_dir).glob("*.jpg"))}
