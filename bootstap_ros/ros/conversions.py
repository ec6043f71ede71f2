"""Conversions between ROS messages and numpy: images in, point clouds out (and back).

Pure functions, no node: they are tested on hand-built messages.

* `image_to_array` / `compressed_to_array` (sensor_msgs/Image and
  CompressedImage to uint8 arrays; `ImageError` when unusable) live in
  `bootstap_ros.images`, which needs no rclpy (robot-log reading uses it too),
  and are re-exported here. `array_to_image` / `array_to_compressed` build the
  rclpy messages.
* `depth_image_to_array` reads a 16UC1 / 32FC1 depth image; `tracks_3d_to_cloud`
  packs the node's 3D tracks; `camera_info_to_model` / `camera_model_to_info`
  convert CameraInfo to and from `depth.CameraModel`.
* `tracks_to_cloud` packs a `TrackResult` into a sensor_msgs/PointCloud2 with the
  layout of `TRACK_FIELDS`; `cloud_to_array` reads any PointCloud2 back into a
  numpy structured array, following the field layout of sensor_msgs/PointField
  (offset, datatype code, count), `point_step`, `row_step` and `is_bigendian`,
  as `sensor_msgs_py.point_cloud2.read_points` does.
"""

from __future__ import annotations

import sys
from typing import Iterable, Optional, Sequence, Tuple

import numpy as np
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField

# The pixel logic lives in bootstap_ros.images (no rclpy); re-exported here for the node.
from bootstap_ros.images import (  # noqa: F401
    SUPPORTED_ENCODINGS, ImageError, compressed_to_array, encode_compressed, image_to_array)
from bootstap_ros.ros import interfaces
from bootstap_ros.tracking.frames import ENCODINGS


class CloudError(ValueError):
    """A PointCloud2 whose layout is inconsistent or lacks the fields asked for."""


# ---------------------------------------------------------------------------- images

def depth_image_to_array(msg) -> Tuple[np.ndarray, str]:
    """(uint16 millimetres or float32 metres [H, W], encoding) of a 16UC1 / 32FC1 depth image
    (REP 118), honouring `step` padding and `is_bigendian`."""
    dtypes = {"16UC1": "u2", "32FC1": "f4"}
    if msg.encoding not in dtypes:
        raise ImageError(f"unsupported depth encoding '{msg.encoding}' ({msg.width}x{msg.height}); "
                         "expected 16UC1 (millimetres) or 32FC1 (metres), as REP 118")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    item = np.dtype(dtypes[msg.encoding]).itemsize
    where = f"{width}x{height} {msg.encoding} depth image"
    if height == 0 or width == 0:
        raise ImageError(f"empty {where}")
    if step < width * item or len(msg.data) < step * height:
        raise ImageError(f"{where}: step {step} and {len(msg.data)} bytes of data do not hold "
                         f"{height} rows of {width * item} bytes")
    rows = np.frombuffer(msg.data, np.uint8, count=step * height).reshape(height, step)[:, :width * item]
    order = ">" if msg.is_bigendian else "<"
    depth = np.ascontiguousarray(rows).view(order + dtypes[msg.encoding]).reshape(height, width)
    return depth.astype(dtypes[msg.encoding]), msg.encoding  # native byte order


def depth_array_to_image(depth: np.ndarray, header=None) -> Image:
    """A 16UC1 (uint16 millimetres) or 32FC1 (float32 metres) sensor_msgs/Image of `depth` [H, W]."""
    depth = np.asarray(depth)
    encodings = {np.dtype(np.uint16): "16UC1", np.dtype(np.float32): "32FC1"}
    if depth.ndim != 2 or depth.dtype not in encodings:
        raise ImageError(f"expected depth [H, W] as uint16 millimetres or float32 metres, got "
                         f"{depth.dtype} {tuple(depth.shape)}")
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(depth.shape[0]), int(depth.shape[1])
    msg.encoding = encodings[depth.dtype]
    msg.is_bigendian = int(sys.byteorder == "big")
    msg.step = msg.width * depth.dtype.itemsize
    msg.data = np.ascontiguousarray(depth).tobytes()
    return msg


def array_to_image(array: np.ndarray, encoding: str = "rgb8", header=None) -> Image:
    """A sensor_msgs/Image holding uint8 [H, W, C] `array` (C = channels of `encoding`)."""
    if encoding not in ENCODINGS:
        raise ImageError(f"cannot write encoding '{encoding}'; supported: {', '.join(ENCODINGS)}")
    channels = ENCODINGS[encoding][0]
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != channels:
        raise ImageError(f"expected uint8 [H, W, {channels}] for {encoding}, got "
                         f"{array.dtype} {tuple(array.shape)}")
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = msg.width * channels
    msg.data = np.ascontiguousarray(array).tobytes()
    return msg


def array_to_compressed(array: np.ndarray, encoding: str = "rgb8", header=None,
                        format: str = "jpeg", quality: int = 90) -> CompressedImage:
    """A sensor_msgs/CompressedImage (jpeg or png) of uint8 [H, W, C] `array`."""
    data = encode_compressed(array, encoding, format, quality)
    msg = CompressedImage()
    if header is not None:
        msg.header = header
    msg.format = format
    msg.data = data
    return msg


