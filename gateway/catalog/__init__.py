"""Catalog snapshot of the upstream (relations, columns, views, functions) and name
resolution; classification tags from the policy bundle's data."""

from .classification import apply_tags, column_key, tags_for
from .loader import CATALOG_QUERIES, CATALOG_SQL, CatalogLoadError, build_catalog, read_catalog
from .model import (
    RELKINDS,
    TEMP_SCHEMA,
    Catalog,
    Relation,
    format_search_path,
    parse_search_path,
)

__all__ = [
    "CATALOG_QUERIES",
    "CATALOG_SQL",
    "RELKINDS",
    "TEMP_SCHEMA",
    "Catalog",
    "CatalogLoadError",
    "Relation",
    "apply_tags",
    "build_catalog",
    "column_key",
    "format_search_path",
    "parse_search_path",
    "read_catalog",
    "tags_for",
]
