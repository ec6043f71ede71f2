"""What a bootstrapping step costs next to a supervised step of the same model and batch.

    python -m training.bench_bootstrap --batch-size 2 --frames 8 --output bench_bootstrap.json

Three kinds of step, each on its own copy of the model and optimiser, measured in
turn within every repeat (so a change of machine load hits all three alike), after
warm-up steps:

* ``supervised``: `training.train`'s step on ``B`` Kubric-lite clips (forward, TAPIR
  loss against the labels, backward, AdamW).
* ``self_supervised``: the bootstrapping task alone on ``B`` clips of the robot domain
  (`training.robot_domain`): the EMA teacher's forward without gradients on the clean
  clips, the student's view (JPEG, shrink, paste), the student's forward, masks and
  loss, backward, AdamW, the EMA update (`training.bootstrap.bootstrap_loss`).
* ``bootstrap``: one step of `bootstap-train-bootstrap` as it runs: the supervised task
  on ``2B`` clips and the self-supervised one on ``B``, each with its own optimiser.

Ratios are against the supervised step measured in the same run. Prints a table and
writes every figure (per-step times, their median and spread, the settings, the
machine) to ``--output``.
"""

from __future__ import annotations

import argparse
import copy
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

KINDS = ("supervised", "self_supervised", "bootstrap")


def _batch(items: List[Dict[str, np.ndarray]]) -> Dict[str, torch.Tensor]:
    return {key: torch.from_numpy(np.stack([item[key] for item in items])) for key in items[0]}


