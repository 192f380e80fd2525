"""Training loops (GAN, segmenter) on Ray Train, checkpoints, metrics and evaluation."""
