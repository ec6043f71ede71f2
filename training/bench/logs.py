"""Benchmark of robot-log ingestion: decoding bags into clips, the cache, and reading clips.

Writes camera-like bags (a panning texture at 30 Hz, default 640x480) in two
storage/encoding pairs, then times, in one run: `prepare_logs` decoding them,
`prepare_logs` again (every input found in the cache), and reading every clip
through `LogClips`. Prints a table and writes it as JSON.

    python -m bootstap_ros_training.bench.logs --frames 600 --out bench_logs.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from ..clips import ClipConfig
from ..logs import LogClips, prepare_logs, write_image_bag


def camera_frames(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth texture panned 3 px a frame: moving, never static, no cuts."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 16, (width + 3 * count) // 16 + 1, 3), np.uint8)
    image = cv2.resize(coarse, (coarse.shape[1] * 16, coarse.shape[0] * 16),
                       interpolation=cv2.INTER_CUBIC)
    return np.stack([image[:height, 3 * i:3 * i + width] for i in range(count)])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=600, help="frames per bag")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--out", default="bench_logs.json", help="JSON file for the figures")
    args = parser.parse_args(argv)
    frames = camera_frames(args.frames, args.height, args.width)
    stamps = [1_700_000_000 * 10**9 + i * 33_333_333 for i in range(args.frames)]
    config = ClipConfig()  # 24 frames, 256 x 256, stride 1
    results = {"frames_per_bag": args.frames, "frame_size": [args.height, args.width],
               "clip_config": config.to_dict(), "runs": []}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for storage, compressed in (("mcap", False), ("sqlite3", True)):
            name = f"{storage}_{'jpeg' if compressed else 'rgb8'}"
            bag = write_image_bag(scratch / name, frames, stamps, storage=storage,
                                  compressed=compressed)
            out = scratch / f"cache_{name}"
            start = time.perf_counter()
            manifest = prepare_logs([bag], out, config)
            decode_s = time.perf_counter() - start
            start = time.perf_counter()
            prepare_logs([bag], out, config)
            cached_s = time.perf_counter() - start
            dataset = LogClips(manifest)
            start = time.perf_counter()
            for index in range(len(dataset)):
                dataset[index]
            load_s = time.perf_counter() - start
            bag_mb = sum(f.stat().st_size for f in bag.iterdir()) / 2**20
            run = {"input": name, "bag_mb": round(bag_mb, 1), "clips": len(dataset),
                   "decode_s": round(decode_s, 3),
                   "decode_frames_per_s": round(args.frames / decode_s, 1),
                   "cached_s": round(cached_s, 4),
                   "cache_speedup": round(decode_s / cached_s, 1),
                   "load_clips_per_s": round(len(dataset) / load_s, 1)}
            results["runs"].append(run)
    header = ("input", "bag_mb", "clips", "decode_s", "decode_frames_per_s", "cached_s",
              "cache_speedup", "load_clips_per_s")
    print(" | ".join(header))
    for run in results["runs"]:
        print(" | ".join(str(run[key]) for key in header))
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"written to {args.out}")
    return results


if __name__ == "__main__":
    main()
