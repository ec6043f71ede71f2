"""The one training loop, which supervised training (`supervised`) and bootstrapping
(`bootstrap`) both run.

This module owns what the two recipes share: where a process runs (`Runtime`, DDP under
torchrun), the optimiser (AdamW, linear warmup then cosine decay to zero, as the official
TAPIR recipe), the forward under autocast and the optimiser step (gradient clipping, steps
with a non-finite gradient skipped), the loop itself (`Loop`, `run_loop`: logs, checkpoints,
evaluations, a stop on SIGTERM/Ctrl-C, a time budget), the checkpoints and the run's set-up
(`open_run`: a new run or a resumed one).

A run directory holds:
  checkpoint.pt      model config + weights + optimisers + step + the run's config; written
                     atomically (also on SIGTERM/Ctrl-C); `--resume` continues from it
                     exactly (bit for bit on CPU; CUDA has non-deterministic kernels)
  final.pt           the final weights and config only (what the tracker loads)
  config.json        the resolved configs
  train_log.csv      step, lr, loss terms, gradient norm, throughput
  eval_log.csv       the evaluations' scores, from step 0 on
  eval/              one RESULTS json per evaluation
  tensorboard/       the same scalars, when tensorboard is installed
"""

from __future__ import annotations

import contextlib
import copy
import csv
import datetime
import json
import math
import os
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.distributed as dist

from bootstap_ros.model import TAPIR, preprocess_frames
from bootstap_ros.model.checkpoint import read_checkpoint_file, save_checkpoint

from .budget import CALIBRATION_STEPS, describe_plan
from .losses import LossConfig, tapir_loss

CHECKPOINT = "checkpoint.pt"
#: The final weights of a run (both recipes).
FINAL_MODEL = "final.pt"
#: The name supervised runs gave their final weights before; still found (with a warning).
OLD_FINAL_MODEL = "model.pt"
TRAIN_COLUMNS = ("step", "lr", "loss", "position", "occlusion", "uncertainty", "grad_norm",
                 "skipped_steps", "steps_per_s", "clips_per_s", "elapsed_s")
EVAL_COLUMNS = ("step", "average_jaccard", "average_pts_within_thresh", "occlusion_accuracy")


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


# ----------------------------------------------------------------------------- optimiser, forward

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
    # Scores of the model as the run starts (step 0), written as the first row of eval_log.csv.
    first_metrics: Optional[Dict[str, float]] = None
    # The clock the steps are timed with (the budget's): seconds, monotonic.
    clock: Callable[[], float] = time.monotonic


def run_loop(loop: Loop, model: TAPIR, runtime: Runtime, state: Dict[str, object], batches,
             step: int, last_step: int) -> None:
    """Runs `loop.train_step` over `batches` from `step` to `last_step` (the main process logs,
    checkpoints `model` and `state`, and evaluates); stops early, checkpointed, on a signal,
    and at the budget's deadline (the schedule then ends there and the final weights are
    written)."""
    out = loop.out
    clock = loop.clock
    budget = loop.budget
    logs, progress = None, None
    if runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(loop.record, indent=2) + "\n")
        logs = Logs(out, step, *loop.columns)
        if loop.first_metrics and step == 0:
            logs.scalars(logs.eval, "eval", {"step": 0, **loop.first_metrics})

    def show_progress() -> None:
        """The progress bar, once its length is known: with a budget, after the first fit
        (until then the length is only the budget's cap)."""
        nonlocal progress
        if progress is None and runtime.is_main:
            from tqdm import tqdm

            progress = tqdm(total=last_step, initial=step, unit="step", desc=loop.name, dynamic_ncols=True)

    def say(line: str) -> None:
        if progress is not None:
            progress.write(line)
        else:
            print(line, file=sys.stderr, flush=True)

    if budget is None:
        show_progress()
    elif runtime.is_main:
        say(f"time budget: timing the first {CALIBRATION_STEPS} steps to fit the schedule to "
            f"{budget.seconds_left() / 60:.1f} min")

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
    step_times = []
    final_written = False
    try:
        iterator = iter(batches)
        while step < last_step:
            step_started = clock()
            try:
                batch = next(iterator)
            except StopIteration:
                break
            lr, parts, grad_norm, stepped = loop.train_step(batch, step)
            skipped += not stepped
            step += 1
            step_seconds = clock() - step_started
            step_times.append(step_seconds)
            window.add(parts)
            stopping = stop_request.agreed(runtime)
            if budget is not None:
                budget.record_step(step_seconds)
                fitted = budget.fit(step)
                if fitted is not None and fitted != loop.steps:
                    reschedule(fitted)
                if fitted is not None and progress is None:
                    show_progress()
                if step < last_step and budget.out_of_time():
                    # The schedule ends here: final weights, as at its planned end.
                    if runtime.is_main:
                        say(f"time budget: stopping at step {step} of {loop.steps}")
                    reschedule(step)
            elif loop.announce_plan is not None and len(step_times) == CALIBRATION_STEPS and runtime.is_main:
                pace = statistics.median(step_times[1:])
                say(describe_plan(loop.steps, pace, loop.announce_plan))
            bookkeeping_started = clock()

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
                    if progress is not None:
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
                    say(f"stopped by {stop_request.signal or 'another rank'} at step {step}: "
                                   f"{out / CHECKPOINT} written; --resume continues")
                break
            if loop.eval_due(step):
                if runtime.is_main:
                    if progress is not None:
                        progress.clear()
                    metrics = loop.evaluate(step)
                    if metrics:
                        logs.scalars(logs.eval, "eval", {"step": step, **metrics})
                        say(metrics_line(step, metrics))
                runtime.barrier()
            if budget is not None:
                budget.record_other(clock() - bookkeeping_started)
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


