"""Which synthesis mode earns its keep at the demo's budget: `augment demo` per mode and seed, side by side.

    python3 benchmarks/demo_modes.py --out /tmp/x/modes --seeds 0,1,2 [--modes scene,paste,insert]
        [--size 48x64 --steps 150 --n 96] [--json /tmp/x/modes.json]

Every (mode, seed) is a whole demo in OUT/<mode>-s<seed> (its own data, baseline, generator, job and retrain, all
from that seed): each change is augmented minus baseline of one demo. The modes of one seed make the same data and
train the same baseline recipe from the same seed (each demo trains its own: the baselines agree as far as CPU
training repeats itself, which report.json's baseline mIoU shows). Per mode it prints the mean change in
mIoU and in the targeted classes' mean IoU over the seeds with the 95% Student-t interval (augment.report.stats),
"within noise" when the interval holds 0, and the filter's acceptance; --json keeps every per-seed figure.
Resumable: a finished demo folder (its report.json) is read back, a half-done one is resumed.
Run it alone on the machine: the demos are timed too, and shared cores make those times worthless.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from augment.pipelines.demo import DEFAULT_N, DEFAULT_SIZE, DEFAULT_STEPS, DEMO_FILE, DemoSettings  # noqa: E402
from augment.report.stats import paired_difference  # noqa: E402
from augment.synthesis import SYNTHESIS_MODES  # noqa: E402

REPORT = os.path.join("retrain", "report.json")


def _size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def one_demo(out: str, settings: DemoSettings) -> dict:
    """The figures of the demo in `out` with `settings`, running (or resuming) it unless it is finished."""
    from augment.pipelines.demo import run_demo

    path = os.path.join(out, REPORT)
    marker = os.path.join(out, DEMO_FILE)
    if os.path.isfile(marker):
        with open(marker) as f:
            if json.load(f) != settings.to_json():
                raise SystemExit(f"demo_modes: {out} holds a demo with other settings; use another --out")
    if not os.path.isfile(path):
        run_demo(out, settings, resume=os.path.isdir(out))
    with open(path) as f:
        report = json.load(f)
    with open(os.path.join(out, "timings.json")) as f:
        timings = json.load(f)
    with open(os.path.join(out, "synthetic", "_summary.json")) as f:
        summary = json.load(f)
    return {"miou": report["miou"]["delta"], "targeted": report["targeted"]["mean_delta"],
            "baseline_miou": report["miou"]["baseline"], "accepted": summary["accepted"],
            "generated": summary["accepted"] + summary["rejected"], "wall_s": timings["total_s"]}


def table(results: dict[str, dict[int, dict]], seeds: list[int]) -> list[str]:
    """The printed comparison: one row per mode (points; interval over the seeds, paired against 0 = no change)."""
    lines = [f"{'mode':<7} {'mIoU change (95% CI)':<32} {'targeted change (95% CI)':<32} {'accepted':>10} "
             f"{'demo s':>7}"]
    for mode, per_seed in results.items():
        cells = []
        for key in ("miou", "targeted"):
            d = paired_difference([per_seed[s][key] for s in seeds], [0.0] * len(seeds), seeds)
            if d.mean is None:
                cells.append("-")
                continue
            noise = {True: "within noise", False: "beyond noise", None: "one seed"}[d.within_noise]
            interval = f" [{d.low * 100:+.2f}, {d.high * 100:+.2f}]" if d.low is not None else ""
            cells.append(f"{d.mean * 100:+.2f}{interval} {noise}")
        accepted = sum(per_seed[s]["accepted"] for s in seeds)
        generated = sum(per_seed[s]["generated"] for s in seeds)
        wall = sum(per_seed[s]["wall_s"] for s in seeds) / len(seeds)
        lines.append(f"{mode:<7} {cells[0]:<32} {cells[1]:<32} {f'{accepted}/{generated}':>10} {wall:>7.0f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--modes", default=",".join(SYNTHESIS_MODES))
    parser.add_argument("--size", type=_size, default=DEFAULT_SIZE)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--n", type=int, default=DEFAULT_N)
    parser.add_argument("--json", help="write every per-seed figure here")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    modes = args.modes.split(",")
    bad = [m for m in modes if m not in SYNTHESIS_MODES]
    if bad:
        parser.error(f"unknown mode(s) {', '.join(bad)}; choose from {', '.join(SYNTHESIS_MODES)}")
    start, load = time.monotonic(), os.getloadavg()[0]
    results: dict[str, dict[int, dict]] = {m: {} for m in modes}
    for seed in seeds:
        for mode in modes:
            settings = DemoSettings(size=args.size, steps=args.steps, n=args.n, seed=seed, mode=mode)
            results[mode][seed] = one_demo(os.path.join(args.out, f"{mode}-s{seed}"), settings)
            print(f"demo_modes: {mode} seed {seed}: {results[mode][seed]}", flush=True)
    lines = table(results, seeds)
    print("\n".join(["", f"demo at {args.size[0]}x{args.size[1]}, {args.steps} steps, n {args.n}, seeds "
                     f"{args.seeds}; changes in points, augmented - baseline, paired by seed", *lines,
                     f"wall {time.monotonic() - start:.0f} s, load average {load:.2f} before, {os.getloadavg()[0]:.2f} after"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": {"size": list(args.size), "steps": args.steps, "n": args.n, "seeds": seeds},
                       "results": {m: {str(s): v for s, v in r.items()} for m, r in results.items()},
                       "table": lines}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
