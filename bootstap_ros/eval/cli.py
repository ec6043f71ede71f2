"""``bootstap-eval``: evaluate a tracker on TAP-Vid DAVIS, RGB-Stacking or RoboTAP.

This module owns the evaluation run: parsing the command line into an
``EvalConfig``, building the predictor, running it over the videos with a
progress bar, and writing RESULTS.json, the optional PREDS.npz and report, and
the summary table.

    bootstap-eval DATASET --checkpoint CKPT --output RESULTS.json \
        [--format auto|robotap|davis|rgb_stacking] [--query-mode first|strided] \
        [--mode online|offline] [--causal|--no-causal] [--resolution 256] \
        [--refine-resolution HxW] [--softmax-temperature T] \
        [--save-predictions PREDS.npz] [--max-videos K] [--tracker bootstapir|lk] \
        [--device cpu|cuda] [--report DIR]

Exit codes: 0 done, 1 a failure while running, 2 bad arguments or input (a dataset
file of another layout, a checkpoint that does not load): `bootstap_ros.cli.common`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import importlib.metadata
import json
import math
import os
import sys
import zipfile
from dataclasses import asdict, dataclass
from itertools import chain

import numpy as np

from bootstap_ros.backends.base import BACKEND_CHOICES, PRECISION_CHOICES
from bootstap_ros.cli.common import prepare_output, run_command
from bootstap_ros.eval.datasets import FORMATS, QUERY_MODES, EvalSample, TapVidDataset, sample_queries
from bootstap_ros.eval.metrics import THRESHOLDS, compute_video_metrics, mean_over_videos
from bootstap_ros.eval.predictors import ModelPredictor, Predictor, predict_tracks

TRACKERS = ("bootstapir", "lk")
MODES = ("online", "offline")
DEVICES = ("cpu", "cuda")
REPORT_WORST_VIDEOS = 3


@dataclass
class EvalConfig:
    """Everything one evaluation run depends on; the defaults live here."""

    dataset: str
    output: str
    checkpoint: str | None = None
    format: str = "auto"
    query_mode: str = "first"
    mode: str = "online"
    causal: bool | None = None  # None: causal for online, non-causal for offline
    resolution: int = 256
    softmax_temperature: float | None = None  # None: the checkpoint's (BootsTAPIR 10, TAPIR 20)
    refine_resolution: str | None = None  # HxW top of the refinement ladder; None: the model's (one level)
    save_predictions: str | None = None
    max_videos: int | None = None
    tracker: str = "bootstapir"
    backend: str = "auto"  # online inference backend: auto|torch|onnxruntime|tensorrt
    precision: str = "auto"  # online inference precision: auto|fp32|bf16|fp16 (auto: fp16 on tensorrt)
    frame_stride: int = 1  # feed every K-th frame only (as a node that drops frames under load)
    device: str | None = None  # None: cuda when available (bootstapir only).
    report: str | None = None
    max_points: int | None = None  # score the first K queries of each video only
    realtime: float | None = None  # frames per second of a real-time replay; None: clock-free
    propagation: str = "lk"  # real-time network: answers between network steps (lk) or none


# ---------------------------------------------------------------------------
# The BootsTAPIR hook.
# ---------------------------------------------------------------------------

def make_bootstapir_predictor(config: EvalConfig) -> Predictor:
    """The BootsTAPIR predictor for `config` (torch is imported only here)."""
    from bootstap_ros.model import load_checkpoint
    from bootstap_ros.model.checkpoint import resolve_checkpoint

    if config.mode == "online" and config.causal is False:
        raise ValueError("online evaluation needs a causal model: drop --no-causal or use --mode offline")
    loaded = load_checkpoint(resolve_checkpoint(config.checkpoint), causal=config.causal,
                             official_default_causal=config.mode == "online")
    if config.mode == "online" and not loaded.config.causal:
        raise ValueError(f"{loaded.path} holds a non-causal model: online evaluation needs a "
                         "causal one; use --mode offline")
    # Record what runs: the checkpoint file (the embedded model when none was given) and
    # whether the model is causal (project checkpoints say so themselves).
    config.checkpoint = loaded.path
    config.causal = loaded.config.causal
    from bootstap_ros.model.checkpoint import with_settings

    from bootstap_ros.config import parse_size

    model = with_settings(loaded.model, softmax_temperature=config.softmax_temperature,
                          refine_resolution=parse_size(config.refine_resolution) if config.refine_resolution
                          else None)
    config.softmax_temperature = model.config.softmax_temperature
    top = model.config.refinement_resolutions[-1]
    config.refine_resolution = f"{top[0]}x{top[1]}"
    # --resolution is the evaluation raster; the model keeps the resolution it was
    # trained at and resizes frames to it itself (256 for the official checkpoints).
    if config.mode == "offline" and config.precision not in ("auto", "fp32"):
        raise ValueError("--precision applies to online tracking; offline runs float32")
    return ModelPredictor(model, config.mode, config.device, config.backend, config.precision)


def make_predictor(config: EvalConfig) -> Predictor:
    if config.tracker == "lk":
        from bootstap_ros.eval.lk import LucasKanadePredictor

        return LucasKanadePredictor()
    return make_bootstapir_predictor(config)


# ---------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bootstap-eval",
        description="Evaluate a point tracker on TAP-Vid DAVIS, RGB-Stacking or RoboTAP "
        "(AJ, <delta_avg and OA as in the TAP-Vid papers).",
    )
    parser.add_argument("dataset", help="a TAP-Vid pickle, or a folder of robotap_split*.pkl")
    parser.add_argument("--checkpoint", help="model checkpoint (default: the embedded model)")
    parser.add_argument("--output", required=True, help="where to write RESULTS.json")
    parser.add_argument("--format", default="auto", choices=("auto", *FORMATS))
    parser.add_argument("--query-mode", default="first", choices=QUERY_MODES)
    parser.add_argument("--mode", default="online", choices=MODES,
                        help="online: causal frame-by-frame tracking; offline: whole video at once")
    parser.add_argument("--causal", default=None, action=argparse.BooleanOptionalAction,
                        help="run an official checkpoint causal (default: on for online, off for "
                        "offline); project checkpoints say whether they are causal")
    parser.add_argument("--resolution", type=int, default=256,
                        help="evaluation raster size; the papers use 256")
    parser.add_argument("--refine-resolution", metavar="HxW",
                        help="top of the model's refinement ladder (e.g. 512x512; default: the model "
                        "resolution, one level); the ladder refines the evaluation frames, so evaluate at "
                        "--resolution 512 for 512 detail")
    parser.add_argument("--softmax-temperature", type=float, default=None,
                        help="softmax temperature of the initial cost-volume estimate (default: the "
                        "checkpoint's; official BootsTAPIR weights 10, TAPIR 20)")
    parser.add_argument("--save-predictions", metavar="PREDS.npz")
    parser.add_argument("--max-videos", type=int, metavar="K")
    parser.add_argument("--tracker", default="bootstapir", choices=TRACKERS)
    parser.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                        help="online inference backend (auto: the fastest available here)")
    parser.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                        help="online inference precision (auto: fp16 for tensorrt, else fp32, but with "
                        "--realtime as the node: bf16 on a CPU with bf16 hardware; bf16: CPU or CUDA; fp16: CUDA)")
    parser.add_argument("--frame-stride", type=int, default=1, metavar="K",
                        help="give the tracker every K-th frame only and score those frames (the node "
                        "drops frames under load: K=2 measures dropping every other one)")
    parser.add_argument("--device", choices=DEVICES, help="default: cuda when available")
    parser.add_argument("--report", metavar="DIR", help="write a per-video CSV, plots and frame strips")
    parser.add_argument("--max-points", type=int, metavar="K",
                        help="track and score the first K queries of each video only (e.g. 64, as a node runs)")
    parser.add_argument("--realtime", type=float, metavar="FPS",
                        help="feed each video as a camera at FPS against this machine's clock and score what "
                        "a subscriber holds when the next frame arrives (online, first-frame queries); "
                        "default: clock-free, every frame given however long it takes")
    parser.add_argument("--propagation", default="lk", choices=("lk", "none"),
                        help="with --realtime and the network: answer every frame by propagating between "
                        "network steps (lk, as the node does by default) or only the network's frames (none)")
    return parser


def parse_config(argv=None) -> EvalConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resolution < 8:
        parser.error(f"--resolution must be at least 8, got {args.resolution}")
    if args.refine_resolution:
        from bootstap_ros.config import parse_size

        try:
            size = parse_size(args.refine_resolution)
        except ValueError as error:
            parser.error(f"--refine-resolution: {error}")
        if size[0] % 8 or size[1] % 8:
            parser.error(f"--refine-resolution must be multiples of 8, got {args.refine_resolution}")
    if args.softmax_temperature is not None and not args.softmax_temperature > 0:
        parser.error(f"--softmax-temperature must be positive, got {args.softmax_temperature}")
    if args.max_videos is not None and args.max_videos < 1:
        parser.error(f"--max-videos must be positive, got {args.max_videos}")
    if args.frame_stride < 1:
        parser.error(f"--frame-stride must be at least 1, got {args.frame_stride}")
    if args.max_points is not None and args.max_points < 1:
        parser.error(f"--max-points must be positive, got {args.max_points}")
    if args.realtime is not None:
        if not args.realtime > 0:
            parser.error(f"--realtime must be a positive frame rate, got {args.realtime}")
        if args.mode != "online" or args.query_mode != "first" or args.frame_stride != 1:
            parser.error("--realtime replays a camera: it takes --mode online, --query-mode first and no "
                         "--frame-stride")
    return EvalConfig(**vars(args))


# ---------------------------------------------------------------------------
# Outputs.
# ---------------------------------------------------------------------------


class PredictionWriter:
    """Writes PREDS.npz one video at a time (a .npz is a zip of .npy files).

    Keys are ``{name}/query_points``, ``{name}/tracks``, ``{name}/occluded``,
    ``{name}/gt_tracks`` and ``{name}/gt_occluded``; ``numpy.load`` reads it.
    Writing as we go keeps RoboTAP's strided predictions out of memory.
    """

    def __init__(self, path: str):
        _make_parent(path)
        self._zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True)

    def add(self, name: str, **arrays: np.ndarray) -> None:
        for key, array in arrays.items():
            with self._zip.open(f"{name}/{key}.npy", "w", force_zip64=True) as file:
                np.lib.format.write_array(file, np.asanyarray(array), allow_pickle=False)

    def close(self) -> None:
        self._zip.close()


def _make_parent(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _installed_version(distribution: str) -> str | None:
    # Read from the package metadata so that an LK run does not import torch.
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe_run(config: EvalConfig, dataset: TapVidDataset) -> dict:
    """The resolved configuration recorded in RESULTS.json."""
    import cv2

    import bootstap_ros

    def absolute(path):
        return os.path.abspath(path) if path else None

    checkpoint = absolute(config.checkpoint)
    described = asdict(config)
    described.update(
        dataset=absolute(config.dataset),
        output=absolute(config.output),
        save_predictions=absolute(config.save_predictions),
        report=absolute(config.report),
        format=dataset.format,
        dataset_files=[os.path.abspath(path) for path in dataset.files],
        checkpoint=checkpoint,
        checkpoint_sha256=_sha256(checkpoint) if checkpoint else None,
        versions={
            "bootstap_ros": bootstap_ros.__version__,
            "numpy": np.__version__,
            "torch": _installed_version("torch"),
            "opencv": cv2.__version__,
            "python": sys.version.split()[0],
        },
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    return described


def _json_safe(value):
    """NaN is not JSON: write it as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def format_table(mean: dict, label: str) -> str:
    """The paper's layout: AJ, <delta_avg and OA in percent, one decimal."""
    header = ("Dataset (query mode)", "AJ", "<delta_avg", "OA")
    row = (
        label,
        *(f"{100 * mean[key]:.1f}" for key in
          ("average_jaccard", "average_pts_within_thresh", "occlusion_accuracy")),
    )
    width = max(len(header[0]), len(label))
    lines = [f"{header[0]:<{width}}  {header[1]:>6}  {header[2]:>10}  {header[3]:>6}",
             f"{row[0]:<{width}}  {row[1]:>6}  {row[2]:>10}  {row[3]:>6}"]
    thresholds = "  ".join(f"d={d}: J {100 * mean[f'jaccard_{d}']:.1f} / "
                           f"<d {100 * mean[f'pts_within_{d}']:.1f}" for d in THRESHOLDS)
    return "\n".join([*lines, thresholds])


