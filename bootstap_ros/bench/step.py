"""bootstap-bench: per-frame latency, memory and accuracy of the tracker's backends.

For each backend, device and precision and each point count it runs
`CausalTracker.step` on a synthetic 256x256 clip (points added on the first
frame) and records per-frame latency (mean, p50, p95, max), FPS, the time to the
first tracked frame (exports, engine builds, CUDA graph captures, compilation),
peak RSS and, on CUDA, the peak allocated memory. Every point count is also run with the
plain eager float32 torch step (`TAPIR.estimate_trajectories` over each block,
state copied back: the model's unoptimised path) as the baseline; each run
reports its speed-up over it and its accuracy against it (max and median track
difference in pixels, visibility agreement). Runs of one point count alternate
frame by frame between the configurations, so load changes on the machine hit
all of them alike. Results go to JSON and a PNG plot, and a table is printed.

Exit codes as every tool of the package (`cli.common`): 2 for bad arguments or input
(an unknown backend, a missing checkpoint, --model-config without --random-weights),
1 for a failure while running; a backend that cannot run here is a row of the table
that says why, not a failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from bootstap_ros.cli.common import UsageError, prepare_output, run_command

LOG = logging.getLogger("bootstap_ros.bench.step")
BASELINE = "torch-eager"


@dataclass(frozen=True)
class RunSpec:
    backend: str
    device: str
    precision: str
    compiled: bool = False  # torch backend with torch_compile=True
    refine: Optional[Tuple[int, int]] = None  # top of the refinement ladder (None: one level)

    @property
    def label(self) -> str:
        ladder = f"@{self.refine[0]}x{self.refine[1]}" if self.refine else ""
        return f"{self.backend}{'+compile' if self.compiled else ''}{ladder}/{self.device}/{self.precision}"


def synthetic_clip(num_frames: int, size: int = 256, seed: int = 0) -> np.ndarray:
    """uint8 RGB [T, size, size, 3]: smooth random texture drifting (3, 2) px per frame."""
    rng = np.random.default_rng(seed)
    phases = rng.uniform(0, 2 * np.pi, 6)
    y, x = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32), indexing="ij")
    frames = []
    for t in range(num_frames):
        xs, ys = x - 3.0 * t, y - 2.0 * t
        rgb = [128 + 90 * np.sin(xs / 9 + phases[0]) * np.cos(ys / 13 + phases[1]),
               128 + 90 * np.sin((xs + ys) / 17 + phases[2]) * np.cos(xs / 5 + phases[3]),
               128 + 60 * np.cos(xs / 21 - ys / 7 + phases[4])]
        frames.append(np.stack(rgb, -1).round().clip(0, 255).astype(np.uint8))
    return np.stack(frames)


def _reference_backend_class():
    import torch

    from bootstap_ros.backends.torch_backend import TorchBackend
    from bootstap_ros.model.tapir import CausalState, QueryFeatures

    class EagerReferenceBackend(TorchBackend):
        """The plain eager float32 step: `estimate_trajectories` per block, state copied back."""

        name = BASELINE

        @torch.inference_mode()
        def step(self, features, blocks):
            packed = []
            for index in blocks:
                block = slice(index * self.block_size, (index + 1) * self.block_size)
                queries = QueryFeatures(self._query_lowres[:, block], self._query_hires[:, block])
                state = CausalState(self._state.conv1[:, :, :, block], self._state.conv2[:, :, :, block])
                result, new_state = self.model.estimate_trajectories(features, queries, state)
                self._state.conv1[:, :, :, block] = new_state.conv1
                self._state.conv2[:, :, :, block] = new_state.conv2
                packed.append(torch.cat([result.tracks[0, :, 0], result.occlusion[0, :, :1],
                                         result.expected_dist[0, :, :1]], dim=-1))
            return torch.cat(packed).cpu().numpy() if packed else np.zeros((0, 4), np.float32)

    return EagerReferenceBackend


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2 ** 20  # KiB on Linux, bytes on macOS


def _make_tracker(model, spec: RunSpec, num_points: int, block_size: int, cache_dir):
    from bootstap_ros.tracking import CausalTracker
    from bootstap_ros.tracking.tracker import default_block_size

    block = min(block_size or default_block_size(spec.device), num_points)
    max_points = -(-num_points // block) * block
    if spec.backend == BASELINE:  # plain eager: no CUDA graphs either
        backend = _reference_backend_class()(model, max_points, block, spec.device, "fp32", cuda_graphs=False)
        return CausalTracker(model, max_points, spec.device, block, backend=backend)
    exported = spec.backend in ("onnxruntime", "openvino", "tensorrt")
    options = {"cache_dir": cache_dir} if exported and cache_dir else {}
    if spec.compiled:
        options["torch_compile"] = True
    return CausalTracker(model, max_points, spec.device, block, backend=spec.backend,
                         precision=spec.precision, **options)


def _stats(latencies_ms: Sequence[float]) -> Dict[str, float]:
    values = np.asarray(latencies_ms, np.float64)
    return {"mean_ms": float(values.mean()), "p50_ms": float(np.percentile(values, 50)),
            "p95_ms": float(np.percentile(values, 95)), "max_ms": float(values.max()),
            "fps": float(1e3 / values.mean())}


def _accuracy(outputs: List[np.ndarray], reference: List[np.ndarray], visible, visible_ref) -> Dict[str, float]:
    diff = np.concatenate([np.linalg.norm(a - b, axis=-1) for a, b in zip(outputs, reference)])
    agree = np.concatenate([a == b for a, b in zip(visible, visible_ref)])
    return {"track_diff_max_px": float(diff.max()), "track_diff_median_px": float(np.median(diff)),
            "visibility_agreement": float(agree.mean())}


def run_benchmark(model, specs: Sequence[RunSpec], point_counts: Sequence[int], frames: int = 20,
                  warmup: int = 3, block_size: Optional[int] = None, cache_dir=None, seed: int = 0) -> dict:
    """Measure every spec (plus the eager baseline) for every point count; returns the results dict."""
    import torch

    # The input frames: the model resolution, or the largest refinement top asked for (every
    # configuration gets the same frames; each resizes them to its own levels).
    tops = [s.refine for s in specs if s.refine] + [model.config.resolution]
    size = (max(t[0] for t in tops), max(t[1] for t in tops))
    clip = synthetic_clip(frames + warmup + 1, size=max(size), seed=seed)
    clip = clip[:, :size[0], :size[1]]
    rng = np.random.default_rng(seed)
    all_specs = [RunSpec(BASELINE, "cpu" if not any(s.device.startswith("cuda") for s in specs) else
                         next(s.device for s in specs if s.device.startswith("cuda")), "fp32")]
    all_specs += [s for s in specs if s != all_specs[0]]
    # One copy of the model per device, made once: every tracker on a device shares it
    # (a backend copies a model that is not already on its device).
    from bootstap_ros.backends.torch_backend import inference_model

    from bootstap_ros.model.checkpoint import with_settings

    models = {}
    for spec in all_specs:
        if (spec.device, spec.refine) not in models:
            models[spec.device, spec.refine] = with_settings(inference_model(model, spec.device),
                                                             refine_resolution=spec.refine)
    runs = []
    for num_points in point_counts:
        xy = rng.uniform(8, min(size) - 8, (num_points, 2)).astype(np.float32)
        trackers, latencies, outputs, visible, errors, first = {}, {}, {}, {}, {}, {}
        for spec in all_specs:
            try:
                start = time.perf_counter()
                trackers[spec] = _make_tracker(models[spec.device, spec.refine], spec, num_points, block_size,
                                               cache_dir)
                trackers[spec].add_points(clip[0], xy)
                first[spec] = time.perf_counter() - start
                latencies[spec], outputs[spec], visible[spec] = [], [], []
            except Exception as error:  # a backend missing here is reported, not fatal
                errors[spec] = f"{type(error).__name__}: {error}"
                LOG.warning("%s with %d points: %s", spec.label, num_points, errors[spec])
        for spec in trackers:
            if spec.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats(spec.device)
        for t in range(1, len(clip)):
            for spec, tracker in trackers.items():  # alternate: one frame per configuration in turn
                if spec.device.startswith("cuda"):
                    torch.cuda.synchronize(spec.device)
                start = time.perf_counter()
                result = tracker.step(clip[t])  # returns host numpy: synchronised
                elapsed = (time.perf_counter() - start) * 1e3
                if t > warmup:
                    latencies[spec].append(elapsed)
                if t == 1:  # with the setup: exports, engine builds, graph captures, compilation
                    first[spec] += elapsed / 1e3
                outputs[spec].append(result.xy)
                visible[spec].append(result.visible)
        # Arithmetic per frame (convolutions and matmuls, torch backends only; after the
        # timed frames): a cost figure that, unlike latency, does not move with the load.
        from torch.utils.flop_counter import FlopCounterMode

        gflop = {}
        for spec, tracker in trackers.items():
            if spec.backend in ("torch", BASELINE) and not spec.compiled:
                with FlopCounterMode(display=False) as counter:
                    tracker.step(clip[-1])
                if counter.get_total_flops():  # a replayed CUDA graph dispatches nothing to count
                    gflop[spec] = counter.get_total_flops() / 1e9
        baseline = all_specs[0]
        base_mean = float(np.mean(latencies[baseline])) if baseline in latencies else None
        for spec in all_specs:
            row = {"backend": spec.label.split("/")[0], "device": spec.device, "precision": spec.precision,
                   "points": num_points, "resolution": list(model.config.resolution), "input": list(size),
                   "refine_resolution": list(spec.refine or model.config.resolution),
                   "refinement_resolutions": [list(r) for r in
                                              models[spec.device, spec.refine].config.refinement_resolutions]}
            if spec in errors:
                row["error"] = errors[spec]
                runs.append(row)
                continue
            row.update(_stats(latencies[spec]))
            row["first_frame_s"] = first[spec]
            if spec in gflop:
                row["gflop_per_frame"] = gflop[spec]
            row["peak_rss_mb"] = _peak_rss_mb()
            if spec.device.startswith("cuda"):
                row["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(spec.device) / 2 ** 20
            if base_mean is not None:
                row["speedup_vs_eager_fp32"] = base_mean / row["mean_ms"]
                row.update(_accuracy(outputs[spec], outputs[baseline], visible[spec], visible[baseline]))
            runs.append(row)
        del trackers
    return {
        "tool": "bootstap-bench", "frames": frames, "warmup": warmup, "block_size": block_size,
        "model_config": model.config.to_dict(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "baseline": BASELINE + " (TAPIR.estimate_trajectories per block, float32)",
        "runs": runs,
    }


def propagation_runs(point_counts: Sequence[int], frames: int, warmup: int, size, seed: int = 0) -> List[dict]:
    """The propagation step's latency (`Propagator.advance`: Lucas-Kanade for every point into a
    frame of `size` (height, width)) per point count, as rows of the results."""
    from bootstap_ros.tracking.propagation import Propagator

    height, width = size
    clip = synthetic_clip(frames + warmup + 1, size=max(size), seed=seed)[:, :height, :width]
    rng = np.random.default_rng(seed)
    rows = []
    for num_points in point_counts:
        propagator = Propagator()
        propagator.advance(0, clip[0])
        propagator.add(np.arange(num_points), rng.uniform(8, min(size) - 8, (num_points, 2)))
        latencies = []
        for t in range(1, len(clip)):
            start = time.perf_counter()
            propagator.advance(t, clip[t])
            if t > warmup:
                latencies.append((time.perf_counter() - start) * 1e3)
        rows.append({"backend": "propagation", "device": "cpu", "precision": "lk", "points": num_points,
                     "input": [height, width], **_stats(latencies), "first_frame_s": 0.0,
                     "peak_rss_mb": _peak_rss_mb()})
    return rows


def format_table(results: dict) -> str:
    header = (f"{'backend/device/precision':<28} {'points':>6} {'mean':>8} {'p50':>8} {'p95':>8} {'max':>8} "
              f"{'fps':>7} {'rss MB':>7} {'speed-up':>8} {'dmax px':>8} {'dmed px':>8} {'vis':>6} {'GFLOP':>7} "
              f"{'1st s':>7}")
    lines = [header, "-" * len(header)]
    for r in results["runs"]:
        label = f"{r['backend']}/{r['device']}/{r['precision']}"
        if "error" in r:
            lines.append(f"{label:<28} {r['points']:>6} unavailable: {r['error'][:80]}")
            continue
        lines.append(
            f"{label:<28} {r['points']:>6} {r['mean_ms']:>8.1f} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} "
            f"{r['max_ms']:>8.1f} {r['fps']:>7.2f} {r['peak_rss_mb']:>7.0f} "
            f"{r.get('speedup_vs_eager_fp32', float('nan')):>7.2f}x "
            f"{r.get('track_diff_max_px', float('nan')):>8.1e} {r.get('track_diff_median_px', float('nan')):>8.1e} "
            f"{r.get('visibility_agreement', float('nan')):>6.3f} {r.get('gflop_per_frame', float('nan')):>7.2f} "
            f"{r['first_frame_s']:>7.1f}")
    lines.append("GFLOP: convolutions and matmuls of one step (torch backends; independent of the load); "
                 "1st s: seconds to the first tracked frame (tracker, exports, captures, compilation); "
                 "latencies in ms per frame (CausalTracker.step: preprocessing, network, outputs); "
                 "speed-up and differences against the plain eager float32 torch step")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = sorted({(r["backend"], r["device"], r["precision"]) for r in results["runs"] if "error" not in r})
    for backend, device, precision in labels:
        rows = sorted((r for r in results["runs"] if "error" not in r and
                       (r["backend"], r["device"], r["precision"]) == (backend, device, precision)),
                      key=lambda r: r["points"])
        ax.errorbar([r["points"] for r in rows], [r["p50_ms"] for r in rows],
                    yerr=[[r["p50_ms"] - min(r["p50_ms"], r["mean_ms"]) for r in rows],
                          [r["p95_ms"] - r["p50_ms"] for r in rows]],
                    marker="o", capsize=3, label=f"{backend}/{device}/{precision}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("points")
    ax.set_ylabel("ms per frame (p50, bar to p95)")
    h, w = results["model_config"]["resolution"]
    title = f"bootstap-bench: CausalTracker.step at {w}x{h}"
    propagated = [r for r in results["runs"] if r["backend"] == "propagation"]
    if propagated:
        ph, pw = propagated[0]["input"]
        title += f"; propagation into {pw}x{ph} frames"
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _load_model(args):
    import torch

    from bootstap_ros.config import ModelConfig
    from bootstap_ros.model import build_model, load_checkpoint
    from bootstap_ros.model.checkpoint import with_settings

    try:
        overrides = json.loads(args.model_config) if args.model_config else {}
    except ValueError as error:
        raise UsageError(f"--model-config is not JSON ({error}); give an object such as "
                         "'{\"mixer_blocks\": 2}'") from None
    if not isinstance(overrides, dict):
        raise UsageError(f"--model-config must be a JSON object of ModelConfig fields, got {args.model_config}")
    if args.random_weights:
        torch.manual_seed(args.seed)
        try:
            config = ModelConfig(causal=True).replace(**overrides)
        except TypeError as error:
            raise UsageError(f"--model-config: {error}") from None
        model = build_model(config)
    elif overrides:
        raise UsageError("--model-config goes with --random-weights (a checkpoint brings its architecture)")
    else:
        model = load_checkpoint(args.checkpoint, causal=True if args.causal is None else args.causal).model
    return with_settings(model, softmax_temperature=args.softmax_temperature)


def _comma_list(text: str, option: str, choices: Optional[Sequence[str]] = None) -> List[str]:
    """The items of a comma list, each one of `choices` where given (else UsageError)."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise UsageError(f"{option} is empty; give a comma list")
    unknown = [item for item in items if choices is not None and item not in choices]
    if unknown:
        raise UsageError(f"{option}: unknown {', '.join(unknown)}; choose from {', '.join(choices)}")
    return items


