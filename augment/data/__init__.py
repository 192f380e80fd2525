"""Data in and out: schemas, codecs, fs, the Parquet dataset format, the names of the files in a dataset folder
(`layout`) and its card (`card`), verification, ingest of external layouts, example data, drawing (sheets, PNG) and
objects in label maps (components, feathered masks)."""
