"""`bootstap-track`: track points through a video file and save (and draw) the tracks.

    bootstap-track VIDEO --checkpoint CKPT --output OUT.npz [--queries Q.csv|SET.npz | --grid N]
        [--mode online|offline] [--causal|--no-causal] [--resolution 256]
        [--refine-resolution HxW] [--softmax-temperature T]
        [--device cpu|cuda] [--render OUT.mp4]

Online mode (default) runs the causal model frame by frame as a live camera
would; offline mode runs the model's whole-clip forward. OUT.npz holds
`tracks` [N, T, 2] (x, y pixels of the input video), `occluded` [N, T],
`occlusion_logits` and `expected_dist_logits` [N, T]. A query set made by
bootstap-queries (SET.npz) is tracked as the node tracks one: its points start on
frame 0 with the query features of their demonstration frame. Exit codes: 0 done,
1 a failure while tracking, 2 bad arguments or input (`bootstap_ros.cli.common`).
"""

from __future__ import annotations

import argparse
import sys
import time
import zipfile
from pathlib import Path
from typing import List, Optional

from bootstap_ros.backends.base import BACKEND_CHOICES, PRECISION_CHOICES
from bootstap_ros.cli.common import Progress, UsageError, prepare_output, run_command

DEFAULT_FPS = 30.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bootstap-track", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", help="video file (.mp4/.avi/.mkv), folder of images, or .npy [T,H,W,3] uint8 RGB")
    parser.add_argument("--checkpoint", default=None,
                        help="official .pt state_dict or a bootstap_ros checkpoint (default: the embedded model)")
    parser.add_argument("--output", required=True, help="where to write the tracks (.npz)")
    queries = parser.add_mutually_exclusive_group()
    queries.add_argument("--queries", help="CSV with header t,x,y (frame index, pixel x, pixel y), or a "
                         "query set (.npz from bootstap-queries): its points are tracked from frame 0 with "
                         "their demonstration frame's features, as the node's query_set parameter does")
    queries.add_argument("--grid", type=int, help="track an NxN grid of points from frame 0 (default 8; N >= 1)")
    parser.add_argument("--mode", choices=("online", "offline"), default="online")
    parser.add_argument("--causal", action=argparse.BooleanOptionalAction, default=None,
                        help="causal model (default: on for online, off for offline)")
    parser.add_argument("--resolution", type=int, default=None,
                        help="model resolution (square, multiple of 8): the initial estimate and the first "
                        "refinement level run here; default: the checkpoint's (256)")
    parser.add_argument("--refine-resolution", default=None, metavar="HxW",
                        help="top of the refinement ladder (multiples of 8), e.g. 512x512: above "
                        "--resolution, refinement repeats on log-spaced levels up to it, as the official "
                        "model does for large input; default: --resolution (one level)")
    parser.add_argument("--softmax-temperature", type=float, default=None,
                        help="softmax temperature of the initial cost-volume estimate (default: the "
                        "checkpoint's; official BootsTAPIR weights 10, TAPIR 20)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                        help="online inference backend (auto: the fastest available here)")
    parser.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                        help="online inference precision (auto: fp16 for tensorrt, else fp32; bf16: CPU "
                        "or CUDA; fp16: CUDA)")
    parser.add_argument("--torch-compile", action="store_true",
                        help="online: compile the torch backend's backbone and mixer block with "
                        "torch.compile (inductor) before the first frame: fewer, fused kernels per frame "
                        "on a GPU, after seconds to minutes of compiling (needs --backend torch or auto)")
    parser.add_argument("--network-every", type=int, default=1, metavar="K",
                        help="online: run the network on every K-th frame only and answer the frames between "
                        "by propagation (Lucas-Kanade, fused with each network result), as the node answers "
                        "a camera faster than the network; about K times faster (default 1: every frame)")
    parser.add_argument("--render", help="also write the video with the tracks drawn (.mp4 or a folder)")
    parser.add_argument("--fps", type=float, default=None,
                        help=f"frame rate for --render when the input has none (default {DEFAULT_FPS:g})")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("bootstap-track", lambda: run(args))


def is_query_set_file(path) -> bool:
    """Whether `path` is a query set (.npz, a zip) rather than a query CSV."""
    return Path(path).suffix.lower() == ".npz" or zipfile.is_zipfile(path)


def warn(message: str) -> None:
    print(f"bootstap-track: warning: {message}", file=sys.stderr)


