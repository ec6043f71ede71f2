"""The real-time accuracy table of docs/speed.md (*Accuracy under a real clock*).

For each labelled set (robot, low_light, wide_angle, Kubric-lite, real warps; the splits of
docs/training.md) it runs `bootstap-eval` clock-free (Lucas-Kanade, the network) and against
this machine's clock at FPS (`--realtime`: Lucas-Kanade, the network alone, the network with
propagation), one job at a time so that each has the machine to itself, and writes
OUT/table.md and OUT/results.json. Sets are generated on first use; a finished job is skipped
when its output exists, so an interrupted run continues.

    python tools/realtime_table.py --out outputs/realtime [--split test] [--fps 30] [--points 64] [--checkpoint PATH]

One OUT per model: finished jobs are not run again, whatever the model.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

SEEDS = {"val": 1000, "test": 0}  # docs/training.md: validation for tuning, test reported once
SETS = {
    "robot": ["bootstap_ros_training.domains.robot_domain", "labeled"],
    "low_light": ["bootstap_ros_training.domains.shifted_domains", "labeled", "--domain", "low_light"],
    "wide_angle": ["bootstap_ros_training.domains.shifted_domains", "labeled", "--domain", "wide_angle"],
    "kubric": ["bootstap_ros_training.domains.synthetic"],
    "real_warps": ["bootstap_ros_training.domains.real_warps"],
}
LABELLED = ("robot", "low_light", "wide_angle")  # these take --frames and --num-points
#: (name, bootstap-eval flags): clock-free first, then real time.
RUNS = (
    ("lk_free", ["--tracker", "lk"]),
    ("network_free", []),
    ("lk_rt", ["--tracker", "lk", "--realtime", "{fps}"]),
    ("network_rt", ["--realtime", "{fps}", "--propagation", "none"]),
    ("propagated_rt", ["--realtime", "{fps}", "--propagation", "lk"]),
)


def run(command, log: Path) -> None:
    with open(log, "w") as out:
        status = subprocess.run([str(c) for c in command], stdout=out, stderr=subprocess.STDOUT).returncode
    if status:
        raise SystemExit(f"failed ({status}): {' '.join(map(str, command))}; see {log}")


def make_set(args, name: str, path: Path) -> None:
    if path.exists():
        return
    module, *rest = SETS[name]
    command = [args.python, "-m", module, *rest, "--out", path, "--num-clips", args.clips, "--seed", SEEDS[args.split]]
    if name in LABELLED:
        command += ["--frames", 24, "--num-points", 64]
    print(f"writing {path.name}", flush=True)
    run(command, path.with_suffix(".log"))


def eval_command(args, dataset: Path, name: str, flags, target: Path) -> list:
    """The bootstap-eval command of job `name` (one of RUNS) on `dataset`."""
    command = [args.python, "-m", "bootstap_ros.eval.cli", dataset, "--output", target, "--device", "cpu",
               "--max-points", args.points, "--precision", args.precision, "--backend", args.backend,
               *[f.format(fps=args.fps) for f in flags]]
    if args.checkpoint and not name.startswith("lk_"):  # Lucas-Kanade has no model
        command += ["--checkpoint", args.checkpoint]
    return command


def evaluate(args, dataset: Path, name: str, flags, target: Path) -> dict:
    if not target.exists():
        print(f"{dataset.stem}: {name}", flush=True)
        run(eval_command(args, dataset, name, flags, target), target.with_suffix(".log"))
    return json.loads(target.read_text())


def pct(value) -> str:
    return "" if value is None or value != value else f"{100 * value:.1f}"


def table(results: dict, args) -> str:
    lines = [
        f"Real-time replay at {args.fps:g} FPS, {args.points} points, first-frame queries, {args.split} split "
        f"({args.clips} clips a set), model {args.checkpoint or 'the embedded default'}, precision "
        f"{args.precision}, backend {args.backend}. AJ / OA of what a "
        "subscriber holds when the next frame arrives; clock-free: every frame given, however long it takes.",
        "",
        "| set | LK clock-free AJ | network clock-free AJ | LK real-time AJ (OA) | network alone real-time AJ (OA) "
        "| propagated real-time AJ (OA) | propagated - LK | propagated - network alone | propagated: answers at "
        "their own frames AJ | frames answered LK / network / propagated | latency p50 / p95 ms: network / "
        "propagated |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, runs in results.items():
        lk, net, prop = runs["lk_rt"], runs["network_rt"], runs["propagated_rt"]
        lines.append(
            f"| {name} | {pct(runs['lk_free']['average_jaccard'])} | {pct(runs['network_free']['average_jaccard'])} "
            f"| {pct(lk['average_jaccard'])} ({pct(lk['occlusion_accuracy'])}) "
            f"| {pct(net['average_jaccard'])} ({pct(net['occlusion_accuracy'])}) "
            f"| {pct(prop['average_jaccard'])} ({pct(prop['occlusion_accuracy'])}) "
            f"| {100 * (prop['average_jaccard'] - lk['average_jaccard']):+.1f} "
            f"| {100 * (prop['average_jaccard'] - net['average_jaccard']):+.1f} "
            f"| {pct(prop['matched_average_jaccard'])} "
            f"| {pct(lk['frames_answered'])} / {pct(net['frames_answered'])} / {pct(prop['frames_answered'])}% "
            f"| {net['latency_p50_ms']:.0f} / {net['latency_p95_ms']:.0f}; "
            f"{prop['latency_p50_ms']:.1f} / {prop['latency_p95_ms']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--split", choices=tuple(SEEDS), default="test")
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated, of: " + ", ".join(SETS))
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--points", type=int, default=64)
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--checkpoint", default=None, help="the model (default: the embedded one)")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args(argv)
    sets = [s for s in args.sets.split(",") if s]
    unknown = set(sets) - set(SETS)
    if unknown:
        parser.error(f"unknown sets: {sorted(unknown)}")
    data, runs = args.out / "data", args.out / "eval"
    data.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in sets:
        dataset = data / f"{name}_{args.split}.pkl"
        make_set(args, name, dataset)
        results[name] = {run_name: evaluate(args, dataset, run_name, flags, runs / f"{name}_{run_name}.json")
                         for run_name, flags in RUNS}
    text = table(results, args)
    machine = f"{platform.machine()}, {platform.processor() or platform.platform()}, Python {platform.python_version()}"
    (args.out / "table.md").write_text(f"{text}\nMeasured {datetime.date.today()} on {machine}.\n")
    (args.out / "results.json").write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                                       "results": results}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
