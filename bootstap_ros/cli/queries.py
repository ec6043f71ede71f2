"""`bootstap-queries`: define points on a demonstration image and save them as a query set.

    bootstap-queries IMAGE_OR_VIDEO [--frame K] (--queries Q.csv | --grid N) --output SET.npz
        [--checkpoint CKPT] [--labels a,b,...] [--resolution R] [--refine-resolution HxW]
        [--causal|--no-causal]
        [--device cpu|cuda]

The points lie on frame K (default 0) of the input: an image file, a video, an
image folder or an .npy clip. Q.csv has a header naming x and y (pixel positions
in TAPIR's raster), so `x,y` rows work, and so does bootstap-track's query file
(`t,x,y`): its t column is ignored. An optional `label` column names the points. SET.npz holds the positions, their
query features from that frame, the labels, the frame itself (PNG, so that another
model can make its own query features), the image size and the model's identity
(`bootstap_ros.tracking.query_set`); the node's `query_set` parameter tracks these
points in a live stream, with this model or, re-encoded from the frame, another;
`bootstap-track --queries SET.npz` tracks them through a video file. Exit codes: 0
done, 1 a failure while running, 2 bad arguments or input (`bootstap_ros.cli.common`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np

from bootstap_ros.cli.common import UsageError, prepare_output, run_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bootstap-queries", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="image file (.png/.jpg/...), video file, image folder or .npy [T,H,W,3] "
                                      "uint8 RGB clip")
    parser.add_argument("--frame", type=int, default=0, help="frame of a video, folder or clip the points lie "
                                                             "on (default 0)")
    points = parser.add_mutually_exclusive_group(required=True)
    points.add_argument("--queries", help="CSV with header x,y[,label] or t,x,y[,label] (pixel x, y; t is "
                                          "ignored)")
    points.add_argument("--grid", type=int, help="an NxN grid of points over the image (N >= 1)")
    parser.add_argument("--output", required=True, help="where to write the query set (.npz)")
    parser.add_argument("--checkpoint", default=None,
                        help="the model whose query features the set holds (default: the embedded model); "
                             "a node running another model re-encodes the points from the stored frame")
    parser.add_argument("--labels", default=None,
                        help="comma-separated labels, one per point (instead of a label column)")
    parser.add_argument("--resolution", type=int, default=None,
                        help="model resolution (square), as the node's `resolution` (another one works too: "
                             "the node then re-encodes the points from the stored frame)")
    parser.add_argument("--refine-resolution", default=None, metavar="HxW",
                        help="top of the refinement ladder, as the node's `refine_resolution` that will "
                        "track the set (each ladder level has its own query features; with another "
                        "ladder the node re-encodes the points); default: one level")
    parser.add_argument("--causal", action=argparse.BooleanOptionalAction, default=True,
                        help="how an official checkpoint is loaded (default causal, as the node does)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("bootstap-queries", lambda: run(args))


def read_frame(path, index: int) -> np.ndarray:
    """Frame `index` (uint8 RGB) of an image file, a video, an image folder or an .npy clip."""
    from bootstap_ros.video import IMAGE_SUFFIXES, VideoError, _read_image, open_video

    path = Path(path)
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        if index != 0:
            raise VideoError(f"{path} is a single image: --frame must be 0, got {index}")
        return _read_image(path)
    if index < 0:
        raise VideoError(f"--frame must be >= 0, got {index}")
    source = open_video(path)
    position = -1
    for position, frame in enumerate(source):
        if position == index:
            return frame
    raise VideoError(f"{path} has {position + 1} frames: there is no frame {index} "
                     f"(--frame counts from 0)")


def read_labels(path, count: int) -> List[str]:
    """The `label` column of a query CSV (one per query row), or empty labels without one."""
    from bootstap_ros.queries import _numbered_rows

    with open(path, newline="", encoding="utf-8-sig") as file:
        rows = [row for _, row in _numbered_rows(file)]
    names = [name.strip().lower() for name in rows[0]]
    if "label" not in names:
        return [""] * count
    column = names.index("label")
    return [row[column].strip() if column < len(row) else "" for row in rows[1:]]


def run(args: argparse.Namespace) -> int:
    import torch

    from bootstap_ros.config import parse_size
    from bootstap_ros.model import load_checkpoint
    from bootstap_ros.model.checkpoint import resolve_checkpoint, with_settings
    from bootstap_ros.queries import grid_queries, read_queries_csv
    from bootstap_ros.tracking import CausalTracker
    from bootstap_ros.tracking.query_set import ModelIdentity, QuerySet

    if args.grid is not None and args.grid < 1:
        raise UsageError(f"--grid must be at least 1 (an NxN grid of points), got {args.grid}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device} was asked for but CUDA is not available; use --device cpu")
    prepare_output(args.output, "--output")
    frame = read_frame(args.input, args.frame)
    size = frame.shape[:2]
    if args.queries:
        # t is ignored (and may be left out): the points lie on --frame.
        xy = read_queries_csv(args.queries, size=size, default_t=0)[:, 1:]
        labels = read_labels(args.queries, len(xy))
    else:
        xy = grid_queries(args.grid, size)[:, 1:]
        labels = [""] * len(xy)
    if args.labels is not None:
        labels = [label.strip() for label in args.labels.split(",")]
        if len(labels) != len(xy):
            raise ValueError(f"--labels gives {len(labels)} labels for {len(xy)} points; give one per point")

    checkpoint = resolve_checkpoint(args.checkpoint)
    loaded = load_checkpoint(checkpoint, causal=args.causal)
    resolution = None if args.resolution is None else (args.resolution, args.resolution)
    refine = parse_size(args.refine_resolution) if args.refine_resolution else None
    model = with_settings(loaded.model, resolution=resolution, refine_resolution=refine)
    tracker = CausalTracker(model, max_points=max(len(xy), 1), device=args.device, backend="torch")
    features = tracker.query_features(frame, xy)
    query_set = QuerySet(xy=xy, features=features, image_size=size, labels=labels,
                         model=ModelIdentity.of(checkpoint, model.config),
                         source=f"{Path(args.input).resolve()} frame {args.frame}",
                         images=[frame], image_index=np.zeros(len(xy), np.int64))
    query_set.save(args.output)
    print(f"wrote {args.output}: {len(query_set)} points on frame {args.frame} of {args.input} "
          f"({size[1]}x{size[0]}), model {checkpoint} (SHA-256 {query_set.model.checkpoint_sha256[:12]}...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
