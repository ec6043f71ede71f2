"""BootsTAP bootstrapping: self-supervised student-teacher training on unlabelled logs.

    bootstap-train-bootstrap --data robot_run.bag/ --data hand.mp4 --output runs/boot \
        --steps 500 --batch-size 2                    # from the embedded model, on the CPU
    bootstap-train-bootstrap --output runs/boot --resume     # continue exactly
    torchrun --nproc-per-node 8 -m bootstap_ros_training.bootstrap --data logs/ --output runs/big \
        --init causal_bootstapir_checkpoint.pt --device cuda  # DistributedDataParallel

Each step trains the student on two tasks, each with its own Adam optimiser:

* self-supervised, on clips of the robot's logs (`bootstap_ros_training.logs`): the teacher (an
  exponential moving average of the student, or a fixed checkpoint with
  `--teacher CKPT`, which may be an offline model teaching a causal student) tracks
  random queries on the clean clip without gradients; its final refined tracks and
  visibility are the pseudo-labels. The student sees a degraded view (each frame
  JPEG-compressed, shrunk and pasted on black at an offset moving linearly in time:
  `bootstap_ros_training.views`) and queries a point of the teacher's trajectory (the teacher's
  query with p = 0.5, else a random visible point: `bootstap_ros_training.pseudo_labels`). Its
  predictions, mapped back through the inverse affine map, are trained with the TAPIR
  loss on the final and every unrefined iteration, on the entries kept by the
  cycle-consistency mask (the student's track returns within 4 px of the teacher's
  query, at 256x256, and is visible there) and the proximity mask.
* supervised, on Kubric-lite clips (`bootstap_ros_training.data`), as `bootstap_ros_training.train` does, so the
  model does not forget what the labels taught it. The self-supervised task runs at
  half the supervised batch and half its learning rate (the paper's setting).

A run directory holds:
  checkpoint.pt      student + teacher + both optimisers + step + config, written
                     atomically every `checkpoint_every` steps and on SIGTERM/Ctrl-C;
                     `--resume` continues from it exactly (bit for bit on CPU)
  final.pt           the final student (weights + model config): loads in
                     bootstap-track, bootstap-eval and the node without flags
  config.json        the resolved bootstrapping and model configs
  clips/             the decoded log clips (unless `cache` points elsewhere)
  train_log.csv, eval_log.csv, eval/, tensorboard/   as in bootstap_ros_training.train

Options come from the defaults below, then `--config YAML`, then the command line
flags and `key=value` pairs (any field of `BootstrapConfig`).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import time
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from bootstap_ros.model import TAPIR, Trajectories, build_model, load_checkpoint
from bootstap_ros.model.checkpoint import read_checkpoint_file, resolve_checkpoint
from bootstap_ros.model.tapir import visibility

from .data import StepBatches, SyntheticClips, make_loader
from .losses import LossConfig, PseudoLabelTargets, pseudo_label_loss
from .domains.synthetic import SyntheticConfig
from .train import (CHECKPOINT, EVAL_COLUMNS, Loop, Runtime, cosine_learning_rate, distributed_model, evaluate_dataset,
                    load_training_parts, make_adamw, make_scaler, model_forward, optimizer_step, run_loop,
                    run_with_runtime, set_learning_rate, supervised_loss)

FINAL_MODEL = "final.pt"
TRAIN_COLUMNS = ("step", "lr", "loss", "position", "occlusion", "uncertainty", "kept_tracks",
                 "supervised_loss", "grad_norm", "skipped_steps", "steps_per_s", "elapsed_s")
# Settings that fix the model or the teacher: a resumed run keeps the stored ones.
_FIXED_ON_RESUME = ("init", "causal", "expand_capacity", "teacher", "teacher_causal", "siamese")


#: What each setting does (`--help` lists them with their defaults).
KEY_HELP = {
    "output": "run directory (--output)",
    "data": "inputs (--data): bag folders, .mcap/.db3 files, videos, image folders",
    "image_topic": "the bags' image topic (default: each bag's only image topic)",
    "cache": "where decoded clips go (default: OUTPUT/clips); reused when inputs and clip settings match",
    "clip_frames": "frames per clip (null: 12 on a CPU, 24 on CUDA, the paper's; its clip-length "
                   "ablation: 2 and 6)",
    "clip_stride": "keep every n-th frame of the logs",
    "clip_fps": "or resample the logs to this frame rate, by their stamps",
    "clip_size": "clips' side in pixels (default: the model's resolution)",
    "init": "the student's starting weights (--init; default: the embedded model)",
    "causal": "student causality: null keeps a project checkpoint's, official state_dicts default to true",
    "expand_capacity": "add BootsTAP's 5 zero-initialised conv blocks to a model that has none",
    "teacher": "ema (a moving average of the student), fixed (the starting model, frozen) or a "
               "checkpoint that teaches unchanged (--teacher); a fixed teacher labels each clip once",
    "relabel_every": "with the EMA teacher: label each clip once and keep its labels, relabelling "
                     "with the current teacher every this many steps (0: label every batch afresh)",
    "label_round_trip": "with cached labels: draw first the tracks the teacher retraces within this "
                        "many px (256 raster) when queried again at their farthest visible frame "
                        "(0: off; costs a second teacher pass per clip)",
    "label_points": "queries a fixed teacher labels per clip (each step draws num_points of them; "
                    "null: 4 x num_points)",
    "textured_queries": "share of teacher queries drawn at textured pixels (corner strength); "
                        "0: all uniform (the paper)",
    "visible_threshold": "positions are taught where the teacher's visibility "
                         "(1 - sigmoid(occ)) * (1 - sigmoid(expd)) exceeds this (0.5: the official rule)",
    "loss_frames": "all, or from_query: a causal student learns only the frames from its query on, "
                   "the ones it is asked for online",
    "ssl_loss": "the self-supervised task's loss weights and thresholds (a mapping of LossConfig "
                "fields; `loss` is the supervised task's)",
    "teacher_causal": "causality of a --teacher checkpoint (null: stored; official state_dicts: false, offline)",
    "ema_decay": "EMA teacher = decay * teacher + (1 - decay) * student after each step "
                 "(project choice: the paper does not state it)",
    "steps": "total steps (--steps)",
    "batch_size": "log clips per step and process (--batch-size; null: 1 on a CPU, 2 on CUDA)",
    "supervised_batch_size": "synthetic clips per step and process (null: 1 on a CPU, 4 on CUDA; 0: "
                             "no supervised task)",
    "lr": "self-supervised peak learning rate (warmup, then cosine decay to 0 at steps)",
    "supervised_lr": "supervised peak learning rate (null: 2 x lr)",
    "warmup": "linear warmup steps of both learning rates",
    "weight_decay": "decoupled weight decay of both optimisers (0: Adam, as the paper)",
    "beta2": "Adam beta2 of both optimisers",
    "grad_clip": "max gradient norm per task (0: off)",
    "loss": "the supervised task's TAPIR loss weights and thresholds (a mapping of LossConfig fields)",
    "num_points": "teacher queries per log clip (null: 64 on a CPU, 128 on CUDA, the paper's)",
    "same_query_prob": "probability that the student queries the teacher's own point",
    "same_query": "ablation: the student always queries the teacher's point",
    "uniform_queries": "ablation: the student's query drawn uniformly over the visible frames",
    "cycle_mask": "drop tracks whose student track misses the teacher's query (false: ablation)",
    "cycle_threshold": "cycle-consistency distance in px, measured at 256x256",
    "proximity_mask": "drop frames closer in time to the student's query frame than the teacher's",
    "siamese": "ablation: no teacher copy and no stop-gradient (the student labels itself)",
    "affine": "the student's view shrunk and pasted at a moving offset (false: ablation)",
    "jpeg": "JPEG-compress the student's frames (false: ablation)",
    "min_scale": "smallest student frame side, as a fraction of the clip's",
    "max_scale": "largest student frame side, as a fraction of the clip's",
    "jpeg_quality": "[low, high] JPEG quality range",
    "supervised_frames": "frames per synthetic clip (null: 8 on a CPU, 24 on CUDA)",
    "supervised_points": "labelled tracks per synthetic clip (null: 64 on a CPU, 128 on CUDA)",
    "synthetic_clips": "cycle through this many synthetic clips (0: always new ones)",
    "seed": "seed of the clip order, the synthetic clips, views and queries",
    "device": "auto, cpu or cuda (--device)",
    "amp": "autocast: auto (bf16 on CUDA, float32 on CPU), bf16, fp16 (CUDA) or off",
    "num_workers": "DataLoader worker processes",
    "log_every": "steps between log rows",
    "checkpoint_every": "steps between resumable checkpoints",
    "eval": "TAP-Vid / RoboTAP pickle to score (--eval)",
    "eval_every": "steps between evaluations (0: only at the end)",
    "eval_query_mode": "first or strided",
    "time_budget": "minutes for the whole run (--time-budget): the step count and the learning-rate "
                   "schedule are fitted to it after a few timed steps; the final evaluation comes on top",
    "holdout": "share of each source's clips (the last ones) set aside, never trained on, to score "
               "checkpoints without labels (bootstap_ros_training.validate); 0: none",
    "holdout_max_clips": "at most this many held-out clips",
    "validate_every": "steps between label-free scores of the student on the held-out clips (0: at the "
                      "start and the end only); the best scored checkpoint is kept as best.pt",
    "validate_points": "queries per held-out clip for the label-free score",
    "grade": "a labelled TAP-Vid pickle of the training domain: every grade_every steps the teacher's "
             "pseudo-labels and the masks are graded against its truth (bootstap_ros_training.grading)",
    "grade_every": "steps between grades of the pseudo-labels (with grade)",
    "keep_every": "keep the student (and the teacher) every this many steps as checkpoints/step_N.pt, "
                  "to evaluate or grade them afterwards (0: never)",
    "eval_max_videos": "score only the first N videos (null: all)",
}


#: Settings whose default depends on where the run trains (None in `BootstrapConfig`).
#: On a CPU a step must take seconds (about 5 s on a 2-core laptop-class CPU with these,
#: `python -m bootstap_ros_training.bench.bootstrap`): one log clip of 12 frames with 64 queries, one
#: synthetic clip of 8 frames. A GPU affords the paper's clips of 24 frames and 128 queries.
DEVICE_DEFAULTS = {
    "cpu": {"clip_frames": 12, "batch_size": 1, "num_points": 64, "supervised_batch_size": 1,
            "supervised_frames": 8, "supervised_points": 64},
    "cuda": {"clip_frames": 24, "batch_size": 2, "num_points": 128, "supervised_batch_size": 4,
             "supervised_frames": 24, "supervised_points": 128},
}


@dataclass
class BootstrapConfig:
    """Everything a bootstrapping run depends on; stored in every checkpoint. The meaning of
    each field: `KEY_HELP`."""

    output: str = "runs/bootstrap"
    # Unlabelled data: rosbag2 bag folders, video files and image folders (bootstap_ros_training.logs).
    data: List[str] = field(default_factory=list)
    image_topic: Optional[str] = None
    cache: Optional[str] = None
    clip_frames: Optional[int] = None  # None: the device's default (DEVICE_DEFAULTS)
    clip_stride: int = 1
    clip_fps: Optional[float] = None
    clip_size: Optional[int] = None
    # Student: the embedded default model (None), or a project / official checkpoint.
    init: Optional[str] = None
    causal: Optional[bool] = None
    expand_capacity: bool = False
    # Teacher: "fixed" (the starting model, frozen: the recipe, see docs/training.md),
    # "ema" (an exponential moving average of the student) or a checkpoint path that
    # teaches unchanged (an offline model may teach a causal student).
    teacher: str = "fixed"
    teacher_causal: Optional[bool] = None
    ema_decay: float = 0.99
    relabel_every: int = 0
    label_round_trip: float = 0.0
    label_points: Optional[int] = None
    # Optimisation: AdamW per task (weight_decay 0 = the paper's Adam), warmup then cosine.
    steps: int = 1000
    batch_size: Optional[int] = None
    supervised_batch_size: Optional[int] = None
    lr: float = 1e-4
    supervised_lr: Optional[float] = None
    warmup: int = 10
    weight_decay: float = 0.0
    beta2: float = 0.95
    grad_clip: float = 1.0
    loss: LossConfig = field(default_factory=LossConfig)
    ssl_loss: LossConfig = field(default_factory=LossConfig)
    # Queries and pseudo-label filtering.
    num_points: Optional[int] = None
    textured_queries: float = 0.5
    visible_threshold: float = 0.5
    loss_frames: str = "all"
    same_query_prob: float = 0.5
    same_query: bool = False
    uniform_queries: bool = False
    cycle_mask: bool = True
    cycle_threshold: float = 4.0
    proximity_mask: bool = True
    siamese: bool = False
    # The student's view (bootstap_ros_training.views.ViewConfig).
    affine: bool = True
    jpeg: bool = True
    min_scale: float = 0.5
    max_scale: float = 0.9
    jpeg_quality: Tuple[int, int] = (15, 95)
    # The supervised task's synthetic clips (bootstap_ros_training.domains.synthetic).
    supervised_frames: Optional[int] = None
    supervised_points: Optional[int] = None
    synthetic_clips: int = 0
    seed: int = 0
    # Runtime.
    device: str = "auto"
    amp: str = "auto"
    num_workers: int = 2
    log_every: int = 10
    checkpoint_every: int = 100
    # Evaluation: a TAP-Vid / RoboTAP pickle scored as bootstap-eval does.
    eval: Optional[str] = None
    eval_every: int = 100
    eval_query_mode: str = "first"
    eval_max_videos: Optional[int] = None
    # A time budget in minutes (None: run `steps`).
    time_budget: Optional[float] = None
    # Label-free validation on held-out log clips (bootstap_ros_training.validate).
    holdout: float = 0.1
    holdout_max_clips: int = 16
    validate_every: int = 100
    validate_points: int = 64
    # Grades of the pseudo-labels against a labelled set of the domain (bootstap_ros_training.grading).
    grade: Optional[str] = None
    grade_every: int = 25
    keep_every: int = 0

    def __post_init__(self):
        self.loss = _loss_config("loss", self.loss)
        self.ssl_loss = _loss_config("ssl_loss", self.ssl_loss)
        if isinstance(self.data, (str, os.PathLike)):
            self.data = [str(self.data)]
        self.data = [str(path) for path in self.data]
        self.jpeg_quality = tuple(int(q) for q in self.jpeg_quality)
        problems = []
        if self.device not in ("auto", "cpu", "cuda"):
            problems.append(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            problems.append(f"amp must be auto, bf16, fp16 or off, got {self.amp!r}")
        if self.amp == "fp16" and self.device == "cpu":
            problems.append("amp fp16 needs CUDA; use bf16 or off on CPU")
        for name in ("steps", "batch_size", "num_points", "log_every", "checkpoint_every",
                     "supervised_points", "supervised_frames", "label_points"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.clip_frames is not None and self.clip_frames < 2:
            problems.append(f"clip_frames must be at least 2, got {self.clip_frames}")
        if self.supervised_batch_size is not None and self.supervised_batch_size < 0:
            problems.append(f"supervised_batch_size must be >= 0, got {self.supervised_batch_size}")
        if not 0.0 <= self.ema_decay <= 1.0:
            problems.append(f"ema_decay must lie in [0, 1], got {self.ema_decay}")
        if not 0.0 <= self.same_query_prob <= 1.0:
            problems.append(f"same_query_prob must lie in [0, 1], got {self.same_query_prob}")
        if self.loss_frames not in ("all", "from_query"):
            problems.append(f"loss_frames must be all or from_query, got {self.loss_frames!r}")
        if not 0.0 <= self.textured_queries <= 1.0:
            problems.append(f"textured_queries must lie in [0, 1], got {self.textured_queries}")
        if not 0.0 <= self.visible_threshold < 1.0:
            problems.append(f"visible_threshold must lie in [0, 1), got {self.visible_threshold}")
        if None not in (self.label_points, self.num_points) and self.label_points < self.num_points:
            problems.append(f"label_points ({self.label_points}) must be at least num_points "
                            f"({self.num_points})")
        if self.siamese and self.teacher != "ema":
            problems.append("siamese makes the student its own teacher: drop --teacher "
                            f"{self.teacher!r} or siamese")
        if self.time_budget is not None and not self.time_budget > 0:
            problems.append(f"time_budget must be a positive number of minutes, got {self.time_budget}")
        if not 0.0 <= self.holdout < 1.0:
            problems.append(f"holdout must lie in [0, 1), got {self.holdout}")
        if self.eval_query_mode not in ("first", "strided"):
            problems.append(f"eval_query_mode must be first or strided, got {self.eval_query_mode!r}")
        if problems:
            raise ValueError("invalid bootstrapping config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, values: Dict) -> "BootstrapConfig":
        """A config from loosely typed values (YAML, key=value): "1e-3" for a float field is
        read as a number; a value of the wrong kind is an error naming the key."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown bootstrapping config keys {unknown}; known keys: "
                             f"{', '.join(sorted(known))}")
        hints = typing.get_type_hints(cls)
        return cls(**{key: _coerce(key, value, hints[key]) for key, value in values.items()})

    def for_device(self, device: str) -> "BootstrapConfig":
        """This config with every setting left at None filled from `DEVICE_DEFAULTS[device]`
        ("cpu" or "cuda"; "auto" is CUDA when available)."""
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        defaults = DEVICE_DEFAULTS["cuda" if device == "cuda" else "cpu"]
        filled = {name: value for name, value in defaults.items() if getattr(self, name) is None}
        if self.label_points is None:
            filled["label_points"] = 4 * (self.num_points or filled["num_points"])
        return dataclasses.replace(self, **filled)

    # Derived settings.
    @property
    def ssl_supervised_batch(self) -> int:
        return 2 * self.batch_size if self.supervised_batch_size is None else self.supervised_batch_size

    @property
    def ssl_supervised_lr(self) -> float:
        return 2 * self.lr if self.supervised_lr is None else self.supervised_lr

    def view(self):
        from .views import ViewConfig

        return ViewConfig(min_scale=self.min_scale, max_scale=self.max_scale, affine=self.affine,
                          jpeg=self.jpeg, jpeg_quality=self.jpeg_quality)

    def clip_config(self, size: int):
        from .clips import ClipConfig

        return ClipConfig(frames=self.clip_frames, stride=self.clip_stride, fps=self.clip_fps,
                          size=self.clip_size or size)

    def synthetic(self, size: int) -> SyntheticConfig:
        side = self.clip_size or size
        return SyntheticConfig(frames=self.supervised_frames or self.clip_frames, height=side,
                               width=side, num_points=self.supervised_points)


