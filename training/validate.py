"""A label-free score of a tracker on clips of a robot's own logs, and `bootstap-validate`.

A robot team has no labels for its camera. What it does have is the tracker's own
consistency: a point tracked forward through a clip and then tracked back from where it
ended must come back to where it started. `cycle_score` measures that on clips set aside
from the logs:

* each clip gets queries on its first frame (at textured pixels, the same for every
  model: they depend on the clip and a seed only);
* the model tracks them forward over the clip (whole clip, as the teacher does, causal
  or not); where it calls a point visible at an end frame (the middle and the last
  frame), the point is queried again there and tracked back on the time-reversed clip
  to the first frame;
* a round trip succeeds at threshold d when the point was called visible at the end
  frame and again back on the first frame, and came back within d pixels (256 raster)
  of its query. The score is the success rate over every query, averaged over the end
  frames and the thresholds 1, 2, 4, 8 and 16 px, like TAP-Vid's <delta_avg.

A point that is really hidden at the end frame cannot succeed, whatever the model: the
ceiling is below 1 and the same for every model, so the score ranks models of one clip
set, it does not grade them absolutely. Calling a visible point occluded fails the trip;
calling a hidden point visible sends the return query somewhere wrong, which seldom comes
back. How it ranks models against AJ on labelled domains: docs/training.md, Bootstrapping recipe.

    bootstap-validate --data ~/bags/run3 --checkpoint runs/boot/final.pt runs/boot/best.pt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from bootstap_ros.model.tapir import visibility

PROG = "bootstap-validate"
THRESHOLDS = (1.0, 2.0, 4.0, 8.0, 16.0)
SCORE_RASTER = 256.0


def first_frame_queries(video: torch.Tensor, num_points: int, seed: int) -> torch.Tensor:
    """[1, N, 3] queries (t, y, x) on the first frame of uint8 clip [1, T, H, W, 3], at
    textured pixels, a pure function of the clip and the seed."""
    from .pseudo_labels import sample_textured_queries

    generator = torch.Generator().manual_seed(int(seed))
    queries = sample_textured_queries(generator, video[:, :1], num_points, 1.0)
    return queries.to(video.device)


def cycle_errors(model: torch.nn.Module, video: torch.Tensor, queries: torch.Tensor, amp: str = "off"):
    """Round trips of `queries` (on frame 0) through uint8 clip [1, T, H, W, 3]: per end
    frame (middle, last), (distance back at frame 0 in the 256 raster [N], round trip
    visible [N])."""
    from .loop import model_forward

    causal = model.config.causal
    frames, height, width = video.shape[1:4]
    scale = torch.tensor([SCORE_RASTER / width, SCORE_RASTER / height], device=video.device)
    ends = sorted({frames // 2, frames - 1} - {0})
    with torch.no_grad():
        forward = model_forward(model, video, queries, amp, causal)
        seen = visibility(forward.occlusion.float(), forward.expected_dist.float())  # [1, N, T]
        reversed_video = torch.flip(video, dims=[1])
        returns = []
        for end in ends:
            xy = forward.tracks[:, :, end].float()
            returns.append(torch.stack([torch.full_like(xy[..., 0], float(frames - 1 - end)),
                                        xy[..., 1], xy[..., 0]], -1))
        back = model_forward(model, reversed_video, torch.cat(returns, 1), amp, causal)
        back_seen = visibility(back.occlusion.float(), back.expected_dist.float())[:, :, -1]
        start = queries[..., [2, 1]].float()
    results = []
    count = queries.shape[1]
    for i, end in enumerate(ends):
        part = slice(i * count, (i + 1) * count)
        distance = torch.linalg.norm((back.tracks[:, part, -1].float() - start) * scale, dim=-1)[0]
        results.append((distance.cpu(), (seen[0, :, end] & back_seen[0, part]).cpu()))
    return results


def cycle_score(model: torch.nn.Module, videos: Sequence, device: torch.device, num_points: int = 64,
                seed: int = 0, amp: str = "off",
                progress: Optional[Callable[[int, int], None]] = None) -> Dict[str, float]:
    """The label-free score of `model` on uint8 clips [T, H, W, 3] (numpy or torch): see the
    module docstring. Returns the score and its parts (success rate per threshold,
    share of round trips called visible, median return distance of those). `progress` is
    called with (clips done, clips) after each clip."""
    was_training = model.training
    model.eval()
    successes = {d: [] for d in THRESHOLDS}
    visible, distances = [], []
    try:
        for index, clip in enumerate(videos):
            video = torch.as_tensor(np.asarray(clip))[None].to(device)
            queries = first_frame_queries(video, num_points, int(np.random.SeedSequence(
                [seed, index, 57]).generate_state(1, np.uint32)[0]))
            for distance, seen in cycle_errors(model, video, queries, amp):
                for d in THRESHOLDS:
                    successes[d].append(((distance < d) & seen).float().mean().item())
                visible.append(seen.float().mean().item())
                distances.extend(distance[seen].tolist())
            if progress is not None:
                progress(index + 1, len(videos))
    finally:
        model.train(was_training)
    if not visible:
        raise ValueError("cycle_score needs at least one clip")
    per_threshold = {f"cycle_within_{int(d)}": float(np.mean(successes[d])) for d in THRESHOLDS}
    return {"cycle_score": float(np.mean(list(per_threshold.values()))), **per_threshold,
            "cycle_visible": float(np.mean(visible)),
            "cycle_median_px": float(np.median(distances)) if distances else float("nan"),
            "clips": len(videos)}


def holdout_split(clips: List[Dict], fraction: float, max_clips: int) -> List[int]:
    """Indices of the clips set aside for the score: the last `fraction` of each source's
    clips (the end of each log, in time order, so they share no frame with the training
    clips before them), at least one per source of two clips or more, at most `max_clips`
    in all (taken evenly over the sources). Empty when fraction is 0."""
    if fraction <= 0:
        return []
    by_source: Dict[str, List[int]] = {}
    for index, clip in enumerate(clips):
        by_source.setdefault(clip.get("source", ""), []).append(index)
    chosen: List[List[int]] = []
    for indices in by_source.values():
        if len(indices) < 2:
            continue
        count = min(len(indices) - 1, max(1, int(round(fraction * len(indices)))))
        chosen.append(indices[-count:])
    held: List[int] = []
    while len(held) < max_clips and any(chosen):  # one from each source in turn, latest first
        for indices in chosen:
            if indices and len(held) < max_clips:
                held.append(indices.pop())
    return sorted(held)


# ----------------------------------------------------------------------------- command line

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="bootstap-validate",
        description="Score trackers on a robot's own logs without labels: the forward-backward "
                    "cycle consistency of their tracks (higher is better; it ranks models on the "
                    "same clips, it is not an accuracy).")
    parser.add_argument("--data", action="append", required=True, metavar="PATH",
                        help="a rosbag2 bag (folder, .mcap, .db3), a video, an image folder or a "
                             "folder of them; repeat for more")
    parser.add_argument("--checkpoint", nargs="+", default=[None], metavar="CKPT",
                        help="checkpoints to score ('embedded' or none: the embedded model)")
    parser.add_argument("--image-topic", default=None, help="the bags' image topic (default: the only one)")
    parser.add_argument("--frames", type=int, default=24, help="frames per clip (default 24)")
    parser.add_argument("--fps", type=float, default=None, help="resample the logs to this rate")
    parser.add_argument("--points", type=int, default=64, help="queries per clip (default 64)")
    parser.add_argument("--max-clips", type=int, default=32, help="score at most this many clips, "
                        "spread over the logs (default 32)")
    parser.add_argument("--cache", default=None, metavar="DIR",
                        help="where decoded clips go (default: a temporary folder)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--output", default=None, metavar="JSON", help="also write the scores here")
    args = parser.parse_args(argv)
    from bootstap_ros.cli.common import run_command

    results: List[Dict] = []
    status = run_command(PROG, lambda: results.extend(validate(args)))
    if status:
        return status
    width = max(len(r["checkpoint"]) for r in results)
    print(f"{'checkpoint':<{width}}  score   <1px  <4px  <16px visible")
    best = max(results, key=lambda r: r["cycle_score"])
    for r in results:
        mark = "  <- best" if r is best and len(results) > 1 else ""
        print(f"{r['checkpoint']:<{width}}  {r['cycle_score']:.3f}  {r['cycle_within_1']:.2f}  "
              f"{r['cycle_within_4']:.2f}  {r['cycle_within_16']:.2f}  {r['cycle_visible']:.2f}{mark}")
    print(f"{results[0]['clips']} clips of {args.frames} frames, {args.points} points each")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def say(line: str) -> None:
    """A progress line on stderr (the table goes to stdout)."""
    print(f"{PROG}: {line}", file=sys.stderr, flush=True)


def validate(args) -> List[Dict]:
    import tempfile

    from bootstap_ros.model import load_checkpoint
    from bootstap_ros.model.checkpoint import resolve_checkpoint

    from .clips import ClipConfig
    from .logs import LogClips, prepare_logs

    device = torch.device(args.device)
    names = [None if name in (None, "embedded") else name for name in args.checkpoint]
    models = [(name or "embedded model", load_checkpoint(resolve_checkpoint(name)).model) for name in names]
    sizes = {model.config.resolution[0] for _, model in models}
    with tempfile.TemporaryDirectory() as scratch:
        cache = Path(args.cache) if args.cache else Path(scratch)
        results = []
        for size in sorted(sizes):
            say(f"decoding the logs into clips of {args.frames} frames at {size}x{size} ...")
            clips = LogClips(prepare_logs(args.data, cache / f"size_{size}",
                                          ClipConfig(frames=args.frames, fps=args.fps, size=size),
                                          args.image_topic))
            chosen = np.linspace(0, len(clips) - 1, min(args.max_clips, len(clips))).round().astype(int)
            videos = [clips[int(i)]["video"] for i in sorted(set(chosen.tolist()))]
            say(f"{len(clips)} clips; scoring {len(videos)} of them")
            for name, model in models:
                if model.config.resolution[0] == size:
                    def progress(done, total, name=name):
                        say(f"{name}: {done}/{total} clips scored")

                    score = cycle_score(model.to(device), videos, device, args.points, progress=progress)
                    results.append({"checkpoint": name, **score})
    order = {name or "embedded model": i for i, name in enumerate(names)}
    return sorted(results, key=lambda r: order[r["checkpoint"]])


if __name__ == "__main__":
    sys.exit(main())