# ---------------------------------------------------------------------------- point clouds

#: PointField datatype code -> numpy type (sensor_msgs/PointField constants).
POINTFIELD_DTYPES = {
    PointField.INT8: "i1", PointField.UINT8: "u1", PointField.INT16: "i2", PointField.UINT16: "u2",
    PointField.INT32: "i4", PointField.UINT32: "u4", PointField.FLOAT32: "f4",
    PointField.FLOAT64: "f8",
}

def point_fields(layout) -> Tuple[Tuple[str, int, int], ...]:
    """(name, PointField datatype, offset) of each `interfaces.CloudField` of a layout."""
    return tuple((f.name, getattr(PointField, f.type.upper()), f.offset) for f in layout)


#: Layout of the `tracks` cloud: (name, datatype, offset), declared in `interfaces.TRACKS`.
#: Bytes 13..15 are padding so that the float32 fields stay 4-byte aligned; point_step is 24.
TRACK_FIELDS: Tuple[Tuple[str, int, int], ...] = point_fields(interfaces.TRACKS.fields)
TRACK_POINT_STEP = interfaces.TRACKS.point_step


def fields_dtype(fields: Sequence[Tuple[str, int, int]], point_step: int,
                 bigendian: bool = sys.byteorder == "big", counts: Optional[Sequence[int]] = None
                 ) -> np.dtype:
    """The numpy structured dtype of one point described by (name, datatype, offset) fields."""
    order = ">" if bigendian else "<"
    formats = []
    for index, (name, datatype, _) in enumerate(fields):
        if datatype not in POINTFIELD_DTYPES:
            raise CloudError(f"field '{name}' has unknown PointField datatype {datatype} "
                             f"(known: {sorted(POINTFIELD_DTYPES)})")
        count = 1 if counts is None else int(counts[index])
        base = order + POINTFIELD_DTYPES[datatype]
        formats.append(base if count == 1 else (base, (count,)))
    try:
        return np.dtype({"names": [f[0] for f in fields], "formats": formats,
                         "offsets": [int(f[2]) for f in fields], "itemsize": int(point_step)})
    except ValueError as error:
        raise CloudError(f"inconsistent point layout (point_step {point_step}, fields "
                         f"{[(f[0], f[2]) for f in fields]}): {error}") from None


TRACK_DTYPE = fields_dtype(TRACK_FIELDS, TRACK_POINT_STEP)


def make_cloud(points: np.ndarray, fields: Sequence[Tuple[str, int, int]], header=None
               ) -> PointCloud2:
    """An unordered (height 1) PointCloud2 of structured `points` whose dtype has `fields`."""
    msg = PointCloud2()
    if header is not None:
        msg.header = header
    msg.height = 1
    msg.width = int(len(points))
    msg.fields = [PointField(name=name, offset=offset, datatype=datatype, count=1)
                  for name, datatype, offset in fields]
    msg.is_bigendian = _is_bigendian(points.dtype.fields[fields[0][0]][0])
    msg.point_step = int(points.dtype.itemsize)
    msg.row_step = msg.point_step * msg.width
    msg.data = np.ascontiguousarray(points).tobytes()
    msg.is_dense = True  # every point is valid: inactive tracks are left out, not NaN
    return msg


def _is_bigendian(dtype: np.dtype) -> bool:
    order = dtype.byteorder  # '=' native, '|' not applicable (1 byte), else explicit
    return order == ">" or (order in "=|" and sys.byteorder == "big")


def tracks_to_cloud(result, header=None) -> PointCloud2:
    """The `tracks` PointCloud2 of a TrackResult: one point per active track, by id."""
    points = np.zeros(len(result.ids), TRACK_DTYPE)  # zeroed, so the padding bytes are too
    points["x"], points["y"] = result.xy[:, 0], result.xy[:, 1]
    points["id"] = result.ids
    points["visible"] = result.visible
    points["occlusion"] = result.occlusion
    points["uncertainty"] = result.uncertainty
    return make_cloud(points, TRACK_FIELDS, header)


#: Layout of `~/query_points` (`interfaces.QUERY_POINTS`): the points of a query set as added,
#: at their positions on the demonstration image mapped to the live image's pixels.
QUERY_POINT_FIELDS: Tuple[Tuple[str, int, int], ...] = point_fields(interfaces.QUERY_POINTS.fields)


def query_points_to_cloud(ids, xy, header=None) -> PointCloud2:
    """The `~/query_points` PointCloud2: x, y (pixels) and id of each point of a query set."""
    xy = np.asarray(xy, np.float32).reshape(-1, 2)
    points = np.zeros(len(xy), fields_dtype(QUERY_POINT_FIELDS, interfaces.QUERY_POINTS.point_step))
    points["x"], points["y"], points["id"] = xy[:, 0], xy[:, 1], np.asarray(ids, np.uint32)
    return make_cloud(points, QUERY_POINT_FIELDS, header)


