"""The tracker node's parameters: names, defaults, documentation and checks.

`TrackerNodeConfig` is the one place the node's defaults live; `PARAMETERS`
describes each ROS parameter (its name, the config field it fills, whether it
can change at runtime and how, its range or choices). The model's parameters
(`swap`) change at runtime through a model loaded in the background and swapped
in between two frames (docs/model-swap.md). The node declares its parameters
from this table, config/tracker.yaml documents the same names, and a test
checks that the two agree. No rclpy here: `parameters.declare_parameters` turns
the table into the node's parameter declarations.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple, Union

from bootstap_ros.backends.base import BACKEND_CHOICES, PRECISION_CHOICES
from bootstap_ros.ros.parameters import (RELIABILITIES, TRANSPORTS, ParameterSpec, config_from_values,
                                         parameter_table)

# tracking.realtime.PROPAGATION_CHOICES, without importing the tracker (torch, OpenCV) here.
PROPAGATIONS = ("lk", "none")


@dataclass(frozen=True)
class TrackerNodeConfig:
    """Everything the tracker node is configured with (see PARAMETERS for the meaning)."""

    checkpoint: str = ""  # '' = the embedded default model
    causal: bool = True
    backend: str = "auto"
    device: str = "auto"
    precision: str = "auto"  # fp16 for tensorrt, bf16 on a CPU with bf16 in hardware, else fp32
    torch_compile: bool = False
    cpu_threads: int = 0  # 0 = torch's default
    resolution: int = 0  # 0 = the checkpoint's own
    softmax_temperature: float = 0.0  # 0 = the checkpoint's own
    # [H, W] top of the refinement ladder; [0, 0] = resolution. A list, as ROS gives it back.
    refine_resolution: List[int] = dataclasses.field(default_factory=lambda: [0, 0])
    max_points: int = 256
    grid_points: Union[int, Tuple[float, ...]] = 0
    visibility_threshold: float = 0.5
    engine_cache_dir: str = ""
    publish_debug_image: bool = False
    debug_trail: int = 8
    image_transport: str = "raw"
    qos_image_reliability: str = "best_effort"
    qos_image_depth: int = 5
    qos_tracks_reliability: str = "reliable"
    qos_tracks_depth: int = 10
    diagnostics_period: float = 1.0
    query_set: str = ""  # '' = none
    use_depth: bool = False
    depth_slop: float = 0.02  # seconds
    depth_window: int = 5  # pixels
    depth_wait: float = 0.1  # seconds
    query_frame_memory_mb: int = 128
    propagation: str = "lk"  # "lk": every image answered at once; "none": the network's frames only


PARAMETERS: Tuple[ParameterSpec, ...] = parameter_table(
    TrackerNodeConfig,
    ParameterSpec("checkpoint", "checkpoint",
                  "Model checkpoint (.pt): an official causal BootsTAPIR state_dict or a project "
                  "checkpoint. Empty: the embedded default model (bootstap_ros/data/default.pt). "
                  "Changes at runtime (model swap): the new model loads in the background while "
                  "tracking goes on, and takes over between two frames; every live point keeps its "
                  "id and is re-encoded for it (docs/model-swap.md). A missing file is refused at "
                  "once; one that does not load or fit is refused when it fails to load (warning, "
                  "/diagnostics) and the parameter returns to the model in use. The parameters "
                  "marked as changing by a model swap go the same way; while one loads, the latest "
                  "change wins.", read_only=False, swap=True),
    ParameterSpec("causal", "causal",
                  "Run the model causally (online). Official checkpoints do not say; keep true for "
                  "causal_bootstapir_checkpoint.pt. Changes at runtime by a model swap (see checkpoint).", read_only=False, swap=True),
    ParameterSpec("backend", "backend", "Inference backend; auto picks the fastest available."
                  " Changes at runtime by a model swap (see checkpoint).", choices=BACKEND_CHOICES, read_only=False, swap=True),
    ParameterSpec("device", "device", "auto (cuda when available, else cpu), cpu, cuda or cuda:N."
                  " Changes at runtime by a model swap (see checkpoint).", read_only=False, swap=True),
    ParameterSpec("precision", "precision",
                  "Inference precision; auto: fp16 for the tensorrt backend; bf16 on a CPU that computes it in "
                  "hardware (AVX512-BF16 or AMX: the step is 1.6-1.8x faster, accuracy the same within 0.1 AJ); "
                  "fp32 otherwise. Changes at runtime by a model swap (see checkpoint).",
                  choices=PRECISION_CHOICES, read_only=False, swap=True),
    ParameterSpec("torch_compile", "torch_compile",
                  "Compile the torch backend's backbone and mixer block with torch.compile "
                  "(inductor) at start-up: fewer, fused kernels per frame on a GPU, after "
                  "seconds to minutes of compiling before the first frame. Needs the torch "
                  "backend, and Triton (CUDA) or a C++ compiler (CPU); where compiling fails "
                  "the node warns and runs uncompiled. Changes at runtime by a model swap (see checkpoint).", read_only=False, swap=True),
    ParameterSpec("cpu_threads", "cpu_threads",
                  "Threads for inference on the CPU (torch intra-op threads); 0: torch's default, "
                  "one per core. Where the camera driver shares the cores, fewer can be faster.",
                  integer_range=(0, 1024)),
    ParameterSpec("resolution", "resolution",
                  "Square model input resolution in pixels, a multiple of 8; 0 keeps the "
                  "checkpoint's (256). Lower is faster and less accurate. Changes at runtime by a model swap (see checkpoint).",
                  integer_range=(0, 2048), integer_step=8, read_only=False, swap=True),
    ParameterSpec("refine_resolution", "refine_resolution",
                  "[H, W], multiples of 8: the top of the refinement ladder. Above the model "
                  "resolution, refinement repeats on log-spaced levels up to it (official TAPIR for "
                  "large input; BootsTAPIR is most accurate at 512x512), each on the camera image "
                  "resized to that level; the initial estimate stays at the model resolution. "
                  "[0, 0]: the model resolution (one level, fastest). Changes at runtime by a model swap (see checkpoint).", read_only=False,
                  swap=True),
    ParameterSpec("softmax_temperature", "softmax_temperature",
                  "Softmax temperature of the initial cost-volume estimate; 0 keeps the "
                  "checkpoint's (official BootsTAPIR weights: 10, TAPIR: 20, as they were trained). Changes at runtime by a model swap (see checkpoint).",
                  float_range=(0.0, 1000.0), read_only=False, swap=True),
    ParameterSpec("max_points", "max_points",
                  "Capacity: the most points tracked at once (rounded up to the tracker's block "
                  "size). Additions beyond it are dropped with a warning. Changes at runtime by a model swap (see checkpoint). A swap to "
                  "fewer slots than points tracked is refused.",
                  integer_range=(1, 16384), read_only=False, swap=True),
    ParameterSpec("grid_points", "grid_points",
                  "Points seeded on the first frame (and again after a reset): an integer N for "
                  "an NxN grid over the image (0: none), or a flat list [x0, y0, x1, y1, ...] of "
                  "pixel positions.", dynamic_typing=True),
    ParameterSpec("visibility_threshold", "visibility_threshold",
                  "A point is visible when (1 - occlusion) * (1 - uncertainty) exceeds this "
                  "(official: 0.5).", read_only=False, float_range=(0.0, 1.0)),
    ParameterSpec("engine_cache_dir", "engine_cache_dir",
                  "Folder where compiled engines (TensorRT, ONNX) are cached; empty: the backend's "
                  "default. Changes at runtime by a model swap (see checkpoint).", read_only=False, swap=True),
    ParameterSpec("publish_debug_image", "publish_debug_image",
                  "Always publish ~/debug_image (it is also published whenever someone "
                  "subscribes).", read_only=False),
    ParameterSpec("debug_trail", "debug_trail",
                  "Frames of history drawn as a trail behind each point on ~/debug_image.",
                  read_only=False, integer_range=(0, 100)),
    ParameterSpec("image_transport", "image_transport",
                  "raw: subscribe to `image` (sensor_msgs/Image); compressed: to "
                  "`image/compressed` (sensor_msgs/CompressedImage).", choices=TRANSPORTS),
    ParameterSpec("qos.image.reliability", "qos_image_reliability",
                  "Reliability of the image subscription. REP-2003: best_effort (sensor data), which "
                  "connects to any camera. Where the camera publishes reliably, reliable gets large raw "
                  "images whole (best effort lost 3 in 4 640x480 frames at 30 FPS on one computer).",
                  choices=RELIABILITIES),
    ParameterSpec("qos.image.depth", "qos_image_depth",
                  "History depth of the image subscription (keep last N).",
                  integer_range=(1, 1000)),
    ParameterSpec("qos.tracks.reliability", "qos_tracks_reliability",
                  "Reliability of the tracks and debug image publishers.", choices=RELIABILITIES),
    ParameterSpec("qos.tracks.depth", "qos_tracks_depth",
                  "History depth of the tracks and debug image publishers.",
                  integer_range=(1, 1000)),
    ParameterSpec("query_set", "query_set",
                  "A query set file (.npz, made by bootstap-queries): its points, defined on a "
                  "demonstration image, are added with that image's query features when the node "
                  "starts, after each reset (as grid_points) and whenever this is set; ids in the "
                  "file's order, tracked from the next frame on. A set made with another model is "
                  "re-encoded for the node's from its demonstration image (version-1 sets, which "
                  "hold none, must come from the node's model). Empty: none.",
                  read_only=False),
    ParameterSpec("use_depth", "use_depth",
                  "Also subscribe to `depth` (sensor_msgs/Image registered to the colour image, "
                  "16UC1 millimetres or 32FC1 metres) and `camera_info` (of the colour image), and "
                  "publish `tracks_3d` (PointCloud2 x, y, z metres in the optical frame, id, "
                  "visible; one point per track, in the order of `tracks`)."),
    ParameterSpec("depth_slop", "depth_slop",
                  "Seconds between a colour image's stamp and its depth image's, when none has "
                  "the same stamp. A frame without a depth image gets no tracks_3d.",
                  read_only=False, float_range=(0.0, 1.0)),
    ParameterSpec("depth_window", "depth_window",
                  "Side in pixels of the window whose median valid depth is a track's depth "
                  "(odd sizes are centred on the track's pixel).",
                  read_only=False, integer_range=(1, 51)),
    ParameterSpec("depth_wait", "depth_wait",
                  "Seconds the node waits, after tracking a frame, for its depth image if that "
                  "has not arrived yet (only while depth images are coming in). Raise it when "
                  "depth lags the colour image, e.g. on a loaded computer.",
                  read_only=False, float_range=(0.0, 2.0)),
    ParameterSpec("query_frame_memory_mb", "query_frame_memory_mb",
                  "Memory in MiB for the camera images kept so that a model swap can re-encode each "
                  "live point from the image it was added on, at the position it was added at (and "
                  "else from its last visible position); past it the oldest images are dropped "
                  "first. 0: keep only the latest image (every point is then re-encoded from its "
                  "latest position).", read_only=False, integer_range=(0, 1 << 20)),
    ParameterSpec("propagation", "propagation",
                  "What answers the images the network has no time for. lk: every image gets its "
                  "`tracks` at once, each point carried from the previous image by Lucas-Kanade and "
                  "each network result fused in when it lands (computed on an older image, carried "
                  "to the newest); the network still runs on the newest image whenever it is free. "
                  "none: `tracks` only for the images the network ran on, when it lands.",
                  choices=PROPAGATIONS),
    ParameterSpec("diagnostics_period", "diagnostics_period",
                  "Seconds between /diagnostics messages.", float_range=(0.1, 60.0)),
)

PARAMETER_NAMES = tuple(spec.name for spec in PARAMETERS)
SWAP_PARAMETERS = tuple(spec for spec in PARAMETERS if spec.swap)


class SettingsError(ValueError):
    """A parameter value the node cannot start with; the message says which and why."""


def config_from_parameters(values: Dict[str, Any]) -> TrackerNodeConfig:
    """A checked TrackerNodeConfig from {parameter name: value} (missing names: defaults)."""
    config = config_from_values(values, PARAMETERS, TrackerNodeConfig, SettingsError)
    if "grid_points" in values:
        config = dataclasses.replace(config, grid_points=parse_grid_points(config.grid_points))
    if config.resolution and config.resolution % 8:
        raise SettingsError(f"parameter resolution={config.resolution} must be a multiple of 8 "
                            "(or 0 for the checkpoint's own)")
    top = tuple(config.refine_resolution)
    if top != (0, 0) and (len(top) != 2 or any(not isinstance(v, int) or isinstance(v, bool) or v <= 0 or v % 8
                                                 for v in top)):
        raise SettingsError(f"parameter refine_resolution={list(top)} must be [H, W], two positive "
                            "multiples of 8 (e.g. [512, 512]), or [0, 0] for the model resolution")
    config = dataclasses.replace(config, refine_resolution=list(top))
    device = config.device
    if not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
        raise SettingsError(f"parameter device={device!r} is not auto, cpu, cuda or cuda:N")
    return config


def parse_grid_points(value: Any) -> Union[int, Tuple[float, ...]]:
    """grid_points as an int N >= 0 or a flat tuple of x, y pairs."""
    if isinstance(value, bool):
        raise SettingsError(f"parameter grid_points must be an integer or a list of numbers, "
                            f"got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise SettingsError(f"parameter grid_points={value} must be >= 0")
        return value
    if isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        if len(value) % 2:
            raise SettingsError(f"parameter grid_points has {len(value)} numbers; expected x, y "
                                "pairs [x0, y0, x1, y1, ...]")
        return tuple(float(v) for v in value)
    raise SettingsError(f"parameter grid_points must be an integer N (NxN grid) or a list "
                        f"[x0, y0, x1, y1, ...], got {value!r}")
