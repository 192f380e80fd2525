"""Synthesis: the per-class plan, label-map edits, generation from label maps and its evaluation, and insertion into
real scenes (placement, insertion plan, compositing, GAN painting, the scene/paste/insert fillers)."""

SYNTHESIS_MODES = ("scene", "paste", "insert")
"""A job's `synthesis.mode` values (schemas/job-v2.schema.json); here so the CLI lists them without importing torch."""

MODE_WORDS = {
    "scene": "whole images generated from edited label maps",
    "paste": "real objects copied into other real images (copy-paste)",
    "insert": "objects painted into real images by a crop-mode generator (a guided one repaints real objects)",
}
"""What each synthesis mode makes, in words (reports)."""


def job_synthesis_mode(job: dict | None) -> str:
    """The synthesis mode of a job document (as a synthetic dataset's card keeps it): its `synthesis.mode`, "scene"
    for a version 1 document (no synthesis block), "unknown" without a document."""
    if not job:
        return "unknown"
    return str((job.get("synthesis") or {}).get("mode", "scene"))
