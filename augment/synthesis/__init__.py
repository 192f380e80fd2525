"""Synthesis: the per-class plan, label-map edits, generation from label maps and its evaluation, and insertion into
real scenes (placement, insertion plan, compositing, GAN painting, the scene/paste/insert fillers)."""
