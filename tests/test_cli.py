"""CLI conventions: --version, help text and defaults on every option, the output options (--quiet, --verbose,
--log-file), Ray's own logs kept out of the terminal, worker lines relayed, honest ETAs and epoch counters."""

from __future__ import annotations

import argparse
import re

import pytest

from augment.cli import build_parser, main
from augment.cli.main import _HelpFormatter
from augment.core import console
from augment.core.progress import Eta
from helpers import make_dataset


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


# --- --version, help and defaults -------------------------------------------------------------------------------


def test_version(capsys):
    from augment import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"augment {__version__}"


def test_every_option_of_every_command_has_help_and_shows_its_default():
    parser = build_parser()
    formatter = _HelpFormatter("augment")
    missing, hidden = [], []
    for name, sub in {"": parser, **subcommands(parser)}.items():
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            label = f"augment {name} {'/'.join(action.option_strings) or action.dest}"
            if not (action.help or "").strip():
                missing.append(label)
            shown = action.option_strings and action.default not in (None, argparse.SUPPRESS) \
                and not isinstance(action.default, bool)
            if shown and "default" not in formatter._get_help_string(action):
                hidden.append(label)
    assert not missing, "options without help: " + ", ".join(missing)
    assert not hidden, "defaults not shown: " + ", ".join(hidden)


@pytest.mark.parametrize("command, expected", [
    ("train-gan", r"--steps STEPS\s+optimizer steps.*\(default: 2000\)"),
    ("train-gan", r"--seed SEED\s+seed of data order.*\(default: 0\)"),
    ("train-seg", r"--epochs EPOCHS\s+passes over.*\(default: 30\)"),
    ("train-seg", r"--model NAME\s+torchvision segmenter: lraspp_mobilenet_v3_large, deeplabv3_mobilenet_v3_large"),
    ("example-data", r"--size HxW\s+image size \(default: 128x128\)"),
    ("evaluate", r"--batch BATCH\s+images per forward pass \(default: 8\)"),
    ("run", r"--address ADDRESS\s+Ray cluster address"),
    ("info", r"dataset\s+dataset folder or URI"),
])
def test_help_texts(command, expected):
    text = " ".join(subcommands(build_parser())[command].format_help().split())
    assert re.search(expected, text), text


def test_segmenter_names_need_no_torch_and_are_torchvisions():
    import torchvision.models.segmentation as tvseg

    from augment.models import SEGMENTERS

    assert all(callable(getattr(tvseg, name, None)) for name in SEGMENTERS)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train-seg", "--data", "d", "--out", "o", "--model", "unet"])


def test_output_options_before_or_after_the_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parse = build_parser().parse_args
    assert parse(["--quiet", "info", "d"]).quiet and parse(["info", "d", "-q"]).quiet
    assert not parse(["info", "d"]).quiet and not parse(["info", "d"]).verbose
    assert parse(["-v", "info", "d"]).verbose and parse(["info", "d", "--verbose"]).verbose
    assert parse(["info", "d", "--log-file", "logs/a.log"]).log_file == str(tmp_path / "logs" / "a.log")
    assert parse(["--log-file", "a.log", "info", "d"]).log_file == str(tmp_path / "a.log")
    with pytest.raises(SystemExit) as exit_info:
        main(["-q", "info", "d", "-v"])
    assert exit_info.value.code == 2


# --- --quiet and --log-file -------------------------------------------------------------------------------------