def _loss_config(key: str, value) -> LossConfig:
    """A LossConfig from a mapping (YAML, key=value), with an error naming the known fields."""
    if isinstance(value, LossConfig):
        return value
    known = [f.name for f in dataclasses.fields(LossConfig)]
    if not isinstance(value, dict) or set(value) - set(known):
        raise ValueError(f"{key} expects a mapping of {', '.join(known)} (e.g. {key}="
                         f"'{{uncertainty_weight: 0.5}}'), got {value!r}")
    try:
        return LossConfig(**{name: float(v) for name, v in value.items()})
    except (TypeError, ValueError):
        raise ValueError(f"{key} expects numbers, got {value!r}") from None


def _coerce(key: str, value, hint):
    """`value` as the field type `hint` (float, int, bool, str, their Optional, containers as is)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union and type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    expected = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}
    if hint not in expected:
        return value  # lists, tuples, the loss config: their own checks
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
    elif hint is str:
        if isinstance(value, (str, os.PathLike)):
            return str(value)
    elif not isinstance(value, bool):
        try:
            number = float(value) if isinstance(value, str) else value
            if hint is float and isinstance(number, (int, float)):
                return float(number)
            if hint is int and isinstance(number, (int, float)) and float(number).is_integer():
                return int(number)
        except ValueError:
            pass
    raise ValueError(f"{key} expects {expected[hint]}, got {value!r}")


# ----------------------------------------------------------------------------- models

def load_student(config: BootstrapConfig) -> TAPIR:
    """The model to bootstrap: `init` (default: the embedded model), capacity expanded if asked."""
    loaded = load_checkpoint(resolve_checkpoint(config.init), causal=config.causal,
                             official_default_causal=True)
    model = loaded.model
    if config.expand_capacity and model.config.extra_conv_blocks == 0:
        from .capacity import expand_capacity

        model = expand_capacity(model, num_blocks=5)
    return model


def load_fixed_teacher(config: BootstrapConfig) -> TAPIR:
    """A fixed teacher from a checkpoint (`config.teacher`): eval mode, no gradients."""
    loaded = load_checkpoint(config.teacher, causal=config.teacher_causal, official_default_causal=False)
    teacher = loaded.model
    teacher.eval().requires_grad_(False)
    return teacher


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


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


def fixed_teacher(config: BootstrapConfig) -> bool:
    """Whether the teacher stays as it is for the whole run (so each clip is labelled once)."""
    return not config.siamese and config.teacher != "ema"


def cached_labels(config: BootstrapConfig) -> bool:
    """Whether labels are kept per clip: a fixed teacher's for the run, an EMA teacher's
    between relabellings (`relabel_every`)."""
    return fixed_teacher(config) or (config.teacher == "ema" and not config.siamese and config.relabel_every > 0)


def step_generators(seed: int, step: int, rank: int) -> Tuple[np.random.Generator, torch.Generator]:
    """The random draws of one step (views, queries): a pure function of seed, step and rank,
    so a resumed run repeats them exactly and no state needs saving."""
    entropy = np.random.SeedSequence([seed, step, rank, 12])
    numpy_rng = np.random.default_rng(entropy)
    torch_rng = torch.Generator().manual_seed(int(entropy.generate_state(1, np.uint64)[0] >> 1))
    return numpy_rng, torch_rng


# ----------------------------------------------------------------------------- the loss

def map_outputs(outputs: Trajectories, affines: torch.Tensor) -> Trajectories:
    """Student outputs with every stage's positions mapped by per-clip affines [B, T, 2, 3]."""
    from .views import map_tracks

    affines = affines.to(outputs.tracks.device)

    def mapped(tracks):
        return map_tracks(tracks.float(), affines)

    return Trajectories(mapped(outputs.tracks), outputs.occlusion, outputs.expected_dist,
                        tuple((mapped(t), o, e) for t, o, e in outputs.unrefined))


