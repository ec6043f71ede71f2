"""The bootstrapping experiment in miniature, end to end (`make bootstrap-experiment`).

From the embedded default model (trained on Kubric-lite only):

1. data: labeled held-out clips of the robot domain (`training.robot_domain labeled`,
   seeds 0..), real-warp clips (`training.real_warps`), and the unlabeled robot logs as
   two rosbag2 bags (MCAP raw Image and SQLite3 JPEG CompressedImage; episodes from
   seed 2**30 on, so never a held-out clip), decoded once by `bootstap-prepare-logs`;
2. "before": `bootstap-eval` of the embedded model and of Lucas-Kanade on both sets;
3. four runs from the embedded model, the same number of steps each:
   `bootstrap` (bootstap-train-bootstrap on the bags), `no_affine` (affine=false),
   `siamese` (siamese=true), and `supervised` (training.train on the same synthetic
   clips, batch, learning rate and schedule as the bootstrapping runs' supervised task:
   the control);
4. "after": `bootstap-eval` of each final checkpoint on both sets;
5. `results.json` and `table.md` (AJ, <delta_avg, OA per set and model) in --out.

    python tools/bootstrap_experiment.py --out outputs/bootstrap_experiment --device cuda

Each job writes a log beside its output and is skipped when its output exists, so an
interrupted run continues where it stopped. With `--train-budget SECONDS` the four
runs first train a few calibration steps together and the step count becomes what fits
the budget (at most --steps). Evaluation runs on the CPU (as CI and the other figures of
docs/); training on --device.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
CPUS = os.cpu_count() or 1
DEFAULT_MODEL = ROOT / "bootstap_ros" / "data" / "default.pt"
RUNS = ("bootstrap", "no_affine", "siamese", "supervised")
SETS = ("robot", "real_warps")
ROWS = (("Lucas-Kanade (reference)", "before", "lk"), ("embedded model, before", "before", "embedded"),
        ("bootstrapped", "after", "bootstrap"), ("bootstrapped, no affine", "after", "no_affine"),
        ("bootstrapped, Siamese", "after", "siamese"), ("supervised only (control)", "after", "supervised"))
METRICS = ("average_jaccard", "average_pts_within_thresh", "occlusion_accuracy")


class Job:
    def __init__(self, name: str, command: Sequence[str], done: Path, log: Path, threads: int = 1):
        self.name, self.command, self.done, self.log, self.threads = name, list(map(str, command)), done, log, threads


def run_jobs(jobs: List[Job], parallel: int, timings: Dict[str, float]) -> List[str]:
    """Runs jobs, `parallel` at a time; skips those whose output exists. Returns the failed names."""
    env_base = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                "PYTHONUNBUFFERED": "1"}
    pending = [job for job in jobs if not job.done.exists()]
    for job in jobs:
        if job.done.exists():
            print(f"[skip] {job.name}: {job.done} exists", flush=True)
    running, failed = [], []
    while pending or running:
        while pending and len(running) < parallel:
            job = pending.pop(0)
            job.log.parent.mkdir(parents=True, exist_ok=True)
            env = {**env_base, "OMP_NUM_THREADS": str(job.threads), "MKL_NUM_THREADS": str(job.threads)}
            handle = open(job.log, "w")
            handle.write("$ " + " ".join(job.command) + "\n")
            handle.flush()
            print(f"[start] {job.name}", flush=True)
            process = subprocess.Popen(job.command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            running.append((job, process, handle, time.perf_counter()))
        time.sleep(0.5)
        for entry in list(running):
            job, process, handle, started = entry
            if process.poll() is None:
                continue
            running.remove(entry)
            handle.close()
            timings[job.name] = time.perf_counter() - started
            ok = process.returncode == 0 and job.done.exists()
            print(f"[{'done' if ok else 'FAILED'}] {job.name} in {timings[job.name]:.0f} s"
                  + ("" if ok else f" (exit {process.returncode}; log {job.log})"), flush=True)
            if not ok:
                failed.append(job.name)
                tail = job.log.read_text(errors="replace").splitlines()[-15:]
                print("\n".join("    " + line for line in tail), flush=True)
    return failed


def training_jobs(args, out: Path, steps: int, folder: str, extra_settings: Sequence[str] = ()) -> List[Job]:
    py = args.python
    bags = [out / "logs" / "robot_mcap", out / "logs" / "robot_sqlite_jpeg"]
    common = [f"clip_frames={args.frames}", f"cache={out / 'clips'}", f"num_workers={args.workers}",
              f"checkpoint_every={steps}", "eval_every=0", f"warmup={args.warmup}", f"lr={args.lr}",
              f"seed={args.seed}", *extra_settings]
    data = [flag for bag in bags for flag in ("--data", str(bag))]
    boot = [py, "-m", "training.bootstrap", *data, "--steps", steps, "--batch-size", args.batch_size,
            "--device", args.device]
    jobs = []
    for name, settings in (("bootstrap", []), ("no_affine", ["affine=false"]), ("siamese", ["siamese=true"])):
        run = out / folder / name
        jobs.append(Job(f"{folder}/{name}", [*boot, "--output", run, *common, *settings], run / "final.pt",
                        out / "logs_text" / f"{folder}_{name}.log", args.threads))
    run = out / folder / "supervised"
    # The control: the bootstrapping runs' supervised task alone (2 x batch clips, 2 x lr, the
    # same warmup and cosine schedule, Adam without weight decay, the same synthetic clips).
    jobs.append(Job(f"{folder}/supervised", [
        py, "-m", "training.train", "--out", run, "--init", DEFAULT_MODEL, "--steps", steps,
        "--batch-size", 2 * args.batch_size, "--frames", args.frames, "--num-points", 128,
        "--lr", 2 * args.lr, "--warmup", args.warmup, "--weight-decay", 0, "--device", args.device,
        "--num-workers", args.workers, "--eval-every", 0, "--checkpoint-every", steps, "--seed", args.seed,
        *(["--log-every", 1] if folder == "calibration" else [])],
        run / "model.pt", out / "logs_text" / f"{folder}_supervised.log", args.threads))
    return jobs


def seconds_per_step(run: Path) -> Optional[float]:
    """Mean seconds per step after the first logged row, from a run's train_log.csv."""
    path = run / "train_log.csv"
    if not path.exists():
        return None
    with open(path) as file:
        rows = [row for row in csv.DictReader(file) if row.get("elapsed_s")]
    if len(rows) < 2:
        return None
    first, last = rows[0], rows[-1]
    return (float(last["elapsed_s"]) - float(first["elapsed_s"])) / (int(last["step"]) - int(first["step"]))


