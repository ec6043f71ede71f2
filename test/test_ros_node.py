"""tracker_node with the real rclpy: a test node plays a synthetic clip and reads the tracks back.

One rclpy context and one MultiThreadedExecutor (in a background thread) serve the
module; every test runs its own TrackerNode in a namespace of its own, on the
isolated domain test/conftest.py sets. Every wait is on a condition with a deadline.
"""

import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Point
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, PointCloud2
from std_msgs.msg import UInt32MultiArray
from std_srvs.srv import Trigger

from bootstap_ros.ros.conversions import cloud_to_array, xy_to_cloud
from bootstap_ros.model.checkpoint import EMBEDDED_CHECKPOINT
from bootstap_ros.ros.tracker_node import TrackerNode
from bootstap_ros.tracking.session import StartupError
from helpers.small_model import blob_clip, moving_clip
from helpers.ros_client import RELIABLE, STAMPS, Client, RemoteParameters, Topic, stamp_of, wait_until

TIMEOUT = 20.0


class Harness(Client):
    """ros_client.Client with the checkpoint and transport as arguments, and publishers and a
    client for the node's point requests and reset."""

    timeout = TIMEOUT

    def __init__(self, ros, checkpoint, transport="raw", **params):
        super().__init__(ros, checkpoint=checkpoint, image_transport=transport, **params)
        private = "tracker_node/"
        self.add_point = self.publisher(Point, private + "add_point")
        self.add_points = self.publisher(PointCloud2, private + "add_points")
        self.remove = self.publisher(UInt32MultiArray, private + "remove_points")
        self.reset = self.client.create_client(Trigger, private + "reset")

    def request(self, publisher, msg):
        """Publish a point request and wait until the node has it queued. Waits on the count of
        requests received, not on the queue's length: a frame still on its way (`send`
        republishes a late one) may take the request at once, and the length is 1 never again."""
        before = self.node.session.requests.received
        publisher.publish(msg)
        wait_until(lambda: self.node.session.requests.received > before, what="the node taking the request")

    def send_bad(self, msg, kind):
        """Publish an unusable image and wait until the node has warned about it."""
        before = self.node.warning_counts.get(kind, 0)
        self.image.publish(msg)
        wait_until(lambda: self.node.warning_counts.get(kind, 0) > before, what=f"a {kind} warning")

    def call_reset(self):
        assert self.reset.wait_for_service(timeout_sec=TIMEOUT)
        future = self.reset.call_async(Trigger.Request())
        wait_until(future.done, what="the reset response")
        assert future.result().success


@pytest.fixture
def harness_factory(ros, checkpoint):
    made = []

    def make(**params):
        made.append(Harness(ros, checkpoint, **params))
        return made[-1]

    yield make
    for harness in made:
        harness.close()


def points_of(cloud):
    return cloud_to_array(cloud)


def test_tracks_carry_the_image_header_stable_ids_and_follow_requests(harness_factory):
    h = harness_factory(grid_points=2)
    clip = moving_clip(num_frames=10)
    for frame in clip[:3]:
        msg = h.frame(frame, frame_id="camera_optical")
        tracks = h.send(msg)
        assert tracks.header.stamp == msg.header.stamp
        assert tracks.header.frame_id == "camera_optical"
        points = points_of(tracks)
        assert points["id"].tolist() == [0, 1, 2, 3]
        assert np.isfinite(points["x"]).all() and np.isfinite(points["y"]).all()
        assert set(points["visible"].tolist()) <= {0, 1}
        assert ((points["occlusion"] >= 0) & (points["occlusion"] <= 1)).all()
        assert ((points["uncertainty"] >= 0) & (points["uncertainty"] <= 1)).all()

    h.request(h.add_point, Point(x=20.0, y=10.0, z=0.0))
    assert points_of(h.send(h.frame(clip[3])))["id"].tolist() == [0, 1, 2, 3, 4]

    h.request(h.add_points, xy_to_cloud([[30.0, 12.0], [50.0, 40.0]]))
    assert points_of(h.send(h.frame(clip[4])))["id"].tolist() == [0, 1, 2, 3, 4, 5, 6]

    h.request(h.remove, UInt32MultiArray(data=[0, 5]))
    assert points_of(h.send(h.frame(clip[5])))["id"].tolist() == [1, 2, 3, 4, 6]

    h.call_reset()  # drops every point; the grid is seeded again on the next frame
    assert points_of(h.send(h.frame(clip[6])))["id"].tolist() == [7, 8, 9, 10]