def test_quiet_prints_only_the_summary_and_the_log_file_gets_everything_appended(tmp_path, capsys):
    data = make_dataset(tmp_path / "d", 4, (16, 16))
    log = tmp_path / "augment.log"
    assert main(["verify", data, "--log-file", str(log)]) == 0
    loud = capsys.readouterr().out.splitlines()
    assert any(line.startswith("  ok: ") for line in loud) and loud[-1].endswith(f"{data} is sound "
                                                                                 f"({len(loud) - 2} checks)")
    assert main(["--quiet", "verify", data, "--log-file", str(log)]) == 0
    assert capsys.readouterr().out.splitlines() == loud[-1:]  # only the summary
    assert main(["verify", str(tmp_path / "nowhere"), "-q", "--log-file", str(log)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("augment verify: error: ") and "nowhere" in captured.err
    text = log.read_text().splitlines()
    headers = [i for i, line in enumerate(text) if line.startswith("--- augment ")]
    assert len(headers) == 3 and text[headers[0] + 1:headers[1]] == loud  # the quiet run logged it all too
    assert text[headers[1] + 1:headers[2]] == loud
    assert text[headers[2] + 1:] == [captured.err.strip()]


def test_log_file_that_cannot_be_written_is_one_line(tmp_path, capsys):
    assert main(["verify", str(tmp_path), "--log-file", str(tmp_path / "no" / "such" / "dir.log")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot append to it" in err[0]


def test_session_restores_the_streams_and_summary_outside_one_prints(capsys):
    import sys

    before = sys.stdout, sys.stderr
    with console.session("augment x", quiet=True):
        print("hidden")
        console.summary("shown")
        assert console.quiet() and not console.verbose()
    assert (sys.stdout, sys.stderr) == before and not console.quiet()
    console.summary("plain")
    assert capsys.readouterr().out == "shown\nplain\n"


# --- Ray's logs and the workers' lines ----------------------------------------------------------------------------


def test_ray_forwards_its_logs_only_when_verbose(monkeypatch):
    import ray

    from augment.core import cluster

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cluster.init_ray()
    with console.session("augment x", verbose=True):
        cluster.init_ray()
    assert [(c["log_to_driver"], c["configure_logging"]) for c in calls] == [(False, False), (True, True)]


def test_worker_lines_reach_the_driver_in_order(ray_session, capsys):
    import ray

    from augment.core.cluster import relayed_lines, with_line_sink
    from augment.training.distributed import say

    def speak(n: int) -> int:
        for i in range(n):
            say(f"line {i}")
        return n

    @ray.remote
    def worker(sink, n):
        return with_line_sink(speak, sink)(n)

    with relayed_lines() as sink:
        assert ray.get(worker.remote(sink, 5)) == 5
    assert capsys.readouterr().out.splitlines() == [f"line {i}" for i in range(5)]


# --- honest progress ----------------------------------------------------------------------------------------------


def test_eta_is_estimating_until_units_after_the_first_are_timed():
    eta = Eta(total=100, min_timed=3)
    assert eta.text(0, 0.0) == "ETA estimating"
    eta.update(1, 3600.0)  # the first unit took an hour of start-up
    assert eta.text(3, 3602.0) == "ETA estimating"
    assert eta.text(4, 3603.0) == "ETA 1m36s"  # 1 s per unit after the first: 96 left
    assert eta.text(100, 3700.0) == "ETA 0m00s"


def test_training_progress_times_from_the_first_step(monkeypatch):
    from augment.training import distributed as dist_utils

    now = [1200.0]
    monkeypatch.setattr(dist_utils.time, "monotonic", lambda: now[0])
    p = dist_utils.Progress(20, every_steps=1, every_seconds=1e9, prefix="[t]", stream=_Lines())
    assert p.update(1, 4) == "[t] step 1/20 | ETA estimating"  # 20 min of start-up: no rate, no ETA from it
    for step in range(2, 7):
        now[0] += 1.0
        line = p.update(step, 4)
    assert line == "[t] step 6/20 | 4.0 img/s | ETA 0m14s"  # 5 steps timed, 1 s each, 14 left


def test_job_progress_gives_no_eta_before_one_round_of_shards(monkeypatch):
    from augment.runner import pool
    from augment.runner.markers import ShardStats

    now = [0.0]
    monkeypatch.setattr(pool.time, "perf_counter", lambda: now[0])
    progress = pool.Progress(total_shards=10, done_shards=0, total_samples=40, done_samples=0)
    progress.set_workers(2)
    stats = ShardStats(0, "f", "x", 4, 4, {"a": 4}, {}, [], [], {}, 1.0)
    now[0] = 300.0
    progress.update(stats, 4)  # the first shard, after 5 minutes of start-up
    progress.update(stats, 4)  # the other worker's, at the same moment
    assert progress.line().endswith("ETA estimating")
    now[0] = 310.0
    progress.update(stats, 4)  # one round after the first
    assert progress.line().endswith("ETA 0m35s")  # 2 shards in 10 s, 7 left


class _Lines:
    def __init__(self):
        self.lines = []

    def write(self, text):
        self.lines.append(text)

    def flush(self):
        pass


def test_epoch_counter_ends_at_n_of_n_when_the_step_budget_ends_the_run():
    from augment.training.segmenter import epochs_planned

    assert epochs_planned(7, 60, 10) == 6  # retrain's augmented run: 6 epochs hold its 60 steps, 7 allowed
    assert epochs_planned(30, 300, 10) == 30 and epochs_planned(30, 295, 10) == 30
    assert epochs_planned(5, 3, 10) == 1
