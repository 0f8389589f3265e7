"""Scanemon server: catalog, ingest, resolver, collections API and web page, bundle distribution."""

__version__ = "0.1.0"
