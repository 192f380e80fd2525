"""The `augment retrain` report's rendering: the page (report.md, report.html), the per-class IoU chart and the
summary table printed at the end, all from the report's JSON content (see augment.pipelines.retrain, which trains,
evaluates and writes them)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any

from augment.report.figures import iou_bar_chart
from augment.report.page import Page, pct
from augment.synthesis import MODE_WORDS, job_synthesis_mode

FIGURES_DIR = "figures"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"


def iou_chart_png(report: dict[str, Any]) -> bytes:
    rows = report["per_class"]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "iou.png")
        iou_bar_chart(
            [r["class"] for r in rows],
            {"baseline (real only)": [_nan(r["baseline"]) for r in rows],
             f"augmented ({report['mix']['ratio']:.0%} synthetic)": [_nan(r["augmented"]) for r in rows]},
            path, title=f"Per-class IoU on {os.path.basename(report['val']['uri'].rstrip('/'))} (targeted in bold)",
            highlight=report["targeted"]["classes"],
        )
        with open(path, "rb") as f:
            return f.read()


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def synthesis_modes(report: dict[str, Any]) -> list[str]:
    """The synthesis modes of the report's synthetic datasets, each once, in their order."""
    modes = [s.get("synthesis_mode") or job_synthesis_mode(s.get("job")) for s in report["lineage"]["synthetic"]]
    return list(dict.fromkeys(modes))


def _change(delta: float | None) -> str:
    if delta is None or math.isnan(delta):
        return "not measurable"
    said = pct(delta, signed=True)
    shown = float(said)  # call it as printed: +0.00 is no change
    return f"{said} points ({'a gain' if shown > 0 else 'a loss' if shown < 0 else 'no change'})"


def verdict(report: dict[str, Any]) -> str:
    """What the synthetic data bought, in one plain sentence: the synthesis mode, the mIoU and targeted-class mean
    IoU changes, each called a gain or a loss, and that one seed cannot tell either from noise."""
    return (f"Synthesis mode {' + '.join(synthesis_modes(report)) or 'none'}: mIoU {_change(report['miou']['delta'])}, "
            f"targeted classes' mean IoU {_change(report['targeted']['mean_delta'])}. One seed: a change this size "
            f"may be noise; jobs/experiment.py --seeds gives intervals.")


def _modes_in_words(report: dict[str, Any]) -> str:
    return "; ".join(f"mode {m}: {MODE_WORDS.get(m, 'not recorded')}" for m in synthesis_modes(report))