class StudentPass(typing.NamedTuple):
    """One self-supervised pass over a batch: what the loss and the grades are made of."""

    teacher_queries: torch.Tensor  # [B, N, 3] (t, y, x), clip raster
    student_queries: torch.Tensor  # [B, N, 3], clip raster
    targets: "PseudoLabelTargets"  # the teacher's, clip raster
    outputs: Trajectories  # the student's, in its own raster
    back: Trajectories  # the student's, mapped back to the clip raster
    affines: torch.Tensor  # [B, T, 2, 3] clip raster -> student raster
    keep: torch.Tensor  # bool [B, N, T]: the entries the masks keep


def student_pass(student: torch.nn.Module, teacher: torch.nn.Module, video: torch.Tensor,
                 config: BootstrapConfig, numpy_rng: np.random.Generator, torch_rng: torch.Generator,
                 student_causal: bool, teacher_causal: bool,
                 labels: Optional[Tuple[torch.Tensor, Trajectories]] = None) -> StudentPass:
    """The teacher's labels, the student's view, queries and forward, and the masks, for one
    batch of clean clips uint8 [B, T, S, S, 3] (on the device). `labels`: the teacher's
    (queries [B, N, 3], final outputs) for these clips when they are known (a fixed
    teacher's `LabelCache`); otherwise `teacher` labels random queries now (the student
    itself in Siamese mode: no stop-gradient)."""
    from .pseudo_labels import cycle_consistency_mask, proximity_mask, resample_student_queries, teacher_targets
    from .teacher import label_batch, sample_queries
    from .views import invert_affine, map_queries, student_batch

    batch, frames, height, width = video.shape[:4]
    device = video.device
    if labels is not None:
        teacher_queries, outputs = labels
    else:
        teacher_queries = sample_queries(torch_rng, video, config.num_points, config.textured_queries)
        if config.siamese:
            outputs = model_forward(teacher, video, teacher_queries, config.amp, teacher_causal)
        else:
            outputs = label_batch(teacher, video, teacher_queries,
                                  lambda model, v, q: model_forward(model, v, q, config.amp, teacher_causal))
    targets = teacher_targets(outputs, config.visible_threshold, stop_gradient=not config.siamese)
    num_points = teacher_queries.shape[1]
    same_prob = 1.0 if config.same_query else config.same_query_prob
    student_queries = resample_student_queries(
        torch_rng, teacher_queries, targets.tracks.detach(), targets.position_mask, same_prob,
        uniform=config.uniform_queries and not config.same_query, size=(height, width))

    student_video, affines = student_batch(video, config.view(), numpy_rng)
    affines = affines.to(device)
    student_outputs = model_forward(student, student_video, map_queries(student_queries, affines),
                                    config.amp, student_causal)
    back = map_outputs(student_outputs, invert_affine(affines))

    with torch.no_grad():
        keep = torch.ones(batch, num_points, frames, dtype=torch.bool, device=device)
        if config.cycle_mask:
            student_visible = visibility(back.occlusion.float(), back.expected_dist.float())
            cycle = cycle_consistency_mask(back.tracks, student_visible, teacher_queries,
                                           (height, width), config.cycle_threshold)
            keep &= cycle[..., None]
        if config.proximity_mask:
            keep &= proximity_mask(teacher_queries[..., 0], student_queries[..., 0], frames)
        if config.loss_frames == "from_query" and student_causal:
            # A causal student answers from its query frame on: frames before it are never
            # asked of it online.
            keep &= torch.arange(frames, device=device) >= student_queries[..., 0:1].round()
    return StudentPass(teacher_queries, student_queries, targets, student_outputs, back, affines, keep)


