"""What tracks_3d costs the node per frame: the depth lookup and the cloud, next to a tracking step.

    python -m bootstap_ros.bench.depth [--points 64,256] [--size 640x480] [--window 5]
        [--repeats 300] [--output depth_cost.json]

Times, per frame, what the node does for `tracks_3d` once a depth image is paired
(tracker_node._publish_tracks_3d): reading the depth message (16UC1), converting it to
metres, reading camera_info, the window median at each track, the back-projection and
packing the PointCloud2. As the baseline, measured in the same run on the same frames,
the embedded model's `CausalTracker.step` with the same points. Prints a table and
writes the figures to --output.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import List, Optional

import numpy as np


def _percentiles(times_ms: List[float]) -> dict:
    values = np.asarray(times_ms)
    return {"mean": float(values.mean()), "p50": float(np.percentile(values, 50)),
            "p95": float(np.percentile(values, 95)), "max": float(values.max())}


def measure(points: int, size, window: int, repeats: int, step_repeats: int, seed: int = 0) -> dict:
    from std_msgs.msg import Header

    from bootstap_ros.depth import CameraModel, depth_in_metres, tracks_to_3d
    from bootstap_ros.model import load_checkpoint
    from bootstap_ros.model.checkpoint import EMBEDDED_CHECKPOINT
    from bootstap_ros.ros.conversions import (camera_info_to_model, camera_model_to_info,
                                              depth_array_to_image, depth_image_to_array,
                                              tracks_3d_to_cloud)
    from bootstap_ros.tracking import CausalTracker

    height, width = size
    rng = np.random.default_rng(seed)
    depth_msg = depth_array_to_image(rng.integers(0, 5000, (height, width)).astype(np.uint16))
    info_msg = camera_model_to_info(CameraModel.pinhole((height, width)))
    frame = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
    side = int(np.ceil(np.sqrt(points)))
    xy = np.stack(np.meshgrid(np.linspace(5, width - 5, side), np.linspace(5, height - 5, side)), -1)
    xy = xy.reshape(-1, 2)[:points].astype(np.float32)
    ids, visible, header = np.arange(points), np.ones(points, bool), Header(frame_id="camera")

    def tracks_3d():
        depth = depth_in_metres(*depth_image_to_array(depth_msg))
        model = camera_info_to_model(info_msg)
        return tracks_3d_to_cloud(ids, tracks_to_3d(xy, depth, model.K, (height, width), window),
                                  visible, header)

    for _ in range(10):
        tracks_3d()
    depth_ms = []
    for _ in range(repeats):
        start = time.perf_counter()
        tracks_3d()
        depth_ms.append((time.perf_counter() - start) * 1e3)

    tracker = CausalTracker(load_checkpoint(EMBEDDED_CHECKPOINT).model, max_points=points, backend="torch")
    tracker.add_points(frame, xy)
    for _ in range(3):
        tracker.step(frame)
    step_ms = []
    for _ in range(step_repeats):
        start = time.perf_counter()
        tracker.step(frame)
        step_ms.append((time.perf_counter() - start) * 1e3)
    depth, step = _percentiles(depth_ms), _percentiles(step_ms)
    return {"points": points, "tracks_3d_ms": depth, "tracking_step_ms": step,
            "tracks_3d_over_step": depth["mean"] / step["mean"]}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bootstap_ros.bench.depth",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", default="64,256")
    parser.add_argument("--size", default="640x480", help="WxH of the colour and depth images")
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--step-repeats", type=int, default=20)
    parser.add_argument("--output", default="depth_cost.json")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    import os

    import torch

    load_before = os.getloadavg()[0]
    results = [measure(int(n), (height, width), args.window, args.repeats, args.step_repeats)
               for n in args.points.split(",")]
    load = (load_before + os.getloadavg()[0]) / 2  # the machine's other work skews every figure
    print(f"{width}x{height} 16UC1 depth, window {args.window}, torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs ({platform.machine()}), load average {load:.1f}")
    print("points | tracks_3d mean / p50 / p95 (ms) | tracking step mean (ms) | tracks_3d / step")
    for r in results:
        d, s = r["tracks_3d_ms"], r["tracking_step_ms"]
        print(f"{r['points']:6d} | {d['mean']:.3f} / {d['p50']:.3f} / {d['p95']:.3f} | {s['mean']:.1f} | "
              f"{100 * r['tracks_3d_over_step']:.2f}%")
    with open(args.output, "w") as file:
        json.dump({"size": [width, height], "window": args.window, "encoding": "16UC1",
                   "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                   "load_average": load, "results": results}, file, indent=2)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
