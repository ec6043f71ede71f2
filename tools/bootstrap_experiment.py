"""The bootstrapping experiment: does the recipe make the tracker better on shifted domains?

`make bootstrap-experiment` runs it on the CPU, end to end, from the embedded model (trained
on Kubric-lite only), every run with the same wall-clock budget:

1. data, for each shifted domain (the robot domain, `training/domains/robot_domain.py`; a camera at
   night and a fisheye lens, `training/domains/shifted_domains.py`): a labelled validation split
   (seeds 1000..), a labelled test split (seeds 0..; reported once), and the unlabelled
   logs as two rosbag2 bags (MCAP raw Image, SQLite3 JPEG CompressedImage; episode seeds
   from 2**30 on); the source domain's test sets (Kubric-lite, real warps);
2. "before": `bootstap-eval` of the embedded model (and Lucas-Kanade) on every test set;
3. runs: `bootstap-train-bootstrap --data BAGS --time-budget MINUTES --device cpu` with the
   recipe's defaults, for each domain and seed, keeping a checkpoint every `--keep-every`
   steps; on the robot domain also the supervised-only control (`bootstap_ros_training.supervised` on
   Kubric-lite with the bootstrapping runs' supervised settings and the same budget);
4. "after": `bootstap-eval` of each run's final.pt on its domain's test split, and of the
   robot runs on the source domain's test sets;
5. the learning curves of the robot runs (their kept checkpoints on the validation split,
   the pseudo-label grades, the label-free score) and the rank correlation of the
   label-free score with AJ over every kept checkpoint;
6. `results.json` and `table.md`.

    python tools/bootstrap_experiment.py --out outputs/bootstrap_experiment            # all
    python tools/bootstrap_experiment.py --out outputs/b --minutes 15 --seeds 0 --domains robot

Every job writes a log under `logs_text/` and is skipped when its output exists, so an
interrupted experiment continues where it stopped. Training jobs run one at a time (each
is timed against its budget and gets the whole machine; `--parallel-training 2 --threads 1`
runs two side by side, each on one core, a robot run beside its control); evaluations two
at a time.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "bootstap_ros" / "data" / "default.pt"
#: domain -> (generator module, its extra arguments)
DOMAINS = {
    "robot": ("bootstap_ros_training.domains.robot_domain", []),
    "low_light": ("bootstap_ros_training.domains.shifted_domains", ["--domain", "low_light"]),
    "wide_angle": ("bootstap_ros_training.domains.shifted_domains", ["--domain", "wide_angle"]),
}
SOURCE_SETS = ("kubric", "real_warps")
METRICS = ("average_jaccard", "average_pts_within_thresh", "occlusion_accuracy")
VALIDATION_SEED, TEST_SEED = 1000, 0


class Job:
    def __init__(self, name: str, command: Sequence, done: Path, log: Path, threads: int = 2):
        self.name, self.command, self.done, self.log, self.threads = name, [str(c) for c in command], done, log, threads


def run_jobs(jobs: List[Job], parallel: int, timings: Dict[str, float]) -> List[str]:
    """Runs jobs, `parallel` at a time; skips those whose output exists. Returns the failed names."""
    env_base = {**os.environ, "PYTHONUNBUFFERED": "1"}
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


# ----------------------------------------------------------------------------- jobs

def data_jobs(args, out: Path) -> List[Job]:
    py, jobs = args.python, []
    for domain in args.domains:
        module, extra = DOMAINS[domain]
        for split, seed in (("val", VALIDATION_SEED), ("test", TEST_SEED)):
            target = out / "data" / f"{domain}_{split}.pkl"
            jobs.append(Job(f"{domain} {split} clips", [
                py, "-m", module, "labeled", *extra, "--out", target, "--num-clips", args.clips, "--seed", seed,
                "--frames", 24, "--num-points", 64], target, out / "logs_text" / f"data_{domain}_{split}.log", 1))
        half = args.episodes // 2
        for name, first, storage in (("mcap", 0, []), ("sqlite_jpeg", half, ["--storage", "sqlite3", "--compressed"])):
            bag = out / "data" / f"{domain}_{name}"
            jobs.append(Job(f"{domain} {name} bag", [
                py, "-m", module, "bag", *extra, "--out", bag, "--episodes", half, "--first-episode", first,
                "--frames", args.episode_frames, *storage], Path(f"{bag}.json"),
                out / "logs_text" / f"data_{domain}_{name}.log", 1))
    kubric = out / "data" / "kubric_test.pkl"
    jobs.append(Job("kubric test clips", [py, "-m", "bootstap_ros_training.domains.synthetic", "--num-clips", args.clips, "--seed", TEST_SEED,
                                          "--out", kubric], kubric, out / "logs_text" / "data_kubric.log", 1))
    warps = out / "data" / "real_warps_test.pkl"
    jobs.append(Job("real-warp test clips", [py, "-m", "bootstap_ros_training.domains.real_warps", "--num-clips", 20, "--seed", TEST_SEED,
                                             "--out", warps], warps, out / "logs_text" / "data_real_warps.log", 1))
    return jobs


def eval_job(args, out: Path, name: str, dataset: str, checkpoint: Optional[Path], tracker: str = "bootstapir",
             split: str = "test") -> Job:
    target = out / "eval" / f"{name}__{dataset}_{split}.json"
    command = [args.python, "-m", "bootstap_ros.eval.cli", out / "data" / f"{dataset}_{split}.pkl", "--output",
               target, "--device", "cpu"]
    if tracker == "lk":
        command += ["--tracker", "lk"]
    elif checkpoint is not None:
        command += ["--checkpoint", checkpoint]
    return Job(f"eval {name} on {dataset} {split}", command, target,
               out / "logs_text" / f"eval_{name.replace('/', '_')}_{dataset}_{split}.log", 1)


def bootstrap_run(out: Path, domain: str, seed: int) -> Path:
    return out / "runs" / domain / f"bootstrap_seed{seed}"


def control_run(out: Path, seed: int) -> Path:
    return out / "runs" / "robot" / f"supervised_seed{seed}"


def training_jobs(args, out: Path) -> List[Job]:
    from bootstap_ros_training.bootstrap_config import DEVICE_DEFAULTS, BootstrapConfig

    py, jobs = args.python, []
    recipe, cpu = BootstrapConfig().for_device("cpu"), DEVICE_DEFAULTS["cpu"]
    for seed in args.seeds:
        for domain in args.domains:
            run = bootstrap_run(out, domain, seed)
            data = [flag for name in ("mcap", "sqlite_jpeg") for flag in ("--data", out / "data" / f"{domain}_{name}")]
            jobs.append(Job(f"bootstrap {domain} seed {seed}", [
                py, "-m", "bootstap_ros_training.bootstrap", *data, "--output", run, "--time-budget", args.minutes,
                "--device", "cpu", f"seed={seed}", f"cache={out / 'clips' / domain}", f"keep_every={args.keep_every}",
                f"validate_every={args.keep_every}", *args.settings], run / "final.pt",
                out / "logs_text" / f"train_{domain}_seed{seed}.log", args.threads))
            if domain == "robot" and not args.no_control:
                # The control, next to its run: the bootstrapping runs' supervised task alone, the same budget.
                run = control_run(out, seed)
                jobs.append(Job(f"supervised control seed {seed}", [
                    py, "-m", "bootstap_ros_training.supervised", "--output", run, "--init", DEFAULT_MODEL, "--time-budget", args.minutes,
                    "--batch-size", cpu["supervised_batch_size"], "--frames", cpu["supervised_frames"],
                    "--num-points", cpu["supervised_points"], "--lr", recipe.ssl_supervised_lr,
                    *(["--camera", "--camera-share", recipe.supervised_camera] if recipe.supervised_camera > 0 else []),
                    "--faint-background", recipe.supervised_faint_background,
                    "--warmup", recipe.warmup, "--weight-decay", recipe.weight_decay, "--device", "cpu",
                    "--num-workers", recipe.num_workers, "--eval-every", 0, "--checkpoint-every", 100,
                    "--seed", seed], run / "final.pt", out / "logs_text" / f"train_control_seed{seed}.log",
                    args.threads))
    return jobs


def recipe_merge(args) -> float:
    """The runs' `merge`, read from their key=value settings as the runs read them."""
    from bootstap_ros_training.bootstrap_config import BootstrapConfig, parse_settings

    return BootstrapConfig.from_dict(parse_settings(args.settings)).merge


