"""Models: the OASIS-style label-map-conditioned GAN (with its crop-mode context input), the torchvision segmenters,
and the model store (`store`: cards, checkpoints, load_generator, load_segmenter)."""
