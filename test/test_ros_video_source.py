"""video_source with the real rclpy: frames, stamps, frame_id, rate, looping and errors."""

import threading
import time
import uuid

import cv2
import numpy as np
import pytest
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from bootstap_ros.ros.conversions import image_to_array
from bootstap_ros.ros.video_source import SourceError, VideoSourceNode
from helpers.small_model import moving_clip

TIMEOUT = 20.0


@pytest.fixture(scope="module")
def context():
    context = Context()
    rclpy.init(context=context)
    yield context
    rclpy.try_shutdown(context=context)


def play(context, source, count, infos=None, **params):
    """Run a VideoSourceNode on `source` until `count` images arrived (or it finished);
    with a list `infos`, also collect its camera_info messages there."""
    namespace = "/video_" + uuid.uuid4().hex[:8]
    params = {"source": str(source), **params}
    node = VideoSourceNode(namespace=namespace, context=context, parameter_overrides=[
        Parameter(k, value=v) for k, v in params.items()])
    listener = rclpy.create_node("listener", namespace=namespace, context=context)
    received, arrived = [], threading.Condition()

    def on_image(msg):
        with arrived:
            received.append(msg)
            arrived.notify_all()

    listener.create_subscription(Image, "image", on_image,
                                 QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    if infos is not None:
        listener.create_subscription(CameraInfo, "camera_info", infos.append,
                                     QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(listener)
    deadline = time.monotonic() + TIMEOUT
    while node.publisher.get_subscription_count() == 0 or (  # publish only once someone listens
            infos is not None and node.info_publisher.get_subscription_count() == 0):
        executor.spin_once(timeout_sec=0.01)
        assert time.monotonic() < deadline, "the listener was not discovered"
    executor.add_node(node)
    try:
        while len(received) < count and not node.finished.done():
            executor.spin_once(timeout_sec=0.05)
            assert time.monotonic() < deadline, f"only {len(received)} of {count} images arrived"
        # Images published just before the end may still be on their way.
        while len(received) < min(count, node.published) or (
                infos is not None and len(infos) < len(received)):
            executor.spin_once(timeout_sec=0.05)
            assert time.monotonic() < deadline, "published images did not arrive"
    finally:
        executor.shutdown(timeout_sec=5)
        node.destroy_node()
        listener.destroy_node()
    return node, received


def test_plays_a_clip_once_with_stamps_and_frame_id(context, tmp_path):
    clip = moving_clip(num_frames=5)
    np.save(tmp_path / "clip.npy", clip)
    node, received = play(context, tmp_path / "clip.npy", 10, rate=100.0, frame_id="cam0")
    assert node.finished.done() and node.finished.result() == 5
    assert len(received) == 5
    stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in received]
    assert all(b > a for a, b in zip(stamps, stamps[1:])) and stamps[0] > 0
    for msg, frame in zip(received, clip):
        assert msg.header.frame_id == "cam0" and msg.encoding == "rgb8"
        np.testing.assert_array_equal(image_to_array(msg)[0], frame)


def test_loops_an_image_folder_in_bgr(context, tmp_path):
    clip = moving_clip(num_frames=3)
    for index, frame in enumerate(clip):
        cv2.imwrite(str(tmp_path / f"frame_{index}.png"), frame[:, :, ::-1])
    node, received = play(context, tmp_path, 7, rate=200.0, loop=True, encoding="bgr8")
    assert len(received) >= 7 and not node.finished.done()
    for index, msg in enumerate(received[:7]):
        assert msg.encoding == "bgr8"
        np.testing.assert_array_equal(image_to_array(msg)[0][:, :, ::-1], clip[index % 3])


def test_bad_sources_fail_with_a_clear_error(context, tmp_path):
    for params, match in [({"source": ""}, "source is empty"),
                          ({"source": str(tmp_path / "none.mp4")}, "no such file"),
                          ({"source": str(tmp_path), "encoding": "yuv"}, "encoding='yuv'")]:
        with pytest.raises(SourceError, match=match):
            VideoSourceNode(namespace="/bad_" + uuid.uuid4().hex[:8], context=context,
                            parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])


def test_camera_info_pinhole_and_from_a_calibration_file(context, tmp_path):
    clip = moving_clip(num_frames=3, height=48, width=80)
    np.save(tmp_path / "clip.npy", clip)
    infos = []
    node, received = play(context, tmp_path / "clip.npy", 3, infos=infos, rate=100.0,
                          publish_camera_info=True, fov=90.0, frame_id="cam0")
    assert len(infos) == len(received) == 3
    for info, image in zip(infos, received):
        assert info.header == image.header
        assert (info.width, info.height, info.distortion_model) == (80, 48, "plumb_bob")
        # 90 degrees across 80 pixels: f = 40 / tan(45 deg) = 40; centre ((80 - 1) / 2, (48 - 1) / 2).
        np.testing.assert_allclose(info.k, [40, 0, 39.5, 0, 40, 23.5, 0, 0, 1])
        np.testing.assert_allclose(info.p, [40, 0, 39.5, 0, 0, 40, 23.5, 0, 0, 0, 1, 0])

    # A calibration made at twice the size is scaled to the frames (OpenCV's pixel centres).
    (tmp_path / "cam.yaml").write_text(
        "image_width: 160\nimage_height: 96\ncamera_name: wrist\n"
        "camera_matrix: {rows: 3, cols: 3, data: [120.0, 0.0, 79.5, 0.0, 124.0, 47.5, 0.0, 0.0, 1.0]}\n"
        "distortion_model: plumb_bob\n"
        "distortion_coefficients: {rows: 1, cols: 5, data: [0.1, 0.0, 0.0, 0.0, 0.0]}\n")
    infos = []
    play(context, tmp_path / "clip.npy", 2, infos=infos, rate=100.0, camera_info_file=str(tmp_path / "cam.yaml"))
    assert (infos[0].width, infos[0].height) == (80, 48)
    np.testing.assert_allclose(infos[0].k, [60, 0, 39.5, 0, 62, 23.5, 0, 0, 1])
    np.testing.assert_allclose(infos[0].d, [0.1, 0, 0, 0, 0])

    (tmp_path / "bad.yaml").write_text("image_width: 160\n")
    with pytest.raises(SourceError, match="camera_info_file: .*image_height must be an integer"):
        VideoSourceNode(namespace="/bad_" + uuid.uuid4().hex[:8], context=context, parameter_overrides=[
            Parameter("source", value=str(tmp_path / "clip.npy")),
            Parameter("camera_info_file", value=str(tmp_path / "bad.yaml"))])
