"""The node's query_set parameter with the real rclpy: points defined on a demonstration image
(bootstap-queries) are tracked in the live stream, checked by an independent client."""

import cv2
import numpy as np
import pytest
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2

from bootstap_ros.cli import queries as queries_cli
from bootstap_ros.model.checkpoint import EMBEDDED_CHECKPOINT
from bootstap_ros.queries import grid_queries
from bootstap_ros.ros.conversions import cloud_to_array
from bootstap_ros.ros.tracker_node import TrackerNode
from bootstap_ros.tracking.session import StartupError
from helpers.query_set_files import as_version_1
from helpers.ros_client import Client, RemoteParameters
from helpers.small_model import blob_clip, moving_clip

LATCHED = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
needs_embedded = pytest.mark.skipif(not EMBEDDED_CHECKPOINT.is_file(),
                                    reason="the embedded default model is not installed")


def make_query_set(folder, image, *args):
    """bootstap-queries on `image` saved as a PNG; returns the set's path."""
    cv2.imwrite(str(folder / "demo.png"), np.ascontiguousarray(image[:, :, ::-1]))
    output = folder / f"set_{len(list(folder.glob('set_*.npz')))}.npz"
    assert queries_cli.main([str(folder / "demo.png"), "--output", str(output), *args]) == 0
    return str(output)


def xy_of(cloud):
    points = cloud_to_array(cloud)
    return points["id"].tolist(), np.stack([points["x"], points["y"]], -1)


@needs_embedded
def test_a_set_from_a_demonstration_frame_follows_the_known_motion_later(ros, tmp_path):
    dx, dy = 1.5, 1.0
    clip = blob_clip(num_frames=10, height=128, width=160, dx=dx, dy=dy)
    # The demonstration image is frame 0 at half the live size: positions must be mapped.
    demo = cv2.resize(clip[0], (80, 64), interpolation=cv2.INTER_AREA)
    path = make_query_set(tmp_path, demo, "--grid", "3")
    demo_xy = grid_queries(3, (64, 80))[:, 1:]
    start = demo_xy * [160 / 80, 128 / 64]  # where the points are on the live frame 0

    h = Client(ros, checkpoint="", query_set=path)
    try:
        goals = h.subscribe(PointCloud2, "tracker_node/query_points", LATCHED)
        clouds = [xy_of(h.send(h.frame(frame))) for frame in clip[3:]]  # the stream starts later
        ids, goal_xy = xy_of(goals.wait_for(lambda m: True, what="~/query_points"))
    finally:
        h.close()
    assert ids == list(range(9))
    np.testing.assert_allclose(goal_xy, start, atol=1e-4)
    errors = []
    for t, (ids, xy) in enumerate(clouds, start=3):
        assert ids == list(range(9))
        errors.append(np.linalg.norm(xy - (start + [t * dx, t * dy]), axis=-1))
    errors = np.stack(errors)
    assert np.median(errors) < 1.0, errors
    assert (errors < 4.0).all(), errors


@needs_embedded
def test_a_set_made_with_the_embedded_model_tracks_with_another_checkpoint(ros, tmp_path,
                                                                          perturbed_embedded):
    dx, dy = 1.5, 1.0
    clip = blob_clip(num_frames=8, height=128, width=160, dx=dx, dy=dy)
    path = make_query_set(tmp_path, clip[0], "--grid", "3")  # the embedded model's features
    start = grid_queries(3, (128, 160))[:, 1:]
    h = Client(ros, checkpoint=str(perturbed_embedded), query_set=path)
    try:
        clouds = [xy_of(h.send(h.frame(frame))) for frame in clip[2:]]
        assert h.node.session.query_set.model == h.node.info.identity  # re-encoded for the node
    finally:
        h.close()
    errors = []
    for t, (ids, xy) in enumerate(clouds, start=2):
        assert ids == list(range(9))
        errors.append(np.linalg.norm(xy - (start + [t * dx, t * dy]), axis=-1))
    errors = np.stack(errors)
    assert np.median(errors) < 1.0 and (errors < 4.0).all(), errors


@needs_embedded
def test_runtime_sets_add_points_and_old_sets_of_another_model_are_refused(ros, tmp_path, checkpoint):
    clip = moving_clip(num_frames=5, height=48, width=80)
    good = make_query_set(tmp_path, clip[1], "--grid", "2", "--checkpoint", checkpoint)
    # The embedded model's, in the format before sets carried their image: nothing to re-encode.
    foreign = as_version_1(make_query_set(tmp_path, clip[1], "--grid", "2"), tmp_path / "old.npz")
    h = Client(ros, checkpoint=checkpoint, grid_points=1)
    try:
        parameters = RemoteParameters(h.client, "tracker_node")

        def set_query_set(value):
            return parameters.set("query_set", value)

        assert xy_of(h.send(h.frame(clip[0])))[0] == [0]
        result = set_query_set(foreign)
        assert not result.successful and "another model" in result.reason
        assert "version 1" in result.reason and "bootstap-queries" in result.reason
        assert h.node.warning_counts.get("query_set") == 1
        assert xy_of(h.send(h.frame(clip[1])))[0] == [0]  # every track kept, none added

        goals = h.subscribe(PointCloud2, "tracker_node/query_points", LATCHED)
        assert set_query_set(good).successful
        assert xy_of(h.send(h.frame(clip[2])))[0] == [0, 1, 2, 3, 4]  # from the next frame on
        ids, xy = xy_of(goals.wait_for(lambda m: True, what="~/query_points"))
        assert ids == [1, 2, 3, 4]
        np.testing.assert_allclose(xy, grid_queries(2, (48, 80))[:, 1:])
        assert set_query_set(good).successful  # set again: added again
        assert xy_of(h.send(h.frame(clip[3])))[0] == list(range(9))
        assert set_query_set("").successful
        assert xy_of(h.send(h.frame(clip[4])))[0] == list(range(9))
    finally:
        h.close()


@needs_embedded
def test_start_up_refuses_an_old_set_of_another_model(ros, tmp_path, checkpoint):
    foreign = as_version_1(make_query_set(tmp_path, moving_clip(num_frames=1)[0], "--grid", "2"),
                           tmp_path / "old.npz")
    cases = [(foreign, "query_set: query set .* was made with another model .*checkpoint SHA-256.*"
                       "version 1"),
             (str(tmp_path / "missing.npz"), "query set not found")]
    for path, match in cases:
        with pytest.raises(StartupError, match=match):
            TrackerNode(namespace="/startup_qs", context=ros.context, parameter_overrides=[
                Parameter("checkpoint", value=checkpoint), Parameter("query_set", value=path)])
