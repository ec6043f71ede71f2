"""The tracker node's topics and service, and the layout of the point clouds it publishes.

The node creates its subscriptions, publishers and service under the names and with
the types of this table, and `conversions` builds its PointCloud2 fields from the
layouts here; docs/node-reference.md is written from it (`python
tools/node_reference.py`). No rclpy here, so the table can be read without ROS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

ROLES = ("subscribes", "publishes", "service")


@dataclass(frozen=True)
class CloudField:
    """One sensor_msgs/PointField of a PointCloud2 the node publishes (count 1)."""

    name: str
    type: str  # the PointField datatype in lower case: float32, uint32, uint8
    offset: int  # bytes from the start of the point
    meaning: str


@dataclass(frozen=True)
class Interface:
    """A topic the node subscribes to or publishes, or a service it offers."""

    name: str  # as the node creates it: relative ("tracks"), private ("~/reset") or absolute
    role: str  # one of ROLES
    type: str  # the ROS type name, e.g. "sensor_msgs/msg/Image"
    description: str
    qos: str = ""  # what the node subscribes or publishes with (topics only)
    condition: str = ""  # the parameter setting under which the node has it; "" = always
    fields: Tuple[CloudField, ...] = ()  # PointCloud2 outputs: the layout of one point
    point_step: int = 0  # PointCloud2 outputs: bytes per point

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"interface {self.name}: role {self.role!r} is not one of {ROLES}")


_IMAGE_QOS = "sensor data: best effort, keep last 5 (`qos.image.*`)"
_OUTPUT_QOS = "reliable, keep last 10 (`qos.tracks.*`)"

IMAGE = Interface(
    "image", "subscribes", "sensor_msgs/msg/Image",
    "The camera images to track in (rgb8, bgr8, rgba8, bgra8, mono8, their 16-bit forms, "
    "8UC1/3/4, Bayer, YUV 4:2:2). Remap it to the camera's topic.",
    qos=_IMAGE_QOS, condition="`image_transport: raw` (default)")
IMAGE_COMPRESSED = Interface(
    "image/compressed", "subscribes", "sensor_msgs/msg/CompressedImage",
    "The camera images as JPEG or PNG, instead of `image`.",
    qos=_IMAGE_QOS, condition="`image_transport: compressed`")
DEPTH = Interface(
    "depth", "subscribes", "sensor_msgs/msg/Image",
    "Depth image registered to the colour image: 16UC1 millimetres or 32FC1 metres (REP 118); "
    "0 and NaN mean no reading.",
    qos=_IMAGE_QOS, condition="`use_depth: true`")
CAMERA_INFO = Interface(
    "camera_info", "subscribes", "sensor_msgs/msg/CameraInfo",
    "The colour image's CameraInfo; its `K` back-projects the tracks.",
    qos=_IMAGE_QOS, condition="`use_depth: true`")
ADD_POINT = Interface(
    "~/add_point", "subscribes", "geometry_msgs/msg/Point",
    "Adds a point at pixel (x, y) of the next frame processed. rqt_image_view publishes clicks "
    "as this message on `<image topic>_mouse_left`: remap it there to add points by clicking.",
    qos="reliable, keep last 10")
ADD_POINTS = Interface(
    "~/add_points", "subscribes", "sensor_msgs/msg/PointCloud2",
    "Adds many points: a cloud with x, y fields (pixels of the image, any numeric type).",
    qos="reliable, keep last 10")
REMOVE_POINTS = Interface(
    "~/remove_points", "subscribes", "std_msgs/msg/UInt32MultiArray",
    "Removes the points with these ids (with `propagation: lk` they leave `tracks` from the next "
    "image on).", qos="reliable, keep last 10")
RESET = Interface(
    "~/reset", "service", "std_srvs/srv/Trigger",
    "Drops every point before the next frame; the `grid_points` and `query_set` points are "
    "added again on it (with `propagation: lk` they reach `tracks` with the next network "
    "result). Ids are never reused.")

TRACKS = Interface(
    "tracks", "publishes", "sensor_msgs/msg/PointCloud2",
    "One point per active track, with the image's header (stamp, frame_id): for every image "
    "with `propagation: lk` (points carried from the previous image, network results fused in "
    "as they land), for the images the network ran on with `none`. An unordered cloud (height 1, width = number of points, is_dense true) in "
    "the byte order of the machine (`is_bigendian`); an empty cloud when no point is tracked.",
    qos=_OUTPUT_QOS, point_step=24, fields=(
        CloudField("x", "float32", 0, "position in pixels of the input image (TAPIR raster: "
                   "pixel centres at +0.5)"),
        CloudField("y", "float32", 4, "as x"),
        CloudField("id", "uint32", 8, "the point's stable id; never reused, also not after a "
                   "reset"),
        CloudField("visible", "uint8", 12, "1 when (1 - occlusion) * (1 - uncertainty) > "
                   "`visibility_threshold` (official: 0.5), else 0; with `propagation: lk` also 1 "
                   "where the network is unsure and Lucas-Kanade still follows the point"),
        CloudField("occlusion", "float32", 16, "probability that the point is occluded (the "
                   "network's latest)"),
        CloudField("uncertainty", "float32", 20, "probability that the position is off by more "
                   "than 6 px (the model's expected-distance head; the network's latest)"),
    ))
TRACKS_3D = Interface(
    "tracks_3d", "publishes", "sensor_msgs/msg/PointCloud2",
    "The tracks in 3D: one point per track in the order of `tracks`, with the same header; "
    "is_dense false when a point has no depth. A frame without a depth image paired in time "
    "gets none (counted in /diagnostics).",
    qos=_OUTPUT_QOS, condition="`use_depth: true`", point_step=20, fields=(
        CloudField("x", "float32", 0, "metres in the image's optical frame (x right, y down, "
                   "z forward); NaN where no depth"),
        CloudField("y", "float32", 4, "as x"),
        CloudField("z", "float32", 8, "as x"),
        CloudField("id", "uint32", 12, "the track's id, as in `tracks`"),
        CloudField("visible", "uint8", 16, "as in `tracks`"),
    ))
DEBUG_IMAGE = Interface(
    "~/debug_image", "publishes", "sensor_msgs/msg/Image",
    "The image (rgb8) with the tracks drawn: filled dots visible, rings occluded, and a trail. "
    "Published while someone subscribes, or always with `publish_debug_image`.",
    qos=_OUTPUT_QOS)
QUERY_POINTS = Interface(
    "~/query_points", "publishes", "sensor_msgs/msg/PointCloud2",
    "The points of a query set as they are added: their positions on the demonstration image, "
    "mapped to the live image's pixels, with the ids of their live tracks (a controller's goal "
    "positions).",
    qos="reliable, transient local (latched), keep last 10", point_step=12, fields=(
        CloudField("x", "float32", 0, "position on the demonstration image, in pixels of the "
                   "live image (TAPIR raster)"),
        CloudField("y", "float32", 4, "as x"),
        CloudField("id", "uint32", 8, "the id of the point's live track"),
    ))
DIAGNOSTICS = Interface(
    "/diagnostics", "publishes", "diagnostic_msgs/msg/DiagnosticArray",
    "Every `diagnostics_period` seconds: input and output rate, latency, dropped frames, "
    "propagation, network and propagated frames, network rate, frames since the network result "
    "of the answers, active points, capacity, backend, device, model resolution, checkpoint, the model in use "
    "and its swaps (source, sha256, loaded at, swap pending, last swap, last refused swap, kept "
    "query images: model-swap.md) and warnings (with `use_depth`: frames without tracks_3d and "
    "its time).",
    qos="reliable, keep last 10")

INTERFACES: Tuple[Interface, ...] = (
    IMAGE, IMAGE_COMPRESSED, DEPTH, CAMERA_INFO, ADD_POINT, ADD_POINTS, REMOVE_POINTS,
    TRACKS, TRACKS_3D, DEBUG_IMAGE, QUERY_POINTS, DIAGNOSTICS, RESET)
