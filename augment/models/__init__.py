"""Models: the OASIS-style label-map-conditioned GAN (with its crop-mode context input), the torchvision segmenters,
and the model store (`store`: cards, checkpoints, load_generator, load_segmenter)."""

SEGMENTERS = ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50", "deeplabv3_resnet101",
              "fcn_resnet50", "fcn_resnet101")
"""The torchvision segmentation models train-seg builds (each a function of torchvision.models.segmentation of that
name: augment.models.segmenter); here so the CLI lists them without importing torch."""