def bootstrap_loss(student: torch.nn.Module, teacher: torch.nn.Module, video: torch.Tensor,
                   config: BootstrapConfig, numpy_rng: np.random.Generator,
                   torch_rng: torch.Generator, student_causal: bool, teacher_causal: bool,
                   labels: Optional[Tuple[torch.Tensor, Trajectories]] = None):
    """The self-supervised loss of one batch of clean clips uint8 [B, T, S, S, 3] (on the
    device): (loss, parts); `student_pass` says what goes in."""
    from .views import map_tracks

    result = student_pass(student, teacher, video, config, numpy_rng, torch_rng, student_causal,
                          teacher_causal, labels)
    stages = [*result.outputs.unrefined, (result.outputs.tracks,)]
    loss, parts = pseudo_label_loss(result.back, [stage[0] for stage in stages], result.targets,
                                    map_tracks(result.targets.tracks, result.affines), video.shape[2:4],
                                    config.ssl_loss, result.keep)
    parts["kept_tracks"] = result.keep.any(-1).float().mean()
    parts["kept_positions"] = (result.keep & result.targets.position_mask).float().mean()
    return loss, parts


def bootstrap_step(trained: torch.nn.Module, teacher: torch.nn.Module, optimizers: Dict, scaler,
                   video: torch.Tensor, supervised: Optional[Dict[str, torch.Tensor]],
                   config: BootstrapConfig, step: int, rank: int, teacher_causal: bool,
                   ema: bool, labels=None, clip_indices: Optional[Sequence[int]] = None,
                   ) -> Tuple[Dict[str, torch.Tensor], float, bool]:
    """One step of the run: a supervised update on `supervised` (when given, with
    optimizers["supervised_optimizer"]), a self-supervised update on the log clips `video`
    (uint8 [B, T, S, S, 3] on the device, optimizers["bootstrap_optimizer"]), each at its
    own point of the learning-rate schedule, then the EMA teacher update (when `ema`).
    `trained` is the student (or its DDP wrapper); `labels`: a fixed teacher's `LabelCache`,
    with the batch's `clip_indices`. Returns (loss parts, the self-supervised gradient norm,
    whether both updates stepped)."""
    student = _unwrap(trained)
    causal = student.config.causal
    device = video.device
    parts: Dict[str, torch.Tensor] = {}
    stepped = True
    if supervised is not None:
        set_learning_rate(optimizers["supervised_optimizer"], cosine_learning_rate(
            step, config.ssl_supervised_lr, config.warmup, config.steps))
        loss, supervised_parts = supervised_loss(trained, supervised, device, config.loss, config.amp,
                                                 causal)
        _, stepped = optimizer_step(trained, optimizers["supervised_optimizer"], scaler, loss,
                                    config.grad_clip)
        parts["supervised_loss"] = supervised_parts["loss"]
    set_learning_rate(optimizers["bootstrap_optimizer"],
                      cosine_learning_rate(step, config.lr, config.warmup, config.steps))
    numpy_rng, torch_rng = step_generators(config.seed, step, rank)
    batch_labels = None
    if labels is not None:
        batch_labels = labels.batch(clip_indices, video, torch_rng, config.num_points)
    loss, ssl_parts = bootstrap_loss(trained, teacher, video, config, numpy_rng, torch_rng, causal,
                                     teacher_causal, batch_labels)
    parts.update(ssl_parts)
    grad_norm, ssl_stepped = optimizer_step(trained, optimizers["bootstrap_optimizer"], scaler, loss,
                                            config.grad_clip)
    if ema:
        from .pseudo_labels import ema_update

        ema_update(teacher, student, config.ema_decay)
    return parts, grad_norm, stepped and ssl_stepped


