"""Data in and out: schemas, codecs, fs, the Parquet dataset format and its verification, ingest of external
layouts, example data, drawing (sheets, PNG) and objects in label maps (components, feathered masks)."""
