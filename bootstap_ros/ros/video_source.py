"""video_source: publishes a video file, an image folder, a .npy clip or a camera as images.

A stand-in for a camera driver, to try the tracker without one: frames go out on
`image` (sensor_msgs/Image) at the file's frame rate or at `rate`, stamped with
the node's clock at publication and carrying `frame_id`. With `loop` the file
starts over at its end (stamps keep increasing); without it the node exits
after the last frame. Like a camera driver (REP-2003) it publishes with
reliable, keep-last QoS, which best-effort subscribers accept too.

With `camera_info_file` (a calibration in the ROS camera_calibration format) or
`publish_camera_info` (a pinhole model from the image size: square pixels, the
principal point at the centre, horizontal field of view `fov`, default 60 degrees)
it also publishes a matching sensor_msgs/CameraInfo on `camera_info`, with each
image's header; a calibration of another image size is scaled to the frames.

    ros2 run bootstap_ros video_source --ros-args -p source:=clip.mp4 -p loop:=true
    ros2 run bootstap_ros video_source --ros-args -p source:=0        # camera 0 (OpenCV)
"""

from __future__ import annotations

import sys
from typing import Iterator, Optional

import numpy as np
import rclpy
from rcl_interfaces.msg import FloatingPointRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.task import Future
from sensor_msgs.msg import CameraInfo, Image

from bootstap_ros.ros.conversions import array_to_image, camera_model_to_info
from bootstap_ros.ros.entry import run_node

DEFAULT_RATE = 30.0
OUTPUT_ENCODINGS = ("rgb8", "bgr8", "mono8")


class SourceError(RuntimeError):
    """The source cannot be opened; the message says what was given and what works."""


def _is_camera(source: str) -> bool:
    return source.isdigit() or source.startswith("/dev/video")


class _Frames:
    """Endless or one-pass iteration over the source's RGB frames, reopened to loop."""

    def __init__(self, source: str, loop: bool):
        self.source, self.loop = source, loop
        self.fps: Optional[float] = None
        self._camera = None
        if _is_camera(source):
            import cv2

            self._camera = cv2.VideoCapture(int(source) if source.isdigit() else source)
            if not self._camera.isOpened():
                raise SourceError(f"camera '{source}' cannot be opened with OpenCV; check the "
                                  "index or device path (e.g. source:=0 or source:=/dev/video0)")
            fps = self._camera.get(cv2.CAP_PROP_FPS)
            self.fps = fps if fps and np.isfinite(fps) and fps > 0 else None
            self._iterator = self._camera_frames()
        else:
            from bootstap_ros.video import VideoError, open_video

            try:
                self._video = open_video(source)
            except VideoError as error:
                raise SourceError(f"{error}; source must be a video file, an image folder, a .npy "
                                  "clip or a camera index") from None
            self.fps = self._video.fps
            self.size = self._video.size
            self._iterator = iter(self._video)
        self.index = 0

    def _camera_frames(self) -> Iterator[np.ndarray]:
        while True:
            ok, frame = self._camera.read()
            if not ok or frame is None:
                return
            yield np.ascontiguousarray(frame[:, :, ::-1])

    def next(self) -> Optional[np.ndarray]:
        """The next RGB frame, or None at the end (without loop)."""
        frame = next(self._iterator, None)
        if frame is None and self.loop and self._camera is None:
            self._iterator = iter(self._video)
            frame = next(self._iterator, None)
        if frame is not None:
            self.index += 1
        return frame

    def close(self) -> None:
        if self._camera is not None:
            self._camera.release()