# ----------------------------------------------------------------------------- the run

def _resolve_resume(config: BootstrapConfig, overrides: Dict) -> Tuple[BootstrapConfig, dict]:
    path = Path(config.output) / CHECKPOINT
    content = read_checkpoint_file(path)
    if "bootstrap_config" not in content or "step" not in content:
        raise ValueError(f"{path} is not a bootstrapping checkpoint (no bootstrap_config/step); "
                         "start a new run with --init to take its weights")
    stored = BootstrapConfig.from_dict(content["bootstrap_config"])
    fixed = sorted(k for k in set(_FIXED_ON_RESUME) & set(overrides) if overrides[k] != getattr(stored, k))
    if fixed:
        raise ValueError(f"--resume keeps the model and teacher of {path}; drop {fixed} "
                         "(or start a new run in another --output)")
    values = {**asdict(stored), **overrides, "output": config.output}
    return BootstrapConfig.from_dict(values), {"path": str(path), **content}


def bootstrap(config: BootstrapConfig, resume: bool = False, overrides: Optional[Dict] = None,
              stop_at: Optional[int] = None, steps_given: bool = True,
              started: Optional[float] = None) -> TAPIR:
    """Runs (or resumes) a bootstrapping run; returns the student (on its device).

    resume: continue from `output/checkpoint.pt` with its stored config, `overrides` applied.
    stop_at: checkpoint and return at this step (the schedule still spans `steps`).
    steps_given: whether `steps` was chosen (else a run without a time budget prints its plan).
    started: `time.monotonic()` when the command started (a time budget counts from it).
    """
    started = time.monotonic() if started is None else started
    resumed = None
    if resume:
        config, resumed = _resolve_resume(config, overrides or {})
    elif (Path(config.output) / CHECKPOINT).exists():
        raise ValueError(f"{Path(config.output) / CHECKPOINT} exists: pass --resume to continue that "
                         "run, or choose another --output")
    config = config.for_device(config.device)
    _warn_about_precision(config)
    return run_with_runtime(config.device, lambda runtime: _bootstrap(config, runtime, resumed, stop_at,
                                                                       steps_given, started))


