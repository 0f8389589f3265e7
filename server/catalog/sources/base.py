"""The catalog-source plugin interface and the game-neutral records every source yields."""

from __future__ import annotations

import abc
import hashlib
import re
import unicodedata
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class CatalogError(ValueError):
    """A catalog file or record is broken. The message names the file and the record."""

    def __init__(self, file: str | Path, record: str | int | None, message: str):
        where = f"{file}" + (f" record {record}" if record is not None else "")
        super().__init__(f"{where}: {message}")
        self.file = str(file)
        self.record = record


class SetRecord(BaseModel):
    """One expansion/set."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(description="Set id as in the source, e.g. 'sv1'.")
    game: str = Field(description="Game the set belongs to, e.g. 'pokemon'.")
    name: str = Field(description="Set name.")
    series: str = Field("", description="Series / block.")
    printed_total: int | None = Field(None, description="Total printed on the cards ('…/198').")
    total: int | None = Field(None, description="Cards in the set including secrets.")
    release_date: date | None = Field(None, description="Release date.")
    code: str | None = Field(None, description="Short code (e.g. PTCGO code).")
    symbol_url: str | None = Field(None, description="Set symbol image URL.")
    logo_url: str | None = Field(None, description="Set logo image URL.")


class CardRecord(BaseModel):
    """One card = one printing. ``facts`` keeps the game-specific details (attacks, rules…)."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(description="Printing id as in the source, e.g. 'sv1-11'.")
    game: str = Field(description="Game, e.g. 'pokemon'.")
    set_id: str = Field(description="Set id.")
    name: str = Field(description="Card name.")
    number: str = Field(description="Collector number as printed ('11', 'TG05', 'SV107').")
    printed_total: int | None = Field(None, description="Printed set total for '011/198'.")
    rarity: str | None = Field(None, description="Rarity.")
    supertype: str | None = Field(None, description="Pokémon / Trainer / Energy (or the game's equivalent).")
    subtypes: list[str] = Field(default_factory=list, description="Stage, ex, Item…")
    types: list[str] = Field(default_factory=list, description="Energy types / colours.")
    hp: int | None = Field(None, description="Hit points.")
    artist: str | None = Field(None, description="Illustrator.")
    national_dex: list[int] = Field(default_factory=list, description="National Pokédex numbers.")
    image_url_small: str | None = Field(None, description="Source small image URL.")
    image_url_large: str | None = Field(None, description="Source large image URL.")
    image_path: str | None = Field(None, description="Local image file, when one exists.")
    illustration_id: str = Field(description="Key shared by reprints of the same artwork.")
    facts: dict[str, Any] = Field(default_factory=dict, description="Game-specific details used by the renderer.")


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def illustration_key(game: str, name: str, artist: str | None) -> str:
    """Reprints of one artwork share name and artist in the data; that pair keys the illustration."""
    digest = hashlib.sha1(f"{game}|{_norm(name)}|{_norm(artist or '')}".encode()).hexdigest()
    return f"{game}-ill-{digest[:12]}"


class CatalogSource(abc.ABC):
    """A provider of sets and printings. Subclass per game/data source and register in ``SOURCES``."""

    #: Registry key, e.g. 'pokemon-tcg-data'.
    name: str = ""
    #: Game id written on every record.
    game: str = ""

    @abc.abstractmethod
    def sets(self) -> list[SetRecord]:
        """All sets, in release order."""

    @abc.abstractmethod
    def cards(self, set_id: str) -> list[CardRecord]:
        """All printings of one set. Raise ``CatalogError`` naming file and record on bad data."""

    def iter_cards(self) -> Iterator[CardRecord]:
        for s in self.sets():
            yield from self.cards(s.id)

    def version(self) -> str:
        """A content hash of the source, so bundles and indexes know which catalog they were built from."""
        h = hashlib.sha256()
        for f in sorted(self.files()):
            h.update(f.name.encode())
            h.update(f.read_bytes())
        return h.hexdigest()[:16]

    def files(self) -> list[Path]:
        """Files the catalog is read from (for ``version``)."""
        return []
