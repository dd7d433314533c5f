"""Market data: the canonical daily-quotes schema, the parquet store, ingest, synthetic market."""