def _warn_about_precision(config: BootstrapConfig) -> None:
    """bf16 autocast on a CPU without bf16 arithmetic is many times slower than float32."""
    if config.amp != "bf16" or config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        return
    if not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        print("bootstap-train-bootstrap: warning: amp=bf16 on a CPU without AVX512-BF16 or AMX: "
              "bf16 arithmetic is emulated there, a step can be 5-10x slower than float32; "
              "leave amp at auto (float32 on the CPU)", file=sys.stderr)


BEST_MODEL = "best.pt"
REPORT = "report.json"


class Validation:
    """The label-free score of the student on the held-out clips: best.pt and report.json."""

    def __init__(self, config: BootstrapConfig, videos: List[np.ndarray], out: Path, device: torch.device):
        self.config, self.videos, self.out, self.device = config, videos, out, device
        self.history: List[Dict] = []
        self.best: Optional[Dict] = None

    def score(self, model: TAPIR, step: int) -> Dict[str, float]:
        from .train import save_training_checkpoint
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


def _bootstrap(config: BootstrapConfig, runtime: Runtime, resumed: Optional[dict],
               stop_at: Optional[int], steps_given: bool, started: float) -> TAPIR:
    from torch.utils.data import Subset

    out = Path(config.output)
    device = runtime.device
    if resumed is not None:
        from bootstap_ros.config import ModelConfig

        model = build_model(ModelConfig.from_dict(resumed["model_config"]), resumed["state_dict"],
                            resumed["path"])
    else:
        model = load_student(config)
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
    budget = None
    if config.time_budget is not None:
        from .budget import TimeBudget

        # The schedule's length is fitted once a few steps are timed; until then it is the
        # longest the budget could allow (`steps`, when given, caps it).
        cap = config.steps if steps_given else max(config.steps, 1_000_000)
        budget = TimeBudget(config.time_budget, started, max_steps=cap)
        config.steps = cap
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
    validation = None
    if held_out and runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
        validation = Validation(config, [clips[i]["video"] for i in held_out], out, device)
        if resumed is None:
            validation.score(model, 0)
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
            SyntheticClips(config.synthetic(size), config.seed, config.synthetic_clips),
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
            from .train import save_training_checkpoint

            parts = {"teacher": teacher} if "teacher" in state else {}
            save_training_checkpoint(out / "checkpoints" / f"step_{step:07d}.pt", model, parts, step=step,
                                     bootstrap_config=asdict(config), elapsed_s=time.monotonic() - started)
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
        announce_plan=None if budget is not None else steps_given)
    run_loop(loop, model, runtime, state, zip(log_loader, supervised_loader), step, last_step)
    if validation is not None and validation.history and validation.history[-1]["step"] == config.steps:
        print(validation.report(config.steps), file=sys.stderr)
    return model


