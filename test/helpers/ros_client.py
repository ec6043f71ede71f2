"""An independent rclpy client for the ROS tests (node, query sets, depth): one context and
executor per module, a TrackerNode in a namespace of its own, and topic recorders with
condition waits (no fixed sleeps)."""

import itertools
import threading
import time
import uuid

import rclpy
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.parameter import Parameter, parameter_value_to_python
from rclpy.parameter_client import AsyncParameterClient
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image, PointCloud2

from bootstap_ros.ros.conversions import array_to_compressed, array_to_image
from bootstap_ros.ros.tracker_node import TrackerNode

TIMEOUT = 30.0
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
STAMPS = itertools.count(1_000_000_000, 33_000_000)  # ns, increasing, 33 ms apart


def wait_until(predicate, timeout=TIMEOUT, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.005)


def stamp_of(msg):
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def set_stamp(msg, stamp_ns, frame_id="camera"):
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    msg.header.frame_id = frame_id
    return msg


class Ros:
    """A context and a multi-threaded executor spun by a background thread."""

    def __init__(self):
        self.context = Context()
        rclpy.init(context=self.context)
        self.executor = MultiThreadedExecutor(num_threads=4, context=self.context)
        self.errors = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        while not self.stopping.is_set() and self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except ExternalShutdownException:
                break
            except Exception as error:  # e.g. a node destroyed while the executor waited on it
                self.errors.append(error)

    def close(self):
        self.stopping.set()
        self.thread.join(timeout=10)
        self.executor.shutdown(timeout_sec=10)
        rclpy.try_shutdown(context=self.context)


class Topic:
    """Messages of one subscription in arrival order, with waits on them."""

    def __init__(self):
        self.messages = []
        self.condition = threading.Condition()

    def __call__(self, msg):
        with self.condition:
            self.messages.append(msg)
            self.condition.notify_all()

    def wait_for(self, predicate, timeout=TIMEOUT, what="a message"):
        with self.condition:
            found = self.condition.wait_for(
                lambda: next((m for m in self.messages if predicate(m)), None), timeout)
        if found is None:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        return found


class Client:
    """A TrackerNode with `params` in a fresh namespace, and a client node talking to it
    (images go as CompressedImage when `params` set image_transport to compressed)."""

    timeout = TIMEOUT  # what `send` waits for the tracks of an image at most
    resend_after = 5.0  # seconds without tracks before `send` publishes the image again

    def __init__(self, ros, **params):
        # Images (and depth images, which share their QoS) go reliably unless a test says
        # otherwise: the tests check what the node computes from each image they send, and a
        # best-effort image lost on a loaded machine would fail them for no fault of the node.
        params.setdefault("qos.image.reliability", "reliable")
        # And they check what the network computed from an image (its points, a request taking
        # effect on the next frame): with `propagation: lk`, the node's default, each image is
        # answered before the network has seen it. The tests of those answers ask for lk.
        params.setdefault("propagation", "none")
        self.ros = ros
        self.namespace = "/test_" + uuid.uuid4().hex[:8]
        self.node = TrackerNode(namespace=self.namespace, context=ros.context, parameter_overrides=[
            Parameter(name, value=value) for name, value in params.items()])
        self.client = rclpy.create_node("client", namespace=self.namespace, context=ros.context)
        compressed = params.get("image_transport") == "compressed"
        self.image = self.client.create_publisher(CompressedImage if compressed else Image,
                                                  "image/compressed" if compressed else "image", RELIABLE)
        self.tracks = self.subscribe(PointCloud2, "tracks")
        ros.executor.add_node(self.node)
        ros.executor.add_node(self.client)
        wait_until(lambda: self.image.get_subscription_count() > 0, what="the image subscription")
        wait_until(lambda: self.client.count_publishers(self.namespace + "/tracks") > 0,
                   what="the tracks publisher")

    def subscribe(self, msg_type, topic, qos=RELIABLE):
        recorder = Topic()
        self.client.create_subscription(msg_type, topic, recorder, qos)
        return recorder

    def publisher(self, msg_type, topic):
        publisher = self.client.create_publisher(msg_type, topic, RELIABLE)
        wait_until(lambda: publisher.get_subscription_count() > 0, what=f"a subscriber of {topic}")
        return publisher

    def close(self):
        for node in (self.client, self.node):
            self.ros.executor.remove_node(node)
            node.destroy_node()

    def frame(self, array, stamp=None, frame_id="camera", encoding="rgb8"):
        if self.image.msg_type is CompressedImage:
            msg = array_to_compressed(array, encoding, format="png")
        else:
            msg = array_to_image(array, encoding)
        return set_stamp(msg, next(STAMPS) if stamp is None else stamp, frame_id)

    def send(self, msg, timeout=None):
        """Publish an image and return the tracks computed from it (republished if lost).

        A republished image is tracked again when the first one was only slow, so the wait
        before it is long: a late duplicate would be taken as a frame of its own and could
        take a request meant for the next one."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            self.image.publish(msg)
            try:
                return self.tracks.wait_for(lambda m: stamp_of(m) == stamp_of(msg), timeout=self.resend_after)
            except AssertionError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"no tracks for the image stamped {stamp_of(msg)}") from None


class Camera:
    """Publishes `frames` through `client`'s image publisher every `period` seconds, over and
    over, with increasing stamps, until closed (a camera, not a wait for a result)."""

    def __init__(self, client, frames, period=0.04):
        self.client, self.frames, self.period = client, frames, period
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            self.client.image.publish(self.client.frame(self.frames[self.sent % len(self.frames)]))
            self.sent += 1
            self.stop.wait(self.period)

    def close(self):
        self.stop.set()
        self.thread.join(timeout=10)


class RemoteParameters:
    """Another node's parameters, set and read through its parameter services from `node`."""

    def __init__(self, node, remote, timeout=TIMEOUT):
        self.timeout = timeout
        self.client = AsyncParameterClient(node, remote)
        assert self.client.wait_for_services(timeout_sec=timeout), f"no parameter services of {remote}"

    def set(self, name, value):
        """The SetParametersResult of setting `name` to `value`."""
        future = self.client.set_parameters([Parameter(name, value=value)])
        wait_until(future.done, timeout=self.timeout, what=f"setting {name}")
        return future.result().results[0]

    def get(self, name):
        future = self.client.get_parameters([name])
        wait_until(future.done, timeout=self.timeout, what=f"reading {name}")
        return parameter_value_to_python(future.result().values[0])