def _positive_ints(text: str, option: str) -> List[int]:
    items = _comma_list(text, option)
    try:
        values = [int(item) for item in items]
    except ValueError:
        raise UsageError(f"{option} takes whole numbers (a comma list such as 8,64), got {text}") from None
    if min(values) < 1:
        raise UsageError(f"{option} takes numbers of at least 1, got {text}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bootstap-bench", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="official or project checkpoint (.pt)")
    source.add_argument("--random-weights", action="store_true",
                        help="random weights of the official BootsTAPIR architecture")
    parser.add_argument("--causal", action=argparse.BooleanOptionalAction, default=None,
                        help="for official checkpoints (default: causal)")
    parser.add_argument("--model-config", help="JSON overrides of the model config (with --random-weights)")
    parser.add_argument("--softmax-temperature", type=float, default=None,
                        help="cost-volume softmax temperature (default: the checkpoint's; BootsTAPIR 10, TAPIR 20)")
    parser.add_argument("--refine-resolutions", default=None, metavar="HxW,...",
                        help="comma list of refinement-ladder tops (e.g. 256x256,512x512): every "
                        "configuration runs at each, on the same input frames (the largest size)")
    parser.add_argument("--backends", default="torch", help="comma list: torch,onnxruntime,openvino,tensorrt,auto")
    parser.add_argument("--devices", default="cpu", help="comma list, e.g. cpu,cuda")
    parser.add_argument("--precisions", default="auto",
                        help="comma list: auto,fp32,fp16,bf16 (auto: fp16 for tensorrt, fp32 otherwise)")
    parser.add_argument("--points", default="8,32,128,256,1024", help="comma list of point counts")
    parser.add_argument("--frames", type=int, default=20, help="timed frames per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed frames first")
    parser.add_argument("--block-size", type=int, default=None,
                        help="points per block (default: 64 on the CPU, 256 on CUDA)")
    parser.add_argument("--torch-compile", action="store_true",
                        help="also run every torch configuration with torch.compile (compiles on the "
                             "first frame: minutes), next to the uncompiled one")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--cache-dir", help="where ONNX exports and TensorRT engines are cached")
    parser.add_argument("--output", default="bench_results", help="directory for results.json and latency.png")
    parser.add_argument("--propagation", metavar="WxH", default=None,
                        help="also time the propagation step (tracking.propagation: every point carried into a "
                        "camera frame of this size, what the node answers each frame with between network "
                        "steps), e.g. 640x480")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Exit codes as every tool of the package (cli.common): 2 for bad arguments or input
    (a missing checkpoint, an unknown backend), 1 for a failure while running."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command = "bootstap-bench " + " ".join(sys.argv[1:] if argv is None else argv)
    return run_command("bootstap-bench", lambda: run(args, command))


