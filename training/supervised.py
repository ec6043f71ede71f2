"""Supervised training of TAPIR / BootsTAPIR on Kubric-lite clips: a recipe over `loop`.

One script, CPU or GPU, one process or many:

    python -m bootstap_ros_training.supervised --output runs/small --model small --steps 2500 \
        --batch-size 4 --frames 8 --num-points 64 --num-workers 1   # ~1.5 h on 2 CPU cores
    python -m bootstap_ros_training.supervised --output runs/small --resume    # continue exactly
    torchrun --nproc-per-node 8 -m bootstap_ros_training.supervised --output runs/big \
        --model official --device cuda --batch-size 4            # DistributedDataParallel

This module owns the recipe: the `TrainConfig`, the model to start from, the schedule, the
step (the TAPIR loss on labelled synthetic clips) and the periodic evaluation on held-out
synthetic clips. The run directory is `loop`'s (final weights in final.pt); its eval/ also
holds the held-out pickle. Batches are per process: the global batch is `batch_size` x the
number of processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional

import torch

from bootstap_ros.cli.common import EXIT_USAGE, run_command
from bootstap_ros.config import ModelConfig
from bootstap_ros.model import TAPIR, build_model, load_checkpoint

from .configs import resolve_model_config
from .camera import CameraConfig
from .data import StepBatches, SyntheticClips, heldout_path, make_loader, write_heldout_set
from .domains.synthetic import SyntheticConfig
from .loop import (CHECKPOINT, FINAL_MODEL, Loop, Runtime, cosine_learning_rate, deprecated_flag,
                   distributed_model, evaluate_dataset, final_weights, load_training_parts, make_adamw, make_budget,
                   make_scaler, open_run, optimizer_step, report_changes, run_loop, run_with_runtime,
                   supervised_loss)
from .losses import LossConfig

EVAL_SIZE = 256  # the TAP-Vid evaluation raster
PROG = "python -m bootstap_ros_training.supervised"


@dataclass
class TrainConfig:
    """Everything a training run depends on; stored in every checkpoint."""

    out: str = "runs/train"
    # Architecture: a name in bootstap_ros_training.configs, inline JSON or a .json path. None: "small",
    # or the architecture of `init` when given.
    model: Optional[str] = None
    causal: bool = True
    init: Optional[str] = None  # start from these weights (official or project checkpoint)
    # Data (per process and step): clips of `frames` frames, `image_size` pixels square.
    steps: int = 2000
    batch_size: int = 4
    frames: int = 24
    num_points: int = 128
    image_size: int = 256
    train_clips: int = 0  # 0: a new clip every time; K: cycle through K clips
    # See each training clip through a random camera and sensor (bootstap_ros_training.camera:
    # lens, blur, noise, exposure, colour, compression; CameraConfig's defaults).
    camera: bool = False
    camera_share: float = 1.0  # with `camera`: the share of clips seen through one (the rest stay clean)
    # Share of training clips with a weak, fine background texture (table tops, floors, cloth;
    # `SyntheticConfig.faint_background`). Held-out clips keep the generator's defaults.
    faint_background: float = 0.0
    # Optimiser: AdamW (b1 0.9, b2 0.95, decoupled weight decay off for biases and norms).
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.1
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    loss: LossConfig = field(default_factory=LossConfig)
    seed: int = 0
    # Runtime.
    device: str = "auto"  # auto | cpu | cuda
    # Autocast dtype: auto (bf16 on CUDA, float32 on CPU) | bf16 | fp16 (CUDA only) | off.
    # bf16 on CPU roughly halves a step's time on CPUs with AVX512-BF16 or AMX.
    amp: str = "auto"
    num_workers: int = 2
    log_every: int = 10
    checkpoint_every: int = 500
    # Evaluation on held-out synthetic clips (seeds disjoint from training), online for
    # causal models (the CausalTracker, as the ROS node runs), offline otherwise.
    eval_every: int = 500  # 0: never
    eval_clips: int = 50
    eval_frames: int = 24
    eval_points: int = 64
    eval_seed: int = 0
    # Minutes for the whole run (None: run `steps`): see `bootstap_ros_training.budget`.
    time_budget: Optional[float] = None

    def __post_init__(self):
        if isinstance(self.loss, dict):
            self.loss = LossConfig(**self.loss)
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ValueError(f"amp must be auto, bf16, fp16 or off, got {self.amp!r}")
        if self.amp == "fp16" and self.device == "cpu":
            raise ValueError("amp fp16 needs CUDA; use bf16 or off on CPU")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if min(self.steps, self.batch_size, self.frames, self.num_points, self.log_every,
               self.checkpoint_every) < 1:
            raise ValueError("steps, batch_size, frames, num_points, log_every and checkpoint_every "
                             "must be positive")
        if not (0 <= self.camera_share <= 1 and 0 <= self.faint_background <= 1):
            raise ValueError(f"camera_share and faint_background must lie in [0, 1], got "
                             f"{self.camera_share} and {self.faint_background}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ValueError(f"time_budget must be a positive number of minutes, got {self.time_budget}")
        if self.init is not None and self.model is not None:
            raise ValueError("give either --model (a fresh architecture) or --init (whose checkpoint "
                             "sets the architecture), not both")

    @classmethod
    def from_dict(cls, values: Dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training config fields {unknown}")
        return cls(**values)

    def synthetic(self) -> SyntheticConfig:
        return SyntheticConfig(frames=self.frames, height=self.image_size, width=self.image_size,
                               num_points=self.num_points, faint_background=self.faint_background)

    def heldout(self) -> SyntheticConfig:
        # Held-out clips are made at the evaluation raster, whatever the training clips' size.
        return SyntheticConfig(frames=self.eval_frames, height=EVAL_SIZE, width=EVAL_SIZE,
                               num_points=self.eval_points)


def make_model(config: TrainConfig, resumed: Optional[dict]) -> TAPIR:
    """The model to train: from the resumed checkpoint, from `init`, or freshly initialised."""
    if resumed is not None:
        stored = ModelConfig.from_dict(resumed["model_config"])
        return build_model(stored, resumed["state_dict"], resumed["path"])
    if config.init is not None:
        return load_checkpoint(config.init, causal=config.causal).model
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    return build_model(resolve_model_config(config.model or "small", config.causal))


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The supervised run's AdamW (see `make_adamw`)."""
    return make_adamw(model, config.lr, config.weight_decay, config.beta2)


