"""Quality filtering of synthetic samples by segmenter agreement: whole images (`quality`), and inserted objects'
regions plus FreeMask's pixel rule (`region`)."""
