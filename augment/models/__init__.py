"""Models: the OASIS-style label-map-conditioned GAN and the torchvision segmenters."""
