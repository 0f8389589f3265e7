"""Catalog sources: one class per game/data provider behind ``CatalogSource``.

This package depends on pydantic only, so offline tooling (``models/``) can read a catalog
without the server's web/database stack.
"""

from server.catalog.sources.base import CardRecord, CatalogError, CatalogSource, SetRecord, illustration_key
from server.catalog.sources.pokemon_tcg import PokemonTCGSource

SOURCES: dict[str, type[CatalogSource]] = {PokemonTCGSource.name: PokemonTCGSource}

__all__ = ["CardRecord", "CatalogError", "CatalogSource", "SetRecord", "SOURCES", "PokemonTCGSource", "illustration_key"]
