"""bootstap_adapter with the real rclpy beside a real tracker_node: clips recorded from the
image topic, a round adopted and swapped in (ids kept), a failed round and a full disk
that leave the tracker as it was, rollback, the round reports on ~/rounds and
/diagnostics, and an adapter killed with SIGKILL in the middle of a round (real
processes) while the tracker goes on tracking."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, PointCloud2
from std_msgs.msg import String

from bootstap_ros_training.adapter.node import AdapterNode, AdapterStartupError
from bootstap_ros.ros.conversions import array_to_image, cloud_to_array
from bootstap_ros.bench.processes import stop_process_groups
from helpers.ros_client import Camera, Client, RemoteParameters, wait_until
from helpers.adapter_bags import FAST, panning, read_bag

TIMEOUT = 120.0  # a round's children import torch on a loaded 2-core machine
REPO = Path(__file__).resolve().parents[1]
ROUNDS_QOS = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.TRANSIENT_LOCAL)


def camera_frames():
    """Three pans of 64x64 (two scene cuts), looped: clips pass the filters."""
    return np.concatenate([panning(16, seed=s, speed=3) for s in range(3)])


def adapter_status(topic, namespace, predicate, what, timeout=TIMEOUT):
    name = f"{namespace}/bootstap_adapter: adaptation"

    def values(msg):
        return next(({kv.key: kv.value for kv in s.values} for s in msg.status if s.name == name), None)

    found = topic.wait_for(lambda m: values(m) is not None and predicate(values(m)), timeout=timeout, what=what)
    return values(found)


def events(topic):
    return [json.loads(m.data) for m in topic.messages]


@pytest.fixture
def tracker(ros, checkpoint):
    h = Client(ros, checkpoint=checkpoint, grid_points=2, max_points=8)
    yield h
    h.close()


def start_adapter(ros, h, **params):
    node = AdapterNode(namespace=h.namespace, context=ros.context, parameter_overrides=[
        Parameter(name, value=value) for name, value in params.items()])
    ros.executor.add_node(node)
    return node


def stop_adapter(ros, node):
    ros.executor.remove_node(node)
    node.destroy_node()


def test_a_round_is_adopted_and_swapped_in_a_failed_one_changes_nothing_and_rollback(ros, tracker, checkpoint,
                                                                                  tmp_path):
    h = tracker
    store = tmp_path / "store"
    rounds = h.subscribe(String, "bootstap_adapter/rounds", ROUNDS_QOS)
    diagnostics = h.subscribe(DiagnosticArray, "/diagnostics")
    adapter = start_adapter(ros, h, store=str(store), clip_frames=6, clip_interval=0.0, holdout_clips=2,
                            min_train_clips=3, round_minutes=5.0, round_settings=" ".join(FAST), margin=-1.0,
                            score_points=8, round_pause=1e6, swap_timeout=60.0, diagnostics_period=0.5,
                            # round_nice keeps the children at this test's priority: at 19 a machine
                            # busy with other work starves them for minutes (a test of niceness is
                            # in test_adapter.py).
                            round_nice=0)
    camera = Camera(h, camera_frames())
    try:
        params = RemoteParameters(h.client, "tracker_node", timeout=TIMEOUT)
        finished = rounds.wait_for(lambda m: json.loads(m.data).get("state") == "finished",
                                   timeout=3 * TIMEOUT, what="the first round's report")
        report = json.loads(finished.data)
        kept = str((store / "models" / "round_0001.pt").resolve())
        assert report["decision"] == "adopted", report
        assert report["round"] == 1 and report["checkpoint"] == kept and report["in_use"] == checkpoint
        assert "in use by the tracker since" in report["reason"]
        assert report["score_in_use"] is not None and report["score_candidate"] is not None
        assert report["train_clips"] >= 3 and report["held_out_clips"] == 2 and report["steps"] == 1
        assert [e["state"] for e in events(rounds)][:2] == ["started", "finished"]
        assert params.get("checkpoint") == kept
        # The clips are ordinary bags of the tracker's image topic.
        bags = sorted((store / "clips").glob("clip_*"))
        assert len(bags) >= 5 and all((b / "metadata.yaml").is_file() for b in bags)
        assert read_bag(bags[0])[0] == f"{h.namespace}/image"
        # Tracking went on through the swap with the same ids.
        since = len(h.tracks.messages)
        wait_until(lambda: len(h.tracks.messages) >= since + 10, timeout=TIMEOUT, what="tracks after the swap")
        assert {tuple(cloud_to_array(m)["id"].tolist()) for m in h.tracks.messages} == {(0, 1, 2, 3)}
        values = adapter_status(diagnostics, h.namespace, lambda v: v["last decision"] == "adopted",
                                "the adopted round in /diagnostics")
        assert values["latest adopted model"] == kept and values["tracker model in use"] == kept
        assert values["rounds done, adopted, failed"] == "1, 1, 0" and values["recording"] == "on"

        # A round that fails (the recipe refuses a setting) leaves the tracker's model alone.
        assert params_of(h, "bootstap_adapter").set("round_settings", " ".join(FAST) + " no_such_setting=1").successful
        assert params_of(h, "bootstap_adapter").set("round_pause", 0.0).successful
        failed = rounds.wait_for(lambda m: json.loads(m.data).get("round") == 2
                                 and json.loads(m.data).get("state") == "finished",
                                 timeout=3 * TIMEOUT, what="the failed round's report")
        report = json.loads(failed.data)
        assert report["decision"] == "failed" and "no_such_setting" in report["reason"], report
        assert params.get("checkpoint") == kept
        since = len(h.tracks.messages)
        wait_until(lambda: len(h.tracks.messages) >= since + 10, timeout=TIMEOUT, what="tracks after the failure")
        values = adapter_status(diagnostics, h.namespace, lambda v: v["last decision"] == "failed",
                                "the failed round in /diagnostics")
        assert "no_such_setting" in values["last round reason"]
        assert params_of(h, "bootstap_adapter").set("rounds", False).successful

        # Rollback: the tracker goes back to the model it started with.
        assert params_of(h, "bootstap_adapter").set("rollback", True).successful
        rolled = rounds.wait_for(lambda m: json.loads(m.data).get("event") == "rollback", timeout=TIMEOUT,
                                 what="the rollback report")
        event = json.loads(rolled.data)
        assert event["checkpoint"] == checkpoint and event["undone"]["round"] == 1
        assert event["result"] == "accepted"
        wait_until(lambda: params.get("checkpoint") == checkpoint, timeout=TIMEOUT, what="the checkpoint set back")
        adapter_status(diagnostics, h.namespace, lambda v: v["tracker model in use"] == checkpoint,
                       "the tracker back on its first model")
        since = len(h.tracks.messages)
        wait_until(lambda: len(h.tracks.messages) >= since + 10, timeout=TIMEOUT, what="tracks after the rollback")
    finally:
        camera.close()
        stop_adapter(ros, adapter)


_PARAMS = {}


def params_of(h, name):
    key = (h.namespace, name)
    if key not in _PARAMS:
        _PARAMS[key] = RemoteParameters(h.client, name, timeout=TIMEOUT)
    return _PARAMS[key]


def test_a_full_disk_stops_recording_not_the_tracker(ros, tracker, tmp_path):
    h = tracker
    diagnostics = h.subscribe(DiagnosticArray, "/diagnostics")
    # More free space demanded than any disk has: the first clip finds the disk full.
    adapter = start_adapter(ros, h, store=str(tmp_path / "store"), clip_frames=6, clip_interval=0.0,
                            min_free_disk_mb=1 << 30, rounds=False, diagnostics_period=0.5)
    camera = Camera(h, camera_frames())
    try:
        values = adapter_status(diagnostics, h.namespace, lambda v: v["recording"].startswith("stopped"),
                                "recording stopped")
        assert "the disk is full" in values["recording"]
        assert adapter._warn.counts.get("store", 0) >= 1
        assert not any((tmp_path / "store" / "clips").glob("clip_*"))
        since = len(h.tracks.messages)
        wait_until(lambda: len(h.tracks.messages) >= since + 10, timeout=TIMEOUT, what="tracks while stopped")
        # Room again (the bound lowered at runtime): recording resumes at once.
        assert params_of(h, "bootstap_adapter").set("min_free_disk_mb", 0).successful
        adapter_status(diagnostics, h.namespace, lambda v: v["recording"] == "on" and int(v["clips stored"]) > 0,
                       "recording again")
    finally:
        camera.close()
        stop_adapter(ros, adapter)


def test_bad_parameters_are_refused(ros, tracker, tmp_path):
    h = tracker
    with pytest.raises(AdapterStartupError, match="round_settings"):
        AdapterNode(namespace=h.namespace, context=ros.context, parameter_overrides=[
            Parameter("store", value=str(tmp_path / "a")), Parameter("round_settings", value="steps")])
    with pytest.raises(AdapterStartupError, match="store folder"):
        (tmp_path / "file").write_text("not a folder")
        AdapterNode(namespace=h.namespace, context=ros.context, parameter_overrides=[
            Parameter("store", value=str(tmp_path / "file"))])
    adapter = start_adapter(ros, h, store=str(tmp_path / "b"), rounds=False)
    try:
        params = params_of(h, "bootstap_adapter")
        result = params.set("round_device", "gpu")
        assert not result.successful and "round_device" in result.reason
        result = params.set("round_settings", "lr")
        assert not result.successful and "key=value" in result.reason
        assert params.set("round_minutes", 0.5).successful and adapter.settings.round_minutes == 0.5
        assert params.get("round_device") == "cpu"
    finally:
        stop_adapter(ros, adapter)


# ------------------------------------------------------------------ real processes, SIGKILL

def _children(pid):
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found.update(int(p) for p in (task / "children").read_text().split())
        except OSError:
            pass
    return found


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_the_adapter_mid_round_leaves_the_tracker_tracking(tmp_path, checkpoint):
    from helpers.adapter_bags import PERIOD_NS, START_NS, TOPIC, feed, stream
    from bootstap_ros_training.adapter.clip_store import ClipRecorder, ClipStore

    namespace = "/adapter_kill_" + uuid.uuid4().hex[:8]
    store = tmp_path / "store"
    recorder = ClipRecorder(ClipStore(store, max_bytes=1 << 30), TOPIC, frames=6, interval_s=0.0)
    frames = camera_frames()
    feed(recorder, stream(frames, [START_NS + i * PERIOD_NS for i in range(len(frames))]))
    common = [sys.executable, "-m"]
    ros_args = ["--ros-args", "-r", f"__ns:={namespace}"]
    commands = {
        "tracker_node": common + ["bootstap_ros.ros.tracker_node", *ros_args, "-p", f"checkpoint:={checkpoint}",
                                  "-p", "grid_points:=2"],
        # A round with a 5-minute budget and no step limit: it is training when the kill comes.
        "bootstap_adapter": common + ["bootstap_ros_training.adapter.node", *ros_args, "-p", f"store:={store}",
                                      "-p", "clip_frames:=6", "-p", "holdout_clips:=2", "-p", "min_train_clips:=3",
                                      "-p", "round_minutes:=5.0", "-p",
                                      "round_settings:=" + " ".join(s for s in FAST if s != "steps=1")],
    }
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in commands}
    processes = {name: subprocess.Popen(command, stdout=logs[name], stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, cwd=REPO, start_new_session=True)
                 for name, command in commands.items()}
    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node("kill_test", namespace=namespace, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    tracks, reports = [], []
    node.create_subscription(PointCloud2, "tracks", tracks.append, 10)
    node.create_subscription(String, "bootstap_adapter/rounds", lambda m: reports.append(json.loads(m.data)),
                             ROUNDS_QOS)
    publisher = node.create_publisher(Image, "image", 10)
    sent = [0]

    def publish():
        msg = array_to_image(frames[sent[0] % len(frames)], "rgb8")
        msg.header.stamp = node.get_clock().now().to_msg()
        publisher.publish(msg)
        sent[0] += 1

    node.create_timer(0.05, publish)

    def spin_until(condition, what, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while not condition():
            for name, process in processes.items():
                if name == "tracker_node" or not killed:
                    assert process.poll() is None, f"{name} exited: " + (tmp_path / f"{name}.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"timed out waiting for {what}: " + \
                (tmp_path / "bootstap_adapter.log").read_text()[-3000:]
            executor.spin_once(timeout_sec=0.05)

    killed = False
    adapter = processes["bootstap_adapter"]
    try:
        spin_until(lambda: len(tracks) > 5, "the first tracks")
        spin_until(lambda: any(r.get("state") == "started" for r in reports), "the round to start")
        training = []

        def training_started():
            training[:] = [pid for pid in _children(adapter.pid)
                           if b"bootstrap" in Path(f"/proc/{pid}/cmdline").read_bytes()]
            return bool(training)

        spin_until(training_started, "the round's training process")
        child = training[0]
        before = len(tracks)
        os.kill(adapter.pid, signal.SIGKILL)
        killed = True
        adapter.wait(timeout=30)
        assert adapter.returncode == -signal.SIGKILL
        spin_until(lambda: not _alive(child), "the training process to die with the adapter", timeout=30)
        spin_until(lambda: len(tracks) >= before + 20, "tracks after the kill")
        assert processes["tracker_node"].poll() is None
        # Empty answers come only before the network's first result (propagation lk answers at once).
        answers = [tuple(cloud_to_array(m)["id"].tolist()) for m in tracks]
        first = next(i for i, ids in enumerate(answers) if ids)
        assert set(answers[first:]) == {(0, 1, 2, 3)} and first < before
        assert not (store / "models").exists() or not any((store / "models").glob("*.pt"))
    finally:
        executor.shutdown(timeout_sec=5)
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        stop_process_groups(processes.values())
        for handle in logs.values():
            handle.close()
    assert processes["tracker_node"].returncode == 0, (tmp_path / "tracker_node.log").read_text()[-3000:]


# ------------------------------------------------------------------ what becomes of an adoption

def adopted_report(number, in_use, candidate):
    """A round's report as `Adaptation.run_round` hands over one whose model won."""
    from bootstap_ros_training.adapter.adaptation import RoundReport

    return RoundReport(round=number, state="finished", in_use=in_use, candidate=str(candidate),
                       decision="adopted", reason="score 0.1000 -> 0.2000 (+0.1000 > margin 0.01)")