#: Layout of `tracks_3d` (`interfaces.TRACKS_3D`): one point per track, in the order of
#: `tracks`. x, y, z are metres in the image's optical frame, NaN where no depth was found.
TRACK_3D_FIELDS: Tuple[Tuple[str, int, int], ...] = point_fields(interfaces.TRACKS_3D.fields)
TRACK_3D_DTYPE = fields_dtype(TRACK_3D_FIELDS, interfaces.TRACKS_3D.point_step)


def tracks_3d_to_cloud(ids, xyz, visible, header=None) -> PointCloud2:
    """The `tracks_3d` PointCloud2 (TRACK_3D_FIELDS); is_dense is False when a point is NaN."""
    xyz = np.asarray(xyz, np.float32).reshape(-1, 3)
    points = np.zeros(len(xyz), TRACK_3D_DTYPE)  # zeroed, so the padding bytes are too
    points["x"], points["y"], points["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    points["id"], points["visible"] = np.asarray(ids, np.uint32), np.asarray(visible, np.uint8)
    msg = make_cloud(points, TRACK_3D_FIELDS, header)
    msg.is_dense = bool(np.isfinite(xyz).all())
    return msg


def camera_info_to_model(msg):
    """A `depth.CameraModel` of a sensor_msgs/CameraInfo (K, D, R, P, size)."""
    from bootstap_ros.depth import CameraModel

    return CameraModel(width=int(msg.width), height=int(msg.height), K=np.asarray(msg.k, np.float64),
                       D=np.asarray(msg.d, np.float64), distortion_model=msg.distortion_model,
                       R=np.asarray(msg.r, np.float64), P=np.asarray(msg.p, np.float64))


def camera_model_to_info(model, header=None) -> CameraInfo:
    """The sensor_msgs/CameraInfo of a `depth.CameraModel`."""
    msg = CameraInfo()
    if header is not None:
        msg.header = header
    msg.width, msg.height = int(model.width), int(model.height)
    msg.distortion_model = model.distortion_model
    msg.d = [float(v) for v in model.D]
    msg.k = [float(v) for v in model.K.reshape(-1)]
    msg.r = [float(v) for v in model.R.reshape(-1)]
    msg.p = [float(v) for v in model.P.reshape(-1)]
    return msg


def xy_to_cloud(xy, header=None) -> PointCloud2:
    """A PointCloud2 with float32 x, y fields: the message `~/add_points` takes."""
    xy = np.asarray(xy, np.float32).reshape(-1, 2)
    fields = (("x", PointField.FLOAT32, 0), ("y", PointField.FLOAT32, 4))
    points = np.zeros(len(xy), fields_dtype(fields, 8))
    points["x"], points["y"] = xy[:, 0], xy[:, 1]
    return make_cloud(points, fields, header)


def cloud_to_array(msg, field_names: Optional[Iterable[str]] = None) -> np.ndarray:
    """All points of a PointCloud2 as a numpy structured array [height * width].

    field_names: the fields to keep (all by default); a missing one raises CloudError.
    Row padding (row_step > width * point_step) and point padding are skipped.
    """
    fields = [(f.name, f.datatype, f.offset) for f in msg.fields]
    counts = [max(1, int(f.count)) for f in msg.fields]
    names = [f[0] for f in fields]
    if len(set(names)) != len(names):
        raise CloudError(f"duplicate field names in {names}")
    if field_names is not None:
        wanted = list(field_names)
        missing = [n for n in wanted if n not in names]
        if missing:
            raise CloudError(f"point cloud lacks field(s) {missing}; it has {names}")
        keep = [names.index(n) for n in wanted]
        fields, counts = [fields[i] for i in keep], [counts[i] for i in keep]
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    dtype = fields_dtype(fields, point_step, bool(msg.is_bigendian), counts)
    if height * width == 0:
        return np.zeros(0, dtype)
    if row_step < width * point_step:
        raise CloudError(f"row_step {row_step} is smaller than width x point_step = "
                         f"{width} x {point_step}")
    size = len(msg.data)
    needed = row_step * (height - 1) + width * point_step
    if size < needed:
        raise CloudError(f"point cloud data is truncated: {size} bytes for {height}x{width} points "
                         f"of {point_step} bytes (row_step {row_step}), expected {row_step * height}")
    buffer = np.frombuffer(msg.data, np.uint8, count=min(size, row_step * height))
    if len(buffer) < row_step * height:  # last row without its padding
        buffer = np.concatenate([buffer, np.zeros(row_step * height - len(buffer), np.uint8)])
    rows = buffer.reshape(height, row_step)[:, :width * point_step]
    return np.ascontiguousarray(rows).view(dtype).reshape(height * width)


def cloud_xy(msg) -> np.ndarray:
    """float32 [N, 2] of the x, y fields of a PointCloud2 (any numeric type)."""
    points = cloud_to_array(msg, ("x", "y"))
    if points.dtype["x"].shape or points.dtype["y"].shape:
        raise CloudError("fields x and y must have count 1")
    return np.stack([points["x"], points["y"]], axis=-1).astype(np.float32).reshape(-1, 2)