def test_bad_input_is_survived_and_keeps_the_tracks(harness_factory):
    h = harness_factory(grid_points=2, max_points=6)
    clip = moving_clip(num_frames=4)
    ids = points_of(h.send(h.frame(clip[0])))["id"].tolist()
    assert ids == [0, 1, 2, 3]

    bad = h.frame(clip[1])
    bad.encoding = "32FC1"
    h.send_bad(bad, "bad_image")
    empty = h.frame(clip[1])
    empty.height = empty.width = empty.step = 0
    empty.data = b""
    h.send_bad(empty, "bad_image")
    truncated = h.frame(clip[1])
    truncated.data = bytes(truncated.data[:100])
    h.send_bad(truncated, "bad_image")
    assert "truncated" in h.node._stats.last_warning
    assert points_of(h.send(h.frame(clip[1])))["id"].tolist() == ids

    # Padded rows are valid: the same frame with 5 junk bytes per row tracks as the plain one.
    plain = points_of(h.send(h.frame(clip[2])))
    padded = h.frame(clip[2])
    rows = np.frombuffer(bytes(padded.data), np.uint8).reshape(padded.height, padded.step)
    padded.data = np.concatenate([rows, np.full((padded.height, 5), 7, np.uint8)], 1).tobytes()
    padded.step += 5
    result = points_of(h.send(padded))
    assert result["id"].tolist() == ids and np.isfinite(result["x"]).all()
    assert plain.shape == result.shape

    big = moving_clip(num_frames=1, height=96, width=160)[0]
    assert points_of(h.send(h.frame(big)))["id"].tolist() == ids  # size change: points kept
    assert h.node.warning_counts.get("size_change") == 1

    h.request(h.add_points, xy_to_cloud([[np.nan, 1.0], [np.inf, 2.0], [-5.0, 3.0], [500.0, 3.0],
                                         [10.0, 10.0]]))
    assert points_of(h.send(h.frame(big)))["id"].tolist() == ids + [4]
    assert h.node.warning_counts.get("bad_points") == 1

    h.request(h.add_points, xy_to_cloud(np.full((5, 2), 20.0)))  # one slot left
    assert points_of(h.send(h.frame(big)))["id"].tolist() == ids + [4, 5]
    assert h.node.warning_counts.get("capacity") == 1

    broken_cloud = xy_to_cloud([[1.0, 2.0]])
    broken_cloud.data = b"\x00"
    h.add_points.publish(broken_cloud)
    wait_until(lambda: h.node.warning_counts.get("bad_cloud") == 1, what="a bad_cloud warning")
    assert points_of(h.send(h.frame(big)))["id"].tolist() == ids + [4, 5]


def test_time_jump_back_resets(harness_factory):
    h = harness_factory(grid_points=1)
    clip = moving_clip(num_frames=3)
    first = next(STAMPS)
    assert points_of(h.send(h.frame(clip[0], stamp=first + 10)))["id"].tolist() == [0]
    assert points_of(h.send(h.frame(clip[1], stamp=first + 20)))["id"].tolist() == [0]
    assert points_of(h.send(h.frame(clip[2], stamp=first)))["id"].tolist() == [1]
    assert h.node.warning_counts.get("time_jump") == 1


