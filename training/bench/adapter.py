"""The tracker's output rate with the adapter running a round, against without it, in one run.

Starts tracker_node as its own process and publishes frames at `--fps` from this process
(as `latency_bench` does, with its frames), then measures the rate of `tracks` in three
windows of `--window` seconds:

1. **without**: the tracker alone;
2. **with a round**: bootstap_adapter (another process) recording clips from the same
   stream and running a bootstrapping round from the tracker's model: its store is
   filled beforehand so that the round starts at once; the window opens `--settle`
   seconds after the round's training process started (past its imports and clip
   decoding, into its training steps) and must close before its time budget ends;
3. **without, after**: the adapter stopped (it kills its round), the tracker alone again,
   to show how much the machine's own load drifted meanwhile.

The ratio is window 2 over the mean of windows 1 and 3. Also reported: latency (image
stamp to tracks received), the tracker's CPU use, and the round's training process's
CPU use (cores) and niceness in window 2.

    python -m bootstap_ros_training.bench.adapter --fps 15 --points 64 --output adapter_bench.json

Prints a summary and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List

import numpy as np

from bootstap_ros.bench.latency import camera_frames, cpu_seconds, percentile, random_checkpoint
from bootstap_ros.bench.processes import local_ros_environment, stop_process_groups


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", help="model file (default: the embedded model)")
    model.add_argument("--random", choices=("small", "bootstapir"),
                       help="a random-weight model of this architecture instead")
    parser.add_argument("--fps", type=float, default=15.0, help="camera frame rate (default 15)")
    parser.add_argument("--points", type=int, default=64, help="points tracked (a grid; default 64)")
    parser.add_argument("--size", default="320x240", help="image WIDTHxHEIGHT (default 320x240)")
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured per window (default 60)")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before the first window (default 10)")
    parser.add_argument("--settle", type=float, default=45.0,
                        help="seconds from the round's start to the second window (default 45)")
    parser.add_argument("--round-threads", type=int, default=1, help="the adapter's round_threads (default 1)")
    parser.add_argument("--round-nice", type=int, default=19, help="the adapter's round_nice (default 19)")
    parser.add_argument("--round-device", default="cpu", help="the adapter's round_device (default cpu)")
    parser.add_argument("--round-settings", default="",
                        help="the adapter's round_settings (default: the recipe's defaults)")
    parser.add_argument("--cpu-threads", type=int, default=0, help="the tracker's cpu_threads (0: torch's default)")
    parser.add_argument("--output", help="write the figures as JSON here")
    return parser


def _fill_store(folder: Path, frames: List[np.ndarray], clips: int, clip_frames: int) -> None:
    """`clips` clips of the benchmark's frames in an adapter store (no ROS: bootstap_ros_training.adapter.clip_store)."""
    from ..adapter import clip_store
    store = clip_store.ClipStore(folder, max_bytes=1 << 40)
    recorder = clip_store.ClipRecorder(store, "/image", frames=clip_frames, interval_s=0.0)
    period, index = 1_000_000_000 // 15, 0
    while len(store.clips) < clips:
        stamp = 1_700_000_000 * 10**9 + index * period
        data = clip_store.image_message(frames[index % len(frames)], stamp, "bench")
        recorder.add(data, "sensor_msgs/msg/Image", stamp)
        index += 1
        if index > 100 * clips * clip_frames:
            raise RuntimeError("the benchmark's frames give no clips through the clip filters")