# ----------------------------------------------------------------------------- command line

_FLAGS = {  # flag -> (field, type, help)
    "--data": ("data", str, "a rosbag2 bag folder (MCAP or SQLite3; Image or CompressedImage), a "
               "video file or a folder of images; repeat for more (folders are searched)"),
    "--image-topic": ("image_topic", str, "the bags' image topic (default: a bag's only image topic)"),
    "--init": ("init", str, "the student's starting weights: a bootstap_ros or official checkpoint "
               "(default: the embedded model)"),
    "--teacher": ("teacher", str, "'ema' (an exponential moving average of the student) or a "
                  "checkpoint that teaches as it is (e.g. an offline model for a causal student)"),
    "--steps": ("steps", int, "total steps (the learning-rate schedule's length; with --time-budget, "
                "the most it may fit)"),
    "--time-budget": ("time_budget", float, "minutes for the run: the step count and the learning-rate "
                      "schedule are fitted to them after a few timed steps (the final evaluation comes "
                      "on top)"),
    "--batch-size": ("batch_size", int, "log clips per step and process (default: 1 on a CPU, 2 on "
                     "CUDA; supervised_batch_size=N sets the synthetic clips)"),
    "--device": ("device", str, "auto, cpu or cuda"),
    "--eval": ("eval", str, "a TAP-Vid / RoboTAP pickle scored (as bootstap-eval does) every "
               "eval_every steps and at the end"),
}