# ---------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------


def _resolve_device(config: EvalConfig) -> None:
    if config.tracker == "bootstapir" and config.device is None:
        import torch

        config.device = "cuda" if torch.cuda.is_available() else "cpu"


def keep_every_kth_frame(sample: EvalSample, stride: int, query_mode: str) -> EvalSample:
    """`sample` as a tracker sees it when it gets frames 0, K, 2K, ... only.

    The video and the ground truth keep those frames; the queries are sampled
    again on them by the dataset's own rule (a track first visible on a dropped
    frame is queried on the next kept frame where it is visible), so only frames
    the tracker saw are scored.
    """
    _, first = np.unique(sample.track_ids, return_index=True)  # strided mode repeats tracks
    tracks = np.sort(first)
    query_points, target_points, occluded, rows = sample_queries(
        sample.occluded[tracks, ::stride], sample.target_points[tracks, ::stride], query_mode)
    return dataclasses.replace(sample, video=np.ascontiguousarray(sample.video[::stride]),
                               query_points=query_points, target_points=target_points, occluded=occluded,
                               track_ids=sample.track_ids[tracks][rows])


def first_queries(sample: EvalSample, count: int) -> EvalSample:
    """`sample` with its first `count` queries only (a node tracking `count` points)."""
    return dataclasses.replace(sample, query_points=sample.query_points[:count],
                               target_points=sample.target_points[:count], occluded=sample.occluded[:count],
                               track_ids=sample.track_ids[:count])


