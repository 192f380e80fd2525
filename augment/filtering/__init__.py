"""Quality filtering of synthetic samples by segmenter agreement with their label maps."""
