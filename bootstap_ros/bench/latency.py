"""End-to-end latency and output rate of tracker_node under a live-camera load.

Starts tracker_node as its own process (as `ros2 run` would), publishes synthetic
frames at a fixed rate from this process with the publication time as header stamp,
and measures, for every `tracks` message received, image stamp -> receipt latency,
plus the sustained output rate, how many frames the node skipped (it always
works on the newest frame, so a slow model lowers the output rate, not the latency)
and the node process's CPU use (user + system time over the window, in cores).
`--points 0` measures the node with no point to track (it then runs no network).
`--depth` also publishes a depth image (16UC1) and a CameraInfo with every image and
runs the node with `use_depth`, to measure what `tracks_3d` costs.

    python -m bootstap_ros.bench.latency --checkpoint model.pt --fps 30 --points 64
    python -m bootstap_ros.bench.latency --random bootstapir --output bench.json

`--random small|bootstapir` measures a random-weight model of that architecture
(speed does not depend on the weights). Prints a summary and writes JSON.
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
from pathlib import Path
from typing import List, Optional

import numpy as np

from bootstap_ros.bench.processes import local_ros_environment, stop_process_groups

SMALL = dict(backbone_channels=(16, 32, 32, 48), backbone_blocks=(1, 1, 1, 1), stem_channels=16,
             extra_conv_blocks=1, extra_conv_multiplier=2, mixer_hidden_dim=32, mixer_blocks=2,
             refinement_iters=2, resolution=(64, 64), causal=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", help="model file (default: the embedded model)")
    model.add_argument("--random", choices=("small", "bootstapir"),
                       help="a random-weight model of this architecture instead")
    parser.add_argument("--fps", type=float, default=30.0, help="source frame rate (default 30)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured (default 10)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring (default 3)")
    parser.add_argument("--points", type=int, default=64,
                        help="points tracked: a grid of round(sqrt(N))^2 (default 64; 0: none)")
    parser.add_argument("--size", default="640x480", help="image WIDTHxHEIGHT (default 640x480)")
    parser.add_argument("--resolution", type=int, default=0, help="model resolution (0: the model's)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--cpu-threads", type=int, default=0,
                        help="the node's cpu_threads (0: torch's default)")
    parser.add_argument("--image-reliability", default="best_effort",
                        choices=("best_effort", "reliable"),
                        help="the node's qos.image.reliability (default best_effort, REP-2003)")
    parser.add_argument("--propagation", default="lk", choices=("lk", "none"),
                        help="the node's propagation: every frame answered (lk, the default) or only the "
                        "frames the network took (none)")
    parser.add_argument("--depth", action="store_true",
                        help="also publish depth and camera_info; the node runs with use_depth")
    parser.add_argument("--output", help="write the figures as JSON here")
    return parser


def camera_frames(width: int, height: int, count: int = 30) -> List[np.ndarray]:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for t in range(count):  # a texture drifting right and down: something to track
        xs, ys = x - 2.0 * t, y - 1.0 * t
        channels = [128 + 90 * np.sin(xs / 9.0) * np.cos(ys / 11.0), 128 + 90 * np.sin((xs + ys) / 15.0),
                    128 + 60 * np.cos(xs / 17.0 - ys / 7.0)]
        frames.append(np.stack(channels, -1).round().clip(0, 255).astype(np.uint8))
    return frames


def random_checkpoint(kind: str, folder: Path) -> str:
    from bootstap_ros.config import ModelConfig
    from bootstap_ros.model import build_model, save_checkpoint

    import torch

    torch.manual_seed(0)
    config = ModelConfig(**SMALL) if kind == "small" else ModelConfig(causal=True)
    path = folder / f"random_{kind}.pt"
    save_checkpoint(path, build_model(config))
    return str(path)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` and its threads so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def percentile(values, q) -> Optional[float]:
    return float(np.percentile(values, q)) if len(values) else None


def run(args) -> dict:
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    from bootstap_ros.ros.conversions import array_to_image

    local_ros_environment(os.environ)
    width, height = (int(v) for v in args.size.lower().split("x"))
    grid = round(math.sqrt(max(args.points, 0)))
    namespace = "/latency_bench_" + uuid.uuid4().hex[:8]
    scratch = tempfile.TemporaryDirectory(prefix="bootstap_latency_")
    checkpoint = args.checkpoint
    if args.random:
        checkpoint = random_checkpoint(args.random, Path(scratch.name))
    # No checkpoint parameter: the node's default, the embedded model (an empty
    # `-p checkpoint:=` is not a valid override).
    model = ["-p", f"checkpoint:={checkpoint}"] if checkpoint else []
    command = [sys.executable, "-m", "bootstap_ros.ros.tracker_node", "--ros-args",
               "-r", f"__ns:={namespace}", *model,
               "-p", f"grid_points:={grid}", "-p", f"max_points:={max(grid * grid, 1)}",
               "-p", f"resolution:={args.resolution}", "-p", f"backend:={args.backend}",
               "-p", f"device:={args.device}", "-p", f"precision:={args.precision}",
               "-p", f"cpu_threads:={args.cpu_threads}",
               "-p", f"qos.image.reliability:={args.image_reliability}",
               "-p", f"propagation:={args.propagation}"]
    if args.depth:
        command += ["-p", "use_depth:=true"]

    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node("latency_bench", namespace=namespace, context=context)
    frames = [array_to_image(f, "rgb8") for f in camera_frames(width, height)]
    publisher = node.create_publisher(Image, "image", QoSProfile(
        depth=5, reliability=ReliabilityPolicy.RELIABLE))
    lock = threading.Lock()
    received = []  # (stamp ns, receipt ns)
    published = []  # stamp ns

    def on_tracks(msg):
        now = time.time_ns()
        with lock:
            received.append((msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec, now))

    node.create_subscription(PointCloud2, "tracks", on_tracks, QoSProfile(
        depth=50, reliability=ReliabilityPolicy.RELIABLE))
    received_3d = []  # stamp ns of each tracks_3d
    if args.depth:
        # A slanted plane 1-2 m away, registered to the colour image, and a pinhole camera.
        depth_mm = np.linspace(1000, 2000, width, dtype=np.float32)[None].repeat(height, 0)
        depth_msg = Image(height=height, width=width, encoding="16UC1", step=2 * width,
                          is_bigendian=int(sys.byteorder == "big"),
                          data=depth_mm.round().astype(np.uint16).tobytes())
        focal = 0.8 * width
        camera_info = CameraInfo(width=width, height=height, distortion_model="plumb_bob",
                                 d=[0.0] * 5, k=[focal, 0.0, (width - 1) / 2, 0.0, focal,
                                                 (height - 1) / 2, 0.0, 0.0, 1.0])
        reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        depth_publisher = node.create_publisher(Image, "depth", reliable)
        info_publisher = node.create_publisher(CameraInfo, "camera_info", reliable)

        def on_tracks_3d(msg):
            with lock:
                received_3d.append(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)

        node.create_subscription(PointCloud2, "tracks_3d", on_tracks_3d, QoSProfile(
            depth=50, reliability=ReliabilityPolicy.RELIABLE))
    diagnostics = []  # (time ns, {key: value}) of the node's status

    def on_diagnostics(msg):
        for status in msg.status:
            if status.name.startswith(namespace + "/"):
                with lock:
                    diagnostics.append((time.time_ns(), {kv.key: kv.value for kv in status.values}))

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    index = [0]

    def publish():
        msg = frames[index[0] % len(frames)]
        index[0] += 1
        stamp = time.time_ns()  # the node's clock is the system clock too
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        msg.header.frame_id = "bench"
        if args.depth:  # first, so that the depth image is there when the image is tracked
            for extra in (depth_msg, camera_info):
                extra.header = msg.header
            depth_publisher.publish(depth_msg)
            info_publisher.publish(camera_info)
        publisher.publish(msg)
        with lock:
            published.append(stamp)

    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    # Started last, so that nothing above can fail and leave it running.
    node_log = open(Path(scratch.name) / "tracker_node.log", "w")
    tracker = subprocess.Popen(command, stdout=node_log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not received:  # the node is up once the first frame came back
            if tracker.poll() is not None:
                node_log.flush()
                raise RuntimeError("tracker_node exited: "
                                   + (Path(scratch.name) / "tracker_node.log").read_text()[-2000:])
            if time.monotonic() > deadline:
                raise RuntimeError("tracker_node did not answer within 120 s")
            if publisher.get_subscription_count():
                publish()
            executor.spin_once(timeout_sec=0.2)
        timer = node.create_timer(1.0 / args.fps, publish)
        end_warmup = time.monotonic() + args.warmup
        while time.monotonic() < end_warmup:
            executor.spin_once(timeout_sec=0.05)
        with lock:
            window_start = time.time_ns()
        cpu_start = cpu_seconds(tracker.pid)
        end = time.monotonic() + args.duration
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        window_end = time.time_ns()
        node_cpu = cpu_seconds(tracker.pid) - cpu_start
        timer.cancel()
        settle = time.monotonic() + 2.0  # let the last frames' tracks arrive
        while time.monotonic() < settle:
            executor.spin_once(timeout_sec=0.05)
    finally:
        executor.shutdown(timeout_sec=5)
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        stop_process_groups([tracker], grace=30)
        node_log.close()
        scratch.cleanup()

    with lock:
        sent = [s for s in published if window_start <= s < window_end]
        answered = [(s, r) for s, r in received if window_start <= s < window_end]
        # The node's own counters at the window's ends: frames that reached it, frames it skipped.
        inside = [values for t, values in diagnostics if window_start <= t <= window_end + 1e9]
    node_counts = {}
    if len(inside) >= 2:
        for key in ("frames received", "dropped frames", "network frames", "propagated frames"):
            if key in inside[-1] and key in inside[0]:
                node_counts[key.replace(" ", "_")] = int(inside[-1][key]) - int(inside[0][key])
        node_counts["seconds"] = len(inside) - 1
    if args.depth:
        times = [float(v["tracks_3d time, mean (ms)"]) for v in inside
                 if v.get("tracks_3d time, mean (ms)", "n/a") != "n/a"]
        node_counts["tracks_3d_ms_mean"] = float(np.mean(times)) if times else None
        with lock:
            node_counts["tracks_3d_published"] = sum(
                window_start <= s < window_end for s in received_3d)
    latencies = [(r - s) / 1e6 for s, r in answered]
    seconds = (window_end - window_start) / 1e9
    figures = {
        "input_rate_hz": len(sent) / seconds,
        "output_rate_hz": len(answered) / seconds,
        "frames_published": len(sent),
        "frames_tracked": len(answered),
        "frames_skipped": len(sent) - len(answered),
        "node_counters_over_window": node_counts,  # from /diagnostics, about 1 s apart
        # CPU time of the node process (every thread) over the window, in cores.
        "node_cpu_cores": node_cpu / seconds,
        "latency_ms": {"mean": float(np.mean(latencies)) if latencies else None,
                       "p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                       "max": float(np.max(latencies)) if latencies else None},
    }
    return {
        "figures": figures,
        "setup": {"model": args.random and f"random {args.random}" or (checkpoint or "embedded"),
                  "points": grid * grid, "image": f"{width}x{height}", "fps": args.fps,
                  "duration_s": args.duration, "resolution": args.resolution or "model's",
                  "backend": args.backend, "device": args.device, "precision": args.precision,
                  "cpu_threads": args.cpu_threads, "propagation": args.propagation,
                  "image_reliability": args.image_reliability, "depth": args.depth},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
    }


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run(args)
    except RuntimeError as error:
        print(f"latency_bench: error: {error}", file=sys.stderr)
        return 2
    f, s = report["figures"], report["setup"]
    latency = f["latency_ms"]

    def ms(value):
        return "n/a" if value is None else f"{value:.1f} ms"

    print(f"{s['model']}, {s['points']} points, {s['image']} images at {s['fps']:g} FPS for "
          f"{s['duration_s']:g} s, propagation {s['propagation']}")
    print(f"  output rate {f['output_rate_hz']:.1f} Hz (input {f['input_rate_hz']:.1f} Hz), "
          f"{f['frames_tracked']} of {f['frames_published']} frames tracked, "
          f"{f['frames_skipped']} skipped")
    if f["node_counters_over_window"]:
        c = f["node_counters_over_window"]
        print(f"  node over {c['seconds']} s: {c['frames_received']} frames reached it, "
              f"{c['dropped_frames']} skipped by its newest-frame queue")
        if "network_frames" in c:
            print(f"  the network ran on {c['network_frames']} frames "
                  f"({c['network_frames'] / max(c['seconds'], 1):.1f} Hz), {c.get('propagated_frames', 0)} were "
                  "answered by propagation")
    print(f"  node CPU use {f['node_cpu_cores']:.2f} cores (user + system time over the window)")
    if "tracks_3d_published" in f["node_counters_over_window"]:
        c = f["node_counters_over_window"]
        spent = "n/a" if c["tracks_3d_ms_mean"] is None else f"{c['tracks_3d_ms_mean']:.2f} ms"
        print(f"  tracks_3d: {c['tracks_3d_published']} published, the node's time for them "
              f"(depth lookup + cloud) mean {spent} per frame")
    print(f"  latency image stamp -> tracks received: mean {ms(latency['mean'])}, "
          f"p50 {ms(latency['p50'])}, p95 {ms(latency['p95'])}, max {ms(latency['max'])}")
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
