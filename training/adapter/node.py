"""bootstap_adapter: keeps the tracker's model adapted to the camera it runs on.

A node beside `tracker_node` (`ros2 launch bootstap_ros tracker.launch.py adapt:=true`):

* it subscribes to the tracker's image topic (`image` or `image/compressed`, sensor-data
  QoS) as serialized messages and records clips that pass the bootstrapping clip
  filters into a store of rosbag2 MCAP bags bounded in disk space
  (`bootstap_ros_training.adapter.clip_store`);
* a round thread runs bootstrapping rounds from the tracker's model in use in child
  processes, scores their result against it on held-out recent clips and decides
  (`bootstap_ros_training.adapter.adaptation`); an adopted model goes to the tracker by setting its
  `checkpoint` parameter (the tracker swaps it in without a restart,
  docs/model-swap.md), confirmed from the tracker's /diagnostics;
* each round is reported on `~/rounds` (std_msgs/String, one JSON object per event;
  reliable, transient local: a late subscriber gets the last 20) and in /diagnostics
  (`<node>: adaptation`); the `rollback` parameter sets the tracker back.

Nothing here can stop the tracker: it is another process, and all the adapter ever does
to it is set a parameter the tracker checks. A failed round or a full disk is a warning.
Run it with `ros2 run bootstap_ros bootstap_adapter` or
`python -m bootstap_ros_training.adapter.node`; docs/adapter.md has the details.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Dict, Optional, Tuple

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter, parameter_value_to_python
from rclpy.parameter_client import AsyncParameterClient
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from bootstap_ros.ros.entry import run_node
from bootstap_ros.ros.parameters import declare_parameters
from bootstap_ros.ros.queues import WarningLimiter

from .settings import PARAMETERS, AdapterConfig, AdapterSettingsError, config_from_parameters

_RELIABILITY = {
    "best_effort": ReliabilityPolicy.BEST_EFFORT,
    "reliable": ReliabilityPolicy.RELIABLE,
    "system_default": ReliabilityPolicy.SYSTEM_DEFAULT,
}
MIB = 1 << 20
WARNING_PERIOD_S = 30.0
TRACKER_TIMEOUT_S = 10.0  # for the tracker's parameter service to answer
RETRY_S = 10.0  # after the tracker did not answer, or settings were refused
STOP_TIMEOUT_S = 15.0  # shutdown waits this long for the round thread (it kills its child first)
ROUND_TOPIC_DEPTH = 20


class AdapterStartupError(RuntimeError):
    """The adapter cannot start (a parameter, the store folder); the message says what to do."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class AdapterNode(Node):
    """The adapter node (see the module docstring). Raises AdapterStartupError when it cannot start."""

    def __init__(self, node_name: str = "bootstap_adapter", **kwargs):
        super().__init__(node_name, **kwargs)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        try:
            self._setup()
        except BaseException:
            self._stop.set()
            super().destroy_node()
            raise

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        self.settings = self._declare_parameters()
        self._warn = WarningLimiter(self.get_logger().warning, WARNING_PERIOD_S)
        from . import adaptation, clip_store
        folder = self.settings.store_folder.resolve()
        try:
            self.store = clip_store.ClipStore(
                folder, self.settings.max_disk_mb * MIB, self.settings.min_free_disk_mb * MIB,
                warn=lambda message: self._warning("store", message))
            self.adaptation = adaptation.Adaptation(self.store, folder, self.settings.round_config())
        except (OSError, ValueError) as error:
            raise AdapterStartupError(f"cannot use the store folder {folder}: {error}. Set the store "
                                      "parameter to a writable folder") from None
        compressed = self.settings.image_transport == "compressed"
        self._msgtype = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=self.settings.qos_image_depth,
                         reliability=_RELIABILITY[self.settings.qos_image_reliability],
                         durability=DurabilityPolicy.VOLATILE)
        self._image_sub = self.create_subscription(
            CompressedImage if compressed else Image, "image/compressed" if compressed else "image",
            self._on_image, qos, raw=True)
        self.recorder = clip_store.ClipRecorder(self.store, self._image_sub.topic_name,
                                                frames=self.settings.clip_frames,
                                                interval_s=self.settings.clip_interval)
        self._rounds_pub = self.create_publisher(String, "~/rounds", QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=ROUND_TOPIC_DEPTH,
            reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        tracker = self.settings.tracker_node
        namespace = self.get_namespace().rstrip("/")
        self._tracker_name = tracker if tracker.startswith("/") else f"{namespace}/{tracker}"
        self._tracker_status: Dict[str, str] = {}
        self._tracker_seen: Optional[float] = None
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self._tracker = AsyncParameterClient(self, tracker)
        self._lock = threading.Lock()  # the counters and texts below
        self._received = 0
        self._hold = self.settings.rollback
        self._state = "starting"
        self._last: Optional[Dict] = None
        self._counts = {"rounds": 0, "adopted": 0, "failed": 0}
        self._last_rollback = "none"
        self.add_on_set_parameters_callback(self._on_parameters_set)
        self.create_timer(self.settings.diagnostics_period, self._publish_diagnostics)
        self._thread = threading.Thread(target=self._round_loop, name="adapter_rounds", daemon=True)
        self._thread.start()
        self.get_logger().info(
            f"recording clips of {self._image_sub.topic_name} into {folder / 'clips'} (at most "
            f"{self.settings.max_disk_mb} MiB); rounds of {self.settings.round_minutes:g} min on "
            f"{self.settings.round_device} for {self._tracker_name}")

    def _declare_parameters(self) -> AdapterConfig:
        values = declare_parameters(self, PARAMETERS, AdapterStartupError)
        try:
            config = config_from_parameters(values)
            config.round_config()
        except (AdapterSettingsError, ValueError) as error:
            raise AdapterStartupError(str(error)) from None
        return config

    def _warning(self, kind: str, message: str) -> None:
        self._warn(kind, message)

    # ------------------------------------------------------------------ callbacks
    def _on_image(self, data: bytes) -> None:
        self._received += 1
        try:
            clip = self.recorder.add(data, self._msgtype, self.get_clock().now().nanoseconds)
        except Exception as error:  # noqa: BLE001 - recording must never stop the node
            self._warning("record", f"a frame was not recorded: {type(error).__name__}: {error}")
            return
        if clip is not None:
            self.get_logger().debug(f"recorded {clip.path.name} ({clip.frames} frames, "
                                    f"{clip.bytes / MIB:.1f} MiB)")

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        name = f"{self._tracker_name}: point tracking"
        for status in msg.status:
            if status.name == name:
                self._tracker_status = {kv.key: kv.value for kv in status.values}
                self._tracker_seen = time.monotonic()

    def _on_parameters_set(self, parameters) -> SetParametersResult:
        values = {spec.name: self.get_parameter(spec.name).value for spec in PARAMETERS}
        values.update({p.name: p.value for p in parameters if p.name in values})
        try:
            config = config_from_parameters(values)
            config.round_config()
        except (AdapterSettingsError, ValueError) as error:
            return SetParametersResult(successful=False, reason=str(error))
        self.settings = config
        self.store.set_bounds(config.max_disk_mb * MIB, config.min_free_disk_mb * MIB)
        self.recorder.interval_ns = int(config.clip_interval * 1e9)
        for parameter in parameters:
            if parameter.name == "rollback":
                if parameter.value and not self._hold:
                    self._hold = True
                    self._roll_back()
                elif not parameter.value:
                    self._hold = False
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ the tracker
    def _wait(self, future, timeout: float):
        deadline = time.monotonic() + timeout
        while not future.done():
            if self._stop.is_set() or time.monotonic() > deadline:
                return None
            time.sleep(0.02)
        return future.result()

    def _tracker_model(self) -> Optional[Tuple[str, bool]]:
        """(checkpoint, causal) of the tracker, from its parameters; None when it does not answer."""
        if not self._tracker.services_are_ready():
            return None
        response = self._wait(self._tracker.get_parameters(["checkpoint", "causal"]), TRACKER_TIMEOUT_S)
        if response is None or len(response.values) != 2:
            return None
        checkpoint, causal = (parameter_value_to_python(value) for value in response.values)
        return str(checkpoint or ""), bool(causal)

    def _set_tracker_checkpoint(self, checkpoint: str) -> Tuple[bool, str]:
        if not self._tracker.services_are_ready():
            return False, f"the tracker {self._tracker_name} does not answer"
        response = self._wait(self._tracker.set_parameters([Parameter("checkpoint", value=checkpoint)]),
                              TRACKER_TIMEOUT_S)
        if response is None:
            return False, f"the tracker {self._tracker_name} did not answer within {TRACKER_TIMEOUT_S:g} s"
        result = response.results[0]
        return bool(result.successful), result.reason

    def _await_swap(self, checkpoint: str, since: float, timeout: float) -> Tuple[str, str]:
        """('in use' | 'refused' | 'unconfirmed', detail) from the tracker's /diagnostics."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            status, seen = self._tracker_status, self._tracker_seen
            if seen is not None and seen > since:
                if status.get("checkpoint") == checkpoint:
                    return "in use", status.get("model loaded at", "")
                refused = status.get("last refused model swap", "")
                if checkpoint in refused:
                    return "refused", refused
            time.sleep(0.1)
        return "unconfirmed", f"the tracker's /diagnostics did not show it in use within {timeout:g} s"

    def _roll_back(self) -> None:
        """Executor: the tracker back to the model before the latest adoption (asynchronous)."""
        try:
            target, undone = self.adaptation.history.rollback()
        except ValueError as error:
            self._last_rollback = f"{_now()}: nothing done: {error}"
            self.get_logger().warning(f"rollback: {error}")
            return
        shown = target or "(embedded model)"
        self._last_rollback = f"{_now()}: round {undone['round']} undone, back to {shown}"
        self.get_logger().info(f"rollback: setting {self._tracker_name} back to {shown} (before round "
                               f"{undone['round']}); no round's model is adopted while rollback is true")
        event = {"event": "rollback", "at": _now(), "checkpoint": target, "undone": undone}
        if not self._tracker.services_are_ready():
            event["result"] = "the tracker does not answer: set its checkpoint parameter by hand"
            self.get_logger().warning(f"rollback: {event['result']}")
            self._publish(event)
            return
        future = self._tracker.set_parameters([Parameter("checkpoint", value=target)])

        def done(finished) -> None:
            result = finished.result().results[0] if finished.result() else None
            event["result"] = ("accepted" if result is not None and result.successful
                               else f"refused: {result.reason if result else 'no answer'}")
            self._publish(event)

        future.add_done_callback(done)

    # ------------------------------------------------------------------ rounds
    def _round_loop(self) -> None:
        """The round thread: one round after another while rounds are on. It also starts the
        rounds' child processes, which die with it (PR_SET_PDEATHSIG follows this thread)."""
        last_end = retry_at = float("-inf")
        while not self._stop.is_set():
            settings = self.settings
            waiting = None if settings.rounds else "rounds are off (parameter rounds)"
            if waiting is None:
                waiting = self.adaptation.waiting_for()
            if waiting is None and time.monotonic() < last_end + settings.round_pause:
                waiting = f"pausing between rounds (round_pause {settings.round_pause:g} s)"
            if waiting is None and time.monotonic() < retry_at:
                waiting = self._state.partition("waiting: ")[2] or "retrying soon"
            model = None
            if waiting is None:
                model = self._tracker_model()
                if model is None:
                    waiting = f"the tracker {self._tracker_name} does not answer"
                    retry_at = time.monotonic() + RETRY_S
            if waiting is not None:
                self._state = f"waiting: {waiting}"
                self._stop.wait(0.5)
                continue
            self.adaptation.config = settings.round_config()
            try:
                report = self.adaptation.run_round(model[0], model[1], self._stop, started=self._round_started)
                if report.decision == "adopted":
                    if self._stop.is_set():
                        report.decision = "failed"
                        report.reason += "; not adopted: the adapter is stopping"
                    else:
                        self._adopt(report)
                self.adaptation.finish(report)
            except Exception as error:  # noqa: BLE001 - the thread must survive anything
                self._warning("round", f"a round ended with an unexpected error: {type(error).__name__}: {error}")
                retry_at = time.monotonic() + RETRY_S
                continue
            finally:
                last_end = time.monotonic()
            if self._stop.is_set():
                break
            self._round_finished(report)

    def _round_started(self, report) -> None:
        self._state = f"round {report.round} running since {report.started}"
        self.get_logger().info(f"round {report.round}: training on {report.train_clips} clips from "
                               f"{report.in_use or '(embedded model)'}, {report.held_out_clips} held out")
        self._publish({"event": "round", **report.to_dict()})

    def _adopt(self, report) -> None:
        """The round's model beat the model in use: give it to the tracker, unless rollback holds
        or the tracker's model changed meanwhile."""
        if self._hold:
            report.decision = "held"
            report.reason += "; not adopted: rollback is true"
            return
        model = self._tracker_model()
        if model is None or model[0] != report.in_use:
            report.decision = "stale"
            report.reason += ("; not adopted: the tracker does not answer" if model is None else
                              f"; not adopted: the tracker's model changed during the round (now "
                              f"{model[0] or '(embedded model)'})")
            return
        kept = self.adaptation.adopt(report)
        asked = time.monotonic()
        successful, why = self._set_tracker_checkpoint(str(kept))
        if not successful:
            self.adaptation.history.undo(kept)
            report.decision, report.checkpoint = "refused", ""
            report.reason += f"; the tracker refused it: {why}"
            return
        outcome, detail = self._await_swap(str(kept), asked, self.settings.swap_timeout)
        if outcome == "refused":
            self.adaptation.history.undo(kept)
            report.decision, report.checkpoint = "refused", ""
            report.reason += f"; the tracker refused it: {detail}"
        elif outcome == "in use":
            report.reason += f"; in use by the tracker since {detail}"
        else:
            report.reason += f"; {detail}"

    def _round_finished(self, report) -> None:
        with self._lock:
            self._counts["rounds"] += 1
            self._counts["adopted"] += report.decision == "adopted"
            self._counts["failed"] += report.decision == "failed"
            self._last = report.to_dict()
        self._state = "idle"
        text = (f"round {report.round} {report.decision} after {report.seconds / 60:.1f} min "
                f"({report.steps} steps): {report.reason}")
        if report.decision in ("failed", "refused"):
            self._warning("round", text + "; the tracker's model is unchanged")
        else:
            self.get_logger().info(text)
        self._publish({"event": "round", **report.to_dict()})

    def _publish(self, event: Dict) -> None:
        self._rounds_pub.publish(String(data=json.dumps(event)))

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        store, recorder = self.store, self.recorder
        filters = recorder.stats.filters
        with self._lock:
            last, counts = self._last, dict(self._counts)
        status = DiagnosticStatus(name=f"{self.get_fully_qualified_name()}: adaptation",
                                  hardware_id=self.settings.round_device)
        recording = "on" if store.stopped is None else f"stopped: {store.stopped}"
        tracker_seen = self._tracker_seen is not None and time.monotonic() - self._tracker_seen < 10.0
        if store.stopped is not None:
            status.level, status.message = DiagnosticStatus.WARN, f"clip recording {recording}"[:200]
        elif last is not None and last["decision"] in ("failed", "refused"):
            status.level = DiagnosticStatus.WARN
            status.message = f"round {last['round']} {last['decision']}: {last['reason']}"[:200]
        elif not tracker_seen:
            status.level, status.message = DiagnosticStatus.WARN, f"no /diagnostics from {self._tracker_name}"
        else:
            status.level, status.message = DiagnosticStatus.OK, self._state[:200]
        latest = self.adaptation.history.latest

        def score(value):
            return "n/a" if value is None else f"{value:.4f}"

        values = {
            "state": self._state,
            "recording": recording,
            "image topic": self._image_sub.topic_name,
            "frames received": str(self._received),
            "clips stored": str(len(store.clips)),
            "store size (MiB)": f"{store.total_bytes / MIB:.1f} of {store.max_bytes / MIB:.0f}",
            "clips recorded": str(recorder.stats.kept),
            "clips not written (store full, disk full, write error)": str(recorder.stats.not_written),
            "clips deleted to make room": str(store.deleted),
            "filters: time gaps, scene cuts, static frames dropped, bad frames": (
                f"{filters.gaps}, {filters.cuts}, {filters.static_dropped}, {filters.bad_frames}"),
            "rounds": "on" if self.settings.rounds else "off",
            "rounds done, adopted, failed": f"{counts['rounds']}, {counts['adopted']}, {counts['failed']}",
            "last round": "none" if last is None else str(last["round"]),
            "last decision": "none" if last is None else last["decision"],
            "last score of the model in use": score(last and last["score_in_use"]),
            "last score of the round's model": score(last and last["score_candidate"]),
            "last round time (min)": "n/a" if last is None else f"{last['seconds'] / 60:.1f}",
            "last round reason": "none" if last is None else last["reason"],
            "tracker": self._tracker_name,
            "tracker model in use": self._tracker_status.get("checkpoint", "unknown"),
            "latest adopted model": "none" if latest is None else latest["checkpoint"],
            "rollback": "true (no adoption)" if self._hold else "false",
            "last rollback": self._last_rollback,
        }
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        message = DiagnosticArray(status=[status])
        message.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(message)

    # ------------------------------------------------------------------ shutdown
    @property
    def worker_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def destroy_node(self) -> None:
        self._stop.set()  # a round's child is killed at once
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=STOP_TIMEOUT_S)
        super().destroy_node()


def main(args=None) -> int:
    """Entry point of `ros2 run bootstap_ros bootstap_adapter`; returns the exit status."""
    return run_node("bootstap_adapter", AdapterNode, (AdapterStartupError,), args=args)


if __name__ == "__main__":
    sys.exit(main())