def learning_rate(step: int, config: TrainConfig) -> float:
    """The supervised run's schedule (`cosine_learning_rate` of its config)."""
    return cosine_learning_rate(step, config.lr, config.warmup, config.steps)


def batch_loss(model: torch.nn.Module, batch: Dict[str, torch.Tensor], device: torch.device,
               config: TrainConfig, causal: bool):
    """Forward one batch and return (loss, parts) as `bootstap_ros_training.losses.tapir_loss`."""
    return supervised_loss(model, batch, device, config.loss, config.amp, causal)


def evaluate(model: TAPIR, config: TrainConfig, step: int, device: torch.device) -> Dict[str, float]:
    """AJ, <delta_avg and OA on the held-out clips through the project's evaluation code."""
    out = Path(config.out) / "eval"
    heldout = heldout_path(out, config.heldout(), config.eval_seed, config.eval_clips)
    write_heldout_set(heldout, config.heldout(), config.eval_seed, config.eval_clips)
    return evaluate_dataset(model, heldout, out / f"step_{step:07d}.json", device)


def _resolve_resume(config: TrainConfig, overrides: Dict) -> tuple:
    """The stored config of `out/checkpoint.pt` with `overrides` applied, and the checkpoint."""
    resumed = open_run(Path(config.out), True, "train_config")
    fixed = sorted({"model", "causal", "init"} & set(overrides))
    if fixed:
        raise ValueError(f"--resume takes the architecture from {resumed['path']}; drop {fixed}")
    stored = TrainConfig.from_dict(resumed["train_config"])
    report_changes(resumed["path"], resumed["step"],
                   {k: (getattr(stored, k), v) for k, v in overrides.items() if getattr(stored, k) != v})
    return dataclasses.replace(stored, out=config.out, **overrides), resumed