class VideoSourceNode(Node):
    """Publishes frames from `source` on `image` (see the module docstring)."""

    def __init__(self, node_name: str = "video_source", **kwargs):
        super().__init__(node_name, **kwargs)
        try:
            self._setup()
        except BaseException:
            super().destroy_node()
            raise

    def _setup(self) -> None:
        read_only = dict(read_only=True)
        self.declare_parameter("source", "", ParameterDescriptor(
            description="Video file, image folder, .npy clip [T, H, W, 3], or a camera: an "
                        "OpenCV index (0) or a device path (/dev/video0)", **read_only))
        self.declare_parameter("rate", 0.0, ParameterDescriptor(
            description="Frames per second; 0: the file's own rate (30 when it has none)",
            floating_point_range=[FloatingPointRange(from_value=0.0, to_value=1000.0, step=0.0)],
            **read_only))
        self.declare_parameter("loop", False, ParameterDescriptor(
            description="Start over at the end of the file (otherwise the node exits)", **read_only))
        self.declare_parameter("frame_id", "camera", ParameterDescriptor(
            description="frame_id of the published images' headers", **read_only))
        self.declare_parameter("encoding", "rgb8", ParameterDescriptor(
            description="Encoding of the published images", additional_constraints="one of: "
            + ", ".join(OUTPUT_ENCODINGS), **read_only))
        self.declare_parameter("camera_info_file", "", ParameterDescriptor(
            description="Calibration yaml (ROS camera_calibration format) published as CameraInfo "
                        "on camera_info; empty: none, unless publish_camera_info", **read_only))
        self.declare_parameter("publish_camera_info", False, ParameterDescriptor(
            description="Publish CameraInfo on camera_info; without camera_info_file, a pinhole "
                        "model from the image size and fov", **read_only))
        self.declare_parameter("fov", 60.0, ParameterDescriptor(
            description="Horizontal field of view (degrees) of the pinhole CameraInfo",
            floating_point_range=[FloatingPointRange(from_value=1.0, to_value=179.0, step=0.0)],
            **read_only))
        source = self.get_parameter("source").value
        self.frame_id = self.get_parameter("frame_id").value
        self.encoding = self.get_parameter("encoding").value
        if not source:
            raise SourceError("parameter source is empty: set it to a video file, an image "
                              "folder, a .npy clip or a camera index (-p source:=clip.mp4)")
        if self.encoding not in OUTPUT_ENCODINGS:
            raise SourceError(f"parameter encoding={self.encoding!r} is not one of "
                              f"{', '.join(OUTPUT_ENCODINGS)}")
        self._camera_model = None
        self._camera_models = {}  # image size -> the model scaled to it
        calibration = self.get_parameter("camera_info_file").value
        if calibration:
            from bootstap_ros.depth import CameraModel, DepthError

            try:
                self._camera_model = CameraModel.from_yaml(calibration)
            except DepthError as error:
                raise SourceError(f"parameter camera_info_file: {error}") from None
        self.info_publisher = None
        if calibration or self.get_parameter("publish_camera_info").value:
            self.info_publisher = self.create_publisher(CameraInfo, "camera_info", QoSProfile(
                history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE,
                durability=DurabilityPolicy.VOLATILE))
        self.frames = _Frames(source, bool(self.get_parameter("loop").value))
        rate = self.get_parameter("rate").value or self.frames.fps or DEFAULT_RATE
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                         reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)
        self.publisher = self.create_publisher(Image, "image", qos)
        self.finished = Future()
        self.published = 0
        self.timer = self.create_timer(1.0 / rate, self._publish_next)
        self.get_logger().info(f"publishing {source} on {self.publisher.topic_name} at "
                               f"{rate:g} frames/s{' (looping)' if self.frames.loop else ''}")

    def _publish_next(self) -> None:
        frame = self.frames.next()
        if frame is None:
            self.timer.cancel()
            self.get_logger().info(f"end of {self.frames.source} after {self.published} frames")
            self.finished.set_result(self.published)
            return
        if self.encoding == "bgr8":
            frame = np.ascontiguousarray(frame[:, :, ::-1])
        elif self.encoding == "mono8":
            import cv2

            frame = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        msg = array_to_image(frame, self.encoding)
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.frame_id
        self.publisher.publish(msg)
        if self.info_publisher is not None:
            self.info_publisher.publish(camera_model_to_info(self._camera_for(frame.shape[:2]), msg.header))
        self.published += 1

    def _camera_for(self, size):
        """The camera model for frames of `size` (height, width), made once per size."""
        if size not in self._camera_models:
            from bootstap_ros.depth import CameraModel

            if self._camera_model is None:
                model = CameraModel.pinhole(size, self.get_parameter("fov").value)
            else:
                model = self._camera_model.scaled_to(size)
                if model is not self._camera_model:
                    self.get_logger().warning(
                        f"camera_info_file is for {self._camera_model.width}x{self._camera_model.height} "
                        f"images, the frames are {size[1]}x{size[0]}: publishing it scaled to them")
            self._camera_models[size] = model
        return self._camera_models[size]

    def destroy_node(self) -> None:
        frames = getattr(self, "frames", None)
        if frames is not None:
            frames.close()
        super().destroy_node()


def main(args=None) -> int:
    """Entry point of `ros2 run bootstap_ros video_source`; returns the exit status."""
    return run_node("video_source", VideoSourceNode, (SourceError,), args=args,
                    spin=lambda node: rclpy.spin_until_future_complete(node, node.finished))


if __name__ == "__main__":
    sys.exit(main())
