"""The README's worked CamVid example, run as written: its commands are read out of README.md (the `### A worked
example on CamVid` block and the sequence-disjoint block below it) and its job file out of the `## Augmentation
jobs` block, and run in order from a fresh working folder whose `../shared/data/camvid` is a tiny CamVid-layout
tree this test writes. Only sizes change, by SHRINK (option -> value, whatever the README gives) and JOB_SHRINK (the
job file's keys); every other word runs as the README has it, relative paths included. So the test fails when the
README's commands stop working as written."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from augment.cli import main
from augment.data.formats import camvid
from augment.data.layout import INFO_FILE
from augment.models.store import CARD_FILE
from conftest import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
SIZE = (24, 32)
SHRINK = {"--size": f"{SIZE[0]}x{SIZE[1]}", "--epochs": "1", "--steps": "2"}
"""Option -> the value the test gives it instead of the README's: a CPU-sized run of a few seconds per training."""
JOB_SHRINK = {
    "classes": {"pedestrian": 3, "bicyclist": 3},
    "filter": {"min_miou": 0.0, "min_target_iou": 0.0},  # the models trained for seconds agree with little
    "resources": {"workers": 1, "batch_size": 4},
}
"""Job-file keys the test replaces (sizes, and thresholds that seconds-old models can pass); the rest is the README's."""
FRAMES = {"train": {"0006R0": 4, "0016E5": 5, "0001TP": 3}, "val": {"0016E5": 3}}
"""Frames per split and sequence in the fixture (the README's --match patterns pick sequences)."""


def readme_blocks(text: str, heading: str, fence: str) -> list[str]:
    """The ```fence blocks of the README section under `heading`, up to the next heading of its level or above."""
    level = heading.split()[0]
    start = text.index(heading + "\n")
    nxt = re.search(rf"^#{{1,{len(level)}}} ", text[start + len(heading):], flags=re.M)
    section = text[start: start + len(heading) + (nxt.start() if nxt else len(text))]
    return re.findall(rf"^```{fence}\n(.*?)^```", section, flags=re.M | re.S)


def readme_commands(text: str) -> list[list[str]]:
    """The `augment ...` command lines of the worked example's two bash blocks, as argv lists (comments dropped)."""
    blocks = readme_blocks(text, "### A worked example on CamVid", "bash")
    assert len(blocks) == 2, "the worked example has its commands and the sequence-disjoint block"
    commands = [shlex.split(line, comments=True) for block in blocks for line in block.splitlines() if line.strip()]
    assert all(words[0] == "augment" for words in commands), commands
    return [words[1:] for words in commands]


def shrink(argv: list[str]) -> list[str]:
    return [SHRINK[argv[i - 1]] if i and argv[i - 1] in SHRINK else word for i, word in enumerate(argv)]


def readme_job(text: str, comment: str) -> dict:
    """The README's job file (the first yaml block of `## Augmentation jobs`), checked against what the `augment run`
    line's comment says it holds (`data: camvid-train, generator: runs/gan, ...`)."""
    job = yaml.safe_load(readme_blocks(text, "## Augmentation jobs", "yaml")[0])
    said = dict(item.split(": ") for item in comment.split(", "))
    assert {k: job[k] for k in said} == said, "the run line's comment and the job block disagree"
    return {**job, **JOB_SHRINK}


def write_camvid(root: Path) -> None:
    """SegNet's CamVid layout with list files: frames of FRAMES, every one holding road, a car, a pedestrian and a
    bicyclist (label maps with CamVid's indices, a void border) and an image coloured by CamVid's palette."""
    rng = np.random.default_rng(0)
    h, w = SIZE
    index = {name: i for i, name in enumerate(camvid.CLASSES)}
    for split, sequences in FRAMES.items():
        lines = []
        for sequence, count in sequences.items():
            for k in range(count):
                mask = np.full((h, w), index["road"], np.uint8)
                mask[: h // 3] = index["sky"]
                for name, width in (("car", 8), ("pedestrian", 4), ("bicyclist", 5)):
                    x = int(rng.integers(0, w - width))
                    mask[h // 3: h - 2, x: x + width] = index[name]
                mask[0] = camvid.UNLABELLED
                image = np.array(camvid.PALETTE + [[0, 0, 0]], np.int16)[mask] + rng.integers(-20, 21, (h, w, 3))
                name = f"{sequence}_{split}{k:03d}.png"
                for folder, array in ((split, np.clip(image, 0, 255).astype(np.uint8)), (f"{split}annot", mask)):
                    (root / folder).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(array).save(root / folder / name)
                lines.append(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")


def epoch_lines(out: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in re.findall(r"^\[train-seg\] epoch (\d+)/(\d+) done", out, flags=re.M)]


def test_readme_worked_example_runs_as_written(tmp_path, monkeypatch, capsys, ray_session):
    text = README.read_text()
    commands = readme_commands(text)
    work = tmp_path / "work"
    work.mkdir()
    write_camvid(tmp_path / "shared" / "data" / "camvid")
    monkeypatch.chdir(work)  # a fresh folder: every path below is the README's own, relative to it
    run_line = next(line for line in text.splitlines() if line.startswith("augment run job.yaml"))
    (work / "job.yaml").write_text(yaml.safe_dump(readme_job(text, run_line.split("#", 1)[1].strip())))

    for argv in commands:
        rc = main(shrink(argv))
        out = capsys.readouterr()
        assert rc == 0, f"augment {shlex.join(argv)} exited {rc}: {out.err.strip()[-2000:]}"
        if argv[0] == "train-seg":
            assert epoch_lines(out.out) == [(1, 1)], out.out
        if argv[0] == "retrain":  # the augmented run's counter ends at its last epoch, whatever the step budget
            last, of = epoch_lines(out.out)[-1]
            assert last == of, out.out

    for folder in ("camvid-train", "camvid-val", "camvid-train-disjoint", "camvid-eval-0001TP", "synth"):
        assert (work / folder / INFO_FILE).is_file(), folder
    for run in ("runs/seg", "runs/gan", "runs/seg-disjoint", "runs/retrain/augmented"):
        assert (work / run / CARD_FILE).is_file(), run
    assert (work / "runs" / "retrain" / "report.md").is_file()  # what the README says to look at next
    # relative paths mean the driver's folders on the workers too, and are recorded absolute
    card = json.loads((work / "runs/seg" / CARD_FILE).read_text())
    assert card["dataset"]["val"]["uri"] == str(work / "camvid-val")
    report = json.loads((work / "runs/retrain/report.json").read_text())
    assert report["runs"]["baseline"]["run"] == str(work / "runs/seg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared", "work"]  # nothing written beside the folder


@pytest.mark.parametrize("argv, expected", [
    (["train-gan", "--steps", "20000", "--l1"], ["train-gan", "--steps", "2", "--l1"]),
    (["ingest", "x", "--size", "192x256", "--out", "y"], ["ingest", "x", "--size", "24x32", "--out", "y"]),
])
def test_shrink_changes_only_sizes(argv, expected):
    assert shrink(argv) == expected