def report_page(report: dict[str, Any]) -> Page:
    miou, acc, mix = report["miou"], report["pixel_accuracy"], report["mix"]
    targeted = report["targeted"]
    page = Page("Retraining with synthetic data: per-class IoU before and after")
    page.paragraph(
        f"Validation data `{report['val']['uri']}` ({report['val']['rows']} rows). mIoU {pct(miou['baseline'])} -> "
        f"{pct(miou['augmented'])} ({pct(miou['delta'], signed=True)} points); pixel accuracy "
        f"{pct(acc['baseline'])} -> {pct(acc['augmented'])} ({pct(acc['delta'], signed=True)}). Targeted classes "
        f"({', '.join(targeted['classes']) or 'none'}): mean IoU change {pct(targeted['mean_delta'], signed=True)} "
        f"points."
    )
    page.paragraph(f"Verdict: {verdict(report)}")
    page.paragraph(
        f"Both runs: {report['recipe']['model']}, {mix['steps']} optimizer steps of {mix['batch_per_worker']} images "
        f"x {mix['workers']} worker(s) at {mix['size'][0]}x{mix['size'][1]}, seed {report['recipe']['seed']}"
        f"{' with deterministic algorithms' if report['recipe'].get('deterministic') else ''}, class "
        f"weights {mix.get('class_weights', 'none')}, {_start(report['recipe'].get('init'))}; the "
        f"augmented run took {mix['ratio']:.0%} of every batch from the synthetic data ({_modes_in_words(report)}). "
        f"Numbers are "
        f"`augment evaluate`'s (IoU in %, '-': class in neither masks nor predictions)."
    )
    page.paragraph(
        f"Each change is one paired difference: both runs share seed {report['recipe']['seed']} (initial weights, "
        "order and augmentations of the real data), so rerunning this command reproduces it, but one seed does not "
        "say how much of it another seed would keep. `augment retrain` trains one seed; for the per-seed "
        "differences, their mean and a 95% confidence interval run `jobs/experiment.py --seeds` (it marks a change "
        "whose interval contains 0 as within noise)."
    )
    rows = report["per_class"]
    page.heading("Per-class IoU")
    page.table(
        ["class", "baseline", "augmented", "change", "synthetic rows", "val pixels"],
        [[r["class"] + (" (targeted)" if r["targeted"] else ""), pct(r["baseline"]), pct(r["augmented"]),
          pct(r["delta"], signed=True), r["synthetic_accepted"], r["val_pixels"]] for r in rows]
        + [["mIoU", pct(miou["baseline"]), pct(miou["augmented"]), pct(miou["delta"], signed=True), "", ""],
           ["pixel accuracy", pct(acc["baseline"]), pct(acc["augmented"]), pct(acc["delta"], signed=True), "", ""]],
        bold_rows=[i for i, r in enumerate(rows) if r["targeted"]],
    )
    page.image(report["figures"]["iou"], "per-class IoU, baseline vs augmented")
    page.heading("Data mix")
    page.table(
        ["dataset", "role", "rows", "accepted rows", "share of each batch"],
        [[f"`{d['uri']}`", d["role"], d["rows"], d.get("accepted_rows", "-"), f"{d['share']:.1%}"]
         for d in mix["datasets"]],
    )
    synthetic = [d for d in mix["datasets"] if d["role"] == "synthetic"]
    classes = [r["class"] for r in rows if r["synthetic_accepted"]]
    page.table(["class"] + [f"accepted in `{d['uri']}`" for d in synthetic],
               [[c] + [d["accepted_per_class"].get(c, 0) for d in synthetic] for c in classes])
    page.heading("Synthetic samples used")
    page.image(report["figures"]["synthetic"], "accepted synthetic samples: image | label map")
    page.heading("Lineage")
    runs = report["runs"]
    items = [
        f"baseline `{runs['baseline']['run']}` (weights sha256 `{runs['baseline']['weights_sha256']}`, "
        f"{'trained by this retrain' if runs['baseline']['trained_here'] else 'given with --baseline'})",
        f"augmented `{runs['augmented']['run']}` (weights sha256 `{runs['augmented']['weights_sha256']}`)",
        f"real `{report['lineage']['real']['uri']}` (dataset info sha256 "
        f"`{report['lineage']['real']['dataset_json_sha256']}`)",
    ]
    for s in report["lineage"]["synthetic"]:
        lin = s["lineage"] or {}
        items.append(
            f"synthetic `{s['uri']}`: job fingerprint `{lin.get('job_fingerprint', '?')}`, generator "
            f"`{lin.get('generator', '?')}` (sha256 `{lin.get('generator_sha256', '?')}`), filter segmenter "
            f"`{lin.get('segmenter', '?')}` (sha256 `{lin.get('segmenter_sha256', '?')}`), source "
            f"`{lin.get('source', '?')}`" + ("" if s["derived_from_real"] else " (not --real)")
        )
        if s.get("job"):
            items.append(f"job file of `{s['uri']}`: `{json.dumps(s['job'], sort_keys=True)}`")
    page.bullets(items)
    if report["warnings"]:
        page.heading("Warnings")
        page.bullets(report["warnings"])
    return page


def format_summary(report: dict[str, Any]) -> str:
    """The per-class table printed at the end of `augment retrain` (IoU in %)."""
    rows = report["per_class"]
    width = max(len("pixel accuracy"), *(len(r["class"]) + 2 for r in rows))
    lines = [f"{'class':<{width}}  {'baseline':>8}  {'augmented':>9}  {'change':>7}"]
    for r in rows:
        name = r["class"] + (" *" if r["targeted"] else "")
        lines.append(f"{name:<{width}}  {pct(r['baseline']):>8}  {pct(r['augmented']):>9}  "
                     f"{pct(r['delta'], signed=True):>7}")
    for label, key in (("mIoU", "miou"), ("pixel accuracy", "pixel_accuracy")):
        m = report[key]
        lines.append(f"{label:<{width}}  {pct(m['baseline']):>8}  {pct(m['augmented']):>9}  "
                     f"{pct(m['delta'], signed=True):>7}")
    lines.append("* targeted by the augmentation job")
    return "\n".join(lines)


def _start(init: dict | None) -> str:
    """How both runs' weights started, in words (the card's model_config["init"])."""
    init = init or {"kind": "none"}
    if init["kind"] == "none":
        return "from scratch"
    what = {"imagenet": "the ImageNet backbone", "file": "the backbone file", "run": "the weights of run"}
    return f"starting from {what.get(init['kind'], init['kind'])} {init.get('source', '')} (sha256 {init.get('sha256', '')[:12]})"

