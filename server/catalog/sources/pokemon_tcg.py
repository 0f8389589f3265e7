"""The Pokémon TCG catalog in the layout of github.com/PokemonTCG/pokemon-tcg-data (v2 JSON)."""

from __future__ import annotations

import json
import re
from datetime import date, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from server.catalog.sources.base import CardRecord, CatalogError, CatalogSource, SetRecord, illustration_key

# Renderer-relevant details kept verbatim in CardRecord.facts.
_FACT_KEYS = (
    "attacks", "abilities", "weaknesses", "resistances", "retreatCost", "evolvesFrom",
    "rules", "flavorText", "regulationMark", "level", "ancientTrait",
)


def _int_or_none(value: Any) -> int | None:
    if value in (None, "", "None"):
        return None
    m = re.match(r"\d+", str(value))
    return int(m.group()) if m else None


class PokemonTCGSource(CatalogSource):
    """Reads ``sets/en.json`` and ``cards/en/<set>.json``; optional local images ``<dir>/<id>/<id>.png``."""

    name = "pokemon-tcg-data"
    game = "pokemon"

    def __init__(self, root: str | Path, images: str | Path | None = None, lang: str = "en"):
        self.root = Path(root)
        self.lang = lang
        self.images = Path(images) if images else None
        if not (self.root / "sets" / f"{lang}.json").is_file():
            raise CatalogError(self.root / "sets" / f"{lang}.json", None, "not found (is this a pokemon-tcg-data checkout?)")

    def files(self) -> list[Path]:
        return [self.root / "sets" / f"{self.lang}.json", *sorted((self.root / "cards" / self.lang).glob("*.json"))]

    def _load(self, path: Path) -> Any:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise CatalogError(path, None, "file not found") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CatalogError(path, None, f"invalid JSON: {exc}") from exc

    @cached_property
    def _sets(self) -> list[SetRecord]:
        path = self.root / "sets" / f"{self.lang}.json"
        raw = self._load(path)
        if not isinstance(raw, list):
            raise CatalogError(path, None, "expected a JSON list of sets")
        out = []
        for i, r in enumerate(raw):
            rid = r.get("id", i) if isinstance(r, dict) else i
            try:
                rel = r.get("releaseDate")
                out.append(SetRecord(
                    id=r["id"], game=self.game, name=r["name"], series=r.get("series", ""),
                    printed_total=_int_or_none(r.get("printedTotal")), total=_int_or_none(r.get("total")),
                    release_date=datetime.strptime(rel, "%Y/%m/%d").date() if rel else None,
                    code=r.get("ptcgoCode"),
                    symbol_url=(r.get("images") or {}).get("symbol"), logo_url=(r.get("images") or {}).get("logo"),
                ))
            except (KeyError, TypeError, ValueError, AttributeError, ValidationError) as exc:
                raise CatalogError(path, rid, f"bad set record: {exc!s}") from exc
        out.sort(key=lambda s: (s.release_date or date.max, s.id))
        return out

    def sets(self) -> list[SetRecord]:
        return list(self._sets)

    def _image_for(self, card_id: str) -> str | None:
        if not self.images:
            return None
        for cand in (self.images / card_id / f"{card_id}.png", self.images / f"{card_id}.png", self.images / f"{card_id}.jpg"):
            if cand.is_file():
                return str(cand.resolve())
        return None

    def cards(self, set_id: str) -> list[CardRecord]:
        path = self.root / "cards" / self.lang / f"{set_id}.json"
        raw = self._load(path)
        if not isinstance(raw, list):
            raise CatalogError(path, None, "expected a JSON list of cards")
        set_rec = next((s for s in self._sets if s.id == set_id), None)
        out = []
        for i, r in enumerate(raw):
            rid = r.get("id", f"#{i}") if isinstance(r, dict) else f"#{i}"
            try:
                if not isinstance(r, dict):
                    raise TypeError("record is not an object")
                if not str(r["id"]).startswith(f"{set_id}-"):
                    raise ValueError(f"id {r['id']!r} does not belong to set {set_id!r}")
                images = r.get("images") or {}
                out.append(CardRecord(
                    id=r["id"], game=self.game, set_id=set_id, name=r["name"], number=str(r["number"]),
                    printed_total=set_rec.printed_total if set_rec else None,
                    rarity=r.get("rarity"), supertype=r.get("supertype"),
                    subtypes=list(r.get("subtypes") or []), types=list(r.get("types") or []),
                    hp=_int_or_none(r.get("hp")), artist=r.get("artist"),
                    national_dex=[int(n) for n in r.get("nationalPokedexNumbers") or []],
                    image_url_small=images.get("small"), image_url_large=images.get("large"),
                    image_path=self._image_for(r["id"]),
                    illustration_id=illustration_key(self.game, r["name"], r.get("artist")),
                    facts={k: r[k] for k in _FACT_KEYS if k in r},
                ))
            except (KeyError, TypeError, ValueError, ValidationError) as exc:
                raise CatalogError(path, rid, f"bad card record: {exc!s}") from exc
        return out