def test_the_newest_frame_wins_and_drops_are_counted(harness_factory):
    h = harness_factory(grid_points=1)
    clip = moving_clip(num_frames=6)
    release = threading.Event()
    process = h.node.session.process

    def held_process(*args):
        release.wait(TIMEOUT)
        return process(*args)

    h.node.session.process = held_process
    messages = [h.frame(frame) for frame in clip]
    h.image.publish(messages[0])
    wait_until(lambda: h.node._slot.received == 1, what="the first frame")
    wait_until(lambda: not h.node._slot._full, what="the worker taking it")
    for msg in messages[1:]:
        h.image.publish(msg)
    wait_until(lambda: h.node._slot.received == len(messages), what="every frame")
    release.set()
    h.tracks.wait_for(lambda m: stamp_of(m) == stamp_of(messages[-1]))
    stamps = [stamp_of(m) for m in h.tracks.messages]
    assert stamps == [stamp_of(messages[0]), stamp_of(messages[-1])]
    assert h.node.dropped_frames == len(messages) - 2


def test_runtime_parameters_and_read_only_ones(ros, harness_factory):
    h = harness_factory(grid_points=2)
    clip = moving_clip(num_frames=3)
    set_parameter = RemoteParameters(h.client, "tracker_node", timeout=TIMEOUT).set

    assert set_parameter("visibility_threshold", 1.0).successful
    assert points_of(h.send(h.frame(clip[0])))["visible"].tolist() == [0, 0, 0, 0]
    assert set_parameter("visibility_threshold", 0.0).successful
    assert points_of(h.send(h.frame(clip[1])))["visible"].tolist() == [1, 1, 1, 1]
    assert not set_parameter("visibility_threshold", 1.5).successful
    result = set_parameter("image_transport", "compressed")
    assert not result.successful and "read-only" in result.reason


def test_debug_image_when_subscribed_and_diagnostics(harness_factory):
    h = harness_factory(grid_points=2, diagnostics_period=0.2)
    debug, diagnostics = Topic(), Topic()
    h.client.create_subscription(Image, "tracker_node/debug_image", debug, RELIABLE)
    h.client.create_subscription(DiagnosticArray, "/diagnostics", diagnostics, RELIABLE)
    wait_until(lambda: h.node._debug_pub.get_subscription_count() > 0, what="the debug subscriber")
    clip = moving_clip(num_frames=3)
    msg = h.frame(clip[0])
    h.send(msg)
    image = debug.wait_for(lambda m: stamp_of(m) == stamp_of(msg), what="the debug image")
    assert (image.height, image.width, image.encoding) == (48, 80, "rgb8")
    assert bytes(image.data) != bytes(msg.data)  # tracks are drawn on it
    for frame in clip[1:]:
        h.send(h.frame(frame))
    name = h.namespace + "/tracker_node: point tracking"

    def tracking_four(msg):
        return any(s.name == name and s.level == b"\x00" and s.message == "tracking 4 points"
                   for s in msg.status)

    status = diagnostics.wait_for(tracking_four, what="an OK diagnostics status").status[0]
    values = {kv.key: kv.value for kv in status.values}
    assert {"input rate (Hz)", "output rate (Hz)", "latency receive to publish, mean (ms)",
            "dropped frames", "active points", "backend"} <= set(values)
    assert values["backend"] == "torch" and values["active points"] == "4"


def test_compressed_transport(harness_factory):
    h = harness_factory(grid_points=2, transport="compressed")
    clip = moving_clip(num_frames=2)
    msg = h.frame(clip[0])
    tracks = h.send(msg)
    assert tracks.header.stamp == msg.header.stamp and len(points_of(tracks)) == 4
    corrupt = h.frame(clip[1])
    corrupt.data = bytes(corrupt.data[:40])
    h.send_bad(corrupt, "bad_image")
    assert points_of(h.send(h.frame(clip[1])))["id"].tolist() == [0, 1, 2, 3]


