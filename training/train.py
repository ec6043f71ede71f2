"""Supervised training of TAPIR / BootsTAPIR on Kubric-lite clips.

One script, CPU or GPU, one process or many:

    python -m bootstap_ros_training.train --out runs/small --model small --steps 2500 \
        --batch-size 4 --frames 8 --num-points 64 --num-workers 1   # ~1.5 h on 2 CPU cores
    python -m bootstap_ros_training.train --out runs/small --resume          # continue exactly
    torchrun --nproc-per-node 8 -m bootstap_ros_training.train --out runs/big --model official \
        --device cuda --batch-size 4                            # DistributedDataParallel

This module owns the run: the `TrainConfig`, the model, optimiser and learning-rate
schedule (AdamW, linear warmup then cosine decay to zero, as the official TAPIR
recipe), the step (autocast on CUDA, gradient clipping, steps with a non-finite
gradient skipped), the checkpoints, the logs and the periodic evaluation.

A run directory holds:
  checkpoint.pt      model config + weights + optimiser + step + training config;
                     written atomically (also on SIGTERM/Ctrl-C); `--resume` continues
                     from it exactly (bit for bit on CPU; CUDA has non-deterministic kernels)
  model.pt           the final weights and config only (what the tracker loads)
  config.json        the resolved training and model configs
  train_log.csv      step, lr, loss terms, gradient norm, throughput
  eval_log.csv       AJ, <delta_avg and OA on the held-out set after each evaluation
  eval/              the held-out pickle and one RESULTS json per evaluation
  tensorboard/       the same scalars, when tensorboard is installed

Batches are per process: the global batch is `batch_size` x the number of processes.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import dataclasses
import datetime
import json
import math
import os
import signal
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.distributed as dist

from bootstap_ros.config import ModelConfig
from bootstap_ros.model import TAPIR, build_model, load_checkpoint, preprocess_frames
from bootstap_ros.model.checkpoint import read_checkpoint_file, save_checkpoint
from .configs import resolve_model_config
from .data import StepBatches, SyntheticClips, heldout_path, make_loader, write_heldout_set
from .losses import LossConfig, tapir_loss
from .domains.synthetic import SyntheticConfig

CHECKPOINT = "checkpoint.pt"
FINAL_MODEL = "model.pt"
TRAIN_COLUMNS = ("step", "lr", "loss", "position", "occlusion", "uncertainty", "grad_norm",
                 "skipped_steps", "steps_per_s", "clips_per_s", "elapsed_s")
EVAL_SIZE = 256  # the TAP-Vid evaluation raster
EVAL_COLUMNS = ("step", "average_jaccard", "average_pts_within_thresh", "occlusion_accuracy")


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
                               num_points=self.num_points)

    def heldout(self) -> SyntheticConfig:
        # Held-out clips are made at the evaluation raster, whatever the training clips' size.
        return SyntheticConfig(frames=self.eval_frames, height=EVAL_SIZE, width=EVAL_SIZE,
                               num_points=self.eval_points)


# ----------------------------------------------------------------------------- runtime

@dataclass
class Runtime:
    """Where this process runs: its rank among `world_size` processes and its device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def setup_runtime(device: str) -> Runtime:
    """Reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and joins the group."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was given but torch.cuda.is_available() is False; "
                         "use --device cpu or a CUDA build of torch")
    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # every step has the same shapes
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Runtime(0, 1, torch.device(device))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        target = torch.device("cuda", local_rank)
    else:
        target = torch.device("cpu")
    if not dist.is_initialized():
        # Rank 0 evaluates while the others wait: allow for a long evaluation.
        dist.init_process_group("nccl" if device == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=60))
    return Runtime(rank, world_size, target)


# ----------------------------------------------------------------------------- model, optimiser

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


def make_adamw(model: torch.nn.Module, lr: float, weight_decay: float,
               beta2: float) -> torch.optim.Optimizer:
    """AdamW; as in the official recipe biases (and here norm scales) are not decayed."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, beta2), eps=1e-8)


