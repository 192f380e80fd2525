"""Synthesis: the per-class plan, label-map edits and generation of images from label maps."""