def realtime_replay(predictor: Predictor, sample: EvalSample, config: EvalConfig):
    """One video replayed as a camera at `config.realtime` FPS: the held tracks and occlusion
    (what is scored) and the video's matched metrics and timing, flat for RESULTS.json."""
    from bootstap_ros.eval.lk import LucasKanadePredictor
    from bootstap_ros.eval.realtime import held_predictions, replay_clip, score

    def make_tracker():
        from bootstap_ros.backends import camera_precision
        from bootstap_ros.tracking.tracker import CausalTracker

        # As the node runs: precision auto is bf16 on a CPU with bf16 hardware.
        precision = camera_precision(predictor.precision, predictor.backend, predictor.device)
        return CausalTracker(predictor.model, max_points=max(1, len(sample.query_points)), device=predictor.device,
                             backend=predictor.backend, precision=precision)

    if isinstance(predictor, LucasKanadePredictor):
        system = "lk"
    else:
        system = "propagated" if config.propagation == "lk" else "network"
    replay, ids = replay_clip(system, sample.video, sample.query_points, config.realtime, make_tracker=make_tracker)
    scores = score(replay, sample.query_points, sample.target_points, sample.occluded, ids)
    tracks, occluded = held_predictions(replay, ids, sample.query_points[:, [2, 1]])
    extra = {f"matched_{key}": value for key, value in scores["matched"].items()}
    extra.update(scores["timing"])
    extra["system"] = system
    return tracks, occluded, extra