def cosine_learning_rate(step: int, peak: float, warmup: int, steps: int) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to zero at `steps`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def learning_rate(step: int, config: TrainConfig) -> float:
    """The supervised run's schedule (`cosine_learning_rate` of its config)."""
    return cosine_learning_rate(step, config.lr, config.warmup, config.steps)


def make_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """Loss scaling is needed for fp16 autocast only (CUDA); otherwise a disabled scaler."""
    return torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and amp == "fp16")


def autocast_context(device: torch.device, amp: str):
    """Mixed precision: `auto` is bf16 on CUDA and float32 on CPU."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp fp16 needs CUDA; use bf16 or off on CPU")
    return torch.autocast(device.type, dtype=torch.float16 if amp == "fp16" else torch.bfloat16)


def batch_loss(model: torch.nn.Module, batch: Dict[str, torch.Tensor], device: torch.device,
               config: TrainConfig, causal: bool):
    """Forward one batch and return (loss, parts) as `bootstap_ros_training.losses.tapir_loss`."""
    return supervised_loss(model, batch, device, config.loss, config.amp, causal)


def supervised_loss(model: torch.nn.Module, batch: Dict[str, torch.Tensor], device: torch.device,
                    loss_config: LossConfig, amp: str, causal: bool):
    """The supervised task's forward on one batch of labelled clips: (loss, parts)."""
    video = batch["video"].to(device, non_blocking=True)
    queries = batch["query_points"].to(device, non_blocking=True)
    outputs = model_forward(model, video, queries, amp, causal)
    return tapir_loss(outputs, batch["target_points"].to(device), batch["occluded"].to(device),
                      video.shape[2:4], loss_config)


def model_forward(model: torch.nn.Module, video: torch.Tensor, queries: torch.Tensor, amp: str,
                  causal: bool):
    """Trajectories of uint8 clips [B, T, H, W, 3] (on the model's device) under autocast.

    The online engine never pins a point to its query position: causal models are
    trained the way they run.
    """
    with autocast_context(video.device, amp):
        return model(preprocess_frames(video), queries, constrain_query_points=not causal)


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, loss: torch.Tensor, grad_clip: float):
    """Backward, clip and step. Returns (gradient norm before clipping, whether it stepped)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    max_norm = grad_clip if grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    finite = bool(torch.isfinite(grad_norm))
    if scaler.is_enabled():
        scaler.step(optimizer)  # skips the step itself when a gradient is not finite
        scaler.update()
    elif finite:
        optimizer.step()
    return float(grad_norm), finite


class StopRequest:
    """Turns SIGTERM / SIGINT into "checkpoint after this step and stop".

    A job scheduler's time limit, `timeout` or Ctrl-C then leaves a checkpoint that
    `--resume` continues from; a second signal acts as usual. Ranks agree on stopping
    (any rank's request stops all) so that none waits forever for the others.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signal = None
        self._previous = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for number in self.SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)

    def restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _handle(self, number, frame) -> None:
        self.signal = signal.Signals(number).name
        signal.signal(number, self._previous[number])

    def agreed(self, runtime: "Runtime") -> bool:
        if not runtime.distributed:
            return self.signal is not None
        flag = torch.tensor([float(self.signal is not None)], device=runtime.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


# ----------------------------------------------------------------------------- logs

class LossWindow:
    """The loss parts of the steps since the last log line, for the next one: their means
    (averaged over the ranks of a distributed run), step count and time. One per loop."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums: Dict[str, torch.Tensor] = {}
        self.steps = 0
        self.start = time.perf_counter()

    def add(self, parts: Dict[str, torch.Tensor]) -> None:
        self.steps += 1
        for key, value in parts.items():
            self.sums[key] = self.sums.get(key, 0.0) + value.detach().float()

    def means(self, runtime: "Runtime") -> Dict[str, float]:
        """Each part's mean over the window (and the ranks); collective under DDP."""
        names = sorted(self.sums)
        means = torch.stack([self.sums[k] for k in names]) / self.steps
        if runtime.distributed:
            dist.all_reduce(means)
            means /= runtime.world_size
        return dict(zip(names, means.tolist()))

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.start


def metrics_line(step: int, metrics: Dict[str, float]) -> str:
    """The progress line of an evaluation: AJ, <delta_avg and OA in percent, and the
    label-free score and the pseudo-label grades when they were measured."""
    parts = [f"step {step}:"]
    if "average_jaccard" in metrics:
        parts.append(f"AJ {100 * metrics['average_jaccard']:.1f}  "
                     f"<delta_avg {100 * metrics['average_pts_within_thresh']:.1f}  "
                     f"OA {100 * metrics['occlusion_accuracy']:.1f}")
    if "cycle_score" in metrics:
        parts.append(f"label-free score {metrics['cycle_score']:.3f}")
    if "grade_precision" in metrics:
        parts.append(f"pseudo-labels: precision {metrics['grade_precision']:.2f} "
                     f"recall {metrics['grade_recall']:.2f}")
    return "  ".join(parts)


def distributed_model(model: TAPIR, runtime: Runtime) -> torch.nn.Module:
    """`model` wrapped in DistributedDataParallel under torchrun, else `model` itself."""
    if not runtime.distributed:
        return model
    # Every parameter is used unless there is no refinement (the mixer then idles).
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None,
        find_unused_parameters=model.config.refinement_iters == 0)