def _type_name(cls):
    """'sensor_msgs/msg/Image' of a message or service class."""
    package, kind = cls.__module__.split(".")[:2]
    return f"{package}/{kind}/{cls.__name__}"


# When each interface exists, by the condition interfaces.py states (a new condition fails here).
CONDITIONS = {
    "": lambda params: True,
    "`image_transport: raw` (default)": lambda params: params["transport"] == "raw",
    "`image_transport: compressed`": lambda params: params["transport"] == "compressed",
    "`use_depth: true`": lambda params: params["use_depth"],
}
# What every rclpy node has (rosout, parameter events and services, type descriptions).
STANDARD_PACKAGES = ("rcl_interfaces", "type_description_interfaces")


@pytest.mark.parametrize("params", [dict(transport="raw", use_depth=False),
                                    dict(transport="compressed", use_depth=True)])
def test_the_node_has_exactly_the_interfaces_of_its_reference_table(harness_factory, params):
    """The node's topics and service, with their types, are those of interfaces.INTERFACES
    (the table docs/node-reference.md is written from), no more and no fewer."""
    from bootstap_ros.ros.interfaces import INTERFACES

    h = harness_factory(**params)
    node = h.node
    private = node.get_fully_qualified_name() + "/"

    def resolved(name):
        if name.startswith("~/"):
            return private + name[2:]
        return name if name.startswith("/") else f"{h.namespace}/{name}"

    expected = {role: set() for role in ("subscribes", "publishes", "service")}
    for interface in INTERFACES:
        if CONDITIONS[interface.condition](params):
            expected[interface.role].add((resolved(interface.name), interface.type))
    def own(entities, name, kind):
        named = {(name(e), _type_name(kind(e))) for e in entities}
        return {(n, t) for n, t in named if t.split("/")[0] not in STANDARD_PACKAGES}

    found = {
        "subscribes": own(node.subscriptions, lambda s: s.topic_name, lambda s: s.msg_type),
        "publishes": own(node.publishers, lambda p: p.topic_name, lambda p: p.msg_type),
        "service": own(node.services, lambda s: node.resolve_service_name(s.srv_name),
                       lambda s: s.srv_type),
    }
    assert found == expected


