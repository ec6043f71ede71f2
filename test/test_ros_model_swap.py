"""Swapping the model of a running tracker_node with the real rclpy: `checkpoint` (and the model's
other parameters) set through the parameter service while images flow, read back by an
independent client from /tracks, /diagnostics and the parameter service."""

from datetime import datetime

import pytest
from diagnostic_msgs.msg import DiagnosticArray

from bootstap_ros.model import save_checkpoint
from bootstap_ros.ros.conversions import cloud_to_array
from bootstap_ros.tracking.query_set import file_sha256
from helpers.ros_client import Camera, Client, RemoteParameters, stamp_of, wait_until
from helpers.small_model import moving_clip, small_model

TIMEOUT = 60.0


@pytest.fixture(scope="module")
def second_checkpoint(tmp_path_factory):
    """Another project checkpoint: the small architecture with other weights."""
    path = tmp_path_factory.mktemp("second") / "second.pt"
    save_checkpoint(path, small_model(seed=1))
    return str(path)


def tracked_ids(h, since=0):
    return {tuple(cloud_to_array(m)["id"].tolist()) for m in h.tracks.messages[since:]}


def diagnostics_of(h, topic, predicate, what):
    name = h.namespace + "/tracker_node: point tracking"

    def values(msg):
        return next(({kv.key: kv.value for kv in s.values} for s in msg.status if s.name == name), None)

    found = topic.wait_for(lambda m: values(m) is not None and predicate(values(m)), timeout=TIMEOUT,
                           what=what)
    return values(found)


def test_a_swap_under_traffic_keeps_the_ids_and_tracks_flowing(ros, checkpoint, second_checkpoint):
    # With propagation lk (the node's default) every image is answered, also between the swap
    # and the new model's first result: the points, with their ids, are in every answer.
    h = Client(ros, checkpoint=checkpoint, grid_points=3, diagnostics_period=0.2, propagation="lk")
    diagnostics = h.subscribe(DiagnosticArray, "/diagnostics")
    traffic = Camera(h, moving_clip(num_frames=8), period=0.03)
    try:
        parameters = RemoteParameters(h.client, "tracker_node", timeout=TIMEOUT)
        h.tracks.wait_for(lambda m: m.width == 9, timeout=TIMEOUT, what="tracks of the grid")
        before = len(h.tracks.messages)
        assert parameters.set("checkpoint", second_checkpoint).successful
        wait_until(lambda: h.node.info.checkpoint == second_checkpoint, timeout=TIMEOUT,
                   what="the new model in use")
        swapped_at = len(h.tracks.messages)
        wait_until(lambda: len(h.tracks.messages) >= swapped_at + 10, timeout=TIMEOUT,
                   what="tracks after the swap")
        values = diagnostics_of(h, diagnostics, lambda v: v["checkpoint"] == second_checkpoint,
                                "diagnostics naming the new model")
        # A second swap, of a setting that depends on the checkpoint: the model resolution.
        assert parameters.set("resolution", 32).successful
        wait_until(lambda: h.node.info.resolution == (32, 32), timeout=TIMEOUT, what="resolution 32")
        resized_at = len(h.tracks.messages)
        wait_until(lambda: len(h.tracks.messages) >= resized_at + 10, timeout=TIMEOUT,
                   what="tracks after the second swap")
    finally:
        traffic.close()
        h.close()
    assert tracked_ids(h, before) == {tuple(range(9))}  # every message, before and after
    stamps = [stamp_of(m) for m in h.tracks.messages]
    assert stamps == sorted(stamps)
    assert values["model sha256"] == file_sha256(second_checkpoint)[:16]
    assert values["model source"] == "project" and values["model swap pending"] == "none"
    assert "9 points kept, re-encoded from their query image 9" in values["last model swap"]
    assert datetime.fromisoformat(values["model loaded at"]).tzinfo is not None
    assert values["last refused model swap"] == "none"
    assert h.node.session.tracker.config.resolution == (32, 32)


def test_a_missing_or_broken_checkpoint_is_refused_and_tracking_goes_on(ros, checkpoint, tmp_path):
    h = Client(ros, checkpoint=checkpoint, grid_points=2, diagnostics_period=0.2)
    diagnostics = h.subscribe(DiagnosticArray, "/diagnostics")
    truncated = tmp_path / "truncated.pt"
    data = open(checkpoint, "rb").read()
    truncated.write_bytes(data[:len(data) // 2])
    text = tmp_path / "notes.pt"
    text.write_text("not a model\n")
    traffic = Camera(h, moving_clip(num_frames=8), period=0.03)
    try:
        parameters = RemoteParameters(h.client, "tracker_node", timeout=TIMEOUT)
        h.tracks.wait_for(lambda m: m.width == 4, timeout=TIMEOUT, what="tracks of the grid")
        tracker = h.node.session.tracker
        result = parameters.set("checkpoint", str(tmp_path / "missing.pt"))
        assert not result.successful and "checkpoint not found" in result.reason
        assert "tracking goes on with " + checkpoint in result.reason
        for broken, reason in ((truncated, "truncated"), (text, "truncated, corrupt or not")):
            warned = h.node.warning_counts.get("model_swap", 0)
            assert parameters.set("checkpoint", str(broken)).successful  # found out while loading
            wait_until(lambda: h.node.warning_counts.get("model_swap", 0) > warned, timeout=TIMEOUT,
                       what=f"the refusal of {broken.name}")
            wait_until(lambda: parameters.get("checkpoint") == checkpoint, timeout=TIMEOUT,
                       what="checkpoint set back to the model in use")
            values = diagnostics_of(h, diagnostics, lambda v: broken.name in v["last refused model swap"],
                                    f"diagnostics reporting {broken.name}")
            assert reason in values["last refused model swap"], values
            assert values["checkpoint"] == checkpoint
        # A model that loads but cannot take the points: refused when it would take over.
        warned = h.node.warning_counts.get("model_swap", 0)
        assert parameters.set("max_points", 2).successful
        wait_until(lambda: h.node.warning_counts.get("model_swap", 0) > warned, timeout=TIMEOUT,
                   what="the refusal of max_points 2")
        wait_until(lambda: parameters.get("max_points") == 256, timeout=TIMEOUT,
                   what="max_points set back")
        count = len(h.tracks.messages)
        wait_until(lambda: len(h.tracks.messages) >= count + 5, timeout=TIMEOUT, what="more tracks")
        assert h.node.session.tracker is tracker and h.node.info.checkpoint == checkpoint
    finally:
        traffic.close()
        h.close()
    assert tracked_ids(h) == {(0, 1, 2, 3)}  # no point lost, none added
    assert "holds at most 2 points and 4 are tracked" in h.node._last_refused_swap
