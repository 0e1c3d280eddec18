"""compass: data-first multilingual e-commerce embedding models for Southeast Asia."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `compass.run(catalog, stage, config)` without importing duckdb/polars on `import compass`.
    if name in ("run", "RunSummary"):
        from compass import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'compass' has no attribute {name!r}")