def test_the_reference_page_says_which_parameters_change_at_runtime(harness_factory):
    """The parameters of docs/node-reference.md are the running node's, and its *changes*
    column agrees with the node's own descriptors: `restart` exactly where the node refuses a
    change as read-only (a model swap and a runtime change both take effect while it runs)."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "node-reference.md").read_text()
    section = page.split("## Parameters", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([^`]+)` \| [^|]+ \| `[^`]*` \| ([a-z ]+) \|", section, re.MULTILINE))
    assert set(rows.values()) == {"restart", "at runtime", "model swap"}
    node = harness_factory().node
    rclpy_own = {"use_sim_time", "start_type_description_service"}
    declared = set(node._parameters) - rclpy_own
    assert set(rows) == declared
    for name, changes in rows.items():
        assert node.describe_parameter(name).read_only == (changes == "restart"), name


def test_start_up_errors_name_the_fix(ros, tmp_path, checkpoint):
    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_text("not a checkpoint at all\n")
    cases = [
        ({"checkpoint": str(tmp_path / "missing.pt")}, "checkpoint not found"),
        ({"checkpoint": str(not_a_checkpoint)}, "not a PyTorch checkpoint"),
        ({"checkpoint": checkpoint, "backend": "nonsense"}, "backend='nonsense' is not one of"),
        ({"checkpoint": checkpoint, "visibility_threshold": 1}, "decimal point"),
        ({"checkpoint": checkpoint, "resolution": 60}, "resolution"),
    ]
    for params, match in cases:
        with pytest.raises(StartupError, match=match) as error:
            TrackerNode(namespace="/startup_" + uuid.uuid4().hex[:8], context=ros.context,
                        parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        # torch's own message advises weights_only=False, which runs the file's code: never pass it on.
        assert "weights_only" not in str(error.value)


def test_main_exits_with_a_clear_error_without_a_model(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bootstap_ros.ros.tracker_node", "--ros-args",
         "-p", f"checkpoint:={tmp_path / 'missing.pt'}"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, env=dict(os.environ))
    assert result.returncode == 1, result.stderr
    assert "cannot start" in result.stderr and "checkpoint not found" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(not EMBEDDED_CHECKPOINT.is_file(),
                    reason=f"the embedded default model ({EMBEDDED_CHECKPOINT}) is not shipped yet; "
                           "random weights cannot track")
def test_positions_follow_the_known_motion(ros):
    dx, dy, frames = 1.5, 1.0, 10
    clip = blob_clip(num_frames=frames, height=128, width=160, dx=dx, dy=dy)
    h = Harness(ros, "", grid_points=3)
    try:
        clouds = [points_of(h.send(h.frame(frame))) for frame in clip]
    finally:
        h.close()
    start = np.stack([clouds[0]["x"], clouds[0]["y"]], -1)
    errors = []
    for t, points in enumerate(clouds):
        assert points["id"].tolist() == list(range(9))
        xy = np.stack([points["x"], points["y"]], -1)
        errors.append(np.linalg.norm(xy - (start + [t * dx, t * dy]), axis=-1))
    errors = np.stack(errors)
    assert np.median(errors) < 1.0, errors
    assert (errors < 4.0).all(), errors


def test_no_points_no_network_work_but_tracks_and_debug_images_flow(harness_factory):
    h = harness_factory()  # no grid_points: the default, and the state after every reset
    debug = Topic()
    h.client.create_subscription(Image, "tracker_node/debug_image", debug, RELIABLE)
    wait_until(lambda: h.node._debug_pub.get_subscription_count() > 0, what="the debug subscriber")
    clip = moving_clip(num_frames=12)
    for frame in clip[:6]:
        msg = h.frame(frame, frame_id="camera_optical")
        tracks = h.send(msg)
        assert len(points_of(tracks)) == 0 and tracks.header.frame_id == "camera_optical"
        image = debug.wait_for(lambda m: stamp_of(m) == stamp_of(msg), what="a debug image")
        assert bytes(image.data) == bytes(msg.data)  # nothing drawn
    assert h.node.session.network_steps == 0
    assert h.node.warning_counts.get("internal", 0) == 0  # no frame failed

    h.request(h.add_point, Point(x=20.0, y=10.0, z=0.0))
    frames_before = h.node.session.frames
    for frame in clip[6:]:
        assert points_of(h.send(h.frame(frame)))["id"].tolist() == [0]
    # Every frame with a point ran the network (`send` republishes a frame whose tracks
    # are late, so a loaded machine can process one twice: count what was processed).
    tracked = h.node.session.frames - frames_before
    assert tracked >= 6 and h.node.session.network_steps == tracked

    h.call_reset()  # back to no points: back to no network work
    assert len(points_of(h.send(h.frame(clip[0])))) == 0
    assert h.node.session.network_steps == tracked


def test_python_logging_warnings_reach_rosout_rate_limited(harness_factory):
    from rcl_interfaces.msg import Log

    h = harness_factory(grid_points=1)
    rosout = Topic()
    h.client.create_subscription(Log, "/rosout", rosout, QoSProfile(
        depth=100, reliability=ReliabilityPolicy.RELIABLE))
    wait_until(lambda: h.client.count_publishers("/rosout") > 0, what="a /rosout publisher")
    small, big = moving_clip(num_frames=1)[0], moving_clip(num_frames=1, height=96, width=160)[0]
    # The tracker reports each change of image size through Python logging: three changes
    # within the node's warning period give one ROS warning, from the node's logger.
    for frame in (small, big, small, big):
        assert points_of(h.send(h.frame(frame)))["id"].tolist() == [0]
    name = h.node.get_logger().name

    def from_tracker(msg):
        return msg.name == name and "input size changed" in msg.msg

    found = rosout.wait_for(from_tracker, what="the tracker's size-change warning on /rosout")
    assert found.level == Log.WARN
    h.send(h.frame(small))  # one more frame, so that a second warning would have arrived by now
    assert sum(map(from_tracker, rosout.messages)) == 1
    assert sum(n for kind, n in h.node.warning_counts.items() if "input size changed" in kind) == 4


def test_latency_bench_reports_rate_latency_and_cpu(tmp_path):
    from bootstap_ros.bench import latency as latency_bench

    output = tmp_path / "bench.json"
    status = latency_bench.main(["--random", "small", "--points", "4", "--size", "160x120",
                                 "--fps", "15", "--warmup", "1", "--duration", "2",
                                 "--image-reliability", "reliable", "--depth",
                                 "--output", str(output)])
    assert status == 0
    report = json.loads(output.read_text())
    figures = report["figures"]
    assert report["setup"]["points"] == 4
    assert figures["frames_tracked"] > 0 and figures["output_rate_hz"] > 0
    assert 0 < figures["latency_ms"]["p50"] < 10_000
    assert 0 < figures["node_cpu_cores"] < os.cpu_count() + 1
    assert figures["node_counters_over_window"]["tracks_3d_published"] > 0  # --depth
    assert report["setup"]["propagation"] == "lk"  # the node's default: every frame answered
    counts = figures["node_counters_over_window"]
    # Every image is answered by propagation and the network runs on some of them; a network
    # result counted in the window may be of the one image in flight when the window opened.
    assert counts["propagated_frames"] + 1 >= counts["network_frames"] > 0


# ------------------------------------------------------------------ propagation lk: every image answered


def diagnostics_values(h, topic, predicate, what):
    """The node's /diagnostics values of the first message that satisfies `predicate`."""
    name = h.namespace + "/tracker_node: point tracking"

    def values(msg):
        return next(({kv.key: kv.value for kv in s.values} for s in msg.status if s.name == name), None)

    found = topic.wait_for(lambda m: values(m) is not None and predicate(values(m)), what=what)
    return values(found)


