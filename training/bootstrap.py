"""BootsTAP bootstrapping: self-supervised student-teacher training on unlabelled logs.

    bootstap-train-bootstrap --data robot_run.bag/ --data hand.mp4 --output runs/boot \
        --steps 500 --batch-size 2                    # from the embedded model, on the CPU
    bootstap-train-bootstrap --output runs/boot --resume     # continue exactly
    torchrun --nproc-per-node 8 -m bootstap_ros_training.bootstrap --data logs/ --output runs/big \
        --init causal_bootstapir_checkpoint.pt --device cuda  # DistributedDataParallel

Each step trains the student on two tasks, each with its own Adam optimiser:

* self-supervised, on clips of the robot's logs (`bootstap_ros_training.logs`): the teacher
  (by default the starting model, frozen, which labels each clip once; `--teacher ema`: an
  exponential moving average of the student; or a checkpoint with `--teacher CKPT`, which
  may be an offline model teaching a causal student) tracks random queries on the clean
  clip without gradients; its final refined tracks and visibility are the pseudo-labels.
  The student sees a degraded view (each frame JPEG-compressed, shrunk and pasted on black
  at an offset moving linearly in time: `bootstap_ros_training.views`) and queries a point
  of the teacher's trajectory (the teacher's query with p = 0.5, else a random visible
  point: `bootstap_ros_training.pseudo_labels`). Its predictions, mapped back through the
  inverse affine map, are trained with the TAPIR loss on the final and every unrefined
  iteration, on the entries kept by the cycle-consistency mask (the student's track
  returns within 4 px of the teacher's query, at 256x256, and is visible there) and the
  proximity mask. What a step computes: `bootstap_ros_training.objective`.
* supervised, on Kubric-lite clips (`bootstap_ros_training.data`), as
  `bootstap_ros_training.supervised` does, so the model does not forget what the labels taught it. The self-supervised task runs at
  half the supervised batch and half its learning rate (the paper's setting).

A run directory holds:
  checkpoint.pt      student + teacher + both optimisers + step + config, written
                     atomically every `checkpoint_every` steps and on SIGTERM/Ctrl-C;
                     `--resume` continues from it exactly (bit for bit on CPU)
  final.pt           the final model (weights + model config): loads in
                     bootstap-track, bootstap-eval and the node without flags; with
                     `merge` < 1 (the default, 0.5) the average of the student and the
                     starting weights (WiSE-FT, `merge_with_start`)
  best.pt            the student at its best label-free score (merged the same way)
  start.pt           the starting weights; final_student.pt, best_student.pt: the
                     students as trained, before the merge
  config.json        the resolved bootstrapping and model configs
  clips/             the decoded log clips (unless `cache` points elsewhere)
  train_log.csv, eval_log.csv, eval/, tensorboard/   as in bootstap_ros_training.loop

Options come from the defaults, then `--config YAML`, then the command line flags and
`key=value` pairs (any field of `BootstrapConfig`, `bootstap_ros_training.bootstrap_config`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from bootstap_ros.cli.common import EXIT_USAGE, run_command
from bootstap_ros.model import TAPIR, build_model

from .bootstrap_config import FIXED_ON_RESUME, PROG, BootstrapConfig, build_parser, parse_command
from .data import StepBatches, make_loader
from .loop import (EVAL_COLUMNS, FINAL_MODEL, Loop, Runtime, cosine_learning_rate, distributed_model,
                   evaluate_dataset, final_weights, load_training_parts, make_adamw, make_budget, make_scaler,
                   model_forward, open_run, run_loop, run_with_runtime, save_training_checkpoint)
from .objective import (_unwrap, bootstrap_loss, bootstrap_step, cached_labels, fixed_teacher, load_fixed_teacher,
                        load_student, step_generators)

__all__ = ["BootstrapConfig", "bootstrap", "bootstrap_loss", "bootstrap_step", "build_parser", "main",
           "parse_command", "step_generators", "LogBatches", "load_student", "load_fixed_teacher"]

TRAIN_COLUMNS = ("step", "lr", "loss", "position", "occlusion", "uncertainty", "kept_tracks",
                 "supervised_loss", "grad_norm", "skipped_steps", "steps_per_s", "elapsed_s")


# ----------------------------------------------------------------------------- data

class LogBatches(Sampler):
    """The log-clip indices of each step's batch on one rank, from `start_step` to `steps`.

    Global slot k = (step * world_size + rank) * batch_size + i goes through the clips in
    a fresh random order every epoch (len(clips) slots), the order a pure function of the
    seed and the epoch: a resumed run sees exactly the clips an uninterrupted one would.
    """

    def __init__(self, num_clips: int, start_step: int, steps: int, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        if num_clips < 1:
            raise ValueError("no clips to train on")
        self.num_clips, self.seed = num_clips, seed
        self.slots = StepBatches(start_step, steps, batch_size, rank, world_size)
        self._orders: Dict[int, np.ndarray] = {}

    def clip(self, slot: int) -> int:
        epoch, position = divmod(slot, self.num_clips)
        order = self._orders.get(epoch)
        if order is None:
            order = np.random.default_rng([self.seed, 7, epoch]).permutation(self.num_clips)
            self._orders = {epoch: order}
        return int(order[position])

    def __iter__(self) -> Iterator[List[int]]:
        for slots in self.slots:
            yield [self.clip(slot) for slot in slots]

    def __len__(self) -> int:
        return len(self.slots)


def prepare_clips(config: BootstrapConfig, size: int, runtime: Runtime):
    """The decoded log clips (a LogClips dataset); rank 0 decodes, the others wait."""
    from .logs import LogClips, prepare_logs

    if not config.data:
        raise ValueError("no --data given: pass rosbag2 bag folders, video files or image folders")
    cache = Path(config.cache) if config.cache else Path(config.output) / "clips"
    manifest = None
    if runtime.is_main:
        manifest = prepare_logs(config.data, cache, config.clip_config(size), config.image_topic)
    runtime.barrier()
    if manifest is None:  # the other ranks find the cache rank 0 wrote
        manifest = prepare_logs(config.data, cache, config.clip_config(size), config.image_topic)
    return LogClips(manifest)


def stack_videos(items) -> Tuple[torch.Tensor, List[int]]:
    """LogClips items -> (uint8 [B, T, S, S, 3], the clips' indices)."""
    return torch.from_numpy(np.stack([item["video"] for item in items])), [item["index"] for item in items]


# ----------------------------------------------------------------------------- the run

def _resolve_resume(config: BootstrapConfig, overrides: Dict) -> Tuple[BootstrapConfig, dict]:
    resumed = open_run(Path(config.output), True, "bootstrap_config")
    stored = BootstrapConfig.from_dict(resumed["bootstrap_config"])
    fixed = sorted(k for k in set(FIXED_ON_RESUME) & set(overrides) if overrides[k] != getattr(stored, k))
    if fixed:
        raise ValueError(f"--resume keeps the model and teacher of {resumed['path']}; drop {fixed} "
                         "(or start a new run in another --output)")
    values = {**asdict(stored), **overrides, "output": config.output}
    return BootstrapConfig.from_dict(values), resumed


def bootstrap(config: BootstrapConfig, resume: bool = False, overrides: Optional[Dict] = None,
              stop_at: Optional[int] = None, steps_given: bool = True,
              started: Optional[float] = None, clock: Callable[[], float] = time.monotonic) -> TAPIR:
    """Runs (or resumes) a bootstrapping run; returns the student (on its device). The arguments
    are those of `bootstap_ros_training.supervised.train` (resume, stop_at, the budget's start and
    clock), with the run's directory `output`."""
    started = clock() if started is None else started
    resumed = None
    if resume:
        config, resumed = _resolve_resume(config, overrides or {})
    else:
        open_run(Path(config.output), False, "bootstrap_config")
        config = dataclasses.replace(config, init=final_weights(config.init))
    config = config.for_device(config.device)
    _warn_about_precision(config)
    return run_with_runtime(config.device, lambda runtime: _bootstrap(config, runtime, resumed, stop_at,
                                                                       steps_given, started, clock))


def _warn_about_precision(config: BootstrapConfig) -> None:
    """bf16 autocast on a CPU without bf16 arithmetic is many times slower than float32."""
    if config.amp != "bf16" or config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        return
    if not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        print("bootstap-train-bootstrap: warning: amp=bf16 on a CPU without AVX512-BF16 or AMX: "
              "bf16 arithmetic is emulated there, a step can be 5-10x slower than float32; "
              "leave amp at auto (float32 on the CPU)", file=sys.stderr)


BEST_MODEL = "best.pt"
START_MODEL = "start.pt"
#: Fewer held-out clips than this make the label-free score noisy: the run warns.
MIN_HELD_OUT_CLIPS = 4


REPORT = "report.json"


class Validation:
    """The label-free score of the student on the held-out clips: best.pt and report.json."""

    def __init__(self, config: BootstrapConfig, videos: List[np.ndarray], out: Path, device: torch.device):
        self.config, self.videos, self.out, self.device = config, videos, out, device
        self.history: List[Dict] = []
        self.best: Optional[Dict] = None

    def score(self, model: TAPIR, step: int) -> Dict[str, float]:
        from .validate import cycle_score

        result = cycle_score(model, self.videos, self.device, self.config.validate_points, self.config.seed,
                             self.config.amp)
        self.history.append({"step": step, **result})
        if self.best is None or result["cycle_score"] > self.best["cycle_score"]:
            self.best = {"step": step, **result}
            save_training_checkpoint(self.out / BEST_MODEL, model, step=step,
                                     bootstrap_config=asdict(self.config), label_free_score=result)
        return {"cycle_score": result["cycle_score"]}

    def report(self, final_step: int) -> str:
        before, after = self.history[0], self.history[-1]
        report = {"score": "cycle consistency on held-out log clips (bootstap_ros_training.validate)",
                  "held_out_clips": len(self.videos), "before": before, "after": after, "best": self.best,
                  "history": self.history, "final_step": final_step}
        (self.out / REPORT).write_text(json.dumps(report, indent=2) + "\n")
        return (f"label-free score on {len(self.videos)} held-out clips: before {before['cycle_score']:.3f}, "
                f"after {after['cycle_score']:.3f} ({after['cycle_score'] - before['cycle_score']:+.3f}); "
                f"best {self.best['cycle_score']:.3f} at step {self.best['step']} -> {self.out / BEST_MODEL}")


def student_file(name: str) -> str:
    """Where `merge_with_start` keeps the student of `name` as trained: final.pt -> final_student.pt."""
    return name[:-len(".pt")] + "_student.pt"


def merge_with_start(out: Path, weight: float) -> List[Path]:
    """WiSE-FT (Wortsman et al., CVPR 2022) at the end of a run: final.pt and best.pt become
    ``(1 - weight) * start.pt + weight * their student``, each student as trained moving to
    `student_file`. A fine-tuned model forgets part of what it knew; the straight line back to
    its start keeps more of both (docs/training.md measures it). A file merged already (its
    "merged" entry) is left as it is. Returns the merged files."""
    from bootstap_ros.model.checkpoint import atomic_torch_save, read_checkpoint_file

    from .average import interpolate

    start = read_checkpoint_file(out / START_MODEL)["state_dict"]
    merged = []
    for name in (FINAL_MODEL, BEST_MODEL):
        path = out / name
        if not path.is_file():
            continue
        content = read_checkpoint_file(path)
        if "merged" in content:
            continue
        atomic_torch_save(content, out / student_file(name))
        content["state_dict"] = interpolate(start, content["state_dict"], weight)
        content["merged"] = {"start": START_MODEL, "student": student_file(name), "weight": weight}
        atomic_torch_save(content, path)
        merged.append(path)
    return merged


def _bootstrap(config: BootstrapConfig, runtime: Runtime, resumed: Optional[dict],
               stop_at: Optional[int], steps_given: bool, started: float, clock: Callable[[], float]) -> TAPIR:
    from torch.utils.data import Subset

    out = Path(config.output)
    device = runtime.device
    if resumed is not None:
        from bootstap_ros.config import ModelConfig

        model = build_model(ModelConfig.from_dict(resumed["model_config"]), resumed["state_dict"],
                            resumed["path"])
    else:
        model = load_student(config)
    if resumed is None and runtime.is_main:
        save_training_checkpoint(out / START_MODEL, model)  # what final.pt and best.pt merge with
    model = model.to(device).train()
    causal = model.config.causal
    size = model.config.resolution[0]

    if config.siamese:
        teacher, teacher_causal = model, causal
    elif config.teacher in ("ema", "fixed"):
        from .pseudo_labels import make_ema_teacher

        teacher, teacher_causal = make_ema_teacher(model), causal
    else:
        teacher = load_fixed_teacher(config).to(device)
        teacher_causal = teacher.config.causal

    supervised_batch = config.ssl_supervised_batch
    optimizers = {"bootstrap_optimizer": make_adamw(model, config.lr, config.weight_decay, config.beta2)}
    if supervised_batch:
        optimizers["supervised_optimizer"] = make_adamw(model, config.ssl_supervised_lr,
                                                        config.weight_decay, config.beta2)
    scaler = make_scaler(device, config.amp)
    state = {**optimizers, "scaler": scaler}
    if config.teacher in ("ema", "fixed") and not config.siamese:
        state["teacher"] = teacher  # a resumed run goes on with the same teacher
    step = 0
    if resumed is not None:
        load_training_parts(resumed, state, resumed["path"])
        step = int(resumed["step"])
    budget, config.steps = make_budget(config.time_budget, config.steps, steps_given, started, clock)
    last_step = min(config.steps, stop_at) if stop_at is not None else config.steps

    trained = distributed_model(model, runtime)
    clips = prepare_clips(config, size, runtime)
    from .validate import holdout_split

    held_out = holdout_split(clips.clips, config.holdout, config.holdout_max_clips)
    train_indices = [i for i in range(len(clips)) if i not in set(held_out)]
    if not train_indices:
        raise ValueError(f"all {len(clips)} clips are held out for validation; lower holdout or add logs")
    train_clips = Subset(clips, train_indices)
    labels = None
    if cached_labels(config):
        from .teacher import LabelCache

        def forward(net, video, queries):
            return model_forward(net, video, queries, config.amp, teacher_causal)

        # A fixed teacher's labels outlive the run (a resume, another seed); a moving
        # teacher's are only good until the next relabelling.
        folder = out / "teacher_labels" / f"rank{runtime.rank}" if fixed_teacher(config) else None
        labels = LabelCache(teacher, forward, config.label_points, config.seed, config.textured_queries,
                            folder, [clip["file"] for clip in clips.clips], config.label_round_trip)
    validation, first_metrics = None, None
    if held_out and runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
        validation = Validation(config, [clips[i]["video"] for i in held_out], out, device)
        if len(held_out) < MIN_HELD_OUT_CLIPS:
            print(f"{PROG}: warning: only {len(held_out)} held-out clip(s) for the label-free score: it is "
                  f"noisy with fewer than {MIN_HELD_OUT_CLIPS} (one clip's luck decides best.pt); record "
                  "longer logs or raise holdout / holdout_max_clips", file=sys.stderr)
        if resumed is None:
            first_metrics = validation.score(model, 0)
    grading = None
    if config.grade and runtime.is_main:
        from .grading import GradingSet

        grading = GradingSet(config.grade, clips.config.size, clips.config.frames)
    pin = device.type == "cuda"
    log_loader = DataLoader(
        train_clips, batch_sampler=LogBatches(len(train_clips), step, last_step, config.batch_size, config.seed,
                                              runtime.rank, runtime.world_size),
        num_workers=config.num_workers, pin_memory=pin, collate_fn=stack_videos)
    supervised_loader: Sequence = itertools.repeat(None)
    if supervised_batch:
        supervised_loader = make_loader(
            config.supervised_clips(size),
            StepBatches(step, last_step, supervised_batch, runtime.rank, runtime.world_size),
            config.num_workers, pin_memory=pin)

    def train_step(batch, step):
        (video, indices), supervised = batch
        if labels is not None and not fixed_teacher(config) and step % config.relabel_every == 0:
            labels.clear()  # the EMA teacher has moved on: relabel each clip on its next visit
        lr = cosine_learning_rate(step, config.lr, config.warmup, config.steps)
        parts, grad_norm, stepped = bootstrap_step(
            trained, teacher, optimizers, scaler, video.to(device, non_blocking=True), supervised,
            config, step, runtime.rank, teacher_causal, ema=config.teacher == "ema" and not config.siamese,
            labels=labels, clip_indices=indices)
        return lr, parts, grad_norm, stepped

    def set_steps(steps: int) -> None:
        config.steps = steps
        config.warmup = min(config.warmup, max(1, steps // 10))  # a short budget keeps its warmup short

    def due(every: int, step: int) -> bool:
        return step == config.steps or (every > 0 and step % every == 0)

    def evaluate(step: int) -> Dict[str, float]:
        metrics: Dict[str, float] = {}
        if config.keep_every > 0 and due(config.keep_every, step):
            parts = {"teacher": teacher} if "teacher" in state else {}
            save_training_checkpoint(out / "checkpoints" / f"step_{step:07d}.pt", model, parts, step=step,
                                     bootstrap_config=asdict(config), elapsed_s=clock() - started)
        if grading is not None and due(config.grade_every, step):
            from .grading import grade

            metrics.update(grade(model, teacher, grading, config, step, device, causal, teacher_causal))
        if validation is not None and due(config.validate_every, step):
            metrics.update(validation.score(model, step))
        if config.eval and due(config.eval_every, step):
            metrics.update(evaluate_dataset(model, config.eval, out / "eval" / f"step_{step:07d}.json",
                                            device, config.eval_query_mode, config.eval_max_videos))
        return metrics

    loop = Loop(
        name="bootstrap", out=out, final_name=FINAL_MODEL, steps=config.steps, log_every=config.log_every,
        checkpoint_every=config.checkpoint_every, train_step=train_step,
        columns=(TRAIN_COLUMNS, EVAL_COLUMNS),
        record={"bootstrap": asdict(config), "model": model.config.to_dict(),
                "teacher_model": _unwrap(teacher).config.to_dict(), "log_clips": len(clips),
                "held_out_clips": len(held_out), "world_size": runtime.world_size, "device": str(device)},
        checkpoint_fields=lambda: {"bootstrap_config": asdict(config)},
        postfix=lambda row: {"loss": f"{row['loss']:.3f}", "kept": f"{row['kept_tracks']:.2f}"},
        # The same on every rank (each waits for the main process's evaluation).
        eval_due=lambda step: ((config.keep_every > 0 and due(config.keep_every, step))
                               or (bool(config.grade) and due(config.grade_every, step))
                               or (bool(held_out) and due(config.validate_every, step))
                               or (bool(config.eval) and due(config.eval_every, step))),
        evaluate=evaluate, budget=budget, set_steps=set_steps,
        announce_plan=None if budget is not None else steps_given, clock=clock,
        first_metrics=first_metrics)
    run_loop(loop, model, runtime, state, zip(log_loader, supervised_loader), step, last_step)
    if validation is not None and validation.history and validation.history[-1]["step"] == config.steps:
        print(validation.report(config.steps), file=sys.stderr)
    if runtime.is_main and config.merge < 1 and (out / FINAL_MODEL).is_file():
        if not (out / START_MODEL).is_file():  # a run begun before start.pt was written
            print(f"{PROG}: warning: {out / START_MODEL} is missing: final.pt and best.pt stay the "
                  "students as trained (merge them with python -m bootstap_ros_training.average)",
                  file=sys.stderr)
            return model
        for path in merge_with_start(out, config.merge):
            print(f"{PROG}: {path} = {1 - config.merge:g} x {START_MODEL} + {config.merge:g} x "
                  f"{student_file(path.name)}", file=sys.stderr)
    return model


def main(argv=None, clock: Callable[[], float] = time.monotonic) -> int:
    """The command; exit status 0, 2 for bad arguments or inputs, 1 for a failure while training."""
    started = clock()
    try:
        given, output, resume, stop_at = parse_command(argv)
        config = BootstrapConfig.from_dict({**given, "output": output})  # checks the keys and values
    except ValueError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if resume:
        # A budget is this command's: a resumed run without one finishes its fitted schedule.
        given.setdefault("time_budget", None)
        return run_command(PROG, lambda: bootstrap(BootstrapConfig(output=output), resume=True, overrides=given,
                                                   stop_at=stop_at, steps_given=True, started=started,
                                                   clock=clock))
    return run_command(PROG, lambda: bootstrap(config, stop_at=stop_at, steps_given="steps" in given,
                                               started=started, clock=clock))


if __name__ == "__main__":
    sys.exit(main())
