"""Synthesis: the per-class plan, label-map edits, generation from label maps and its evaluation, and insertion into
real scenes (placement, insertion plan, compositing, GAN painting, the scene/paste/insert fillers)."""

SYNTHESIS_MODES = ("scene", "paste", "insert")
"""A job's `synthesis.mode` values (schemas/job-v2.schema.json); here so the CLI lists them without importing torch."""