def merge_jobs(args, out: Path) -> List[Job]:
    """Each control's final.pt merged with the embedded model as the runs merge theirs, so that
    the control differs from its run by the self-supervised task alone."""
    weight = recipe_merge(args)
    if weight >= 1 or "robot" not in args.domains or args.no_control:
        return []
    return [Job(f"merge control seed {seed}", [
        args.python, "-m", "bootstap_ros_training.average", DEFAULT_MODEL, control_run(out, seed) / "final.pt",
        "--weight", weight, "--output", control_run(out, seed) / "final_merged.pt"],
        control_run(out, seed) / "final_merged.pt", out / "logs_text" / f"merge_control_seed{seed}.log", 1)
        for seed in args.seeds]


def after_jobs(args, out: Path) -> List[Job]:
    """The runs' final.pt (merged with the start unless merge=1), and beside it each run's
    student as trained (final_student.pt) and its label-free pick (best.pt)."""
    jobs, merged = [], recipe_merge(args) < 1
    for seed in args.seeds:
        for domain in args.domains:
            run = bootstrap_run(out, domain, seed)
            sets = (domain, *SOURCE_SETS) if domain == "robot" else (domain,)
            jobs += [eval_job(args, out, f"bootstrap_{domain}_seed{seed}", d, run / "final.pt") for d in sets]
            jobs.append(eval_job(args, out, f"best_{domain}_seed{seed}", domain, run / "best.pt"))
            if merged:
                jobs += [eval_job(args, out, f"student_{domain}_seed{seed}", d, run / "final_student.pt")
                         for d in sets]
        if "robot" in args.domains and not args.no_control:
            run = control_run(out, seed)
            for dataset in ("robot", *SOURCE_SETS):
                jobs.append(eval_job(args, out, f"control_seed{seed}", dataset,
                                     run / ("final_merged.pt" if merged else "final.pt")))
                if merged:
                    jobs.append(eval_job(args, out, f"control_student_seed{seed}", dataset, run / "final.pt"))
    return jobs