def check_arguments(args: argparse.Namespace) -> None:
    """What can be refused from the command line alone, before any file is read."""
    import torch

    from bootstap_ros.video import VIDEO_SUFFIXES

    if args.grid is not None and args.grid < 1:
        raise UsageError(f"--grid must be at least 1 (an NxN grid of points), got {args.grid}")
    if args.network_every < 1:
        raise UsageError(f"--network-every must be at least 1, got {args.network_every}")
    if args.network_every > 1 and (args.mode != "online" or (args.queries and is_query_set_file(args.queries))):
        raise UsageError("--network-every goes with --mode online and points (a grid or a CSV), not a query set")
    if args.torch_compile and (args.mode != "online" or args.backend not in ("auto", "torch")):
        raise UsageError(f"--torch-compile compiles the online torch backend, not --mode {args.mode} "
                         f"--backend {args.backend}: use --mode online and --backend torch (or auto)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device} was asked for but CUDA is not available; use --device cpu")
    if args.softmax_temperature is not None and not args.softmax_temperature > 0:
        raise UsageError(f"--softmax-temperature must be positive, got {args.softmax_temperature}")
    if args.queries and args.mode == "offline" and is_query_set_file(args.queries):
        raise UsageError(f"--queries {args.queries}: a query set is tracked online (its points carry "
                         "their demonstration frame's query features, which the offline forward cannot "
                         "take): drop --mode offline")
    if args.render and Path(args.render).suffix and Path(args.render).suffix.lower() not in VIDEO_SUFFIXES:
        raise UsageError(f"--render {args.render}: expected a video ({', '.join(VIDEO_SUFFIXES)}) or a folder "
                         "path without a suffix (PNG frames)")
    prepare_output(args.output, "--output")
    if args.render:
        prepare_output(args.render, "--render", folder=not Path(args.render).suffix)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from bootstap_ros.config import parse_size
    from bootstap_ros.model import load_checkpoint
    from bootstap_ros.model.checkpoint import resolve_checkpoint, with_settings
    from bootstap_ros.queries import grid_queries, read_queries_csv
    from bootstap_ros.video import open_video

    check_arguments(args)
    online_options = {"backend": args.backend, "precision": args.precision}
    if args.torch_compile:
        online_options.update(backend="torch", torch_compile=True)
    source = open_video(args.video)
    height, width = source.size
    if source.num_frames_is_exact and source.num_frames == 1:
        warn(f"{args.video} holds 1 frame: each point is only located on its own frame, nothing is "
             "tracked over time (a video is [T, H, W, 3] with T > 1)")
    query_set = None
    if args.queries and is_query_set_file(args.queries):
        from bootstap_ros.tracking.query_set import QuerySet

        query_set = QuerySet.load(args.queries)
        num_points = len(query_set)
    elif args.queries:
        queries = read_queries_csv(args.queries, num_frames=source.num_frames if source.num_frames_is_exact
                                   else None, size=(height, width))
        num_points = len(queries)
    else:
        queries = grid_queries(8 if args.grid is None else args.grid, (height, width), t=0)
        num_points = len(queries)
    args.checkpoint = str(resolve_checkpoint(args.checkpoint))
    # Project checkpoints (the embedded one too) know whether they are causal; official
    # ones follow the mode (online = causal) unless --causal/--no-causal says otherwise.
    loaded = load_checkpoint(args.checkpoint, causal=args.causal,
                             official_default_causal=args.mode == "online")
    resolution = None if args.resolution is None else (args.resolution, args.resolution)
    refine = parse_size(args.refine_resolution) if args.refine_resolution else None
    model = with_settings(
        loaded.model, softmax_temperature=args.softmax_temperature, resolution=resolution,
        refine_resolution=refine)
    print(f"{loaded.source} checkpoint {args.checkpoint}: {'causal' if model.config.causal else 'non-causal'}, "
          f"{model.config.resolution[0]}x{model.config.resolution[1]}, refinement at "
          f"{', '.join(f'{h}x{w}' for h, w in model.config.refinement_resolutions)}, "
          f"softmax temperature {model.config.softmax_temperature:g}, {args.mode} mode, "
          f"{num_points} points, video {width}x{height} ({source.num_frames} frames)")
    identity = None
    if query_set is not None:
        from bootstap_ros.tracking.query_set import ModelIdentity

        identity = ModelIdentity.of(args.checkpoint, model.config)
        problem = query_set.model.mismatch(identity)
        print(f"query set {args.queries}: {num_points} points from {query_set.source or 'a demonstration'}"
              + (f"; made with another model ({problem}): re-encoding its points from the demonstration "
                 "frame" if problem else ""))

    if args.torch_compile:
        print("--torch-compile: compiling the backbone pass and a mixer block before the first frame "
              "(seconds to minutes; the compiler caches its kernels, so later runs start sooner)")
    start = time.perf_counter()
    result = track(args, model, source, query_set, identity, None if query_set is not None else queries,
                   online_options)
    elapsed = time.perf_counter() - start
    num_frames = result.tracks.shape[1]
    if num_frames == 1 and not (source.num_frames_is_exact and source.num_frames == 1):
        warn(f"{args.video} gave 1 frame: nothing was tracked over time")
    result.save(args.output)
    visible = np.isfinite(result.tracks[..., 0]) & ~result.occluded
    print(f"wrote {args.output}: {num_points} points x {num_frames} frames, "
          f"{visible.mean() * 100 if visible.size else 0:.1f}% visible, "
          f"{num_frames / max(elapsed, 1e-9):.1f} frames/s")
    if args.render:
        from bootstap_ros.render import render_video

        fps = args.fps or source.fps or DEFAULT_FPS
        render_video(source, result.tracks, result.occluded, args.render, fps=fps)
        print(f"rendered {args.render}")
    return 0


def track(args, model, source, query_set, identity, queries, online_options):
    """The tracks of the query set or of `queries` [N, 3], with progress on stderr."""
    import bootstap_ros.tracking as tracking  # looked up at call time, so tests can stand in for it
    from bootstap_ros.tracking.query_set import track_query_set

    with Progress(total=source.num_frames, desc=f"tracking ({args.mode})") as progress:
        if query_set is not None:
            return track_query_set(model, source, query_set, identity=identity, device=args.device,
                                   progress=progress.update, **online_options)
        if args.mode == "online":
            return tracking.track_online(model, source, queries, device=args.device, progress=progress.update,
                                         network_every=args.network_every, **online_options)
        video = source.read_all()
        progress.set_total(len(video))
        result = tracking.track_offline(model, video, queries, device=args.device)
        progress.update(len(video))
        return result


if __name__ == "__main__":
    sys.exit(main())
