"""tracker_node: the causal BootsTAPIR point tracker as a ROS 2 node.

Subscribes to `image` (or `image/compressed`), publishes `tracks`
(sensor_msgs/PointCloud2, the image's header, one point per active track; the
fields are in `interfaces.TRACKS`), `~/debug_image` and
`/diagnostics`. Points are added through `~/add_point` (geometry_msgs/Point, as
rqt_image_view publishes clicks), `~/add_points` (PointCloud2 with x, y),
removed through `~/remove_points` (std_msgs/UInt32MultiArray) and all dropped by
the `~/reset` service (std_srvs/Trigger); every request takes effect on the next
frame processed. With `use_depth` it also reads `depth` and `camera_info` and
publishes `tracks_3d` (sensor_msgs/PointCloud2, metres in the optical frame; see
`bootstap_ros.depth`). The `query_set` parameter adds points defined on a demonstration
image (`bootstap-queries`); their demonstration positions, in the live image's
pixels, go out on `~/query_points` (latched) when they are added.

The model's parameters (`checkpoint`, `resolution`, ...; `settings.SWAP_PARAMETERS`)
change at runtime: the parameter callback checks only what it can at once and
hands the new configuration to a `tracking.session.ModelLoader` thread, which loads it
and re-encodes the points it can ahead; the worker swaps it in between two
frames. A model that fails to load or to take over is reported (warning,
/diagnostics) and the parameters are set back to the model in use, from the
executor (a guard condition), while tracking goes on with it.

Inference never runs in a callback: the image callback puts the message into a
drop-oldest slot of depth 1 (`queues.LatestSlot`), and one worker thread tracks the
newest frame with the network, so the node always works on the latest image and
counts the frames it skipped. With `propagation: lk` (the default) the image callback
also answers every image at once: a `tracking.propagation.Propagator` carries each
point from the previous image by Lucas-Kanade (a few ms), and the worker fuses each
network result into it instead of publishing it, so `tracks` (and `tracks_3d`,
`~/debug_image`, published from a thread of their own in the images' order) come
once per image. Frames are numbered as the callback receives them; the worker's
frame carries its number, so a result computed on an older frame is carried to the
newest. A removal or reset takes the points out of the answers at once. With
`propagation: none` only the network answers, for the frames it ran on.
The node talks to its `tracking.session.TrackingSession` through the session's
methods only. Run it with `ros2 run bootstap_ros tracker_node`
or `python -m bootstap_ros.ros.tracker_node`.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Dict, List, Optional, Tuple

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy)
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import UInt32MultiArray
from std_srvs.srv import Trigger

from bootstap_ros.ros.conversions import (CloudError, ImageError, array_to_image, cloud_xy,
                                          compressed_to_array, image_to_array,
                                          query_points_to_cloud, tracks_to_cloud)
from bootstap_ros.ros import interfaces
from bootstap_ros.ros.entry import run_node
from bootstap_ros.ros.parameters import declare_parameters, plain_value
from bootstap_ros.ros.queues import LatestSlot, WarningLimiter
from bootstap_ros.ros.settings import (PARAMETERS, SWAP_PARAMETERS, SettingsError,
                                       TrackerNodeConfig, config_from_parameters)
from bootstap_ros.tracking.frames import FrameError, to_rgb
from bootstap_ros.tracking.session import (ModelLoader, StartupError, TrackingSession, check_swap,
                                           create_tracker, load_query_set)

_RELIABILITY = {
    "best_effort": ReliabilityPolicy.BEST_EFFORT,
    "reliable": ReliabilityPolicy.RELIABLE,
    "system_default": ReliabilityPolicy.SYSTEM_DEFAULT,
}
WARNING_PERIOD_S = 5.0
# How long shutdown waits for the worker to finish its frame (then the process leaves
# without it, see entry.py). tracker.launch.py lets the tracker 15 s after SIGINT before
# SIGTERM, so this limit comes first.
WORKER_STOP_TIMEOUT_S = 10.0
PACKAGE_LOGGER = "bootstap_ros"  # the Python logger of the tracker, backends and model code
MIB = 1 << 20
# Answers waiting for their tracks_3d and debug image (propagation lk); past it the oldest go.
OUTPUT_BACKLOG = 30


def _now() -> str:
    """Wall-clock time, UTC, ISO 8601 to the second (for /diagnostics)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _parameter_value(value):
    """A config value as a ROS parameter takes it (lists for the array types)."""
    return list(value) if isinstance(value, (list, tuple)) else value