# ----------------------------------------------------------------------------- the run's set-up

def open_run(out: Path, resume: bool, config_key: str) -> Optional[dict]:
    """The start of a run in `out`: None for a new run (there must be no checkpoint there),
    or the content of `out/checkpoint.pt` (with its "path") to resume, which must hold the
    recipe's `config_key` and a step."""
    path = Path(out) / CHECKPOINT
    if not resume:
        if path.exists():
            raise ValueError(f"{path} exists: pass --resume to continue that run, or choose another --output")
        return None
    content = read_checkpoint_file(path)
    if config_key not in content or "step" not in content:
        raise ValueError(f"{path} is not a checkpoint of this recipe (no {config_key}/step); start a new run "
                         "with --init to take its weights")
    return {"path": str(path), **content}


def report_changes(path: str, step: int, changed: Dict[str, Tuple[object, object]]) -> None:
    """Says on stderr (main process) which stored settings a resumed run changes."""
    if changed and int(os.environ.get("RANK", "0")) == 0:
        print(f"resuming {path} at step {step} with changed settings: "
              + ", ".join(f"{k} {old} -> {new}" for k, (old, new) in sorted(changed.items())), file=sys.stderr)


def make_budget(minutes: Optional[float], steps: int, steps_given: bool, started: float,
                clock: Callable[[], float]):
    """(the run's TimeBudget or None, the schedule's length until it is fitted): without
    `steps` given the schedule may grow to 1,000,000 steps; given, `steps` caps it."""
    if minutes is None:
        return None, steps
    from .budget import TimeBudget

    cap = steps if steps_given else max(steps, 1_000_000)
    return TimeBudget(minutes, started, max_steps=cap, clock=clock), cap


def final_weights(path: Optional[str]) -> Optional[str]:
    """A checkpoint path as given, or, for a run's old final-weights name (model.pt) that is
    not there, the run's final.pt beside it, with a deprecation warning."""
    if path is None:
        return None
    given = Path(path)
    if given.name == OLD_FINAL_MODEL and not given.exists() and (given.parent / FINAL_MODEL).exists():
        print(f"warning: {given} does not exist; a run's final weights are now {FINAL_MODEL}: using "
              f"{given.parent / FINAL_MODEL} (the name {OLD_FINAL_MODEL} is deprecated)", file=sys.stderr)
        return str(given.parent / FINAL_MODEL)
    return path


def deprecated_flag(argv: Optional[list], old: str, new: str, prog: str) -> Optional[list]:
    """`argv` with the deprecated flag `old` (alone or as old=VALUE) renamed to `new`, and a
    warning on stderr when it was used."""
    args = list(sys.argv[1:] if argv is None else argv)
    renamed = [new if a == old else new + a[len(old):] if a.startswith(old + "=") else a for a in args]
    if renamed != args:
        print(f"{prog}: warning: {old} is deprecated, use {new}", file=sys.stderr)
    return renamed