def test_an_adoption_is_held_by_rollback_stale_after_a_change_or_unconfirmed(ros, checkpoint, tmp_path):
    from bootstap_ros.model import save_checkpoint
    from helpers.small_model import small_model

    # No /diagnostics from the tracker within the adapter's swap_timeout: a swap it makes is
    # never confirmed.
    h = Client(ros, checkpoint=checkpoint, grid_points=2, max_points=8, diagnostics_period=60.0)
    store = tmp_path / "store"
    adapter = start_adapter(ros, h, store=str(store), rounds=False, swap_timeout=1.0)
    try:
        params = RemoteParameters(h.client, "tracker_node", timeout=TIMEOUT)
        wait_until(lambda: adapter._tracker_model() is not None, timeout=TIMEOUT, what="the tracker's parameters")
        candidate = tmp_path / "candidate.pt"
        save_checkpoint(candidate, small_model(seed=1))
        # held: rollback is true.
        assert params_of(h, "bootstap_adapter").set("rollback", True).successful
        report = adopted_report(1, checkpoint, candidate)
        adapter._adopt(report)
        assert report.decision == "held" and report.reason.endswith("; not adopted: rollback is true")
        assert report.checkpoint == "" and candidate.is_file() and adapter.adaptation.history.latest is None
        assert params.get("checkpoint") == checkpoint
        assert params_of(h, "bootstap_adapter").set("rollback", False).successful
        # stale: the round started from another model than the tracker's now.
        other = str(tmp_path / "other.pt")
        report = adopted_report(2, other, candidate)
        adapter._adopt(report)
        assert report.decision == "stale", report.reason
        assert f"the tracker's model changed during the round (now {checkpoint})" in report.reason
        assert report.checkpoint == "" and candidate.is_file() and adapter.adaptation.history.latest is None
        assert params.get("checkpoint") == checkpoint
        # unconfirmed: set on the tracker and kept, but not seen in use within swap_timeout.
        report = adopted_report(3, checkpoint, candidate)
        adapter._adopt(report)
        kept = str(store.resolve() / "models" / "round_0003.pt")
        assert report.decision == "adopted" and report.checkpoint == kept
        assert report.reason.endswith("; the tracker's /diagnostics did not show it in use within 1 s")
        assert params.get("checkpoint") == kept and adapter.adaptation.history.latest["checkpoint"] == kept
    finally:
        stop_adapter(ros, adapter)
        h.close()