class _NodeLogHandler(logging.Handler):
    """Python `logging` records of the package into the node's ROS log (and so /rosout).

    The tracker and the backends report through Python logging (a change of image
    size, a failed CUDA-graph capture, an engine build); without this they went to
    stderr only, bypassing /rosout and the node's rate limit. Warnings and errors go
    through the node's limiter, one kind per logger and message template; the rest
    is logged at info level.
    """

    def __init__(self, warn, info):
        super().__init__(logging.INFO)
        self._warn, self._info = warn, info

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.levelno >= logging.WARNING:
                self._warn(f"log:{record.name}:{record.msg}", message)
            else:
                self._info(message)
        except Exception:  # logging must never break the caller
            self.handleError(record)


def _qos(reliability: str, depth: int) -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=_RELIABILITY[reliability], durability=DurabilityPolicy.VOLATILE)


def _stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


class _Stats:
    """Counters the worker and the callbacks update and /diagnostics reads, per window."""

    def __init__(self):
        self.lock = threading.Lock()
        self.published = 0
        self.window_start = time.monotonic()
        self.window_received = 0
        self.window_published = 0
        self.latency_ms: List[float] = []
        self.age_ms: List[float] = []
        self.points = 0
        self.last_warning = ""
        self.window_warnings = 0
        self.without_depth = 0  # frames that got no tracks_3d (no depth image, no camera_info)
        self.depth_ms: List[float] = []  # depth lookup + tracks_3d cloud, per frame
        self.received = 0  # images the callback got (good or bad)
        self.network = 0  # network results (frames the worker tracked)
        self.propagated = 0  # answers the propagator gave (propagation lk)
        self.stale = 0  # network results whose frame had left the propagator's history
        self.window_network = 0
        self.since_network: List[int] = []  # per published answer: frames since its network result


@dataclass
class _Answer:
    """What the node publishes for one image: `tracks_to_cloud`, tracks_3d and the debug image
    read it as they read a TrackResult."""

    ids: np.ndarray
    xy: np.ndarray
    visible: np.ndarray
    occlusion: np.ndarray
    uncertainty: np.ndarray
    frame_size: Tuple[int, int]

    def __len__(self) -> int:
        return len(self.ids)


