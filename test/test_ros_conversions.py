"""Message <-> numpy conversions: image encodings, padding, endianness, errors; PointCloud2 layout."""

import struct
import sys

import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image, PointCloud2, PointField

from bootstap_ros.ros.conversions import (
    SUPPORTED_ENCODINGS, TRACK_FIELDS, CloudError, ImageError, array_to_compressed,
    array_to_image, cloud_to_array, cloud_xy, compressed_to_array, image_to_array,
    tracks_to_cloud, xy_to_cloud)
from bootstap_ros.tracking import ENCODINGS, TrackResult, to_rgb

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


def image_msg(pixels: bytes, height, width, encoding, step, bigendian=False):
    msg = Image(height=height, width=width, encoding=encoding, step=step,
                is_bigendian=int(bigendian))
    msg.data = pixels
    return msg


def padded(array: np.ndarray, padding: int) -> tuple:
    """Row bytes of `array` [H, W, ...] with `padding` junk bytes after each row, and the step."""
    rows = array.reshape(array.shape[0], -1).view(np.uint8)
    junk = np.full((rows.shape[0], padding), 0xAB, np.uint8)
    return np.concatenate([rows, junk], axis=1).tobytes(), rows.shape[1] + padding


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
@pytest.mark.parametrize("padding", [0, 3])
def test_eight_bit_images_honour_step_padding(encoding, padding):
    channels = ENCODINGS[encoding][0]
    pixels = RNG.integers(0, 256, (5, 7, channels), dtype=np.uint8)
    data, step = padded(pixels, padding)
    array, tracker_encoding = image_to_array(image_msg(data, 5, 7, encoding, step))
    assert tracker_encoding == encoding
    np.testing.assert_array_equal(to_rgb(array, tracker_encoding), to_rgb(pixels, encoding))


@pytest.mark.parametrize("bigendian", [False, True])
def test_sixteen_bit_images_follow_is_bigendian(bigendian):
    values = np.array([[0x1234, 0xFF01], [0x0080, 0xABCD]], np.uint16)
    data = values.astype(">u2" if bigendian else "<u2").tobytes()
    array, encoding = image_to_array(image_msg(data, 2, 2, "mono16", 4, bigendian))
    assert encoding == "mono8"
    np.testing.assert_array_equal(array[..., 0], [[0x12, 0xFF], [0x00, 0xAB]])


def test_sixteen_bit_colour_with_padding():
    values = RNG.integers(0, 65536, (3, 4, 3), dtype=np.uint16)
    data, step = padded(values.astype("<u2"), 2)
    array, encoding = image_to_array(image_msg(data, 3, 4, "rgb16", step))
    assert encoding == "rgb8"
    np.testing.assert_array_equal(array, (values >> 8).astype(np.uint8))


def test_bayer_and_yuv_become_rgb():
    mosaic = RNG.integers(0, 256, (6, 8), dtype=np.uint8)
    array, encoding = image_to_array(image_msg(mosaic.tobytes(), 6, 8, "bayer_rggb8", 8))
    assert encoding == "rgb8" and array.shape == (6, 8, 3)
    # UYVY with U = V = 128 is grey; OpenCV uses BT.601 video range: R = G = B = 1.164 (Y - 16).
    luma = np.array([[10, 200, 90, 140]], np.uint8)
    uyvy = np.stack([np.full(4, 128, np.uint8), luma[0]], axis=-1).reshape(1, 8)
    array, encoding = image_to_array(image_msg(uyvy.tobytes(), 1, 4, "yuv422", 8))
    assert encoding == "rgb8"
    grey = np.clip(np.round(1.164 * (luma[0].astype(float) - 16)), 0, 255)
    for channel in range(3):
        np.testing.assert_allclose(array[0, :, channel], grey, atol=1)
    with pytest.raises(ImageError, match="even width"):
        image_to_array(image_msg(bytes(6), 1, 3, "yuv422", 6))


def test_bad_images_raise_clear_errors():
    with pytest.raises(ImageError, match="unsupported image encoding '32FC1'.*supported: rgb8"):
        image_to_array(image_msg(bytes(16), 2, 2, "32FC1", 8))
    with pytest.raises(ImageError, match="empty"):
        image_to_array(image_msg(b"", 0, 0, "rgb8", 0))
    with pytest.raises(ImageError, match=r"truncated: 20 bytes, expected step x height = 12 x 2 = 24"):
        image_to_array(image_msg(bytes(20), 2, 4, "rgb8", 12))
    with pytest.raises(ImageError, match="step 6 is smaller than one row"):
        image_to_array(image_msg(bytes(12), 2, 4, "rgb8", 6))
    assert {"rgb8", "bgr8", "mono8", "mono16", "bayer_rggb8", "yuv422"} <= set(SUPPORTED_ENCODINGS)


def test_image_round_trip_and_compressed():
    msg = array_to_image(RGB, "rgb8")
    assert (msg.height, msg.width, msg.step, msg.encoding) == (5, 7, 21, "rgb8")
    np.testing.assert_array_equal(image_to_array(msg)[0], RGB)
    compressed = array_to_compressed(RGB, "rgb8", format="png")
    array, encoding = compressed_to_array(compressed)
    np.testing.assert_array_equal(to_rgb(array, encoding), RGB)
    broken = CompressedImage(format="jpeg")
    broken.data = bytes(compressed.data[:20])
    with pytest.raises(ImageError, match="could not be decoded"):
        compressed_to_array(broken)