def _children(pid: int) -> List[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def _niceness(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def run(args) -> Dict:
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, PointCloud2
    from std_msgs.msg import String

    from ..adapter.settings import AdapterConfig
    from bootstap_ros.ros.conversions import array_to_image

    local_ros_environment(os.environ)
    width, height = (int(v) for v in args.size.lower().split("x"))
    grid = round(math.sqrt(max(args.points, 1)))
    namespace = "/adapter_bench_" + uuid.uuid4().hex[:8]
    scratch = tempfile.TemporaryDirectory(prefix="bootstap_adapter_bench_")
    folder = Path(scratch.name)
    checkpoint = random_checkpoint(args.random, folder) if args.random else args.checkpoint
    frames = camera_frames(width, height)
    defaults = AdapterConfig()
    store = folder / "store"
    _fill_store(store, frames, defaults.holdout_clips + defaults.min_train_clips, defaults.clip_frames)
    round_minutes = (args.settle + args.window) / 60.0 + 2.0  # still training when window 2 closes
    model = ["-p", f"checkpoint:={checkpoint}"] if checkpoint else []
    ros_args = ["--ros-args", "-r", f"__ns:={namespace}"]
    tracker_command = [sys.executable, "-m", "bootstap_ros.ros.tracker_node", *ros_args, *model,
                       "-p", f"grid_points:={grid}", "-p", f"max_points:={grid * grid}",
                       "-p", f"cpu_threads:={args.cpu_threads}", "-p", "qos.image.reliability:=reliable"]
    adapter_command = [sys.executable, "-m", "bootstap_ros_training.adapter.node", *ros_args,
                       "-p", f"store:={store}", "-p", f"round_minutes:={round_minutes}",
                       "-p", f"round_threads:={args.round_threads}", "-p", f"round_nice:={args.round_nice}",
                       "-p", f"round_device:={args.round_device}", "-p", "qos.image.reliability:=reliable"]
    if args.round_settings:
        adapter_command += ["-p", f"round_settings:={args.round_settings}"]

    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node("adapter_bench", namespace=namespace, context=context)
    images = [array_to_image(f, "rgb8") for f in frames]
    publisher = node.create_publisher(Image, "image", QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    lock = threading.Lock()
    received: List = []  # (stamp ns, receipt ns)
    published: List[int] = []
    events: List[Dict] = []

    def on_tracks(msg):
        now = time.time_ns()
        with lock:
            received.append((msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec, now))

    node.create_subscription(PointCloud2, "tracks", on_tracks, QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
    node.create_subscription(String, "bootstap_adapter/rounds", lambda m: events.append(json.loads(m.data)),
                             QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE,
                                        durability=DurabilityPolicy.TRANSIENT_LOCAL))
    index = [0]

    def publish():
        msg = images[index[0] % len(images)]
        index[0] += 1
        stamp = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        msg.header.frame_id = "bench"
        publisher.publish(msg)
        with lock:
            published.append(stamp)

    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    logs = {name: open(folder / f"{name}.log", "w") for name in ("tracker_node", "bootstap_adapter")}
    processes: Dict[str, subprocess.Popen] = {}

    def spin(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
            for name, process in processes.items():
                if process.poll() is not None and not (name == "bootstap_adapter" and stopping[0]):
                    logs[name].flush()
                    raise RuntimeError(f"{name} exited: " + (folder / f"{name}.log").read_text()[-2000:])

    def window(label: str) -> Dict:
        with lock:
            start = time.time_ns()
        cpu = cpu_seconds(processes["tracker_node"].pid)
        spin(args.window)
        end = time.time_ns()
        cpu = cpu_seconds(processes["tracker_node"].pid) - cpu
        spin(2.0)  # the window's last frames' tracks
        with lock:
            sent = [s for s in published if start <= s < end]
            answered = [(s, r) for s, r in received if start <= s < end]
        latencies = [(r - s) / 1e6 for s, r in answered]
        seconds = (end - start) / 1e9
        return {"window": label, "seconds": seconds, "input_rate_hz": len(sent) / seconds,
                "output_rate_hz": len(answered) / seconds, "tracker_cpu_cores": cpu / seconds,
                "latency_ms": {"mean": float(np.mean(latencies)) if latencies else None,
                               "p50": percentile(latencies, 50), "p95": percentile(latencies, 95)}}

    stopping = [False]
    results = []
    round_process: Dict = {}
    try:
        processes["tracker_node"] = subprocess.Popen(tracker_command, stdout=logs["tracker_node"],
                                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                     start_new_session=True)
        deadline = time.monotonic() + 180
        while not received:
            if time.monotonic() > deadline:
                raise RuntimeError("tracker_node did not answer within 180 s")
            if publisher.get_subscription_count():
                publish()
            spin(0.2)
        node.create_timer(1.0 / args.fps, publish)
        spin(args.warmup)
        results.append(window("without"))
        processes["bootstap_adapter"] = subprocess.Popen(adapter_command, stdout=logs["bootstap_adapter"],
                                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                         start_new_session=True)
        adapter = processes["bootstap_adapter"].pid
        deadline = time.monotonic() + 300
        child = None
        while child is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the adapter's round did not start within 300 s: "
                                   + (folder / "bootstap_adapter.log").read_text()[-2000:])
            spin(0.5)
            child = next((pid for pid in _children(adapter)
                          if b".bootstrap" in Path(f"/proc/{pid}/cmdline").read_bytes()), None)
        started = time.monotonic()
        spin(args.settle)
        child_cpu = cpu_seconds(child)
        with_round = window("with a round")
        finished = [e for e in events if e.get("state") == "finished"]
        if finished or not Path(f"/proc/{child}").exists():
            raise RuntimeError("the round ended inside the window: " + json.dumps(finished[-1:]))
        round_process = {"cpu_cores": (cpu_seconds(child) - child_cpu) / with_round["seconds"],
                         "niceness": _niceness(child), "seconds_since_start": time.monotonic() - started,
                         "round_minutes": round_minutes}
        results.append(with_round)
        stopping[0] = True
        stop_process_groups([processes["bootstap_adapter"]])
        child_gone = not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        round_process["killed_with_the_adapter"] = child_gone
        spin(5.0)
        results.append(window("without, after"))
    finally:
        executor.shutdown(timeout_sec=5)
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        stopping[0] = True
        stop_process_groups(processes.values())
        for log in logs.values():
            log.close()
        scratch.cleanup()
    baseline = (results[0]["output_rate_hz"] + results[2]["output_rate_hz"]) / 2
    return {
        "windows": results,
        "ratio_with_round_to_without": results[1]["output_rate_hz"] / baseline if baseline else None,
        "round_process": round_process,
        "setup": {"model": args.random and f"random {args.random}" or (checkpoint or "embedded"),
                  "points": grid * grid, "image": f"{width}x{height}", "fps": args.fps, "window_s": args.window,
                  "settle_s": args.settle, "round_threads": args.round_threads, "round_nice": args.round_nice,
                  "round_device": args.round_device, "round_settings": args.round_settings,
                  "tracker_cpu_threads": args.cpu_threads},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "load_average_1_5_15": list(os.getloadavg()),
                    "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
    }


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run(args)
    except RuntimeError as error:
        print(f"adapter_bench: error: {error}", file=sys.stderr)
        return 2
    s = report["setup"]
    print(f"{s['model']}, {s['points']} points, {s['image']} images at {s['fps']:g} FPS, "
          f"windows of {s['window_s']:g} s")
    for w in report["windows"]:
        latency = w["latency_ms"]
        mean = "n/a" if latency["mean"] is None else f"{latency['mean']:.0f} ms"
        print(f"  {w['window']:<16} output {w['output_rate_hz']:.2f} Hz (input {w['input_rate_hz']:.2f} Hz), "
              f"latency mean {mean}, tracker CPU {w['tracker_cpu_cores']:.2f} cores")
    r = report["round_process"]
    print(f"  ratio with a round / without: {report['ratio_with_round_to_without']:.3f}")
    print(f"  the round's training process: {r['cpu_cores']:.2f} cores at niceness {r['niceness']}, "
          f"killed with the adapter: {r['killed_with_the_adapter']}")
    print(f"  load average at the end: {', '.join(f'{v:.1f}' for v in report['machine']['load_average_1_5_15'])}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