def test_a_refused_model_changes_nothing_and_an_adopted_one_keeps_ids_that_are_not_0_to_n(
        ros, perturbed_embedded, tmp_path):
    import shutil

    from rclpy.qos import QoSProfile as Profile
    from sensor_msgs.msg import PointCloud2 as Cloud
    from std_msgs.msg import UInt32MultiArray

    from bootstap_ros.model.checkpoint import EMBEDDED_CHECKPOINT
    from bootstap_ros.ros.conversions import xy_to_cloud
    from helpers.small_model import moving_clip

    embedded = str(EMBEDDED_CHECKPOINT)
    h = Client(ros, checkpoint=embedded, grid_points=2, max_points=16, diagnostics_period=0.2)
    store = tmp_path / "store"
    adapter = start_adapter(ros, h, store=str(store), rounds=False, swap_timeout=TIMEOUT)
    # A still scene: a point stays where it is, before and after the swap.
    scene = moving_clip(num_frames=1, height=96, width=128, dx=0.0, dy=0.0)
    camera = Camera(h, np.repeat(scene, 2, axis=0), period=0.1)
    reliable = Profile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    add = h.client.create_publisher(Cloud, "tracker_node/add_points", reliable)
    remove = h.client.create_publisher(UInt32MultiArray, "tracker_node/remove_points", reliable)

    def ids_of(msg):
        return tuple(cloud_to_array(msg)["id"].tolist())

    try:
        wait_until(lambda: add.get_subscription_count() > 0 and remove.get_subscription_count() > 0,
                   timeout=TIMEOUT, what="the point request subscriptions")
        h.tracks.wait_for(lambda m: ids_of(m) == (0, 1, 2, 3), timeout=TIMEOUT, what="the grid's tracks")
        # Add 5 (ids 4..8), remove 5 and 7, add 3 (ids 9..11): ids with gaps.
        add.publish(xy_to_cloud([[20.0 + 15 * i, 30.0] for i in range(5)]))
        h.tracks.wait_for(lambda m: ids_of(m) == tuple(range(9)), timeout=TIMEOUT, what="5 points added")
        remove.publish(UInt32MultiArray(data=[5, 7]))
        h.tracks.wait_for(lambda m: ids_of(m) == (0, 1, 2, 3, 4, 6, 8), timeout=TIMEOUT, what="2 points removed")
        add.publish(xy_to_cloud([[30.0 + 20 * i, 70.0] for i in range(3)]))
        expected = (0, 1, 2, 3, 4, 6, 8, 9, 10, 11)
        h.tracks.wait_for(lambda m: ids_of(m) == expected, timeout=TIMEOUT, what="3 points added")
        wait_until(lambda: adapter._tracker_model() is not None, timeout=TIMEOUT, what="the tracker's parameters")
        first = next(i for i, m in enumerate(h.tracks.messages) if ids_of(m) == expected)

        # A model the tracker cannot load: refused, forgotten, the tracker on its model.
        broken = tmp_path / "broken.pt"
        broken.write_text("not a model\n")
        report = adopted_report(1, embedded, broken)
        adapter._adopt(report)
        assert report.decision == "refused" and "the tracker refused it" in report.reason, report.reason
        assert report.checkpoint == "" and adapter.adaptation.history.latest is None
        assert not any((store / "models").glob("*.pt"))
        wait_until(lambda: RemoteParameters(h.client, "tracker_node").get("checkpoint") == embedded,
                   timeout=TIMEOUT, what="the tracker's checkpoint set back")

        # A model that loads: adopted and in use, every point kept under its own id.
        candidate = tmp_path / "candidate.pt"
        shutil.copy(perturbed_embedded, candidate)
        report = adopted_report(2, embedded, candidate)
        adapter._adopt(report)
        assert report.decision == "adopted" and "in use by the tracker since" in report.reason, report.reason
        swapped = len(h.tracks.messages)
        wait_until(lambda: len(h.tracks.messages) >= swapped + 5, timeout=TIMEOUT, what="tracks after the swap")
    finally:
        camera.close()
        stop_adapter(ros, adapter)
        h.close()
    after_requests = h.tracks.messages[first:]
    assert {ids_of(m) for m in after_requests} == {expected}  # no id renumbered, none lost or added
    before, after = cloud_to_array(after_requests[0]), cloud_to_array(h.tracks.messages[-1])
    for name in ("x", "y"):  # each id where it was: the scene stands still
        np.testing.assert_allclose(after[name], before[name], atol=2.0)