class _Outputs:
    """A thread that publishes what follows each answer and may take time (tracks_3d waits up
    to depth_wait for its depth image; the debug image is drawn), in the answers' order, so
    that the image callback never waits. At most `capacity` answers wait; past it the oldest
    is dropped and counted."""

    def __init__(self, publish, capacity: int = OUTPUT_BACKLOG):
        self._publish = publish
        self._capacity = capacity
        self._condition = threading.Condition()
        self._items: deque = deque()
        self._closed = False
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="tracker_outputs", daemon=True)
        self._thread.start()

    def put(self, *item) -> None:
        with self._condition:
            if len(self._items) >= self._capacity:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._condition.notify()

    def _run(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._items or self._closed)
                if self._closed:
                    return
                item = self._items.popleft()
            self._publish(*item)

    def close(self, timeout: float) -> None:
        """Stop after the answer in hand; those still waiting are not published."""
        with self._condition:
            self._closed = True
            self._items.clear()
            self._condition.notify_all()
        self._thread.join(timeout=timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


class TrackerNode(Node):
    """The tracker node (see the module docstring). Raises StartupError when it cannot start."""

    def __init__(self, node_name: str = "tracker_node", **kwargs):
        super().__init__(node_name, **kwargs)
        try:
            self._setup()
        except BaseException:
            self._stop_worker()
            super().destroy_node()
            raise

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        self._worker: Optional[threading.Thread] = None
        self._outputs: Optional[_Outputs] = None
        self._slot = LatestSlot()
        self.settings = self._declare_parameters()
        self._warn = WarningLimiter(self.get_logger().warning, WARNING_PERIOD_S)
        self.warning_counts = self._warn.counts  # by kind; read by tests and diagnostics
        self._log_handler = _NodeLogHandler(self._warning, self.get_logger().info)
        package_logger = logging.getLogger(PACKAGE_LOGGER)
        package_logger.addHandler(self._log_handler)
        if package_logger.level == logging.NOTSET:  # Python's default would drop info records
            package_logger.setLevel(logging.INFO)
        tracker, self.info = create_tracker(self.settings)
        for note in self.info.notes:
            self.get_logger().warning(note)
        query_set = None
        if self.settings.query_set:
            from bootstap_ros.tracking.query_set import QuerySetError

            try:
                query_set = load_query_set(self.settings.query_set, self.info)
            except QuerySetError as error:
                raise StartupError(f"parameter query_set: {error}") from None
        self.session = TrackingSession(tracker, self.settings.grid_points, warn=self._warning,
                                       identity=self.info.identity,
                                       frame_memory_bytes=self.settings.query_frame_memory_mb * MIB,
                                       query_set=query_set)
        # The model in use (its configuration, when it went into use) and the swap reports.
        self._model_config = self.settings
        self._model_loaded = _now()
        self._last_swap = "none"
        self._last_refused_swap = "none"
        self._loader = ModelLoader(self._load_model, self._model_loaded_or_failed)
        self._stats = _Stats()
        # propagation lk: the answers between network results. The lock is shared by the image
        # callback (advance), the worker (fuse) and the removal and reset requests.
        self._propagator = None
        self._propagation_lock = threading.Lock()
        self._frame_index = -1  # of the last image the callback took
        self._fused_index: Optional[int] = None  # frame of the newest network result fused
        # Removals and resets are numbered as they are requested; the worker notes the number
        # before its frame takes the requests, and so knows which ones its result has seen.
        self._request_number = 0
        self._reset_number = 0  # of the latest reset
        self._removed: Dict[int, int] = {}  # id -> its removal's number, until a result saw it
        if self.settings.propagation == "lk":
            from bootstap_ros.tracking.propagation import Propagator

            self._propagator = Propagator()
        self._debug_always = self.settings.publish_debug_image
        from bootstap_ros.render import Trails

        self._trails = Trails(self.settings.debug_trail)

        image_qos = _qos(self.settings.qos_image_reliability, self.settings.qos_image_depth)
        output_qos = _qos(self.settings.qos_tracks_reliability, self.settings.qos_tracks_depth)
        self._compressed = self.settings.image_transport == "compressed"
        if self._compressed:
            self._image_sub = self.create_subscription(
                CompressedImage, interfaces.IMAGE_COMPRESSED.name, self._on_image, image_qos)
        else:
            self._image_sub = self.create_subscription(
                Image, interfaces.IMAGE.name, self._on_image, image_qos)
        self._tracks_pub = self.create_publisher(PointCloud2, interfaces.TRACKS.name, output_qos)
        self._debug_pub = self.create_publisher(Image, interfaces.DEBUG_IMAGE.name, output_qos)
        self._diagnostics_pub = self.create_publisher(
            DiagnosticArray, interfaces.DIAGNOSTICS.name, 10)
        # Latched: a controller that subscribes later still gets the last sets' goal positions.
        self._query_points_pub = self.create_publisher(PointCloud2, interfaces.QUERY_POINTS.name, QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL))
        if self.settings.use_depth:
            from bootstap_ros.depth import Tracks3D

            self._tracks_3d = Tracks3D(self.settings.depth_slop, self.settings.depth_window,
                                       self.settings.depth_wait)
            self._camera_info: Optional[CameraInfo] = None
            self._depth_sub = self.create_subscription(Image, interfaces.DEPTH.name, self._on_depth, image_qos)
            self.create_subscription(
                CameraInfo, interfaces.CAMERA_INFO.name, self._on_camera_info, image_qos)
            self._tracks_3d_pub = self.create_publisher(
                PointCloud2, interfaces.TRACKS_3D.name, output_qos)
        self.create_subscription(Point, interfaces.ADD_POINT.name, self._on_add_point, 10)
        self.create_subscription(PointCloud2, interfaces.ADD_POINTS.name, self._on_add_points, 10)
        self.create_subscription(
            UInt32MultiArray, interfaces.REMOVE_POINTS.name, self._on_remove_points, 10)
        self.create_service(Trigger, interfaces.RESET.name, self._on_reset)
        # on_set, not post_set: ROS 2 Humble has no post-set callbacks. rclpy checks the
        # ranges and read-only flags before calling it.
        self.add_on_set_parameters_callback(self._on_parameters_set)
        self.add_on_set_parameters_callback(self._check_query_set)
        self.add_on_set_parameters_callback(self._check_model_parameters)
        # A refused swap sets the parameters back from the executor, not from the thread
        # that found the failure (the loader, the worker).
        self._revert_guard = self.create_guard_condition(self._revert_model_parameters)
        self.create_timer(self.settings.diagnostics_period, self._publish_diagnostics)

        if self._propagator is not None:
            self._outputs = _Outputs(self._publish_extras)
        self._worker = threading.Thread(target=self._work, name="tracker_worker", daemon=True)
        self._worker.start()
        answers = ("every image (Lucas-Kanade between network results)" if self._propagator is not None
                   else "the images the network ran on")
        self.get_logger().info(
            f"tracking {self._image_sub.topic_name} with {self._model_text(self.info, self.settings)}, "
            f"up to {tracker.max_points} points; publishing {self._tracks_pub.topic_name} for {answers}")

    @staticmethod
    def _model_text(info, config: TrackerNodeConfig) -> str:
        top = config.refine_resolution
        refined = "" if tuple(top) == (0, 0) else f", refined up to {top[1]}x{top[0]}"
        return (f"the {info.source} checkpoint {info.checkpoint} "
                f"({'causal' if info.causal else 'non-causal'}, {info.resolution[1]}x"
                f"{info.resolution[0]}{refined}) on {info.backend}/{info.device}/{info.precision}")

    def _declare_parameters(self) -> TrackerNodeConfig:
        values = declare_parameters(self, PARAMETERS, StartupError)
        try:
            return config_from_parameters(values)
        except SettingsError as error:
            raise StartupError(str(error)) from None

    # ------------------------------------------------------------------ callbacks (cheap only)
    def _on_image(self, msg) -> None:
        received = time.monotonic()
        with self._stats.lock:
            self._stats.window_received += 1
            self._stats.received += 1
        if self._propagator is None:
            self._slot.put((msg, received))
            return
        try:
            self._answer_at_once(msg, received)
        except Exception as error:  # the node must survive anything one image does
            self._warning("internal", f"image not answered after an unexpected error: "
                          f"{type(error).__name__}: {error}")

    def _answer_at_once(self, msg, received: float) -> None:
        """propagation lk: this image's answer, every point carried into it (no network wait);
        the image also goes to the worker, which takes the newest when it is free."""
        try:
            frame, encoding = (compressed_to_array(msg) if self._compressed
                               else image_to_array(msg))
            rgb = to_rgb(frame, encoding)
        except (ImageError, FrameError) as error:
            self._warning("bad_image", f"skipping a frame: {error}")
            return
        with self._propagation_lock:
            self._frame_index += 1
            index = self._frame_index
            estimate = self._propagator.advance(index, rgb)
            fused = self._fused_index
        self._slot.put((msg, received, index, rgb))
        answer = _Answer(estimate.ids, estimate.xy, estimate.visible, estimate.occlusion,
                         estimate.uncertainty, tuple(rgb.shape[:2]))
        self._tracks_pub.publish(tracks_to_cloud(answer, msg.header))
        self._count_published(answer, msg.header, received,
                              since=None if fused is None else index - fused)
        with self._stats.lock:
            self._stats.propagated += 1
        debug = self._debug_always or self._debug_pub.get_subscription_count() > 0
        if self.settings.use_depth or debug:
            self._outputs.put(msg.header, answer, rgb if debug else None)

    def _publish_extras(self, header, answer: _Answer, rgb: Optional[np.ndarray]) -> None:
        """Outputs thread: tracks_3d and the debug image of an answer already on `tracks`."""
        try:
            if self.settings.use_depth:
                self._publish_tracks_3d(answer, header)
            if rgb is not None:
                self._publish_debug_image(rgb, "rgb8", answer, header)
        except Exception as error:
            self._warning("internal", f"tracks_3d or debug image not published after an unexpected "
                          f"error: {type(error).__name__}: {error}")

    def _on_depth(self, msg: Image) -> None:
        self._tracks_3d.add(_stamp_ns(msg.header), msg)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    def _on_add_point(self, msg: Point) -> None:
        self.session.request_add([[msg.x, msg.y]])

    def _on_add_points(self, msg: PointCloud2) -> None:
        try:
            self.session.request_add(cloud_xy(msg))
        except CloudError as error:
            self._warning("bad_cloud", f"~/add_points: ignoring a point cloud: {error}")

    def _on_remove_points(self, msg: UInt32MultiArray) -> None:
        ids = list(msg.data)
        with self._propagation_lock:
            self._request_number += 1
            self.session.request_remove(ids)
            if self._propagator is not None:  # out of the answers at once, not at the next fuse
                self._propagator.remove(ids)
                self._removed.update(dict.fromkeys(ids, self._request_number))

    def _on_reset(self, request, response):
        with self._propagation_lock:
            self._request_number += 1
            self._reset_number = self._request_number
            self.session.request_reset()
            if self._propagator is not None:
                self._propagator.remove(self._propagator.estimate().ids)
        response.success = True
        response.message = "all points will be dropped before the next frame"
        return response

    def _on_parameters_set(self, parameters) -> SetParametersResult:
        for parameter in parameters:
            if parameter.name == "visibility_threshold":
                self.session.set_visibility_threshold(float(parameter.value))
            elif parameter.name == "publish_debug_image":
                self._debug_always = bool(parameter.value)
            elif parameter.name == "debug_trail":
                self._trails.length = int(parameter.value)
            elif parameter.name == "depth_slop" and self.settings.use_depth:
                self._tracks_3d.slop_s = float(parameter.value)
            elif parameter.name == "depth_window" and self.settings.use_depth:
                self._tracks_3d.window = int(parameter.value)
            elif parameter.name == "depth_wait" and self.settings.use_depth:
                self._tracks_3d.wait_s = float(parameter.value)
            elif parameter.name == "query_frame_memory_mb":
                self.session.set_frame_memory(int(parameter.value) * MIB)
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ model swaps
    def _check_model_parameters(self, parameters) -> SetParametersResult:
        """The model's parameters: the configuration they now ask for is checked for what can be
        known at once (values, a missing file, the device) and handed to the loader; the latest
        wins. Asking for the model in use cancels a swap still pending."""
        changed = {p.name: p.value for p in parameters if p.name in {s.name for s in SWAP_PARAMETERS}}
        if not changed:
            return SetParametersResult(successful=True)
        values = {}
        for spec in SWAP_PARAMETERS:
            value = changed[spec.name] if spec.name in changed else self.get_parameter(spec.name).value
            values[spec.name] = plain_value(value)
        try:
            parsed = config_from_parameters(values)
        except SettingsError as error:
            return self._refuse_now(str(values["checkpoint"]), error)
        wanted = dataclasses.replace(self._model_config, **{
            spec.field: getattr(parsed, spec.field) for spec in SWAP_PARAMETERS})
        if self._same_model(wanted):
            self._loader.request(None)
            self.session.request_swap(None)
            return SetParametersResult(successful=True)
        try:
            check_swap(wanted)
        except StartupError as error:
            return self._refuse_now(wanted.checkpoint, error)
        self.session.request_swap(None)  # a loaded one not yet in use: the latest wins
        self._loader.request(wanted)
        self.get_logger().info(f"loading a new model in the background: {self._changes(wanted)}")
        return SetParametersResult(successful=True)

    def _refuse_now(self, checkpoint: str, error: Exception) -> SetParametersResult:
        self._refused(checkpoint, str(error))
        return SetParametersResult(successful=False, reason=f"model not changed, tracking goes on "
                                   f"with {self.info.checkpoint}: {error}")

    def _same_model(self, config: TrackerNodeConfig) -> bool:
        return all(getattr(config, spec.field) == getattr(self._model_config, spec.field)
                   for spec in SWAP_PARAMETERS)

    def _changes(self, config: TrackerNodeConfig) -> str:
        return ", ".join(f"{spec.name} {getattr(config, spec.field)!r}" for spec in SWAP_PARAMETERS
                         if getattr(config, spec.field) != getattr(self._model_config, spec.field))

    def _load_model(self, config: TrackerNodeConfig):
        """Loader thread: the new model's tracker, with the points it can re-encode ahead."""
        tracker, info = create_tracker(config)
        return self.session.prepare_swap(tracker, info.identity, payload=(config, info))

    def _model_loaded_or_failed(self, config, prepared, error) -> None:
        """Loader thread: a failure is refused (and the parameters set back); a model is handed
        to the worker, which swaps it in between two frames."""
        if error is not None:
            self._refused(config.checkpoint, error)
            self._revert_guard.trigger()
        else:
            self.session.request_swap(prepared)

    def _refused(self, checkpoint: str, error: str) -> None:
        self._last_refused_swap = f"{_now()}: {checkpoint or '(embedded model)'}: {error}"
        self._warning("model_swap", f"model not changed, tracking goes on with "
                      f"{self.info.checkpoint}: {error}")

    def _swapped(self, outcome) -> None:
        """Worker thread, after the session applied (or failed to apply) a swap."""
        config, info = outcome.prepared.payload
        if outcome.error is not None:
            self._refused(config.checkpoint, f"the new model could not take over: {outcome.error}")
            self._revert_guard.trigger()
            return
        self._model_config, self.info, self._model_loaded = config, info, _now()
        if outcome.lost and self._propagator is not None:
            with self._propagation_lock:
                self._propagator.remove(outcome.lost)
        counts = outcome.counts
        self._last_swap = (
            f"{self._model_loaded}: {sum(counts.values())} points kept, re-encoded from their query "
            f"image {counts['query'] + counts['features']}, last visible position {counts['seen']}, "
            f"latest position {counts['latest']}" + (f", {len(outcome.lost)} dropped" if outcome.lost else ""))
        for note in info.notes:
            self.get_logger().warning(note)
        self.get_logger().info(f"now tracking with {self._model_text(info, config)}; "
                               f"{self._last_swap.split(': ', 1)[1]} ({outcome.seconds * 1e3:.0f} ms)")

    def _revert_model_parameters(self) -> None:
        """Executor: set the model's parameters back to the model in use after a refused swap
        (unless a newer request is on its way)."""
        if self._loader.pending is not None or self.session.swap_pending:
            return
        changes = []
        for spec in SWAP_PARAMETERS:
            value = self.get_parameter(spec.name).value
            value = plain_value(value)
            active = _parameter_value(getattr(self._model_config, spec.field))
            if value != active:
                changes.append(Parameter(spec.name, value=active))
        if changes:
            self.set_parameters(changes)
            self.get_logger().info("parameters set back to the model in use: " + ", ".join(
                f"{p.name}={p.value!r}" for p in changes))

    def _check_query_set(self, parameters):
        """A new query_set value: load and check it here, so that a bad file is refused (the
        parameter keeps its value, a warning says why, every track stays); a good one is
        queued and its points are added before the next frame."""
        from rcl_interfaces.msg import SetParametersResult

        from bootstap_ros.tracking.query_set import QuerySetError

        for parameter in parameters:
            if parameter.name != "query_set":
                continue
            path = str(parameter.value or "")
            if not path:
                self.session.request_query_set(None)
                continue
            try:
                query_set = load_query_set(path, self.info)
            except QuerySetError as error:
                self._warning("query_set", f"query_set not changed, every track kept: {error}")
                return SetParametersResult(successful=False, reason=str(error))
            self.session.request_query_set(query_set)
        return SetParametersResult(successful=True)

    def _warning(self, kind: str, message: str) -> None:
        with self._stats.lock:
            self._stats.last_warning = message
            self._stats.window_warnings += 1
        self._warn(kind, message)

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        while not self._slot.closed:
            item = self._slot.get(timeout=0.5)
            try:
                self.session.apply_swap()  # also without images: between two frames either way
                if item is not None:
                    self._process(*item)
            except Exception as error:  # the node must survive anything one frame does
                self._warning("internal", f"frame skipped after an unexpected error: "
                              f"{type(error).__name__}: {error}")
            for outcome in self.session.take_swap_outcomes():
                self._swapped(outcome)

    def _process(self, msg, received: float, index: Optional[int] = None,
                 rgb: Optional[np.ndarray] = None) -> None:
        """The network on one frame: `index` and `rgb` with propagation lk (the callback decoded
        it and numbered it), where the result is fused and the callback publishes; else the
        message, decoded here, and the result published."""
        if rgb is not None:
            frame, encoding = rgb, "rgb8"
        else:
            try:
                frame, encoding = (compressed_to_array(msg) if self._compressed
                                   else image_to_array(msg))
            except ImageError as error:
                self._warning("bad_image", f"skipping a frame: {error}")
                return
        with self._propagation_lock:
            requested = self._request_number  # every removal and reset up to it is queued
            if index is not None:
                self._propagator.hold(index)  # its frames stay until the result is fused
        result = self.session.process(frame, encoding, _stamp_ns(msg.header))
        if result is None or self._slot.closed:
            return
        for added in self.session.take_added_query_sets():
            self._query_points_pub.publish(query_points_to_cloud(added.ids, added.xy, msg.header))
            labels = ", ".join(f"{i}: {label}" for i, label in zip(added.ids.tolist(), added.labels) if label)
            ids = f" (ids {added.ids[0]}..{added.ids[-1]})" if len(added.ids) else ""
            self.get_logger().info(f"added {len(added.ids)} points of query set {added.path}{ids}"
                                   + (f"; labels {labels}" if labels else ""))
        with self._stats.lock:
            self._stats.network += 1
            self._stats.window_network += 1
        if index is not None:
            self._fuse(index, result, requested)
            return
        self._tracks_pub.publish(tracks_to_cloud(result, msg.header))
        self._count_published(result, msg.header, received, since=0)
        if self.settings.use_depth:
            self._publish_tracks_3d(result, msg.header)
        if self._debug_always or self._debug_pub.get_subscription_count() > 0:
            self._publish_debug_image(frame, encoding, result, msg.header)

    def _fuse(self, index: int, result, requested: int) -> None:
        """Worker: the network's result on frame `index` into the propagator, carried to the
        newest frame. Its frame took the removals and resets numbered up to `requested`: points
        removed after that are left out, and after a later reset nothing of it is used."""
        with self._propagation_lock:
            fused = False
            if self._reset_number <= requested:
                keep = ~np.isin(result.ids, np.fromiter(self._removed, np.int64, len(self._removed)))
                fused = self._propagator.fuse(
                    index, result.ids[keep], result.xy[keep], result.occlusion[keep],
                    result.uncertainty[keep], result.visible[keep], complete=True)
                if fused and (self._fused_index is None or index > self._fused_index):
                    self._fused_index = index
                stale = not fused
            else:
                stale = False
            # Removals its frame took are gone from the network: no later result names them.
            self._removed = {i: n for i, n in self._removed.items() if n > requested}
        if stale:
            with self._stats.lock:
                self._stats.stale += 1
            self._warning("stale", "a network result was not used: its image had left the propagation "
                          f"history (over {self._propagator.config.max_held} images ago, or the image "
                          "size changed since). Where this repeats, the network step is far slower than "
                          "the camera: fewer points, a lower resolution or a faster backend help")

    def _count_published(self, result, header, received: float, since: Optional[int]) -> None:
        """The statistics of one `tracks` message (`since`: frames since its network result)."""
        latency = (time.monotonic() - received) * 1e3
        stamp = _stamp_ns(header)
        age = (self.get_clock().now().nanoseconds - stamp) / 1e6 if stamp else None
        with self._stats.lock:
            self._stats.published += 1
            self._stats.window_published += 1
            self._stats.latency_ms.append(latency)
            if age is not None:
                self._stats.age_ms.append(age)
            if since is not None:
                self._stats.since_network.append(since)
            self._stats.points = len(result)

    def _publish_tracks_3d(self, result, header) -> None:
        """tracks_3d for a frame: its depth image's median depth at each track, back-projected
        with camera_info's K (`depth.Tracks3D`); none when the frame has no depth pair."""
        from bootstap_ros.depth import DepthError, depth_in_metres
        from bootstap_ros.ros.conversions import (camera_info_to_model, depth_image_to_array,
                                                  tracks_3d_to_cloud)

        stamp = _stamp_ns(header)
        depth_msg = self._tracks_3d.pair(stamp, publisher=self._depth_sub.get_publisher_count() > 0)
        start = time.perf_counter()
        info = self._camera_info
        problem = None
        if depth_msg is None:
            problem = (f"no depth image within depth_slop={self._tracks_3d.slop_s:g} s of the image "
                       f"stamped {stamp / 1e9:.6f}: no tracks_3d for it")
        elif info is None:
            problem = "no camera_info received yet: no tracks_3d until one arrives"
        if problem is None:
            try:
                depth = depth_in_metres(*depth_image_to_array(depth_msg))
                model = camera_info_to_model(info)
            except (ImageError, DepthError) as error:
                problem = f"unusable depth image or camera_info ({error}): no tracks_3d for this frame"
        if problem is not None:
            with self._stats.lock:
                self._stats.without_depth += 1
            self._warning("no_depth", problem)
            return
        xyz, notes = self._tracks_3d.points(result.xy, result.frame_size, depth, model)
        for note in notes:
            self.get_logger().warning(note)
        self._tracks_3d_pub.publish(tracks_3d_to_cloud(result.ids, xyz, result.visible, header))
        with self._stats.lock:
            self._stats.depth_ms.append((time.perf_counter() - start) * 1e3)

    def _publish_debug_image(self, frame, encoding, result, header) -> None:
        from bootstap_ros.render import colors_for_ids, draw_tracks
        from bootstap_ros.tracking import to_rgb

        trail = self._trails.update(result.ids, result.xy, result.visible)
        image = draw_tracks(to_rgb(frame, encoding), result.xy, result.visible, trail,
                            colors_for_ids(result.ids))
        self._debug_pub.publish(array_to_image(image, "rgb8", header))

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        stats = self._stats
        now = time.monotonic()
        with stats.lock:
            elapsed = max(now - stats.window_start, 1e-6)
            received, published = stats.window_received, stats.window_published
            latency, age = stats.latency_ms, stats.age_ms
            warnings, last_warning = stats.window_warnings, stats.last_warning
            network_window, since = stats.window_network, stats.since_network
            stats.window_start, stats.window_received, stats.window_published = now, 0, 0
            stats.latency_ms, stats.age_ms, stats.window_warnings = [], [], 0
            stats.window_network, stats.since_network = 0, []
            points, total = stats.points, stats.published
            received_total, network, propagated, stale = (stats.received, stats.network,
                                                          stats.propagated, stats.stale)

        def ms(values, reduce):
            return f"{reduce(values):.1f}" if values else "n/a"

        kept_images, kept_bytes = self.session.kept_frames
        status = DiagnosticStatus(name=f"{self.get_fully_qualified_name()}: point tracking",
                                  hardware_id=f"{self.info.backend}/{self.info.device}")
        if received == 0:
            status.level = DiagnosticStatus.WARN
            status.message = f"no images on {self._image_sub.topic_name}"
        elif warnings:
            status.level = DiagnosticStatus.WARN
            status.message = last_warning[:200]
        else:
            status.level = DiagnosticStatus.OK
            status.message = f"tracking {points} points"
        values = {
            "input rate (Hz)": f"{received / elapsed:.2f}",
            "output rate (Hz)": f"{published / elapsed:.2f}",
            "latency receive to publish, mean (ms)": ms(latency, np.mean),
            "latency receive to publish, max (ms)": ms(latency, np.max),
            "latency image stamp to publish, mean (ms)": ms(age, np.mean),
            "dropped frames": str(self._slot.dropped),
            "frames received": str(received_total),
            "frames published": str(total),
            "propagation": self.settings.propagation,
            "network frames": str(network),
            "propagated frames": str(propagated),
            "network rate (Hz)": f"{network_window / elapsed:.2f}",
            "frames since network result, mean": ms(since, np.mean),
            "frames since network result, max": f"{max(since)}" if since else "n/a",
            "active points": str(points),
            "capacity": str(self.session.capacity),
            "backend": self.info.backend,
            "device": self.info.device,
            "precision": self.info.precision,
            "model resolution": f"{self.info.resolution[1]}x{self.info.resolution[0]}",
            "checkpoint": self.info.checkpoint,
            "model source": self.info.source,
            "model sha256": self.info.identity.checkpoint_sha256[:16] if self.info.identity else "n/a",
            "model loaded at": self._model_loaded,
            "model swap pending": self._pending_text(),
            "last model swap": self._last_swap,
            "last refused model swap": self._last_refused_swap,
            "kept query images (for swaps)": f"{kept_images} ({kept_bytes / MIB:.1f} MiB)",
            "warnings": str(sum(self.warning_counts.values())),
        }
        if self._propagator is not None:
            values["network results too old to fuse"] = str(stale)
            values["answers without tracks_3d or debug image (backlog)"] = str(self._outputs.dropped)
        if self.settings.use_depth:
            with stats.lock:
                depth_ms, stats.depth_ms = stats.depth_ms, []
                without_depth = stats.without_depth
            values["frames without tracks_3d (no depth pair or camera_info)"] = str(without_depth)
            values["tracks_3d time, mean (ms)"] = ms(depth_ms, np.mean)
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        message = DiagnosticArray(status=[status])
        message.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(message)

    def _pending_text(self) -> str:
        pending, since = self._loader.pending, self._loader.since
        if pending is not None and since is not None:
            return (f"loading {pending.checkpoint or '(embedded model)'} since "
                    f"{datetime.fromtimestamp(since, timezone.utc).isoformat(timespec='seconds')}")
        if self.session.swap_pending:
            return "loaded, taking over before the next frame"
        return "none"

    # ------------------------------------------------------------------ shutdown
    @property
    def dropped_frames(self) -> int:
        return self._slot.dropped

    def _stop_worker(self) -> None:
        handler = getattr(self, "_log_handler", None)
        if handler is not None:
            logging.getLogger(PACKAGE_LOGGER).removeHandler(handler)
        slot = getattr(self, "_slot", None)
        if slot is not None:
            slot.close()
        deadline = time.monotonic() + WORKER_STOP_TIMEOUT_S
        worker = getattr(self, "_worker", None)
        if worker is not None and worker.is_alive():
            worker.join(timeout=WORKER_STOP_TIMEOUT_S)
        outputs = getattr(self, "_outputs", None)
        if outputs is not None:
            outputs.close(timeout=max(0.0, deadline - time.monotonic()))
        loader = getattr(self, "_loader", None)
        if loader is not None:
            loader.close(timeout=max(0.0, deadline - time.monotonic()))

    @property
    def worker_alive(self) -> bool:
        """True while the worker thread, or a model load, still runs (after destroy_node: it did
        not stop in time)."""
        worker = getattr(self, "_worker", None)
        loader = getattr(self, "_loader", None)
        outputs = getattr(self, "_outputs", None)
        return ((worker is not None and worker.is_alive()) or (loader is not None and loader.alive)
                or (outputs is not None and outputs.alive))

    def destroy_node(self) -> None:
        self._stop_worker()
        super().destroy_node()


def main(args=None) -> int:
    """Entry point of `ros2 run bootstap_ros tracker_node`; returns the exit status."""
    return run_node("tracker_node", TrackerNode, (StartupError,), args=args)


if __name__ == "__main__":
    sys.exit(main())