def keep_freed_memory() -> bool:
    """Asks glibc's malloc to keep freed memory for reuse instead of returning it to the system.

    By default blocks above a (dynamic) threshold are mmap-ed and unmapped when freed, and
    the heap top is trimmed: every training step then page-faults its activations in
    again. On a CPU that cost about a fifth of a step's time (system time 0.9 s of 4.2 s
    CPU seconds a step, `bootstap_ros_training.bench.bootstrap`); with these settings 0.3-0.4 s. Returns
    whether the settings were applied (glibc only; elsewhere nothing changes)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if sys.platform != "linux" or name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30)
                    and libc.mallopt(m_top_pad, 256 << 20))
    except (OSError, AttributeError):
        return False


def run_with_runtime(device: str, run):
    """`run(runtime)` with the process's runtime (DDP under torchrun), torn down after."""
    runtime = setup_runtime(device)
    if runtime.device.type == "cpu":
        keep_freed_memory()
    try:
        return run(runtime)
    finally:
        if runtime.distributed:
            dist.destroy_process_group()


@dataclass
class Loop:
    """A run's loop as `run_loop` drives it: what one step does and what the run writes.

    Supervised training and bootstrapping share the cadence (a log line every
    `log_every` steps, a checkpoint every `checkpoint_every`, a stop on SIGTERM/SIGINT
    agreed by every rank, an evaluation when `eval_due`, a time budget) and differ in
    these parts.
    """

    name: str  # the progress bar's label
    out: Path
    record: Dict  # written to out/config.json
    # Stored in every checkpoint beside the model (the run's config): a dict, or a callable
    # giving one when the checkpoint is written (a budget changes the config's step count).
    checkpoint_fields: object
    final_name: str  # the weights-only file written when the schedule ends
    steps: int  # the schedule's length
    log_every: int
    checkpoint_every: int
    # (batch, step) -> (lr, loss parts, gradient norm, whether the optimiser stepped)
    train_step: Callable[[object, int], Tuple[float, Dict[str, torch.Tensor], float, bool]]
    columns: Tuple[Tuple[str, ...], Tuple[str, ...]] = (TRAIN_COLUMNS, EVAL_COLUMNS)
    # Extra columns of a log row from its window (steps, seconds); the progress bar's postfix.
    extra_columns: Callable[[int, float], Dict] = lambda steps, elapsed: {}
    postfix: Callable[[Dict], Dict] = lambda row: {}
    eval_due: Callable[[int], bool] = lambda step: False
    evaluate: Optional[Callable[[int], Dict[str, float]]] = None
    # A `bootstap_ros_training.budget.TimeBudget`: the schedule's length follows it, and it may end the run.
    budget: Optional[object] = None
    # Called with a new schedule length when the budget refits it (the run's config follows).
    set_steps: Callable[[int], None] = lambda steps: None
    # Without a budget: print the plan (`bootstap_ros_training.budget.describe_plan`) once the pace is known;
    # the value says whether the step count was given.
    announce_plan: Optional[bool] = None
    # Called once the final weights are written (e.g. the final validation), before the
    # final evaluation.
    after_final: Optional[Callable[[int], None]] = None


