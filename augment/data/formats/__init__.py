"""Readers of external dataset layouts (CamVid, Cityscapes, Pascal VOC, image/mask folders) for `augment ingest`."""