def build_steps(args) -> Dict[str, Callable[[int], None]]:
    """One callable per step kind; calling it runs one full training step (step index given)."""
    from bootstap_ros.model import load_checkpoint
    from bootstap_ros.model.checkpoint import resolve_checkpoint

    from .bootstrap import BootstrapConfig, bootstrap_loss, step_generators
    from .data import clip_arrays, train_clip_seed
    from .pseudo_labels import ema_update, make_ema_teacher
    from .robot_domain import RobotConfig, generate_robot_clip, unlabeled_seeds
    from .train import make_adamw, make_scaler, optimizer_step, supervised_loss

    device = torch.device(args.device)
    if args.model is not None:
        from bootstap_ros.model import build_model

        from .configs import resolve_model_config

        torch.manual_seed(args.seed)  # random weights: the cost does not depend on their values
        base = build_model(resolve_model_config(args.model, causal=True))
    else:
        base = load_checkpoint(resolve_checkpoint(args.init)).model
    base = base.to(device).train()
    causal = base.config.causal
    size = base.config.resolution[0]
    config = BootstrapConfig(output="unused", batch_size=args.batch_size, clip_frames=args.frames,
                             num_points=args.points, supervised_points=args.points, amp=args.amp,
                             device=args.device)
    synthetic = config.synthetic(size)
    supervised_clips = [clip_arrays(train_clip_seed(args.seed, i), synthetic)
                        for i in range(config.ssl_supervised_batch)]
    robot = RobotConfig(frames=args.frames, height=size, width=size, num_points=0)
    log_video = torch.from_numpy(np.stack([generate_robot_clip(seed, robot).video
                                           for seed in unlabeled_seeds(0, args.batch_size)])).to(device)
    small_batch = _batch(supervised_clips[:args.batch_size])  # B clips: the like-for-like baseline
    full_batch = _batch(supervised_clips)                     # 2B clips: what the loop's step takes
    scaler = make_scaler(device, args.amp)

    def supervised_step(model, optimizer, batch):
        loss, _ = supervised_loss(model, batch, device, config.loss, args.amp, causal)
        optimizer_step(model, optimizer, scaler, loss, config.grad_clip)

    def self_supervised_step(model, teacher, optimizer, step):
        numpy_rng, torch_rng = step_generators(args.seed, step, 0)
        loss, _ = bootstrap_loss(model, teacher, log_video, config, numpy_rng, torch_rng, causal, causal)
        optimizer_step(model, optimizer, scaler, loss, config.grad_clip)
        ema_update(teacher, model, config.ema_decay)

    steps = {}
    model = copy.deepcopy(base)
    optimizer = make_adamw(model, config.ssl_supervised_lr, config.weight_decay, config.beta2)
    steps["supervised"] = lambda step: supervised_step(model, optimizer, small_batch)

    ssl_model = copy.deepcopy(base)
    ssl_teacher = make_ema_teacher(ssl_model)
    ssl_optimizer = make_adamw(ssl_model, config.lr, config.weight_decay, config.beta2)
    steps["self_supervised"] = lambda step: self_supervised_step(ssl_model, ssl_teacher, ssl_optimizer, step)

    boot_model = copy.deepcopy(base)
    boot_teacher = make_ema_teacher(boot_model)
    boot_ssl = make_adamw(boot_model, config.lr, config.weight_decay, config.beta2)
    boot_supervised = make_adamw(boot_model, config.ssl_supervised_lr, config.weight_decay, config.beta2)

    def bootstrap_step(step):
        supervised_step(boot_model, boot_supervised, full_batch)
        self_supervised_step(boot_model, boot_teacher, boot_ssl, step)

    steps["bootstrap"] = bootstrap_step
    return steps, {"model": base.config.to_dict(), "parameters": sum(p.numel() for p in base.parameters()),
                   "bootstrap_config": asdict(config)}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(args) -> Dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    steps, described = build_steps(args)
    times: Dict[str, List[float]] = {kind: [] for kind in KINDS}
    for repeat in range(args.warmup + args.repeats):
        for kind in KINDS:
            _sync(args.device)
            started = time.perf_counter()
            steps[kind](repeat)
            _sync(args.device)
            if repeat >= args.warmup:
                times[kind].append(time.perf_counter() - started)
    medians = {kind: statistics.median(values) for kind, values in times.items()}
    baseline = medians["supervised"]
    results = {
        "settings": {"batch_size": args.batch_size, "supervised_batch_in_bootstrap_step": 2 * args.batch_size,
                     "frames": args.frames, "points": args.points, "repeats": args.repeats,
                     "warmup": args.warmup, "device": args.device, "amp": args.amp,
                     "threads": torch.get_num_threads(),
                     "init": f"random {args.model}" if args.model else (args.init or "embedded default")},
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
        **described,
        "seconds": times,
        "median_s": medians,
        "min_s": {kind: min(values) for kind, values in times.items()},
        "max_s": {kind: max(values) for kind, values in times.items()},
        "ratio_to_supervised": {kind: medians[kind] / baseline for kind in KINDS},
    }
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.bench_bootstrap",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", default=None, help="model checkpoint (default: the embedded model)")
    parser.add_argument("--model", default=None,
                        help="instead of a checkpoint: random weights of this architecture (small, official, ...)")
    parser.add_argument("--batch-size", type=int, default=2, help="B: clips of each task (default 2)")
    parser.add_argument("--frames", type=int, default=8, help="frames per clip (default 8)")
    parser.add_argument("--points", type=int, default=128, help="query points per clip (default 128)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="auto",
                        help="autocast as the trainers take it: auto (bf16 on CUDA, float32 on CPU), bf16, fp16, off")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    if args.model is not None and args.init is not None:
        parser.error("give --init (a checkpoint) or --model (random weights), not both")
    if min(args.batch_size, args.frames - 1, args.points, args.repeats) < 1 or args.warmup < 0:
        parser.error("need batch-size, points and repeats >= 1, frames >= 2 and warmup >= 0")
    results = run(args)
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    s = results["settings"]
    print(f"model: {results['parameters'] / 1e6:.2f} M parameters; B={s['batch_size']} clips of {s['frames']} "
          f"frames, {s['points']} points; {s['device']}, amp {s['amp']}, {s['threads']} threads; "
          f"median of {s['repeats']} steps")
    print(f"{'step':<42} {'median':>9} {'min':>9} {'max':>9} {'x supervised':>13}")
    labels = {"supervised": f"supervised, {s['batch_size']} clips",
              "self_supervised": f"self-supervised (teacher + student), {s['batch_size']} clips",
              "bootstrap": f"bootstrap loop step ({2 * s['batch_size']} sup. + {s['batch_size']} self-sup.)"}
    for kind in KINDS:
        print(f"{labels[kind]:<42} {results['median_s'][kind]:>8.2f}s {results['min_s'][kind]:>8.2f}s "
              f"{results['max_s'][kind]:>8.2f}s {results['ratio_to_supervised'][kind]:>12.2f}x")
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