def train(config: TrainConfig, resume: bool = False, overrides: Optional[Dict] = None,
          stop_at: Optional[int] = None, steps_given: bool = True, started: Optional[float] = None,
          clock: Callable[[], float] = time.monotonic) -> TAPIR:
    """Runs (or resumes) training; returns the trained model (on its device).

    resume: continue from `config.out/checkpoint.pt`, whose stored training config is
      used with `overrides` (e.g. {"steps": 8000}) applied.
    stop_at: save a checkpoint and return at this step (e.g. to fit a job's time limit);
      the schedule still runs to `config.steps`, and `resume` continues from there.
    steps_given: whether `steps` was chosen (else a run without a time budget prints its plan).
    started: `clock()` when the command started (a time budget counts from it).
    clock: the time budget's clock (seconds, monotonic).
    """
    started = clock() if started is None else started
    resumed = None
    if resume:
        config, resumed = _resolve_resume(config, overrides or {})
    else:
        open_run(Path(config.out), False, "train_config")
        config.init = final_weights(config.init)
    return run_with_runtime(config.device, lambda runtime: _train(config, runtime, resumed, stop_at,
                                                                   steps_given, started, clock))


def _train(config: TrainConfig, runtime: Runtime, resumed: Optional[dict], stop_at: Optional[int],
           steps_given: bool, started: float, clock: Callable[[], float]) -> TAPIR:
    out = Path(config.out)
    device = runtime.device
    model = make_model(config, resumed).to(device).train()
    causal = model.config.causal
    optimizer = make_optimizer(model, config)
    scaler = make_scaler(device, config.amp)
    state = {"optimizer": optimizer, "scaler": scaler}
    step = 0
    if resumed is not None:
        load_training_parts(resumed, state, resumed["path"])
        step = int(resumed["step"])
    budget, config.steps = make_budget(config.time_budget, config.steps, steps_given, started, clock)
    last_step = min(config.steps, stop_at) if stop_at is not None else config.steps

    def set_steps(steps: int) -> None:
        config.steps = steps
        config.warmup = min(config.warmup, max(1, steps // 10))  # a short budget keeps its warmup short

    trained = distributed_model(model, runtime)
    loader = make_loader(
        SyntheticClips(config.synthetic(), config.seed, config.train_clips,
                       CameraConfig() if config.camera else None, config.camera_share),
        StepBatches(step, last_step, config.batch_size, runtime.rank, runtime.world_size),
        config.num_workers, pin_memory=device.type == "cuda")

    def train_step(batch, step):
        lr = learning_rate(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, parts = batch_loss(trained, batch, device, config, causal)
        grad_norm, stepped = optimizer_step(trained, optimizer, scaler, loss, config.grad_clip)
        return lr, parts, grad_norm, stepped

    loop = Loop(
        name="train", out=out, final_name=FINAL_MODEL, steps=config.steps, log_every=config.log_every,
        checkpoint_every=config.checkpoint_every, train_step=train_step,
        record={"train": asdict(config), "model": model.config.to_dict(),
                "world_size": runtime.world_size, "device": str(device)},
        checkpoint_fields=lambda: {"train_config": asdict(config)},
        extra_columns=lambda steps, elapsed: {
            "clips_per_s": steps * config.batch_size * runtime.world_size / elapsed},
        postfix=lambda row: {"loss": f"{row['loss']:.3f}", "lr": f"{row['lr']:.2e}"},
        eval_due=lambda step: config.eval_every > 0 and (step % config.eval_every == 0 or step == config.steps),
        evaluate=lambda step: evaluate(model, config, step, device), budget=budget, set_steps=set_steps,
        announce_plan=None if budget is not None else steps_given, clock=clock)
    run_loop(loop, model, runtime, state, loader, step, last_step)
    return model


# ----------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    # Options left out stay out of the namespace, so --resume can tell what was given.
    parser = argparse.ArgumentParser(
        prog=PROG, argument_default=argparse.SUPPRESS,
        description="Train TAPIR/BootsTAPIR on Kubric-lite synthetic clips (supervised TAPIR loss). "
        "Under torchrun every process trains on its own clips (DistributedDataParallel).")
    defaults = TrainConfig()

    def add(flag, name, kind, help_text, **kwargs):
        default = getattr(defaults, name)
        shown = "" if default is None else f" (default: {default})"
        parser.add_argument(flag, dest=name, type=kind, metavar=name.upper(), help=help_text + shown,
                            **kwargs)

    parser.add_argument("--output", dest="out", metavar="DIR", required=True,
                        help=f"run directory: {CHECKPOINT}, {FINAL_MODEL}, logs (--out: the old name, "
                        "deprecated)")
    parser.add_argument("--resume", action="store_true", default=False,
                        help="continue from DIR/checkpoint.pt with its stored settings; options "
                        "given now (e.g. --steps) override them")
    parser.add_argument("--stop-at", type=int, metavar="STEP", default=None,
                        help="save and exit at this step (the schedule still spans --steps)")
    add("--model", "model", str, "architecture: small, official (BootsTAPIR), tapir, a JSON "
        "object of ModelConfig fields or a .json file; default small")
    parser.add_argument("--causal", dest="causal", action=argparse.BooleanOptionalAction,
                        help="causal (online) temporal convolutions (default: causal)")
    add("--init", "init", str, "start from the weights and architecture of this checkpoint (an "
        "official bare state_dict is taken as causal unless --no-causal)")
    add("--steps", "steps", int, "total optimiser steps (the cosine schedule's length; with "
        "--time-budget, the most it may fit)")
    add("--time-budget", "time_budget", float, "minutes for the run: the step count and the learning-rate "
        "schedule are fitted to them after a few timed steps (the final evaluation comes on top)")
    add("--batch-size", "batch_size", int, "clips per step and process")
    add("--frames", "frames", int, "frames per training clip")
    add("--num-points", "num_points", int, "query points per clip")
    add("--image-size", "image_size", int, "synthetic clip height and width")
    add("--train-clips", "train_clips", int, "cycle through this many clips (0: always new ones)")
    parser.add_argument("--camera", dest="camera", action=argparse.BooleanOptionalAction,
                        help="see each training clip through a random camera and sensor model "
                        "(lens, blur, noise, exposure, colour, JPEG; default: off)")
    add("--camera-share", "camera_share", float, "with --camera: the share of clips seen through a "
        "camera; the rest stay clean")
    add("--faint-background", "faint_background", float, "share of clips whose background is a weak, "
        "fine texture (table tops, floors, cloth)")
    add("--lr", "lr", float, "peak learning rate")
    add("--warmup", "warmup", int, "linear warmup steps")
    add("--weight-decay", "weight_decay", float, "AdamW decoupled weight decay")
    add("--grad-clip", "grad_clip", float, "max gradient norm (0: off)")
    add("--seed", "seed", int, "seed of the initial weights and of the training clips")
    add("--device", "device", str, "auto, cpu or cuda", choices=("auto", "cpu", "cuda"))
    add("--amp", "amp", str, "autocast dtype: auto is bf16 on CUDA and float32 on CPU; "
        "bf16 also runs on CPU (about 2x faster where the CPU has AVX512-BF16)",
        choices=("auto", "bf16", "fp16", "off"))
    add("--num-workers", "num_workers", int, "DataLoader worker processes generating clips")
    add("--log-every", "log_every", int, "steps between log rows")
    add("--checkpoint-every", "checkpoint_every", int, "steps between checkpoints")
    add("--eval-every", "eval_every", int, "steps between held-out evaluations (0: never)")
    add("--eval-clips", "eval_clips", int, "held-out clips")
    add("--eval-frames", "eval_frames", int, "frames per held-out clip")
    add("--eval-points", "eval_points", int, "tracks per held-out clip")
    add("--eval-seed", "eval_seed", int, "first held-out seed (training seeds start at 2**31)")
    return parser


def main(argv=None, clock: Callable[[], float] = time.monotonic) -> int:
    """The command; exit status 0, 2 for bad arguments or inputs, 1 for a failure while training."""
    started = clock()
    options = vars(build_parser().parse_args(deprecated_flag(argv, "--out", "--output", PROG)))
    resume = options.pop("resume")
    stop_at = options.pop("stop_at")
    out = options.pop("out")
    try:
        if resume:
            options.setdefault("time_budget", None)  # a budget is this command's, not the stored run's
            config, overrides = TrainConfig(out=out), options
        else:
            config, overrides = TrainConfig(out=out, **options), None
    except ValueError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return run_command(PROG, lambda: train(config, resume=resume, overrides=overrides, stop_at=stop_at,
                                           steps_given=resume or "steps" in options, started=started,
                                           clock=clock))


if __name__ == "__main__":
    sys.exit(main())
