"""The adapter node's parameters: one dataclass of defaults and one table of ROS parameters.

`AdapterConfig` holds every setting of `bootstap_adapter` (`adapter_node.py`);
`PARAMETERS` names each as a ROS parameter with its description, kind and range, from
which the node declares them and config/adapter.yaml documents them. The round's own
settings and defaults come from `bootstap_ros_training.adapter.adaptation.RoundConfig`. No ROS import here.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Tuple

from bootstap_ros.ros.parameters import (RELIABILITIES, TRANSPORTS, ParameterSpec, config_from_values,
                                         parameter_table)

DEVICES = ("cpu", "cuda", "auto")
#: The round settings' defaults (bootstap_ros_training.adapter.adaptation.RoundConfig), repeated here so that this
#: module imports nothing heavy; test_adapter checks that they agree.
_ROUND_DEFAULTS = dict(minutes=15.0, device="cpu", threads=1, nice=19, holdout_clips=8,
                       min_train_clips=16, margin=0.01, keep_checkpoints=5, score_points=64)


@dataclass(frozen=True)
class AdapterConfig:
    """Everything the adapter node is configured with (see PARAMETERS for the meaning)."""

    tracker_node: str = "tracker_node"
    store: str = ""  # '' = $ROS_HOME/bootstap_adapter (default ~/.ros/bootstap_adapter)
    image_transport: str = "raw"
    qos_image_reliability: str = "best_effort"
    qos_image_depth: int = 5
    clip_frames: int = 24
    clip_interval: float = 10.0
    max_disk_mb: int = 2048
    min_free_disk_mb: int = 1024
    rounds: bool = True
    round_minutes: float = _ROUND_DEFAULTS["minutes"]
    round_pause: float = 0.0
    round_device: str = _ROUND_DEFAULTS["device"]
    round_threads: int = _ROUND_DEFAULTS["threads"]
    round_nice: int = _ROUND_DEFAULTS["nice"]
    round_settings: str = ""
    holdout_clips: int = _ROUND_DEFAULTS["holdout_clips"]
    min_train_clips: int = _ROUND_DEFAULTS["min_train_clips"]
    score_points: int = _ROUND_DEFAULTS["score_points"]
    margin: float = _ROUND_DEFAULTS["margin"]
    keep_checkpoints: int = _ROUND_DEFAULTS["keep_checkpoints"]
    rollback: bool = False
    swap_timeout: float = 300.0
    diagnostics_period: float = 1.0

    @property
    def store_folder(self) -> Path:
        if self.store:
            return Path(self.store).expanduser()
        ros_home = os.environ.get("ROS_HOME") or os.path.join(os.path.expanduser("~"), ".ros")
        return Path(ros_home) / "bootstap_adapter"

    @property
    def settings_list(self) -> Tuple[str, ...]:
        return tuple(shlex.split(self.round_settings))

    def round_config(self):
        """The `bootstap_ros_training.adapter.adaptation.RoundConfig` of these settings (raises ValueError)."""
        from .adaptation import RoundConfig

        return RoundConfig(
            minutes=self.round_minutes, device=self.round_device, threads=self.round_threads,
            nice=self.round_nice, holdout_clips=self.holdout_clips, min_train_clips=self.min_train_clips,
            margin=self.margin, keep_checkpoints=self.keep_checkpoints, settings=self.settings_list,
            score_points=self.score_points)


NEXT_ROUND = " Changes at runtime; a round in progress keeps the value it started with."
PARAMETERS: Tuple[ParameterSpec, ...] = parameter_table(
    AdapterConfig,
    ParameterSpec("tracker_node", "tracker_node",
                  "The tracker node whose model the adapter bootstraps and swaps (its `checkpoint` and "
                  "`causal` parameters, its /diagnostics); a relative name is in the adapter's namespace."),
    ParameterSpec("store", "store",
                  "Folder of the clips, rounds and adopted models; empty: $ROS_HOME/bootstap_adapter "
                  "(~/.ros/bootstap_adapter). Clips are rosbag2 MCAP bags in <store>/clips/."),
    ParameterSpec("image_transport", "image_transport",
                  "raw: subscribe to `image` (sensor_msgs/Image); compressed: to `image/compressed` "
                  "(sensor_msgs/CompressedImage). Use the tracker's.", choices=TRANSPORTS),
    ParameterSpec("qos.image.reliability", "qos_image_reliability",
                  "Reliability of the image subscription. REP-2003: best_effort (sensor data).",
                  choices=RELIABILITIES),
    ParameterSpec("qos.image.depth", "qos_image_depth",
                  "History depth of the image subscription (keep last N).", integer_range=(1, 1000)),
    ParameterSpec("clip_frames", "clip_frames",
                  "Frames per recorded clip: consecutive camera frames with no time gap, scene cut or "
                  "static stretch (the bootstrapping clip filters, training/clips.py).",
                  integer_range=(2, 1000)),
    ParameterSpec("clip_interval", "clip_interval",
                  "Seconds after a recorded clip before the next may start (clips spread over time; "
                  "the frames in between are not even decoded). 0: back to back.",
                  read_only=False, float_range=(0.0, 86400.0)),
    ParameterSpec("max_disk_mb", "max_disk_mb",
                  "Disk space for the recorded clips (MiB): past it the oldest clips are deleted first "
                  "(not those a round is reading; then recording pauses).", read_only=False,
                  integer_range=(1, 1 << 30)),
    ParameterSpec("min_free_disk_mb", "min_free_disk_mb",
                  "Free space (MiB) left on the store's filesystem: below it recording stops with a "
                  "warning (a full disk) and starts again once there is room. Tracking is not affected.",
                  read_only=False, integer_range=(0, 1 << 30)),
    ParameterSpec("rounds", "rounds",
                  "Run bootstrapping rounds; false: only record clips.", read_only=False),
    ParameterSpec("round_minutes", "round_minutes",
                  "Time budget of a round's training run (minutes; start-up and the final scoring come "
                  "on top)." + NEXT_ROUND, read_only=False, float_range=(0.01, 10000.0)),
    ParameterSpec("round_pause", "round_pause",
                  "Seconds between the end of a round and the start of the next." + NEXT_ROUND,
                  read_only=False, float_range=(0.0, 1e7)),
    ParameterSpec("round_device", "round_device",
                  "Where rounds train and score: cpu, cuda or auto (cuda when available)." + NEXT_ROUND,
                  read_only=False, choices=DEVICES),
    ParameterSpec("round_threads", "round_threads",
                  "CPU threads of a round's processes (OMP_NUM_THREADS; on the CPU no data-loader "
                  "workers)." + NEXT_ROUND, read_only=False, integer_range=(1, 1024)),
    ParameterSpec("round_nice", "round_nice",
                  "Niceness of a round's processes (19: the lowest priority, the tracker goes first)."
                  + NEXT_ROUND, read_only=False, integer_range=(0, 19)),
    ParameterSpec("round_settings", "round_settings",
                  "More settings of the bootstrapping recipe for each round, as key=value pairs "
                  "separated by spaces (shell quoting), e.g. \"lr=3e-5 teacher=fixed\" (see "
                  "bootstap-train-bootstrap --help). Empty: the recipe's defaults." + NEXT_ROUND,
                  read_only=False),
    ParameterSpec("holdout_clips", "holdout_clips",
                  "The most recent clips held out of a round's training: both models are scored on "
                  "them." + NEXT_ROUND, read_only=False, integer_range=(1, 10000)),
    ParameterSpec("min_train_clips", "min_train_clips",
                  "A round starts once this many clips older than the held-out ones are stored."
                  + NEXT_ROUND, read_only=False, integer_range=(1, 100000)),
    ParameterSpec("score_points", "score_points",
                  "Queries per held-out clip for the label-free score." + NEXT_ROUND, read_only=False,
                  integer_range=(1, 4096)),
    ParameterSpec("margin", "margin",
                  "A round's model replaces the tracker's when its label-free score (0..1, higher is "
                  "better) exceeds the model in use's by more than this." + NEXT_ROUND, read_only=False,
                  float_range=(-1.0, 1.0)),
    ParameterSpec("keep_checkpoints", "keep_checkpoints",
                  "Adopted models kept in <store>/models (the newest); rollback reaches back as far as "
                  "they do.", read_only=False, integer_range=(1, 10000)),
    ParameterSpec("rollback", "rollback",
                  "Set to true: the tracker goes back to the model it used before the adapter's latest "
                  "adoption, and no round's model is adopted while it stays true. Set to false to "
                  "adapt again; false then true again goes back one more adoption.", read_only=False),
    ParameterSpec("swap_timeout", "swap_timeout",
                  "Seconds the adapter waits for the tracker's /diagnostics to show an adopted model "
                  "in use (or refused) before it reports the swap as unconfirmed.", read_only=False,
                  float_range=(1.0, 3600.0)),
    ParameterSpec("diagnostics_period", "diagnostics_period",
                  "Seconds between /diagnostics messages.", float_range=(0.1, 60.0)),
)

PARAMETER_NAMES = tuple(spec.name for spec in PARAMETERS)


class AdapterSettingsError(ValueError):
    """A parameter value the adapter cannot use; the message says which and why."""


def config_from_parameters(values: Dict[str, Any]) -> AdapterConfig:
    """A checked AdapterConfig from {parameter name: value} (missing names: defaults)."""
    config = config_from_values(values, PARAMETERS, AdapterConfig, AdapterSettingsError)
    try:
        config.settings_list
    except ValueError as error:
        raise AdapterSettingsError(f"parameter round_settings={config.round_settings!r}: {error}") from None
    bad = [pair for pair in config.settings_list if "=" not in pair or not pair.partition("=")[0]]
    if bad:
        raise AdapterSettingsError(f"parameter round_settings: expected key=value pairs, got {bad}")
    if not config.tracker_node:
        raise AdapterSettingsError("parameter tracker_node must name the tracker node")
    return config
