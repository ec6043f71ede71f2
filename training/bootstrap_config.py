"""The bootstrapping recipe's settings: `BootstrapConfig`, each setting's help written once.

Every setting is a field of `BootstrapConfig` whose help is given where it is declared
(`setting`); from that one text come `KEY_HELP`, the command line (`build_parser`: the
flags and the key=value list of `--help`) and the settings table of docs/training.md
(`settings_table`, checked by a test). Settings come from the defaults, then a YAML file,
then the flags and key=value pairs (`parse_command`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .domains.synthetic import SyntheticConfig
from .loop import CHECKPOINT, FINAL_MODEL
from .losses import LossConfig

PROG = "bootstap-train-bootstrap"
# Settings that fix the model or the teacher: a resumed run keeps the stored ones.
FIXED_ON_RESUME = ("init", "causal", "expand_capacity", "teacher", "teacher_causal", "siamese")


def setting(default=dataclasses.MISSING, help: str = "", *, factory=dataclasses.MISSING,
            flag: Optional[str] = None):
    """A `BootstrapConfig` field with its help (and its command-line flag, when it has one)."""
    return field(default=default, default_factory=factory, metadata={"help": help, "flag": flag})


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
    """Everything a bootstrapping run depends on; stored in every checkpoint. Each field's
    help, written once here, becomes its `--help` line, its flag's help and its row of the
    settings table in docs/training.md (`KEY_HELP`, `build_parser`, `settings_table`)."""

    output: str = setting("runs/bootstrap", "run directory: checkpoint.pt, final.pt, logs, decoded clips")
    # Unlabelled data: rosbag2 bag folders, video files and image folders (bootstap_ros_training.logs).
    data: List[str] = setting(help="a rosbag2 bag folder (MCAP or SQLite3; Image or CompressedImage), a video file or a"
                                   " folder of images; repeat for more (folders are "
                                   "searched)", factory=list, flag="--data")
    image_topic: Optional[str] = setting(None, "the bags' image topic (default: each bag's only image topic)",
                                         flag="--image-topic")
    cache: Optional[str] = setting(None, "where decoded clips go (default: OUTPUT/clips); reused when inputs and clip "
                                   "settings match")
    # None: the device's default (DEVICE_DEFAULTS)
    clip_frames: Optional[int] = setting(None, "frames per clip (null: 12 on a CPU, 24 on CUDA, the paper's; its "
                                         "clip-length ablation: 2 and 6)")
    clip_stride: int = setting(1, "keep every n-th frame of the logs")
    clip_fps: Optional[float] = setting(None, "or resample the logs to this frame rate, by their stamps")
    clip_size: Optional[int] = setting(None, "clips' side in pixels (default: the model's resolution)")
    # Student: the embedded default model (None), or a project / official checkpoint.
    init: Optional[str] = setting(None, "the student's starting weights: a bootstap_ros or official checkpoint "
                                  "(default: the embedded model)", flag="--init")
    causal: Optional[bool] = setting(None, "student causality: null keeps a project checkpoint's, official state_dicts "
                                     "default to true")
    expand_capacity: bool = setting(False, "add BootsTAP's 5 zero-initialised conv blocks to a model that has none")
    # Teacher: "fixed" (the starting model, frozen: the recipe, see docs/training.md),
    # "ema" (an exponential moving average of the student) or a checkpoint path that
    # teaches unchanged (an offline model may teach a causal student).
    teacher: str = setting("fixed", "fixed: the starting model, frozen (it labels each clip once and the labels are "
                           "reused); ema: an exponential moving average of the student; or a "
                           "checkpoint that teaches unchanged (e.g. an offline model for a causal "
                           "student)", flag="--teacher")
    teacher_causal: Optional[bool] = setting(None, "causality of a --teacher checkpoint (null: stored; official "
                                             "state_dicts: false, offline)")
    ema_decay: float = setting(0.99, "EMA teacher = decay * teacher + (1 - decay) * student after each step (project "
                               "choice: the paper does not state it)")
    relabel_every: int = setting(0, "with the EMA teacher: label each clip once and keep its labels, relabelling with "
                                 "the current teacher every this many steps (0: label every batch afresh)")
    label_round_trip: float = setting(0.0, "with cached labels: draw first the tracks the teacher retraces within this "
                                      "many px (256 raster) when queried again at their farthest visible frame (0: "
                                      "off; costs a second teacher pass per clip)")
    label_points: Optional[int] = setting(None, "queries a fixed teacher labels per clip (each step draws num_points of"
                                          " them; null: 4 x num_points)")
    # Optimisation: AdamW per task (weight_decay 0 = the paper's Adam), warmup then cosine.
    steps: int = setting(1000, "total steps (the learning-rate schedule's length; with time_budget, the most it may "
                         "fit)", flag="--steps")
    batch_size: Optional[int] = setting(None, "log clips per step and process (null: 1 on a CPU, 2 on CUDA; "
                                        "supervised_batch_size sets the synthetic clips)", flag="--batch-size")
    supervised_batch_size: Optional[int] = setting(None, "synthetic clips per step and process (null: 1 on a CPU, 4 on "
                                                   "CUDA; 0: no supervised task)")
    lr: float = setting(1e-4, "self-supervised peak learning rate (warmup, then cosine decay to 0 at steps)")
    supervised_lr: Optional[float] = setting(None, "supervised peak learning rate (null: 2 x lr)")
    warmup: int = setting(10, "linear warmup steps of both learning rates")
    weight_decay: float = setting(0.0, "decoupled weight decay of both optimisers (0: Adam, as the paper)")
    beta2: float = setting(0.95, "Adam beta2 of both optimisers")
    grad_clip: float = setting(1.0, "max gradient norm per task (0: off)")
    loss: LossConfig = setting(help="the supervised task's TAPIR loss weights and thresholds (a mapping of LossConfig "
                                    "fields)", factory=LossConfig)
    ssl_loss: LossConfig = setting(help="the self-supervised task's loss weights and thresholds (a mapping of "
                                        "LossConfig fields; `loss` is the supervised task's)", factory=LossConfig)
    # Queries and pseudo-label filtering.
    num_points: Optional[int] = setting(None, "teacher queries per log clip (null: 64 on a CPU, 128 on CUDA, the "
                                        "paper's)")
    textured_queries: float = setting(0.5, "share of teacher queries drawn at textured pixels (corner strength); 0: all"
                                      " uniform (the paper)")
    visible_threshold: float = setting(0.5, "positions are taught where the teacher's visibility (1 - sigmoid(occ)) * "
                                       "(1 - sigmoid(expd)) exceeds this (0.5: the official rule)")
    loss_frames: str = setting("all", "all, or from_query: a causal student learns only the frames from its query on, "
                               "the ones it is asked for online")
    same_query_prob: float = setting(0.5, "probability that the student queries the teacher's own point")
    same_query: bool = setting(False, "ablation: the student always queries the teacher's point")
    uniform_queries: bool = setting(False, "ablation: the student's query drawn uniformly over the visible frames")
    cycle_mask: bool = setting(True, "drop tracks whose student track misses the teacher's query (false: ablation)")
    cycle_threshold: float = setting(4.0, "cycle-consistency distance in px, measured at 256x256")
    proximity_mask: bool = setting(True, "drop frames closer in time to the student's query frame than the teacher's")
    siamese: bool = setting(False, "ablation: no teacher copy and no stop-gradient (the student labels itself)")
    # The student's view (bootstap_ros_training.views.ViewConfig).
    affine: bool = setting(True, "the student's view shrunk and pasted at a moving offset (false: ablation)")
    jpeg: bool = setting(True, "JPEG-compress the student's frames (false: ablation)")
    min_scale: float = setting(0.5, "smallest student frame side, as a fraction of the clip's")
    max_scale: float = setting(0.9, "largest student frame side, as a fraction of the clip's")
    jpeg_quality: Tuple[int, int] = setting((15, 95), "[low, high] JPEG quality range")
    # The supervised task's synthetic clips (bootstap_ros_training.domains.synthetic).
    supervised_frames: Optional[int] = setting(None, "frames per synthetic clip (null: 8 on a CPU, 24 on CUDA)")
    supervised_points: Optional[int] = setting(None, "labelled tracks per synthetic clip (null: 64 on a CPU, 128 on "
                                               "CUDA)")
    synthetic_clips: int = setting(0, "cycle through this many synthetic clips (0: always new ones)")
    supervised_camera: float = setting(0.7, "share of the synthetic clips seen through a random camera and sensor "
                                       "(bootstap_ros_training.camera), as the default model was trained; 0: all clean")
    supervised_faint_background: float = setting(0.4, "share of the synthetic clips on weak, fine background "
                                                 "textures, as the default model was trained")
    merge: float = setting(0.5, "share of the trained student in the written models: final.pt and best.pt are (1 - "
                           "merge) x the starting weights (start.pt) + merge x the student (WiSE-FT weight "
                           "averaging: it keeps more of what the start knew); the students as trained stay "
                           "beside as final_student.pt and best_student.pt; 1: the student as trained")
    seed: int = setting(0, "seed of the clip order, the synthetic clips, views and queries")
    # Runtime.
    device: str = setting("auto", "auto, cpu or cuda", flag="--device")
    amp: str = setting("auto", "autocast: auto (bf16 on CUDA, float32 on CPU), bf16, fp16 (CUDA) or off")
    num_workers: int = setting(2, "DataLoader worker processes")
    log_every: int = setting(10, "steps between log rows")
    checkpoint_every: int = setting(100, "steps between resumable checkpoints")
    # Evaluation: a TAP-Vid / RoboTAP pickle scored as bootstap-eval does.
    eval: Optional[str] = setting(None, "a TAP-Vid / RoboTAP pickle scored (as bootstap-eval does) every eval_every "
                                  "steps and at the end", flag="--eval")
    eval_every: int = setting(100, "steps between evaluations (0: only at the end)")
    eval_query_mode: str = setting("first", "first or strided")
    eval_max_videos: Optional[int] = setting(None, "score only the first N videos (null: all)")
    # A time budget in minutes (None: run `steps`).
    time_budget: Optional[float] = setting(None, "minutes for the whole run, counted from the command's start: the step"
                                           " count and the learning-rate schedule are fitted to "
                                           "them after a few timed steps and refitted when the "
                                           "pace changes; the final evaluation comes on top", flag="--time-budget")
    # Label-free validation on held-out log clips (bootstap_ros_training.validate).
    holdout: float = setting(0.1, "share of each source's clips (the last ones) set aside, never trained on, to score "
                             "checkpoints without labels (bootstap_ros_training.validate); 0: none")
    holdout_max_clips: int = setting(16, "at most this many held-out clips")
    validate_every: int = setting(100, "steps between label-free scores of the student on the held-out clips (0: at the"
                                  " start and the end only); the best scored checkpoint is kept as best.pt")
    validate_points: int = setting(64, "queries per held-out clip for the label-free score")
    # Grades of the pseudo-labels against a labelled set of the domain (bootstap_ros_training.grading).
    grade: Optional[str] = setting(None, "a labelled TAP-Vid pickle of the training domain: every grade_every steps the"
                                   " teacher's pseudo-labels and the masks are graded against its truth "
                                   "(bootstap_ros_training.grading)")
    grade_every: int = setting(25, "steps between grades of the pseudo-labels (with grade)")
    keep_every: int = setting(0, "keep the student (and the teacher) every this many steps as checkpoints/step_N.pt, to"
                              " evaluate or grade them afterwards (0: never)")

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
        for name in ("supervised_camera", "supervised_faint_background", "merge"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must lie in [0, 1], got {getattr(self, name)}")
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
                               width=side, num_points=self.supervised_points,
                               faint_background=self.supervised_faint_background)

    def supervised_clips(self, size: int):
        """The supervised task's synthetic clips, a share of them seen through a random camera."""
        from .camera import CameraConfig
        from .data import SyntheticClips

        camera = CameraConfig() if self.supervised_camera > 0 else None
        return SyntheticClips(self.synthetic(size), self.seed, self.synthetic_clips, camera, self.supervised_camera)