REALTIME_FIGURES = ("matched_average_jaccard", "matched_average_pts_within_thresh", "matched_occlusion_accuracy",
                    "frames_answered", "output_hz", "latency_p50_ms", "latency_p95_ms", "network_steps")


def realtime_means(per_video) -> dict:
    """The mean over videos of each real-time figure (NaN where a video has none)."""
    videos = list(per_video)
    return {key: float(np.nanmean([v[key] for v in videos])) if videos else float("nan")
            for key in REALTIME_FIGURES}


def run_evaluation(config: EvalConfig, predictor: Predictor | None = None) -> dict:
    """Evaluate ``predictor`` (built from ``config`` when None); return RESULTS.json's content."""
    from tqdm import tqdm

    dataset = TapVidDataset(config.dataset, config.format, config.query_mode, config.resolution)
    prepare_output(config.output, "--output")
    if config.save_predictions:
        prepare_output(config.save_predictions, "--save-predictions")
    if config.report:
        prepare_output(config.report, "--report", folder=True)
    if predictor is None:
        _resolve_device(config)
        predictor = make_predictor(config)
    # The first video is read and checked before the progress bar starts, so that a file of
    # another layout gives its error alone rather than under an empty bar.
    videos = iter(dataset)
    first = next(videos, None)
    writer = PredictionWriter(config.save_predictions) if config.save_predictions else None
    worst = None
    if config.report:
        from bootstap_ros.eval.report import WorstVideos

        worst = WorstVideos(REPORT_WORST_VIDEOS)

    per_video: dict[str, dict] = {}
    skipped: list[str] = []
    progress = tqdm(chain([first] if first is not None else [], videos), total=config.max_videos,
                    unit="video", desc="bootstap-eval")
    try:
        for sample in progress:
            if config.frame_stride > 1:
                sample = keep_every_kth_frame(sample, config.frame_stride, config.query_mode)
            if config.max_points is not None:
                sample = first_queries(sample, config.max_points)
            name = sample.name
            if name in per_video or name in skipped:
                name = f"{os.path.basename(sample.source)}:{name}"
            if len(sample.query_points) == 0:
                # The official code has no answer here (it fails or gives NaN).
                progress.write(f"skipping video {name!r}: no visible point to query")
                skipped.append(name)
            else:
                extra = {}
                if config.realtime:
                    tracks, occluded, extra = realtime_replay(predictor, sample, config)
                else:
                    tracks, occluded = predict_tracks(
                        predictor, sample.video, sample.query_points, config.query_mode
                    )
                metrics = compute_video_metrics(
                    sample.query_points, sample.occluded, sample.target_points,
                    occluded, tracks, config.query_mode,
                )
                per_video[name] = {
                    **metrics,
                    "num_queries": int(len(sample.query_points)),
                    "num_frames": int(len(sample.video)),
                    **extra,
                }
                running = np.mean([video["average_jaccard"] for video in per_video.values()])
                progress.set_postfix(AJ=f"{100 * running:.1f}", refresh=False)
                if writer:
                    writer.add(
                        name,
                        query_points=sample.query_points,
                        tracks=tracks,
                        occluded=occluded,
                        gt_tracks=sample.target_points,
                        gt_occluded=sample.occluded,
                    )
                if worst is not None:
                    worst.offer(name, metrics["average_jaccard"], sample.video,
                                sample.target_points, sample.occluded, tracks, occluded)
            if config.max_videos is not None and len(per_video) + len(skipped) >= config.max_videos:
                break
    finally:
        progress.close()
        if writer:
            writer.close()

    mean = mean_over_videos(per_video.values())
    if config.realtime:
        mean.update(realtime_means(per_video.values()))
    results = {
        **mean,
        "clock": f"real time, {config.realtime:g} FPS" if config.realtime else "clock-free",
        "num_videos": len(per_video),
        "skipped_videos": skipped,
        "per_video": per_video,
        "config": describe_run(config, dataset),
    }
    _make_parent(config.output)
    with open(config.output, "w") as file:
        json.dump(_json_safe(results), file, indent=2)
        file.write("\n")
    if config.report:
        from bootstap_ros.eval.report import write_report

        write_report(config.report, per_video, mean, worst)
    return results


def main(argv=None) -> int:
    config = parse_config(argv)
    # DatasetFormatError, CheckpointError and FrameError are ValueErrors (exit 2) whose
    # messages say what to do; a failure while running (RuntimeError, OSError) exits 1.
    return run_command("bootstap-eval", lambda: evaluate_and_print(config))


def evaluate_and_print(config: EvalConfig) -> int:
    results = run_evaluation(config)
    label = f"{results['config']['format']} ({config.query_mode}, {results['clock']})"
    print(format_table(results, label))
    if config.realtime:
        print(f"held when the next frame arrives (scored above); answers at their own frames: AJ "
              f"{100 * results['matched_average_jaccard']:.1f}; frames answered "
              f"{100 * results['frames_answered']:.0f}%, {results['output_hz']:.1f} answers/s, latency p50 "
              f"{results['latency_p50_ms']:.1f} ms, p95 {results['latency_p95_ms']:.1f} ms")
    print(f"{results['num_videos']} videos; results written to {config.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