def eval_job(args, out: Path, name: str, dataset: str, checkpoint: Optional[Path], tracker: str = "bootstapir") -> Job:
    target = out / "eval" / f"{name}_{dataset}.json"
    command = [args.python, "-m", "bootstap_ros.eval.cli", out / f"{dataset}_heldout.pkl", "--output", target,
               "--device", "cpu"]
    if tracker == "lk":
        command += ["--tracker", "lk"]
    elif checkpoint is not None:
        command += ["--checkpoint", checkpoint]
    return Job(f"eval {name} on {dataset}", command, target, out / "logs_text" / f"eval_{name}_{dataset}.log",
               args.eval_threads)


def summarize(out: Path, args, steps: int, timings: Dict[str, float], wall: float) -> Dict:
    scores = {}
    for label, _, name in ROWS:
        for dataset in SETS:
            path = out / "eval" / f"{name}_{dataset}.json"
            if path.exists():
                data = json.loads(path.read_text())
                scores.setdefault(name, {})[dataset] = {key: 100 * data[key] for key in METRICS}
    lines = ["| model | robot AJ | robot <δavg | robot OA | real-warp AJ | real-warp <δavg | real-warp OA |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for label, _, name in ROWS:
        cells = []
        for dataset in SETS:
            values = scores.get(name, {}).get(dataset)
            cells += [f"{values[k]:.1f}" for k in METRICS] if values else ["n/a"] * 3
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    per_step = {name: seconds_per_step(out / "runs" / name) for name in RUNS}
    # Job times add up over invocations (an interrupted experiment continued later).
    timing_file = out / "job_seconds.json"
    if timing_file.exists():
        timings = {**json.loads(timing_file.read_text()), **timings}
    timing_file.write_text(json.dumps(timings, indent=2) + "\n")
    summary = {"steps": steps, "batch_size": args.batch_size, "supervised_batch_size": 2 * args.batch_size,
               "frames": args.frames, "lr_self_supervised": args.lr, "lr_supervised": 2 * args.lr,
               "warmup": args.warmup, "device": args.device, "heldout_clips": args.heldout_clips,
               "real_warp_clips": args.real_warp_clips, "episodes": args.episodes,
               "episode_frames": args.episode_frames, "scores": scores, "job_seconds": timings,
               "seconds_per_step": per_step, "wall_seconds": wall, "table": "\n".join(lines)}
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/bootstrap_experiment.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/bootstrap_experiment", help="everything goes here")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="training device")
    parser.add_argument("--steps", type=int, default=100, help="steps of every run (the most, with --train-budget)")
    parser.add_argument("--train-budget", type=float, default=0,
                        help="seconds for the four runs together: calibrate and fit the step count (0: off)")
    parser.add_argument("--min-steps", type=int, default=20)
    parser.add_argument("--calibration-steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=2, help="log clips per step (the supervised task: 2x)")
    parser.add_argument("--frames", type=int, default=12, help="frames per training clip (both tasks)")
    parser.add_argument("--lr", type=float, default=1e-4, help="self-supervised peak lr (supervised: 2x)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heldout-clips", type=int, default=20, help="labeled robot clips (seeds 0..)")
    parser.add_argument("--heldout-frames", type=int, default=24, help="frames per held-out clip (both sets)")
    parser.add_argument("--real-warp-clips", type=int, default=20)
    parser.add_argument("--episodes", type=int, default=16, help="unlabeled episodes (half per bag)")
    parser.add_argument("--episode-frames", type=int, default=48)
    parser.add_argument("--parallel", type=int, default=max(1, CPUS // 2), help="jobs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training run")
    parser.add_argument("--workers", type=int, default=max(0, min(3, CPUS // 4 - 1)),
                        help="data workers per training run")
    parser.add_argument("--eval-threads", type=int, default=2)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--stages", default="data,before,train,after",
                        help="comma-separated subset of data,before,train,after")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stages = set(args.stages.split(","))
    py, timings, failed = args.python, {}, []
    started = time.perf_counter()

    if "data" in stages:
        half = args.episodes // 2
        bag = [py, "-m", "training.robot_domain", "bag", "--frames", args.episode_frames]
        failed += run_jobs([
            Job("robot held-out clips", [py, "-m", "training.robot_domain", "labeled", "--out",
                                         out / "robot_heldout.pkl", "--num-clips", args.heldout_clips,
                                         "--seed", 0, "--frames", args.heldout_frames, "--num-points", 64],
                out / "robot_heldout.pkl", out / "logs_text" / "robot_heldout.log"),
            Job("real-warp clips", [py, "-m", "training.real_warps", "--out", out / "real_warps_heldout.pkl",
                                    "--num-clips", args.real_warp_clips, "--seed", 0,
                                    "--frames", args.heldout_frames],
                out / "real_warps_heldout.pkl", out / "logs_text" / "real_warps.log"),
            Job("MCAP bag", [*bag, "--out", out / "logs" / "robot_mcap", "--episodes", half,
                             "--first-episode", 0], out / "logs" / "robot_mcap.json", out / "logs_text" / "bag_mcap.log"),
            Job("SQLite3 JPEG bag", [*bag, "--out", out / "logs" / "robot_sqlite_jpeg", "--episodes",
                                     args.episodes - half, "--first-episode", half, "--storage", "sqlite3",
                                     "--compressed"], out / "logs" / "robot_sqlite_jpeg.json",
                out / "logs_text" / "bag_sqlite.log"),
        ], args.parallel, timings)
        failed += run_jobs([Job("prepare logs", [
            py, "-m", "training.logs", out / "logs" / "robot_mcap", out / "logs" / "robot_sqlite_jpeg",
            "--output", out / "clips", "--frames", args.frames], out / "clips" / "manifest.json",
            out / "logs_text" / "prepare_logs.log")], 1, timings)
    if "before" in stages:
        failed += run_jobs([eval_job(args, out, name, dataset, None, "lk" if name == "lk" else "bootstapir")
                            for name in ("embedded", "lk") for dataset in SETS], args.parallel, timings)
    steps = args.steps
    if "train" in stages:
        if args.train_budget > 0 and not all((out / "runs" / n / ("model.pt" if n == "supervised" else "final.pt")).exists()
                                             for n in RUNS):
            calibration_steps = args.calibration_steps
            failed_calibration = run_jobs(training_jobs(args, out, calibration_steps, "calibration", ["log_every=1"]),
                                          len(RUNS), timings)
            try:
                measured = [seconds_per_step(out / "calibration" / name) for name in RUNS]
            except (OSError, ValueError, KeyError, ZeroDivisionError) as error:
                print(f"calibration unreadable ({error}); running --steps", flush=True)
                measured = []
            measured = [m for m in measured if m]
            if measured and not failed_calibration:
                steps = int(max(args.min_steps, min(args.steps, args.train_budget / max(measured))) // 10 * 10)
                steps = max(steps, args.min_steps)
            print(f"calibration: {['%.2f s/step' % m for m in measured]}; running {steps} steps", flush=True)
            shutil.rmtree(out / "calibration", ignore_errors=True)
        failed += run_jobs(training_jobs(args, out, steps, "runs"), len(RUNS), timings)
    if "after" in stages:
        finals = {name: out / "runs" / name / ("model.pt" if name == "supervised" else "final.pt") for name in RUNS}
        failed += run_jobs([eval_job(args, out, name, dataset, finals[name]) for name in RUNS for dataset in SETS
                            if finals[name].exists()], args.parallel, timings)
    summary = summarize(out, args, steps, timings, time.perf_counter() - started)
    print(summary["table"])
    print(f"steps {steps}, batch {args.batch_size} log clips + {2 * args.batch_size} synthetic clips, "
          f"{args.frames} frames; wall {summary['wall_seconds']:.0f} s; results in {out / 'results.json'}")
    if failed:
        print(f"FAILED: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
