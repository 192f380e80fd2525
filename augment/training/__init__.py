"""Training loops (GAN, segmenter) on Ray Train: seeded streams and transforms (crop-mode crops too), metrics,
evaluation, and a dataset as a torch Dataset for one's own loop (`data.SampleDataset`)."""

CLASS_WEIGHTS = ("none", "median-frequency")
"""Segmenter loss class weightings (`augment.training.segmenter.class_weights`); here so the CLI needs no torch."""
