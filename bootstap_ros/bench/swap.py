"""What a model swap costs the node's worker, against a frame's time in the same run.

    python -m bootstap_ros.bench.swap [--checkpoint CKPT] [--grid 8] [--size 640x480]
        [--frames 6] [--device cpu] [--output swap.json]

A TrackingSession (the node's, without ROS) tracks a grid on a synthetic stream, then
swaps to a second tracker of the same checkpoint, twice: with every query image kept
(the default memory bound) and with none (`query_frame_memory_mb: 0`, so that every
point is re-encoded on the worker from the latest frame). For each it prints and writes
the median frame time before the swap, the loader's time to prepare the new tracker's
points (`prepare_swap`, in the background in the node) and the worker's pause
(`apply_swap`, between two frames), and that pause as a fraction of a frame.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np


def synthetic_stream(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 RGB [T, H, W, 3]: smooth random texture translating by (1.5, 1) px per frame."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height // 8 + 8, width // 8 + 8, 3)).astype(np.uint8)
    import cv2

    big = cv2.resize(base, ((width // 8 + 8) * 8, (height // 8 + 8) * 8), interpolation=cv2.INTER_CUBIC)
    return np.stack([big[int(t * 1.0):int(t * 1.0) + height, int(t * 1.5):int(t * 1.5) + width]
                     for t in range(frames)])


def measure(model, stream: np.ndarray, grid: int, device: str, memory_bytes: int) -> dict:
    from bootstap_ros.tracking.session import TrackingSession
    from bootstap_ros.tracking import CausalTracker

    session = TrackingSession(CausalTracker(model, max_points=grid * grid, device=device), grid_points=grid,
                              frame_memory_bytes=memory_bytes)
    times = []
    for t, frame in enumerate(stream[:-1]):
        start = time.perf_counter()
        session.process(frame, "rgb8", t)
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    prepared = session.prepare_swap(CausalTracker(model, max_points=grid * grid, device=device), None)
    prepare = time.perf_counter() - start
    session.request_swap(prepared)
    outcome = session.apply_swap()
    if outcome.error:
        raise RuntimeError(outcome.error)
    frame_s = float(np.median(times[1:])) if len(times) > 1 else times[0]
    return {"memory_mib": memory_bytes / 2**20, "points": grid * grid, "frame_ms": frame_s * 1e3,
            "prepare_ms": prepare * 1e3, "apply_ms": outcome.seconds * 1e3,
            "apply_over_frame": outcome.seconds / frame_s, "sources": outcome.counts}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bootstap_ros.bench.swap",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="model (default: the embedded model)")
    parser.add_argument("--grid", type=int, default=8, help="an NxN grid of points (default 8)")
    parser.add_argument("--size", default="640x480", help="stream size WxH (default 640x480)")
    parser.add_argument("--frames", type=int, default=6, help="frames tracked before the swap")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    from bootstap_ros.model import load_checkpoint
    from bootstap_ros.model.checkpoint import resolve_checkpoint

    width, height = (int(v) for v in args.size.lower().split("x"))
    model = load_checkpoint(resolve_checkpoint(args.checkpoint), official_default_causal=True).model
    stream = synthetic_stream(args.frames + 1, height, width)
    runs = [measure(model, stream, args.grid, args.device, memory) for memory in (128 << 20, 0)]
    for run in runs:
        print(f"memory {run['memory_mib']:.0f} MiB, {run['points']} points: frame {run['frame_ms']:.1f} ms, "
              f"prepare (loader) {run['prepare_ms']:.1f} ms, swap (worker) {run['apply_ms']:.1f} ms = "
              f"{run['apply_over_frame']:.2f} frame; sources {run['sources']}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"size": [width, height], "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
