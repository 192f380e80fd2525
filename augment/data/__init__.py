"""Data in and out: schemas, codecs, the Parquet dataset format, ingest of external layouts, example data."""