def build_parser() -> argparse.ArgumentParser:
    defaults = BootstrapConfig()
    keys = "\n".join(
        f"  {f.name}={_shown(getattr(defaults, f.name))}\n      {KEY_HELP[f.name]}"
        for f in dataclasses.fields(BootstrapConfig) if f.name not in ("output", "data"))
    parser = argparse.ArgumentParser(
        prog="bootstap-train-bootstrap", argument_default=argparse.SUPPRESS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="BootsTAP bootstrapping: train the tracker on unlabelled robot logs (rosbag2 "
        "bags, videos, image folders) with an EMA teacher's pseudo-labels, alongside supervised "
        "synthetic clips. Under torchrun every process trains on its own clips "
        "(DistributedDataParallel).",
        epilog="key=value settings (any of these; lists and tuples as YAML, e.g. "
        "jpeg_quality=[30,90]):\n" + keys + "\n\nAblations: affine=false, jpeg=false, "
        "same_query=true, uniform_queries=true, cycle_mask=false, siamese=true, clip_frames=N.")
    parser.add_argument("--config", metavar="YAML", default=None,
                        help="a YAML file of key: value settings (flags and key=value override it)")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="run directory: checkpoint.pt, final.pt, logs, decoded clips")
    parser.add_argument("--resume", action="store_true", default=False,
                        help="continue from DIR/checkpoint.pt with its stored settings; settings "
                        "given now (e.g. --steps) override them")
    parser.add_argument("--stop-at", type=int, metavar="STEP", default=None,
                        help="checkpoint and exit at this step (the schedule still spans --steps)")
    for flag, (name, kind, text) in _FLAGS.items():
        default = getattr(defaults, name)
        shown = f" (default: {default})" if default not in (None, []) else ""
        extra = {"action": "append"} if name == "data" else {}
        if name == "device":
            extra["choices"] = ("auto", "cpu", "cuda")
        parser.add_argument(flag, dest=name, type=kind, metavar=name.upper().replace("_", "-"),
                            help=text + shown, **extra)
    parser.add_argument("settings", nargs="*", metavar="key=value", default=[],
                        help="any setting listed below")
    return parser


def _shown(value) -> str:
    if isinstance(value, LossConfig):
        return json.dumps(asdict(value)).replace(" ", "")
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def parse_settings(pairs: Sequence[str]) -> Dict:
    """key=value strings -> a dict, values read as YAML (numbers, booleans, null, lists)."""
    import yaml

    values = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {pair!r}")
        values[key.strip()] = yaml.safe_load(text) if text.strip() else None
    return values


def read_yaml(path: str) -> Dict:
    import yaml

    try:
        values = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"cannot read the config {path}: {error}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of settings, found a {type(values).__name__}")
    return values


def parse_command(argv=None) -> Tuple[Dict, str, bool, Optional[int]]:
    """(settings given, output, resume, stop_at) of a command line: the YAML file's settings,
    overridden by the flags and the key=value pairs."""
    options = vars(build_parser().parse_intermixed_args(argv))
    resume, stop_at = options.pop("resume"), options.pop("stop_at")
    output, config_file = options.pop("output"), options.pop("config")
    settings = parse_settings(options.pop("settings"))
    given = {**(read_yaml(config_file) if config_file else {}), **options, **settings}
    given.pop("output", None)
    return given, output, resume, stop_at


def main(argv=None) -> int:
    started = time.monotonic()
    try:
        given, output, resume, stop_at = parse_command(argv)
        steps_given = "steps" in given
        if resume:
            BootstrapConfig.from_dict({**given, "output": output})  # checks the keys and values
            # A budget is this command's: a resumed run without one finishes its fitted schedule.
            given.setdefault("time_budget", None)
            bootstrap(BootstrapConfig(output=output), resume=True, overrides=given, stop_at=stop_at,
                      steps_given=True, started=started)
        else:
            bootstrap(BootstrapConfig.from_dict({**given, "output": output}), stop_at=stop_at,
                      steps_given=steps_given, started=started)
    except (ValueError, FileNotFoundError) as error:
        # CheckpointError and LogError are ValueErrors whose messages say what to do.
        print(f"bootstap-train-bootstrap: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