def track_result(count=3):
    return TrackResult(
        ids=np.arange(count, dtype=np.int64) * 7 + 2,
        xy=RNG.uniform(0, 100, (count, 2)).astype(np.float32),
        visible=np.arange(count) % 2 == 0,
        occlusion=RNG.uniform(0, 1, count).astype(np.float32),
        uncertainty=RNG.uniform(0, 1, count).astype(np.float32),
        occlusion_logit=np.zeros(count, np.float32), expected_dist_logit=np.zeros(count, np.float32),
        frame_size=(100, 100))


def test_tracks_cloud_follows_the_pointcloud2_layout():
    result = track_result()
    msg = tracks_to_cloud(result)
    expected = [("x", 0, PointField.FLOAT32), ("y", 4, PointField.FLOAT32),
                ("id", 8, PointField.UINT32), ("visible", 12, PointField.UINT8),
                ("occlusion", 16, PointField.FLOAT32), ("uncertainty", 20, PointField.FLOAT32)]
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [e + (1,) for e in expected]
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 3, 24, 72)
    assert msg.is_dense and bool(msg.is_bigendian) == (sys.byteorder == "big")
    assert len(msg.data) == msg.row_step * msg.height
    # Decode the bytes independently of numpy's structured dtypes.
    order = ">" if msg.is_bigendian else "<"
    data = bytes(msg.data)
    for i in range(3):
        base = i * msg.point_step
        x, y, point_id = struct.unpack_from(order + "ffI", data, base)
        (visible,) = struct.unpack_from("B", data, base + 12)
        occlusion, uncertainty = struct.unpack_from(order + "ff", data, base + 16)
        assert (x, y) == tuple(result.xy[i])
        assert point_id == result.ids[i] and visible == int(result.visible[i])
        assert (occlusion, uncertainty) == (result.occlusion[i], result.uncertainty[i])
        assert data[base + 13:base + 16] == bytes(3)  # padding is zeroed
    points = cloud_to_array(msg)
    assert points.dtype.names == tuple(f[0] for f in TRACK_FIELDS)
    np.testing.assert_array_equal(points["id"], result.ids)
    empty = tracks_to_cloud(track_result(0))
    assert (empty.width, empty.row_step, len(empty.data)) == (0, 0, 0)
    assert len(cloud_to_array(empty)) == 0


def test_reader_handles_big_endian_row_padding_and_counts():
    # Two rows of two points: a big-endian float64 x, int16 y, a uint8[3] colour, with 3 bytes of
    # point padding and 5 bytes of row padding.
    point_step, row_step = 16, 2 * 16 + 5
    fields = [PointField(name="x", offset=0, datatype=PointField.FLOAT64, count=1),
              PointField(name="y", offset=8, datatype=PointField.INT16, count=1),
              PointField(name="rgb", offset=10, datatype=PointField.UINT8, count=3)]
    values = [(1.5, -3, (1, 2, 3)), (2.25, 7, (4, 5, 6)), (-8.0, 300, (7, 8, 9)), (0.0, 0, (0, 0, 1))]
    data = b""
    for row in range(2):
        for x, y, rgb in values[2 * row:2 * row + 2]:
            data += struct.pack(">dh3B", x, y, *rgb) + b"\xee" * 3
        data += b"\xff" * 5
    msg = PointCloud2(height=2, width=2, fields=fields, is_bigendian=True, point_step=point_step,
                      row_step=row_step, is_dense=True)
    msg.data = data
    points = cloud_to_array(msg)
    assert points["x"].tolist() == [v[0] for v in values]
    assert points["y"].tolist() == [v[1] for v in values]
    assert points["rgb"].tolist() == [list(v[2]) for v in values]
    np.testing.assert_array_equal(cloud_xy(msg), [[v[0], v[1]] for v in values])


def test_reader_errors():
    msg = xy_to_cloud([[1, 2], [3, 4]])
    np.testing.assert_array_equal(cloud_xy(msg), [[1, 2], [3, 4]])
    with pytest.raises(CloudError, match=r"lacks field\(s\) \['id'\]"):
        cloud_to_array(msg, ["x", "id"])
    short = xy_to_cloud([[1, 2], [3, 4]])
    short.data = bytes(msg.data[:10])
    with pytest.raises(CloudError, match="truncated"):
        cloud_xy(short)
    odd = xy_to_cloud([[1, 2]])
    odd.fields[1].datatype = 42
    with pytest.raises(CloudError, match="unknown PointField datatype 42"):
        cloud_xy(odd)
    overlapping = xy_to_cloud([[1, 2]])
    overlapping.point_step = 6
    overlapping.row_step = 6
    with pytest.raises(CloudError, match="inconsistent point layout"):
        cloud_xy(overlapping)


def test_sensor_msgs_py_reads_the_tracks_cloud():
    # Not on PyPI: runs where a ROS install (or a checkout on PYTHONPATH) provides it.
    point_cloud2 = pytest.importorskip("sensor_msgs_py.point_cloud2")
    result = track_result()
    points = point_cloud2.read_points(tracks_to_cloud(result), field_names=("x", "y", "id", "visible"))
    np.testing.assert_array_equal(points["id"], result.ids)
    np.testing.assert_array_equal(points["x"], result.xy[:, 0])
    np.testing.assert_array_equal(points["visible"], result.visible.astype(np.uint8))