def run_loop(loop: Loop, model: TAPIR, runtime: Runtime, state: Dict[str, object], batches,
             step: int, last_step: int) -> None:
    """Runs `loop.train_step` over `batches` from `step` to `last_step` (the main process logs,
    checkpoints `model` and `state`, and evaluates); stops early, checkpointed, on a signal,
    and at the budget's deadline (the schedule then ends there and the final weights are
    written)."""
    from .budget import CALIBRATION_STEPS, describe_plan

    out = loop.out
    logs, progress = None, None
    if runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(loop.record, indent=2) + "\n")
        logs = Logs(out, step, *loop.columns)
        from tqdm import tqdm

        progress = tqdm(total=last_step, initial=step, unit="step", desc=loop.name, dynamic_ncols=True)

    def save(path: Path, full: bool) -> None:
        fields = loop.checkpoint_fields() if callable(loop.checkpoint_fields) else loop.checkpoint_fields
        save_training_checkpoint(path, model, state if full else None, step=step, **fields)

    def reschedule(steps: int) -> None:
        nonlocal last_step
        stops_early = last_step < loop.steps  # --stop-at
        last_step = min(last_step, steps) if stops_early else steps
        loop.steps = steps
        loop.set_steps(steps)
        if progress is not None:
            progress.total = steps
            progress.refresh()

    started = time.perf_counter()
    window, skipped = LossWindow(), 0
    stop_request = StopRequest()
    stop_request.install()
    budget = loop.budget
    step_times = []
    final_written = False
    try:
        iterator = iter(batches)
        while step < last_step:
            step_started = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                break
            lr, parts, grad_norm, stepped = loop.train_step(batch, step)
            skipped += not stepped
            step += 1
            step_seconds = time.perf_counter() - step_started
            step_times.append(step_seconds)
            window.add(parts)
            stopping = stop_request.agreed(runtime)
            if budget is not None:
                budget.record_step(step_seconds)
                fitted = budget.fit(step)
                if fitted is not None and fitted != loop.steps:
                    reschedule(fitted)
                if step < last_step and budget.out_of_time():
                    # The schedule ends here: final weights, as at its planned end.
                    if runtime.is_main:
                        progress.write(f"time budget: stopping at step {step} of {loop.steps}")
                    reschedule(step)
            elif loop.announce_plan is not None and len(step_times) == CALIBRATION_STEPS and runtime.is_main:
                pace = statistics.median(step_times[1:])
                progress.write(describe_plan(loop.steps, pace, loop.announce_plan))
            bookkeeping_started = time.perf_counter()

            if step % loop.log_every == 0 or step == last_step or stopping:
                means = window.means(runtime)
                elapsed = window.elapsed_s
                if runtime.is_main:
                    row = {"step": step, "lr": lr, **means,
                           "grad_norm": grad_norm, "skipped_steps": skipped,
                           "steps_per_s": window.steps / elapsed,
                           **loop.extra_columns(window.steps, elapsed),
                           "elapsed_s": time.perf_counter() - started}
                    logs.scalars(logs.train, "train", row)
                    progress.set_postfix(loop.postfix(row), refresh=False)
                window.reset()
            if progress is not None:
                progress.update(1)

            if step % loop.checkpoint_every == 0 or step == last_step or stopping:
                if runtime.is_main:
                    save(out / CHECKPOINT, full=True)
                    if step == loop.steps:
                        save(out / loop.final_name, full=False)
                        final_written = True
                runtime.barrier()
                if final_written and loop.after_final is not None:
                    loop.after_final(step)
            if stopping:
                if runtime.is_main:
                    progress.write(f"stopped by {stop_request.signal or 'another rank'} at step {step}: "
                                   f"{out / CHECKPOINT} written; --resume continues")
                break
            if loop.eval_due(step):
                if runtime.is_main:
                    progress.clear()
                    metrics = loop.evaluate(step)
                    if metrics:
                        logs.scalars(logs.eval, "eval", {"step": step, **metrics})
                        progress.write(metrics_line(step, metrics))
                runtime.barrier()
            if budget is not None:
                budget.record_other(time.perf_counter() - bookkeeping_started)
        if runtime.is_main and step == loop.steps and not final_written:
            save(out / loop.final_name, full=False)
            if loop.after_final is not None:
                loop.after_final(step)
    finally:
        stop_request.restore()
        if progress is not None:
            progress.close()
        if logs is not None:
            logs.close()


