"""The DuckDB catalog: products, generations, examples, decisions, negatives, splits, runs."""

from compass.catalog.db import Catalog, catalog_path, init_catalog, migrations, registered, scrub

__all__ = ["Catalog", "catalog_path", "init_catalog", "migrations", "registered", "scrub"]