def answer_until(h, clip, predicate, what, check=lambda ids: None):
    """Send images one at a time at about a camera's rate (each answer is awaited) until one's
    ids satisfy `predicate`; `check(ids)` runs on every answer. Returns the ids of the last."""
    deadline = time.monotonic() + TIMEOUT
    for count in itertools.count():
        time.sleep(1 / 30)
        ids = points_of(h.send(h.frame(clip[count % len(clip)])))["id"].tolist()
        check(ids)
        if predicate(ids):
            return ids
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {TIMEOUT:.0f} s waiting for {what}; last ids {ids}")


def test_propagation_lk_answers_every_image_with_its_header_while_the_network_takes_fewer(harness_factory):
    # 64 points make each network step far longer than the node takes to answer an image, and
    # the images go out in a burst: the network takes the newest one each time it is free.
    h = harness_factory(propagation="lk", grid_points=8, max_points=64, diagnostics_period=0.2,
                        **{"qos.image.depth": 100})
    diagnostics, debug = Topic(), Topic()
    h.client.create_subscription(DiagnosticArray, "/diagnostics", diagnostics, RELIABLE)
    h.client.create_subscription(Image, "tracker_node/debug_image", debug, RELIABLE)
    wait_until(lambda: h.node._debug_pub.get_subscription_count() > 0, what="the debug subscriber")
    clip = moving_clip(num_frames=8)
    answer_until(h, clip, lambda ids: ids == list(range(64)), "the network's grid in the answers")
    before = len(h.tracks.messages)

    burst = [h.frame(clip[i % len(clip)], frame_id="camera_optical") for i in range(20)]
    for msg in burst:
        h.image.publish(msg)
    for msg in burst:
        tracks = h.tracks.wait_for(lambda m: stamp_of(m) == stamp_of(msg), what="the image's answer")
        assert tracks.header == msg.header
        assert points_of(tracks)["id"].tolist() == list(range(64))
        image = debug.wait_for(lambda m: stamp_of(m) == stamp_of(msg), what="the image's debug image")
        assert image.header == msg.header
    answered = [stamp_of(m) for m in h.tracks.messages[before:]]
    assert answered == [stamp_of(m) for m in burst]  # one answer per image, in order

    sent = h.node._stats.received
    values = diagnostics_values(h, diagnostics, lambda v: v["propagated frames"] == str(sent),
                                "diagnostics counting every image answered")
    assert values["propagation"] == "lk" and values["frames published"] == str(sent)
    assert 0 < int(values["network frames"]) < int(values["propagated frames"])
    assert int(values["dropped frames"]) > 0  # the images the network had no time for
    assert values["network results too old to fuse"] == "0"
    diagnostics_values(h, diagnostics, lambda v: v["frames since network result, max"] not in ("n/a", "0"),
                       "an answer carried from an older network result")