#: What each setting does (from the fields' help).
KEY_HELP = {f.name: f.metadata["help"] for f in dataclasses.fields(BootstrapConfig)}


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


# ----------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    defaults = BootstrapConfig()
    fields = dataclasses.fields(BootstrapConfig)
    keys = "\n".join(f"  {f.name}={_shown(getattr(defaults, f.name))}\n      {f.metadata['help']}"
                     for f in fields if f.name not in ("output", "data"))
    parser = argparse.ArgumentParser(
        prog=PROG, argument_default=argparse.SUPPRESS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="BootsTAP bootstrapping: train the tracker on unlabelled robot logs (rosbag2 "
        "bags, videos, image folders) with a teacher's pseudo-labels (by default the starting model, "
        "frozen), alongside supervised synthetic clips. Under torchrun every process trains on its "
        "own clips (DistributedDataParallel).",
        epilog="key=value settings (any of these; lists and tuples as YAML, e.g. "
        "jpeg_quality=[30,90]):\n" + keys + "\n\nAblations: affine=false, jpeg=false, "
        "same_query=true, uniform_queries=true, cycle_mask=false, siamese=true, clip_frames=N.")
    parser.add_argument("--config", metavar="YAML", default=None,
                        help="a YAML file of key: value settings (flags and key=value override it)")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help=f"run directory: {CHECKPOINT}, {FINAL_MODEL}, logs, decoded clips")
    parser.add_argument("--resume", action="store_true", default=False,
                        help="continue from DIR/checkpoint.pt with its stored settings; settings "
                        "given now (e.g. --steps) override them")
    parser.add_argument("--stop-at", type=int, metavar="STEP", default=None,
                        help="checkpoint and exit at this step (the schedule still spans --steps)")
    hints = typing.get_type_hints(BootstrapConfig)
    for f in fields:
        if not f.metadata["flag"]:
            continue
        default = getattr(defaults, f.name)
        shown = f" (default: {default})" if default not in (None, []) else ""
        kind = next((a for a in typing.get_args(hints[f.name]) if a is not type(None)), hints[f.name])
        extra = {"action": "append"} if f.name == "data" else {}
        if f.name == "device":
            extra["choices"] = ("auto", "cpu", "cuda")
        parser.add_argument(f.metadata["flag"], dest=f.name, type=kind, metavar=f.name.upper().replace("_", "-"),
                            help=f.metadata["help"] + shown, **extra)
    parser.add_argument("settings", nargs="*", metavar="key=value", default=[],
                        help="any setting listed below")
    return parser


def settings_table() -> str:
    """The settings table of docs/training.md (Markdown), from the fields' help."""
    defaults = BootstrapConfig()
    rows = ["| setting | flag | default | what |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(BootstrapConfig):
        if f.name == "output":
            continue
        flag = f"`{f.metadata['flag']}`" if f.metadata["flag"] else ""
        text = f.metadata["help"].replace("|", "\\|")
        rows.append(f"| `{f.name}` | {flag} | `{_shown(getattr(defaults, f.name))}` | {text} |")
    return "\n".join(rows) + "\n"


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
