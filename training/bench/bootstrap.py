"""What a bootstrapping step costs, and where its time goes.

    python -m bootstap_ros_training.bench.bootstrap --output bench_bootstrap.json            # CPU defaults
    python -m bootstap_ros_training.bench.bootstrap --output b.json --profile                # and per part

Two loop steps of `bootstap-train-bootstrap` on the same model and clips of the robot
domain (`bootstap_ros_training.domains.robot_domain`), measured in turn within every repeat (so a change of
machine load hits both alike), after warm-up steps:

* ``previous``: the step as the defaults used to make it: an EMA teacher labelling every
  batch, 2 log clips of 8 frames with 128 queries, 4 synthetic clips of 8 frames;
* ``default``: the step with today's defaults for the device (`bootstrap.DEVICE_DEFAULTS`),
  its fixed teacher's labels already cached (as from a run's second pass on), and
  ``first_visit``: the same step on a clip the teacher has not labelled yet.

`key=value` settings (any `BootstrapConfig` field) change the ``default`` step. Ratios
are against ``previous`` from the same run. With ``--profile`` the parts of the default
step are timed one by one (forward and backward of the backbone, the cost-volume
estimate and the refinement, the student's view, the supervised task, the optimiser).
Prints a table and writes every figure (per-step times, medians and spread, settings,
machine) to ``--output``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch

KINDS = ("previous", "default", "first_visit")
#: The loop step as the defaults made it before DEVICE_DEFAULTS and the fixed teacher.
PREVIOUS = {"teacher": "ema", "batch_size": 2, "clip_frames": 8, "num_points": 128,
            "supervised_batch_size": 4, "supervised_frames": 8, "supervised_points": 128}


def _batch(items: List[Dict[str, np.ndarray]]) -> Dict[str, torch.Tensor]:
    return {key: torch.from_numpy(np.stack([item[key] for item in items])) for key in items[0]}


class LoopStep:
    """One `bootstrap_step` as a run makes it, on its own copy of the model and optimisers."""

    def __init__(self, base, config, device: torch.device, seed: int):
        from ..objective import bootstrap_step, fixed_teacher
        from ..data import clip_arrays, train_clip_seed
        from ..pseudo_labels import make_ema_teacher
        from ..domains.robot_domain import RobotConfig, generate_robot_clip, unlabeled_seeds
        from ..teacher import LabelCache
        from ..loop import make_adamw, make_scaler, model_forward

        self.config, self.device, self.step_fn = config, device, bootstrap_step
        size = base.config.resolution[0]
        self.model = base.__class__(base.config).to(device)
        self.model.load_state_dict(base.state_dict())
        self.model.train()
        self.teacher = make_ema_teacher(self.model)
        self.optimizers = {"bootstrap_optimizer": make_adamw(self.model, config.lr, 0.0, config.beta2)}
        if config.ssl_supervised_batch:
            self.optimizers["supervised_optimizer"] = make_adamw(self.model, config.ssl_supervised_lr, 0.0,
                                                                 config.beta2)
        self.scaler = make_scaler(device, config.amp)
        robot = RobotConfig(frames=config.clip_frames, height=size, width=size, num_points=0)
        count = config.batch_size * 2  # clips for the cached steps, then as many never seen
        self.videos = torch.from_numpy(np.stack([generate_robot_clip(s, robot).video
                                                 for s in unlabeled_seeds(0, 2 * count)])).to(device)
        synthetic = config.synthetic(size)
        self.supervised = None
        if config.ssl_supervised_batch:
            self.supervised = _batch([clip_arrays(train_clip_seed(seed, i), synthetic)
                                      for i in range(config.ssl_supervised_batch)])
        self.labels = None
        if fixed_teacher(config):
            self.labels = LabelCache(self.teacher, lambda m, v, q: model_forward(m, v, q, config.amp, True),
                                     config.label_points, seed, config.textured_queries)
        self.fresh = count  # index of the next clip the teacher has not labelled

    def __call__(self, step: int, first_visit: bool = False) -> None:
        b = self.config.batch_size
        if first_visit:
            indices = list(range(self.fresh, self.fresh + b))
            self.fresh = b * 2 if self.fresh + 2 * b > len(self.videos) else self.fresh + b
            if self.labels is not None:
                for index in indices:  # forget them, so the teacher labels them now
                    self.labels.labels.pop(index, None)
                    self.labels.queries.pop(index, None)
        else:
            indices = [(step * b + i) % (2 * b) for i in range(b)]
        self.step_fn(self.model, self.teacher, self.optimizers, self.scaler, self.videos[indices], self.supervised,
                     self.config, step, 0, True, ema=self.config.teacher == "ema", labels=self.labels,
                     clip_indices=indices)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_time(fn: Callable[[], None], repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def profile_parts(base, config, device: torch.device, repeats: int) -> Dict[str, float]:
    """Seconds of each part of the default step, timed on its own (median of `repeats`)."""
    from bootstap_ros.model import preprocess_frames

    from ..data import clip_arrays, train_clip_seed
    from ..domains.robot_domain import RobotConfig, generate_robot_clip, unlabeled_seeds
    from ..loop import make_adamw, supervised_loss
    from ..views import student_batch

    model = base.__class__(base.config).to(device)
    model.load_state_dict(base.state_dict())
    model.train()
    size = model.config.resolution[0]
    robot = RobotConfig(frames=config.clip_frames, height=size, width=size, num_points=0)
    video = torch.from_numpy(np.stack([generate_robot_clip(s, robot).video
                                       for s in unlabeled_seeds(0, config.batch_size)])).to(device)
    frames = preprocess_frames(video)
    generator = torch.Generator().manual_seed(0)
    queries = torch.stack([torch.randint(0, config.clip_frames, (config.batch_size, config.num_points),
                                         generator=generator).float(),
                           torch.rand(config.batch_size, config.num_points, generator=generator) * size,
                           torch.rand(config.batch_size, config.num_points, generator=generator) * size], -1)
    queries = queries.to(device)
    parts: Dict[str, float] = {}

    def backward_of(outputs) -> None:
        total = sum(t.float().sum() for t in outputs)
        total.backward()
        model.zero_grad(set_to_none=True)

    def grids():
        return model.get_feature_grids(frames)

    parts["backbone forward"] = _median_time(grids, repeats, device)
    parts["backbone forward + backward"] = _median_time(
        lambda: backward_of(grids()[:2]), repeats, device)
    with torch.no_grad():
        fixed = grids()
    fixed = type(fixed)(fixed.lowres.requires_grad_(), fixed.hires.requires_grad_())

    def cost_volume():
        features = model.get_query_features(fixed, queries)
        return model._cost_volume_estimate(features.lowres, fixed.lowres, None)

    def estimate():
        outputs, _ = model.estimate_trajectories(fixed, model.get_query_features(fixed, queries))
        return (outputs.tracks, outputs.occlusion, outputs.expected_dist,
                *(t for stage in outputs.unrefined for t in stage))

    parts["cost-volume estimate forward"] = _median_time(cost_volume, repeats, device)
    parts["cost-volume estimate forward + backward"] = _median_time(
        lambda: backward_of(cost_volume()), repeats, device)
    parts["estimate + refinement forward"] = _median_time(estimate, repeats, device)
    parts["estimate + refinement forward + backward"] = _median_time(
        lambda: backward_of(estimate()), repeats, device)
    rng = np.random.default_rng(0)
    parts["student view (JPEG, resize, paste)"] = _median_time(
        lambda: student_batch(video, config.view(), rng), repeats, device)
    if config.ssl_supervised_batch:
        batch = _batch([clip_arrays(train_clip_seed(0, i), config.synthetic(size))
                        for i in range(config.ssl_supervised_batch)])

        def supervised():
            loss, _ = supervised_loss(model, batch, device, config.loss, config.amp, True)
            loss.backward()
            model.zero_grad(set_to_none=True)

        parts["supervised task forward + backward"] = _median_time(supervised, repeats, device)
    optimizer = make_adamw(model, 1e-6, 0.0, 0.95)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    parts["optimiser step"] = _median_time(optimizer.step, repeats, device)
    return parts


def run(args, settings: Dict) -> Dict:
    from bootstap_ros.model import load_checkpoint
    from bootstap_ros.model.checkpoint import resolve_checkpoint

    from ..bootstrap_config import BootstrapConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cpu":
        from ..loop import keep_freed_memory

        keep_freed_memory()  # as the trainers do
    device = torch.device(args.device)
    if args.model is not None:
        from bootstap_ros.model import build_model

        from ..configs import resolve_model_config

        torch.manual_seed(args.seed)  # random weights: the cost does not depend on their values
        base = build_model(resolve_model_config(args.model, causal=True))
    else:
        base = load_checkpoint(resolve_checkpoint(args.init)).model
    common = {"output": "unused", "device": args.device, "amp": args.amp}
    configs = {"previous": BootstrapConfig.from_dict({**common, **PREVIOUS}).for_device(args.device),
               "default": BootstrapConfig.from_dict({**common, **settings}).for_device(args.device)}
    steps = {"previous": LoopStep(base, configs["previous"], device, args.seed),
             "default": LoopStep(base, configs["default"], device, args.seed)}
    calls = {"previous": lambda i: steps["previous"](i), "default": lambda i: steps["default"](i),
             "first_visit": lambda i: steps["default"](i, first_visit=True)}
    times: Dict[str, List[float]] = {kind: [] for kind in KINDS}
    for repeat in range(args.warmup + args.repeats):
        for kind in KINDS:
            _sync(device)
            started = time.perf_counter()
            calls[kind](repeat)
            _sync(device)
            if repeat >= args.warmup:
                times[kind].append(time.perf_counter() - started)
    medians = {kind: statistics.median(values) for kind, values in times.items()}
    results = {
        "settings": {"repeats": args.repeats, "warmup": args.warmup, "device": args.device, "amp": args.amp,
                     "threads": torch.get_num_threads(), "given": settings,
                     "init": f"random {args.model}" if args.model else (args.init or "embedded default")},
        "configs": {name: asdict(config) for name, config in configs.items()},
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None},
        "model": base.config.to_dict(), "parameters": sum(p.numel() for p in base.parameters()),
        "seconds": times,
        "median_s": medians,
        "min_s": {kind: min(values) for kind, values in times.items()},
        "max_s": {kind: max(values) for kind, values in times.items()},
        "ratio_to_previous": {kind: medians[kind] / medians["previous"] for kind in KINDS},
    }
    if args.profile:
        results["profile_s"] = profile_parts(base, configs["default"], device, max(3, args.repeats))
    return results


def _describe(config) -> str:
    teacher = "EMA teacher" if config.teacher == "ema" else f"{config.teacher} teacher"
    supervised = (f" + {config.ssl_supervised_batch} synthetic x {config.supervised_frames} frames"
                  if config.ssl_supervised_batch else "")
    return (f"{config.batch_size} log clip(s) x {config.clip_frames} frames x {config.num_points} queries"
            f"{supervised}, {teacher}")


def main(argv=None) -> int:
    from ..bootstrap_config import BootstrapConfig, parse_settings

    parser = argparse.ArgumentParser(prog="python -m bootstap_ros_training.bench.bootstrap",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", default=None, help="model checkpoint (default: the embedded model)")
    parser.add_argument("--model", default=None,
                        help="instead of a checkpoint: random weights of this architecture (small, official, ...)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--amp", default="auto",
                        help="autocast as the trainers take it: auto (bf16 on CUDA, float32 on CPU), bf16, fp16, off")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="also time the parts of the default step")
    parser.add_argument("--output", required=True, help="JSON file to write")
    parser.add_argument("settings", nargs="*", metavar="key=value",
                        help="bootstrapping settings of the default step (bootstap-train-bootstrap --help)")
    args = parser.parse_args(argv)
    if args.model is not None and args.init is not None:
        parser.error("give --init (a checkpoint) or --model (random weights), not both")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("need repeats >= 1 and warmup >= 0")
    try:
        settings = parse_settings(args.settings)
        BootstrapConfig.from_dict({"output": "unused", **settings})
    except ValueError as error:
        parser.error(str(error))
    results = run(args, settings)
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    s = results["settings"]
    configs = {name: BootstrapConfig.from_dict(values) for name, values in results["configs"].items()}
    print(f"model: {results['parameters'] / 1e6:.2f} M parameters; {s['device']}, amp {s['amp']}, "
          f"{s['threads']} threads; median of {s['repeats']} steps")
    labels = {"previous": f"previous defaults: {_describe(configs['previous'])}",
              "default": f"defaults: {_describe(configs['default'])}",
              "first_visit": "defaults, the clip's first visit (teacher labels it)"}
    width = max(len(label) for label in labels.values())
    print(f"{'loop step':<{width}} {'median':>9} {'min':>9} {'max':>9} {'x previous':>11}")
    for kind in KINDS:
        print(f"{labels[kind]:<{width}} {results['median_s'][kind]:>8.2f}s {results['min_s'][kind]:>8.2f}s "
              f"{results['max_s'][kind]:>8.2f}s {results['ratio_to_previous'][kind]:>10.2f}x")
    if "profile_s" in results:
        print("\nparts of the default step (each timed on its own, median):")
        for part, seconds in results["profile_s"].items():
            print(f"  {part:<45} {seconds:>7.3f} s")
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
