"""The adapter on a long shifted-domain stream, end to end (`make adapter-demo`).

1. A camera stream of the robot domain (`bootstap_ros_training.domains.robot_domain`: unlabelled episodes,
   seeds from 2**30 on, never a labelled clip) written once as an MP4 video, and
   labelled held-out clips of the same domain (`robot_test.pkl`, seeds 0..).
2. tracker_node (the embedded model, an 8x8 grid), video_source playing the stream at
   `--fps` (looping if the run outlasts it) and bootstap_adapter, each its own process,
   for `--minutes` of wall time on this machine. Recorded meanwhile: the tracker's
   output rate (every `tracks` message received), the adapter's round reports and the
   tracker's /diagnostics; each model the tracker takes into use is copied, with the
   time it took over, into OUT/models/.
3. Afterwards, each model used is scored with `bootstap-eval` on `robot_test.pkl`
   (average Jaccard, first-query mode, online), and one picture is drawn: the held-out
   AJ of the model in use over wall time with the swaps and the round decisions, and
   the tracker's output rate over time.

    python tools/adapter_demo.py --out outputs/adapter_demo --minutes 60 --round-minutes 15

Writes OUT/timeline.json (rates, rounds, swaps), OUT/summary.json (each model's AJ and
the span it was in use) and OUT/adapter_demo.png. Every ROS process gets a domain of its
own and stays on this machine. The stream and the labelled clips are reused when they
exist (delete them to make them again).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
EPISODE_FRAMES = 48
RATE_BIN_S = 10.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/adapter_demo", help="output folder")
    parser.add_argument("--minutes", type=float, default=60.0, help="wall time of the run (default 60)")
    parser.add_argument("--round-minutes", type=float, default=15.0, help="the adapter's round_minutes (default 15)")
    parser.add_argument("--clip-interval", type=float, default=10.0,
                        help="the adapter's clip_interval in seconds (default 10)")
    parser.add_argument("--fps", type=float, default=15.0, help="the camera's frame rate (default 15)")
    parser.add_argument("--episodes", type=int, default=None,
                        help="robot-domain episodes in the stream (default: enough for --minutes without a "
                             "repeat, at most 400; the video loops past them)")
    parser.add_argument("--grid", type=int, default=8, help="the tracker's grid_points (default 8: 64 points)")
    parser.add_argument("--eval-clips", type=int, default=20, help="labelled held-out clips (default 20)")
    parser.add_argument("--adapter-settings", nargs="*", default=[], metavar="NAME:=VALUE",
                        help="more adapter parameters, e.g. round_settings:='lr=3e-5' margin:=0.005")
    parser.add_argument("--skip-run", action="store_true",
                        help="only score the models of an earlier run in OUT and draw the picture")
    return parser


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------- data

def make_stream(path: Path, episodes: int, fps: float) -> None:
    from bootstap_ros.video import VideoWriter
    from bootstap_ros_training.domains.robot_domain import RobotConfig, generate_robot_clip, unlabeled_seeds

    config = RobotConfig(frames=EPISODE_FRAMES, num_points=0)
    partial = path.with_name(path.stem + ".partial" + path.suffix)
    started = time.monotonic()
    with VideoWriter(partial, fps=fps) as writer:
        for index, seed in enumerate(unlabeled_seeds(0, episodes)):
            for frame in generate_robot_clip(seed, config).video:
                writer.write(frame)
            if index % 25 == 24:
                log(f"stream: {index + 1} of {episodes} episodes ({time.monotonic() - started:.0f} s)")
    partial.rename(path)


def make_data(out: Path, args) -> Dict[str, Path]:
    stream = out / "stream.mp4"
    needed = int(args.minutes * 60 * args.fps / EPISODE_FRAMES) + 1
    episodes = args.episodes or min(needed, 400)
    if not stream.exists():
        log(f"writing the camera stream: {episodes} robot-domain episodes of {EPISODE_FRAMES} frames")
        make_stream(stream, episodes, args.fps)
    labelled = out / "robot_test.pkl"
    if not labelled.exists():
        log(f"writing {args.eval_clips} labelled held-out clips")
        run([sys.executable, "-m", "bootstap_ros_training.domains.robot_domain", "labeled", "--out", str(labelled),
             "--num-clips", str(args.eval_clips), "--seed", "0"], out / "robot_test.log")
    return {"stream": stream, "labelled": labelled}


def run(command: List[str], log_path: Path) -> None:
    with open(log_path, "w") as output:
        status = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, cwd=ROOT, env=environment()).returncode
    if status:
        raise SystemExit(f"{command[2] if len(command) > 2 else command}: failed, see {log_path}")


def environment() -> Dict[str, str]:
    from bootstap_ros.bench.processes import local_ros_environment

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return local_ros_environment(env)


# ---------------------------------------------------------------------------- the run

def run_nodes(out: Path, data: Dict[str, Path], args) -> Dict:
    os.environ.update({k: v for k, v in environment().items() if k.startswith("ROS_")})
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2
    from std_msgs.msg import String

    from bootstap_ros.bench.processes import stop_process_groups

    namespace = "/adapter_demo_" + uuid.uuid4().hex[:6]
    store, models = out / "store", out / "models"
    for folder in (store, models):
        shutil.rmtree(folder, ignore_errors=True)
    models.mkdir(parents=True)
    ros_args = ["--ros-args", "-r", f"__ns:={namespace}"]
    commands = {
        "tracker_node": ["bootstap_ros.ros.tracker_node", "-p", f"grid_points:={args.grid}"],
        "video_source": ["bootstap_ros.ros.video_source", "-p", f"source:={data['stream']}", "-p", "loop:=true",
                         "-p", f"rate:={args.fps}"],
        "bootstap_adapter": ["bootstap_ros_training.adapter.node", "-p", f"store:={store}",
                             "-p", f"round_minutes:={args.round_minutes}", "-p", f"clip_interval:={args.clip_interval}",
                             *sum((["-p", setting] for setting in args.adapter_settings), [])],
    }
    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node("adapter_demo", namespace=namespace, context=context)
    lock = threading.Lock()
    timeline = {"tracks": [], "rounds": [], "swaps": [], "start": None, "namespace": namespace}
    tracker_status = f"{namespace}/tracker_node: point tracking"
    in_use = {"checkpoint": None}

    def now() -> float:
        return time.monotonic() - started

    def on_tracks(msg):
        with lock:
            timeline["tracks"].append(round(now(), 3))

    def on_round(msg):
        event = json.loads(msg.data)
        event["t"] = round(now(), 1)
        with lock:
            timeline["rounds"].append(event)
        if event.get("state") == "finished" or event.get("event") == "rollback":
            log(f"round {event.get('round')}: {event.get('decision', event.get('event'))}: {event.get('reason', '')}")

    def on_diagnostics(msg):
        for status in msg.status:
            if status.name != tracker_status:
                continue
            values = {kv.key: kv.value for kv in status.values}
            checkpoint = values.get("checkpoint")
            if checkpoint and checkpoint != in_use["checkpoint"]:
                in_use["checkpoint"] = checkpoint
                index = len(timeline["swaps"])
                copy = models / f"model_{index:02d}.pt"
                shutil.copyfile(checkpoint, copy)  # the adapter keeps only its last few
                with lock:
                    timeline["swaps"].append({"t": round(now(), 1), "checkpoint": checkpoint, "copy": str(copy),
                                              "loaded_at": values.get("model loaded at")})
                log(f"the tracker uses {checkpoint} (copied to {copy.name})")

    reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(PointCloud2, "tracks", on_tracks, reliable)
    node.create_subscription(String, "bootstap_adapter/rounds", on_round,
                             QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE,
                                        durability=DurabilityPolicy.TRANSIENT_LOCAL))
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    logs = {name: open(out / f"{name}.log", "w") for name in commands}
    started = time.monotonic()
    processes = {name: subprocess.Popen([sys.executable, "-m", *command[:1], *ros_args, *command[1:]],
                                        stdout=logs[name], stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        cwd=ROOT, env=environment(), start_new_session=True)
                 for name, command in commands.items()}
    timeline["start"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    log(f"running the tracker, the video and the adapter for {args.minutes:g} min (namespace {namespace})")
    last_save = time.monotonic()
    try:
        while now() < args.minutes * 60:
            executor.spin_once(timeout_sec=0.1)
            for name, process in processes.items():
                if process.poll() is not None:
                    raise SystemExit(f"{name} exited with {process.returncode}; see {out / (name + '.log')}")
            if time.monotonic() - last_save > 60:
                save_timeline(out, timeline, lock)
                last_save = time.monotonic()
                with lock:
                    recent = [t for t in timeline["tracks"] if t > now() - 60]
                log(f"{now() / 60:.0f} min: output {len(recent) / 60:.2f} Hz over the last minute, "
                    f"{sum(1 for r in timeline['rounds'] if r.get('state') == 'finished')} rounds done")
    finally:
        timeline["end_s"] = round(now(), 1)
        executor.shutdown(timeout_sec=5)
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        stop_process_groups(processes.values())
        for handle in logs.values():
            handle.close()
        save_timeline(out, timeline, lock)
    return timeline


def save_timeline(out: Path, timeline: Dict, lock: threading.Lock) -> None:
    with lock:
        text = json.dumps(timeline)
    (out / "timeline.json").write_text(text + "\n")


# ---------------------------------------------------------------------------- scoring, picture

def score_models(out: Path, data: Dict[str, Path], timeline: Dict) -> List[Dict]:
    results = []
    for index, swap in enumerate(timeline["swaps"]):
        result_path = out / f"eval_model_{index:02d}.json"
        if not result_path.exists():
            log(f"scoring {Path(swap['copy']).name} on {data['labelled'].name}")
            run([sys.executable, "-m", "bootstap_ros.eval.cli", str(data["labelled"]), "--checkpoint", swap["copy"],
                 "--device", "cpu", "--output", str(result_path)], out / f"eval_model_{index:02d}.log")
        scores = json.loads(result_path.read_text())
        until = timeline["swaps"][index + 1]["t"] if index + 1 < len(timeline["swaps"]) else timeline["end_s"]
        results.append({"model": swap["checkpoint"], "copy": swap["copy"], "from_s": swap["t"], "until_s": until,
                        "average_jaccard": scores["average_jaccard"],
                        "average_pts_within_thresh": scores["average_pts_within_thresh"],
                        "occlusion_accuracy": scores["occlusion_accuracy"]})
    return results


def draw(out: Path, timeline: Dict, models: List[Dict], args) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    end = timeline["end_s"]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True,
                                         gridspec_kw={"height_ratios": [3, 2]})
    for model in models:
        top.hlines(100 * model["average_jaccard"], model["from_s"] / 60, model["until_s"] / 60, colors="C0", lw=3)
    for model in models[1:]:
        for axis in (top, bottom):
            axis.axvline(model["from_s"] / 60, color="C2", ls="--", lw=1)
    marks = {"adopted": ("C2", "^"), "kept": ("C7", "o"), "failed": ("C3", "x"), "held": ("C1", "s"),
             "stale": ("C1", "s"), "refused": ("C3", "v")}
    finished = [r for r in timeline["rounds"] if r.get("state") == "finished"]
    base = 100 * models[0]["average_jaccard"] if models else 0
    shown = set()
    for event in finished:
        colour, marker = marks.get(event["decision"], ("k", "."))
        label = event["decision"] if event["decision"] not in shown else None
        shown.add(event["decision"])
        top.scatter([event["t"] / 60], [base], color=colour, marker=marker, zorder=3, label=label)
    top.set_ylabel("held-out AJ (%) of the model in use")
    top.set_title(f"bootstap_adapter on the robot domain at {args.fps:g} FPS, rounds of {args.round_minutes:g} min "
                  f"(CPU)", fontsize=10)
    if shown:
        top.legend(title="round ends", fontsize=8, loc="lower right")
    times = np.asarray(timeline["tracks"])
    bins = np.arange(0, end + RATE_BIN_S, RATE_BIN_S)
    counts, _ = np.histogram(times, bins)
    bottom.step(bins[:-1] / 60, counts / RATE_BIN_S, where="post", color="C0")
    bottom.set_ylabel(f"tracker output (Hz, {RATE_BIN_S:g} s bins)")
    bottom.set_xlabel("wall time (min); dashed: the tracker swaps to a round's model")
    bottom.set_ylim(bottom=0)
    figure.tight_layout()
    path = out / "adapter_demo.png"
    figure.savefig(path, dpi=110)
    return path


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = make_data(out, args)
    if args.skip_run:
        timeline = json.loads((out / "timeline.json").read_text())
    else:
        timeline = run_nodes(out, data, args)
    models = score_models(out, data, timeline)
    picture = draw(out, timeline, models, args)
    rounds = [r for r in timeline["rounds"] if r.get("state") == "finished"]
    summary = {"minutes": timeline["end_s"] / 60, "models": models,
               "rounds": [{k: r.get(k) for k in ("round", "t", "decision", "reason", "score_in_use",
                                                 "score_candidate", "steps", "seconds")} for r in rounds],
               "output_rate_hz": len(timeline["tracks"]) / max(timeline["end_s"], 1e-9),
               "settings": vars(args)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    for model in models:
        log(f"{Path(model['model']).name}: AJ {100 * model['average_jaccard']:.1f} from {model['from_s'] / 60:.1f} "
            f"to {model['until_s'] / 60:.1f} min")
    log(f"{len(rounds)} rounds: {', '.join(r['decision'] for r in rounds) or 'none'}; picture {picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