def test_propagation_lk_adds_removes_and_resets_points_in_the_answers(harness_factory):
    h = harness_factory(propagation="lk", grid_points=2)
    clip = moving_clip(num_frames=8)
    assert points_of(h.send(h.frame(clip[0])))["id"].tolist() == []  # before the network's first result
    answer_until(h, clip, lambda ids: ids == [0, 1, 2, 3], "the grid")

    h.request(h.add_point, Point(x=20.0, y=10.0, z=0.0))
    answer_until(h, clip, lambda ids: ids == [0, 1, 2, 3, 4], "the added point",
                 check=lambda ids: ids in ([0, 1, 2, 3], [0, 1, 2, 3, 4]))

    # A removed point leaves the answers with the next image, also while a network result computed
    # before the removal lands, and never comes back.
    processed = h.node.session.frames
    h.request(h.remove, UInt32MultiArray(data=[0, 4]))
    assert points_of(h.send(h.frame(clip[0])))["id"].tolist() == [1, 2, 3]
    answer_until(h, clip, lambda ids: h.node.session.frames >= processed + 3,
                 "network results after the removal", check=lambda ids: _equal(ids, [1, 2, 3]))

    # A reset empties the answers at once; the grid comes back with new ids.
    h.call_reset()
    assert points_of(h.send(h.frame(clip[1])))["id"].tolist() == []
    answer_until(h, clip, lambda ids: ids == [5, 6, 7, 8], "the grid seeded again",
                 check=lambda ids: ids in ([], [5, 6, 7, 8]))


def _equal(found, expected):
    assert found == expected


def test_propagation_none_publishes_the_network_results_only(harness_factory):
    h = harness_factory(propagation="none", grid_points=8, max_points=64, diagnostics_period=0.2,
                        **{"qos.image.depth": 100})
    diagnostics = Topic()
    h.client.create_subscription(DiagnosticArray, "/diagnostics", diagnostics, RELIABLE)
    clip = moving_clip(num_frames=8)
    h.send(h.frame(clip[0]))
    burst = [h.frame(clip[i % len(clip)]) for i in range(1, 21)]
    for msg in burst:
        h.image.publish(msg)
    h.tracks.wait_for(lambda m: stamp_of(m) == stamp_of(burst[-1]), what="the newest image's tracks")
    wait_until(lambda: h.node._stats.received == len(burst) + 1, what="every image")
    published = len(h.tracks.messages)
    values = diagnostics_values(h, diagnostics, lambda v: v["frames received"] == str(len(burst) + 1)
                                and v["frames published"] == str(published), "diagnostics counting every image")
    assert values["propagation"] == "none" and values["propagated frames"] == "0"
    assert values["network frames"] == values["frames published"] == str(published)
    assert "network results too old to fuse" not in values