def curve_jobs(args, out: Path) -> List[Job]:
    """The robot runs' kept checkpoints on the validation split, and their grades."""
    jobs = []
    if "robot" not in args.domains:
        return jobs
    for seed in args.seeds:
        run = bootstrap_run(out, "robot", seed)
        for kept in sorted(run.glob("checkpoints/step_*.pt")):
            jobs.append(eval_job(args, out, f"curve_robot_seed{seed}_{kept.stem}", "robot", kept, split="val"))
        jobs.append(Job(f"grades robot seed {seed}", [
            args.python, "-m", "bootstap_ros_training.grading", run, "--grade", out / "data" / "robot_val.pkl", "--max-clips", 4],
            run / "grades.csv", out / "logs_text" / f"grades_robot_seed{seed}.log", 1))
    return jobs


# ----------------------------------------------------------------------------- summary

def _scores(path: Path) -> Optional[Dict[str, float]]:
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return {key: 100 * data[key] for key in METRICS}


def _per_video(path: Path) -> Optional[Dict[str, float]]:
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return {name: 100 * video["average_jaccard"] for name, video in data.get("per_video", {}).items()}


def _mean_se(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:+.1f}"
    return f"{statistics.mean(values):+.1f} ± {statistics.stdev(values) / len(values) ** 0.5:.1f}"


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    def ranks(values):
        order = sorted(range(len(values)), key=lambda i: values[i])
        result = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                result[order[k]] = (i + j) / 2
            i = j + 1
        return result

    rx, ry = ranks(list(xs)), ranks(list(ys))
    mx, my = statistics.mean(rx), statistics.mean(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    den = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return num / den if den else float("nan")


def curves(args, out: Path) -> Dict:
    """Per robot seed: step, wall seconds, validation AJ of each kept checkpoint, its label-free
    score, and the grades; the rank correlation of the score with AJ within each run (what
    picks best.pt: each run scores its own held-out queries, so runs' scores differ in scale)
    and over all checkpoints pooled."""
    result, pairs, within = {}, [], {}
    for seed in args.seeds:
        run = bootstrap_run(out, "robot", seed)
        scores = {}
        log = run / "eval_log.csv"
        if log.exists():
            with open(log) as file:
                scores = {int(r["step"]): float(r["cycle_score"]) for r in csv.DictReader(file) if r.get("cycle_score")}
        report = run / "report.json"
        if 0 not in scores and report.exists():
            before_score = (json.loads(report.read_text()).get("before") or {}).get("cycle_score")
            if before_score is not None:
                scores[0] = float(before_score)
        grades = {}
        if (run / "grades.csv").exists():
            with open(run / "grades.csv") as file:
                grades = {int(r["step"]): {k: float(v) for k, v in r.items() if v not in ("", None)}
                          for r in csv.DictReader(file)}
        rows = []
        before = _scores(out / "eval" / "embedded__robot_val.json")
        if before is not None:
            rows.append({"step": 0, "elapsed_s": 0.0, "aj": before["average_jaccard"], "label_free": scores.get(0)})
        for kept in sorted(run.glob("checkpoints/step_*.pt")):
            step = int(kept.stem.split("_")[1])
            val = _scores(out / "eval" / f"curve_robot_seed{seed}_{kept.stem}__robot_val.json")
            if val is None:
                continue
            rows.append({"step": step, "elapsed_s": grades.get(step, {}).get("elapsed_s"),
                         "aj": val["average_jaccard"], "label_free": scores.get(step), **grades.get(step, {})})
        scored = [(row["label_free"], row["aj"]) for row in rows if row.get("label_free") is not None]
        pairs += scored
        if len(scored) >= 3:
            within[f"seed{seed}"] = spearman([p[0] for p in scored], [p[1] for p in scored])
        result[f"seed{seed}"] = rows
    if within:
        result["spearman_within_runs"] = within
    if len(pairs) >= 3:
        result["spearman_label_free_vs_aj"] = spearman([p[0] for p in pairs], [p[1] for p in pairs])
        result["checkpoints_in_correlation"] = len(pairs)
    return result


def plot_curves(curves_by_seed: Dict, output: Path) -> None:
    """The robot runs' validation AJ and label-free score against the step (step 0: the
    embedded model), one line per seed, into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, rows in curves_by_seed.items():
        if not isinstance(rows, list) or not rows:
            continue
        rows = sorted(rows, key=lambda r: r["step"])
        left.plot([r["step"] for r in rows], [r["aj"] for r in rows], marker="o", label=name)
        scored = [r for r in rows if r.get("label_free") is not None]
        right.plot([r["step"] for r in scored], [r["label_free"] for r in scored], marker="o", label=name)
    left.set(xlabel="step", ylabel="AJ", title="robot validation split (labels)")
    right.set(xlabel="step", ylabel="cycle score", title="held-out log clips (no labels)")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(output, dpi=100)
    plt.close(figure)


def summarize(args, out: Path, timings: Dict[str, float], wall: float) -> Dict:
    before = {d: _scores(out / "eval" / f"embedded__{d}_test.json") for d in (*args.domains, *SOURCE_SETS)}
    lk = {d: _scores(out / "eval" / f"lk__{d}_test.json") for d in args.domains}
    lines = ["| set | Lucas-Kanade AJ | embedded AJ (before) | bootstrapped AJ, per seed | change (mean ± SE over seeds; SE over clips) "
             "| supervised-only control, change | bootstrapped - control | as trained, before the merge: change "
             "(control's) | best.pt, change |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    table = {}
    for dataset in (*args.domains, *(SOURCE_SETS if "robot" in args.domains else ())):
        base = before.get(dataset)
        trained_on = dataset if dataset in args.domains else "robot"
        after = [_scores(out / "eval" / f"bootstrap_{trained_on}_seed{s}__{dataset}_test.json") for s in args.seeds]
        control = [_scores(out / "eval" / f"control_seed{s}__{dataset}_test.json") for s in args.seeds]
        if base is None:
            continue
        changes = [a["average_jaccard"] - base["average_jaccard"] for a in after if a]
        # Per clip: the seeds' mean AJ minus the embedded model's, its standard error over clips.
        base_videos = _per_video(out / "eval" / f"embedded__{dataset}_test.json") or {}
        seed_videos = [v for v in (_per_video(out / "eval" / f"bootstrap_{trained_on}_seed{s}__{dataset}_test.json")
                                   for s in args.seeds) if v]
        per_clip = [statistics.mean(v[name] for v in seed_videos) - base_videos[name]
                    for name in base_videos if seed_videos and all(name in v for v in seed_videos)]
        clip_se = statistics.stdev(per_clip) / len(per_clip) ** 0.5 if len(per_clip) > 1 else float("nan")
        control_changes = [c["average_jaccard"] - base["average_jaccard"] for c in control if c]
        gaps = [a["average_jaccard"] - c["average_jaccard"] for a, c in zip(after, control) if a and c]

        def change(name: str) -> List[float]:
            scores = [_scores(out / "eval" / f"{name.format(seed=s)}__{dataset}_test.json") for s in args.seeds]
            return [a["average_jaccard"] - base["average_jaccard"] for a in scores if a]

        unmerged = change(f"student_{trained_on}_seed{{seed}}")
        control_unmerged = change("control_student_seed{seed}")
        best = change(f"best_{trained_on}_seed{{seed}}")
        table[dataset] = {"before": base, "after": after, "control": control, "change": changes,
                          "change_clip_se": clip_se, "control_change": control_changes, "minus_control": gaps,
                          "change_before_merge": unmerged, "control_change_before_merge": control_unmerged,
                          "best_change": best}
        label = dataset if dataset in args.domains else f"{dataset} (source; trained on robot)"
        lk_cell = f"{lk[dataset]['average_jaccard']:.1f}" if lk.get(dataset) else ""
        lines.append(f"| {label} | {lk_cell} | {base['average_jaccard']:.1f} | "
                     + ", ".join(f"{a['average_jaccard']:.1f}" for a in after if a)
                     + f" | {_mean_se(changes)} (clips: ± {clip_se:.1f}) | "
                     + (f"{_mean_se(control_changes)} | {_mean_se(gaps)} |" if control_changes else " | |")
                     + (f" {_mean_se(unmerged)}" if unmerged else " ")
                     + (f" ({_mean_se(control_unmerged)})" if control_unmerged else "")
                     + (f" | {_mean_se(best)} |" if best else " | |"))
    summary = {"minutes": args.minutes, "seeds": args.seeds, "domains": args.domains, "settings": args.settings,
               "table": table, "markdown": "\n".join(lines), "curves": curves(args, out),
               "job_seconds": timings, "wall_seconds": wall}
    timing_file = out / "job_seconds.json"
    if timing_file.exists():
        summary["job_seconds"] = {**json.loads(timing_file.read_text()), **timings}
    timing_file.write_text(json.dumps(summary["job_seconds"], indent=2) + "\n")
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "table.md").write_text(summary["markdown"] + "\n")
    if any(isinstance(rows, list) and rows for rows in summary["curves"].values()):
        plot_curves(summary["curves"], out / "curves.png")
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/bootstrap_experiment.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/bootstrap_experiment", help="everything goes here")
    parser.add_argument("--minutes", type=float, default=60.0, help="time budget of every training run")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds (comma-separated)")
    parser.add_argument("--domains", default=",".join(DOMAINS), help=f"comma-separated subset of {list(DOMAINS)}")
    parser.add_argument("--no-control", action="store_true", help="skip the supervised-only control runs")
    parser.add_argument("--keep-every", type=int, default=100, help="steps between kept (and scored) checkpoints")
    parser.add_argument("--clips", type=int, default=20, help="labelled clips of each split")
    parser.add_argument("--episodes", type=int, default=32, help="unlabelled episodes per domain (half per bag)")
    parser.add_argument("--episode-frames", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of a training run")
    parser.add_argument("--parallel-training", type=int, default=1,
                        help="training runs at a time (e.g. 2 with --threads 1: a run and its control side by "
                             "side, under the same load)")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--stages", default="data,before,train,after,curves",
                        help="comma-separated subset of data,before,train,after,curves")
    parser.add_argument("settings", nargs="*", metavar="key=value", help="bootstrapping settings of every run")
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s != ""]
    args.domains = [d for d in args.domains.split(",") if d]
    unknown = set(args.domains) - set(DOMAINS)
    if unknown:
        parser.error(f"unknown domains {sorted(unknown)}; known: {list(DOMAINS)}")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stages = set(args.stages.split(","))
    timings: Dict[str, float] = {}
    failed: List[str] = []
    started = time.perf_counter()
    if "data" in stages:
        failed += run_jobs(data_jobs(args, out), 2, timings)
    if "before" in stages:
        jobs = [eval_job(args, out, "embedded", d, None) for d in (*args.domains, *SOURCE_SETS)]
        jobs += [eval_job(args, out, "lk", d, None, "lk") for d in args.domains]
        jobs += [eval_job(args, out, "embedded", "robot", None, split="val")] if "robot" in args.domains else []
        failed += run_jobs(jobs, 2, timings)
    if "train" in stages:
        failed += run_jobs(training_jobs(args, out), args.parallel_training, timings)
    if "after" in stages:
        failed += run_jobs(merge_jobs(args, out), 2, timings)
        failed += run_jobs(after_jobs(args, out), 2, timings)
    if "curves" in stages:
        failed += run_jobs(curve_jobs(args, out), 2, timings)
    summary = summarize(args, out, timings, time.perf_counter() - started)
    print(summary["markdown"])
    correlation = summary["curves"].get("spearman_label_free_vs_aj")
    if correlation is not None:
        within = ", ".join(f"{seed} {value:.2f}" for seed, value in summary["curves"]["spearman_within_runs"].items())
        print(f"label-free score vs validation AJ: Spearman within each run {within}; over all "
              f"{summary['curves']['checkpoints_in_correlation']} checkpoints pooled {correlation:.2f}")
    print(f"results in {out / 'results.json'}")
    if failed:
        print(f"FAILED: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