class Logs:
    """CSV logs (always) and TensorBoard (when importable); only the main process writes.

    The columns given are the first ones; a row with a new key (a task's own loss
    term) adds its column to the file.
    """

    def __init__(self, out: Path, start_step: int, train_columns=TRAIN_COLUMNS,
                 eval_columns=EVAL_COLUMNS):
        self.train = _CsvLog(out / "train_log.csv", train_columns, start_step)
        self.eval = _CsvLog(out / "eval_log.csv", eval_columns, start_step)
        self.tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional: the CSV logs hold everything
            return
        self.tensorboard = SummaryWriter(str(out / "tensorboard"), purge_step=start_step or None)

    def scalars(self, log: "_CsvLog", prefix: str, row: Dict[str, float]) -> None:
        log.write(row)
        if self.tensorboard is not None:
            for key, value in row.items():
                if key != "step":
                    self.tensorboard.add_scalar(f"{prefix}/{key}", value, row["step"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


class _CsvLog:
    def __init__(self, path: Path, columns, start_step: int):
        self.path, self.columns = path, list(columns)
        kept = []
        if path.exists() and start_step > 0:
            # A resumed run drops rows logged after its checkpoint: they are redone.
            with open(path, newline="") as file:
                reader = csv.DictReader(file)
                kept = [row for row in reader if int(row["step"]) <= start_step]
                self.columns += [c for c in reader.fieldnames or () if c not in self.columns]
        self._rewrite(kept)

    def _rewrite(self, rows) -> None:
        with open(self.path, "w", newline="") as file:
            writer = csv.DictWriter(file, self.columns, restval="")
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: Dict[str, float]) -> None:
        new = [key for key in row if key not in self.columns]
        if new:  # a new column: rewrite the file under the wider header (logs are small)
            with open(self.path, newline="") as file:
                rows = list(csv.DictReader(file))
            self.columns += new
            self._rewrite(rows)
        with open(self.path, "a", newline="") as file:
            csv.DictWriter(file, self.columns, restval="").writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


# ----------------------------------------------------------------------------- evaluation

def evaluate(model: TAPIR, config: TrainConfig, step: int, device: torch.device) -> Dict[str, float]:
    """AJ, <delta_avg and OA on the held-out clips through the project's evaluation code."""
    out = Path(config.out) / "eval"
    heldout = heldout_path(out, config.heldout(), config.eval_seed, config.eval_clips)
    write_heldout_set(heldout, config.heldout(), config.eval_seed, config.eval_clips)
    return evaluate_dataset(model, heldout, out / f"step_{step:07d}.json", device)


def evaluate_dataset(model: TAPIR, dataset, output, device: torch.device, query_mode: str = "first",
                     max_videos: Optional[int] = None) -> Dict[str, float]:
    """AJ, <delta_avg and OA of `model` on a TAP-Vid / RoboTAP pickle, as `bootstap-eval` scores
    it: online (the CausalTracker, as the ROS node runs) for causal models, offline otherwise.
    The results json goes to `output`."""
    from bootstap_ros.eval.cli import EvalConfig, run_evaluation
    from bootstap_ros.eval.predictors import ModelPredictor

    mode = "online" if model.config.causal else "offline"
    eval_config = EvalConfig(dataset=str(dataset), output=str(output), query_mode=query_mode,
                             mode=mode, causal=model.config.causal, device=str(device),
                             max_videos=max_videos)
    # A copy: the tracker switches its model to eval mode and may move it.
    predictor = ModelPredictor(copy.deepcopy(model).eval(), mode, str(device))
    results = run_evaluation(eval_config, predictor)
    return {key: float(results[key]) for key in EVAL_COLUMNS[1:]}


# ----------------------------------------------------------------------------- checkpoints

def _state_dict_of(part) -> Dict:
    if isinstance(part, torch.nn.Module):
        return {k: v.detach().cpu() for k, v in part.state_dict().items()}
    return part.state_dict()


def save_training_checkpoint(path: Path, model: TAPIR, parts: Optional[Dict[str, object]] = None,
                             **extra) -> None:
    """A project checkpoint of `model` (loads in bootstap-track, bootstap-eval and the node)
    holding besides it the state_dict of each of `parts` (further models, optimisers,
    GradScalers; a disabled scaler is left out) and `extra` (step, configs)."""
    for name, part in (parts or {}).items():
        if isinstance(part, torch.amp.GradScaler) and not part.is_enabled():
            continue
        extra[name] = _state_dict_of(part)
    save_checkpoint(path, model, **extra)  # atomic: a kill never leaves a truncated file


def load_training_parts(content: Dict, parts: Dict[str, object], path="checkpoint") -> None:
    """Loads each of `parts` from a `save_training_checkpoint` content (what it left out, a
    disabled scaler, stays as it is)."""
    for name, part in parts.items():
        if isinstance(part, torch.amp.GradScaler) and not part.is_enabled():
            continue
        if name not in content:
            raise ValueError(f"{path} holds no '{name}' state; it was not written by this trainer "
                             "(start a new run with --init instead of --resume)")
        part.load_state_dict(content[name])


# ----------------------------------------------------------------------------- the run

def _resolve_resume(config: TrainConfig, overrides: Dict) -> tuple:
    """The stored config of `out/checkpoint.pt` with `overrides` applied, and the checkpoint."""
    path = Path(config.out) / CHECKPOINT
    content = read_checkpoint_file(path)
    if "train_config" not in content or "step" not in content:
        raise ValueError(f"{path} is not a training checkpoint (no train_config/step); "
                         "use --init to start from its weights instead")
    fixed = sorted({"model", "causal", "init"} & set(overrides))
    if fixed:
        raise ValueError(f"--resume takes the architecture from {path}; drop {fixed}")
    stored = TrainConfig.from_dict(content["train_config"])
    changed = {k: v for k, v in overrides.items() if getattr(stored, k) != v}
    if changed and int(os.environ.get("RANK", "0")) == 0:
        print(f"resuming {path} at step {content['step']} with changed settings: "
              + ", ".join(f"{k} {getattr(stored, k)} -> {v}" for k, v in sorted(changed.items())),
              file=sys.stderr)
    resumed_config = dataclasses.replace(stored, out=config.out, **overrides)
    return resumed_config, {"path": str(path), **content}


def train(config: TrainConfig, resume: bool = False, overrides: Optional[Dict] = None,
          stop_at: Optional[int] = None, steps_given: bool = True, started: Optional[float] = None) -> TAPIR:
    """Runs (or resumes) training; returns the trained model (on its device).

    resume: continue from `config.out/checkpoint.pt`, whose stored training config is
      used with `overrides` (e.g. {"steps": 8000}) applied.
    stop_at: save a checkpoint and return at this step (e.g. to fit a job's time limit);
      the schedule still runs to `config.steps`, and `resume` continues from there.
    steps_given: whether `steps` was chosen (else a run without a time budget prints its plan).
    started: `time.monotonic()` when the command started (a time budget counts from it).
    """
    started = time.monotonic() if started is None else started
    resumed = None
    if resume:
        config, resumed = _resolve_resume(config, overrides or {})
    elif (Path(config.out) / CHECKPOINT).exists():
        raise ValueError(f"{Path(config.out) / CHECKPOINT} exists: pass --resume to continue that run, "
                         "or choose another --out")
    return run_with_runtime(config.device, lambda runtime: _train(config, runtime, resumed, stop_at,
                                                                   steps_given, started))


def _train(config: TrainConfig, runtime: Runtime, resumed: Optional[dict],
           stop_at: Optional[int], steps_given: bool = True, started: Optional[float] = None) -> TAPIR:
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
    budget = None
    if config.time_budget is not None:
        from .budget import TimeBudget

        cap = config.steps if steps_given else max(config.steps, 1_000_000)
        budget = TimeBudget(config.time_budget, time.monotonic() if started is None else started, max_steps=cap)
        config.steps = cap
    last_step = min(config.steps, stop_at) if stop_at is not None else config.steps

    def set_steps(steps: int) -> None:
        config.steps = steps
        config.warmup = min(config.warmup, max(1, steps // 10))  # a short budget keeps its warmup short

    trained = distributed_model(model, runtime)
    loader = make_loader(
        SyntheticClips(config.synthetic(), config.seed, config.train_clips),
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
        announce_plan=None if budget is not None else steps_given)
    run_loop(loop, model, runtime, state, loader, step, last_step)
    return model


# ----------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    # Options left out stay out of the namespace, so --resume can tell what was given.
    parser = argparse.ArgumentParser(
        prog="python -m bootstap_ros_training.train", argument_default=argparse.SUPPRESS,
        description="Train TAPIR/BootsTAPIR on Kubric-lite synthetic clips (supervised TAPIR loss). "
        "Under torchrun every process trains on its own clips (DistributedDataParallel).")
    defaults = TrainConfig()

    def add(flag, name, kind, help_text, **kwargs):
        default = getattr(defaults, name)
        shown = "" if default is None else f" (default: {default})"
        parser.add_argument(flag, dest=name, type=kind, metavar=name.upper(), help=help_text + shown,
                            **kwargs)

    parser.add_argument("--out", required=True, help="run directory (checkpoints, logs)")
    parser.add_argument("--resume", action="store_true", default=False,
                        help="continue from OUT/checkpoint.pt with its stored settings; options "
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


def main(argv=None) -> int:
    started = time.monotonic()
    options = vars(build_parser().parse_args(argv))
    resume = options.pop("resume")
    stop_at = options.pop("stop_at")
    out = options.pop("out")
    try:
        if resume:
            options.setdefault("time_budget", None)  # a budget is this command's, not the stored run's
            train(TrainConfig(out=out), resume=True, overrides=options, stop_at=stop_at, started=started)
        else:
            train(TrainConfig(out=out, **options), stop_at=stop_at, steps_given="steps" in options,
                  started=started)
    except (ValueError, FileNotFoundError) as error:
        # CheckpointError is a ValueError whose message says what to do.
        print(f"bootstap_ros_training.train: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