def run(args, command: str) -> int:
    import torch

    from bootstap_ros.backends import BACKEND_CHOICES, PRECISION_CHOICES, resolve_backend, resolve_precision

    backends = _comma_list(args.backends, "--backends", BACKEND_CHOICES)
    precisions = _comma_list(args.precisions, "--precisions", PRECISION_CHOICES)
    devices = _comma_list(args.devices, "--devices")
    bad = [d for d in devices if d != "cpu" and not (d == "cuda" or d.startswith("cuda:") and d[5:].isdigit())]
    if bad:
        raise UsageError(f"--devices: unknown {', '.join(bad)}; give cpu, cuda or cuda:N")
    points = _positive_ints(args.points, "--points")
    for option, value, least in (("--frames", args.frames, 1), ("--warmup", args.warmup, 0),
                                 ("--threads", args.threads, 1), ("--block-size", args.block_size, 1)):
        if value is not None and value < least:
            raise UsageError(f"{option} must be at least {least}, got {value}")
    output = prepare_output(args.output, "--output", folder=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = _load_model(args)
    specs = []
    for device in devices:
        if device.startswith("cuda") and not torch.cuda.is_available():
            LOG.warning("skipping device %s: no CUDA device here", device)
            continue
        for backend in backends:
            for precision in precisions:
                name = resolve_backend(backend, device)
                spec = RunSpec(name, device, resolve_precision(precision, name))
                if (spec.precision == "fp16" and device == "cpu"
                        or spec.precision != "fp32" and spec.backend == "onnxruntime"
                        or spec.backend == "openvino" and (device != "cpu" or spec.precision == "fp16")):
                    LOG.info("skipping %s: not offered (fp16 needs CUDA; onnxruntime runs fp32; openvino "
                             "runs on the CPU, fp32 or bf16)", spec.label)
                    continue
                specs.append(spec)
    if args.torch_compile:
        specs += [RunSpec(s.backend, s.device, s.precision, compiled=True) for s in specs if s.backend == "torch"]
    if args.refine_resolutions:
        from bootstap_ros.config import parse_size

        tops = [parse_size(text) for text in _comma_list(args.refine_resolutions, "--refine-resolutions")]
        tops = [None if top == tuple(model.config.resolution) else top for top in tops]
        specs = [dataclasses.replace(s, refine=top) for top in tops for s in specs]
    results = run_benchmark(model, list(dict.fromkeys(specs)), points, args.frames, args.warmup,
                            args.block_size, args.cache_dir, args.seed)
    if args.propagation:
        try:
            width, height = (int(v) for v in args.propagation.lower().split("x"))
        except ValueError:
            raise UsageError(f"--propagation: expected WIDTHxHEIGHT, e.g. 640x480, got {args.propagation!r}") from None
        if width < 16 or height < 16:
            raise UsageError(f"--propagation: a camera frame of at least 16x16, got {args.propagation}")
        results["runs"] += propagation_runs(points, args.frames, args.warmup, (height, width), args.seed)
    results["command"] = command
    (output / "results.json").write_text(json.dumps(results, indent=1))
    try:
        plot(results, output / "latency.png")
        plotted = f"plot: {output / 'latency.png'}"
    except ImportError:  # matplotlib is an extra (eval); a robot's install may lack it
        plotted = "no plot (matplotlib is not installed: pip install matplotlib)"
    print(format_table(results))
    print(f"results: {output / 'results.json'}, {plotted}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
