"""ROS image encodings <-> numpy arrays, without rclpy.

The pixel logic of sensor_msgs/Image and sensor_msgs/CompressedImage lives here,
so that code with no ROS install (reading rosbag2 logs with `rosbags`, training)
decodes images exactly as the node does. Messages are duck-typed: anything with
the fields of sensor_msgs/Image (``height``, ``width``, ``encoding``,
``is_bigendian``, ``step``, ``data``) or of sensor_msgs/CompressedImage
(``format``, ``data``) works, be it an rclpy message or a `rosbags` one.
`bootstap_ros.ros.conversions` builds the rclpy messages on top of this module.

* `image_to_array` turns an Image into a uint8 array and one of the tracker's
  encodings (`bootstap_ros.tracking.ENCODINGS`), honouring `step` padding and
  `is_bigendian`; 16-bit, Bayer and YUV 4:2:2 images are converted to 8 bits here.
* `compressed_to_array` decodes a CompressedImage (JPEG, PNG, ...).
* `message_to_rgb` does either and returns contiguous RGB.
* `encode_compressed` is the inverse of `compressed_to_array` (JPEG or PNG bytes).

Anything unusable raises `ImageError` naming the encoding, the size and what was
wrong with them.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from bootstap_ros.tracking.frames import ENCODINGS, FrameError, to_rgb


class ImageError(FrameError):
    """An image message that cannot be turned into a frame; the message says why."""


#: ROS image encodings (sensor_msgs/image_encodings.hpp) read as-is:
#: name -> (channels, the tracker encoding of the same channel order).
_EIGHT_BIT = {
    "rgb8": (3, "rgb8"), "bgr8": (3, "bgr8"), "rgba8": (4, "rgba8"), "bgra8": (4, "bgra8"),
    "mono8": (1, "mono8"),
    # OpenCV type names as used by cv_bridge: colour images are in BGR order.
    "8UC1": (1, "mono8"), "8UC3": (3, "bgr8"), "8UC4": (4, "bgra8"),
}
#: 16-bit encodings, reduced to 8 bits (the high byte) before tracking.
_SIXTEEN_BIT = {
    "rgb16": (3, "rgb8"), "bgr16": (3, "bgr8"), "rgba16": (4, "rgba8"), "bgra16": (4, "bgra8"),
    "mono16": (1, "mono8"), "16UC1": (1, "mono8"), "16UC3": (3, "bgr8"), "16UC4": (4, "bgra8"),
}
#: Bayer mosaics (8 bit), demosaiced by OpenCV. OpenCV names a pattern by the
#: second row's first two pixels, hence the apparent swap.
_BAYER = {
    "bayer_rggb8": "COLOR_BayerBG2RGB", "bayer_bggr8": "COLOR_BayerRG2RGB",
    "bayer_gbrg8": "COLOR_BayerGR2RGB", "bayer_grbg8": "COLOR_BayerGB2RGB",
}
#: Packed YUV 4:2:2 (2 bytes per pixel).
_YUV422 = {
    "yuv422": "COLOR_YUV2RGB_UYVY", "uyvy": "COLOR_YUV2RGB_UYVY",
    "yuv422_yuy2": "COLOR_YUV2RGB_YUY2", "yuyv": "COLOR_YUV2RGB_YUY2",
}

SUPPORTED_ENCODINGS: Tuple[str, ...] = (
    tuple(_EIGHT_BIT) + tuple(_SIXTEEN_BIT) + tuple(_BAYER) + tuple(_YUV422))


def _bytes_per_pixel(encoding: str) -> int:
    if encoding in _EIGHT_BIT:
        return _EIGHT_BIT[encoding][0]
    if encoding in _SIXTEEN_BIT:
        return 2 * _SIXTEEN_BIT[encoding][0]
    if encoding in _BAYER:
        return 1
    return 2  # YUV 4:2:2


def _pixel_rows(msg, encoding: str) -> np.ndarray:
    """uint8 [height, width * bytes_per_pixel] view of the image data, padding dropped."""
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    where = f"{width}x{height} {encoding} image"
    if height == 0 or width == 0:
        raise ImageError(f"empty {where} (zero width or height); nothing to track")
    row_bytes = width * _bytes_per_pixel(encoding)
    if step < row_bytes:
        raise ImageError(f"{where}: step {step} is smaller than one row of pixels "
                         f"({width} x {_bytes_per_pixel(encoding)} = {row_bytes} bytes)")
    data = msg.data
    size = len(data)
    if size < step * height:
        raise ImageError(f"{where}: data is truncated: {size} bytes, expected step x height = "
                         f"{step} x {height} = {step * height}")
    buffer = np.frombuffer(data, np.uint8, count=step * height)
    return buffer.reshape(height, step)[:, :row_bytes]


def image_to_array(msg) -> Tuple[np.ndarray, str]:
    """(uint8 [H, W, C] array, tracker encoding) for a sensor_msgs/Image.

    The array may be a view of the message's buffer (read-only). 8-bit colour
    and mono images keep their channel order and say which it is; other
    supported encodings are converted (to RGB or mono).
    """
    encoding = msg.encoding
    if encoding not in SUPPORTED_ENCODINGS:
        raise ImageError(
            f"unsupported image encoding '{encoding}' ({msg.width}x{msg.height}); supported: "
            f"{', '.join(SUPPORTED_ENCODINGS)}")
    rows = _pixel_rows(msg, encoding)
    height, width = rows.shape[0], int(msg.width)
    if encoding in _EIGHT_BIT:
        channels, tracker_encoding = _EIGHT_BIT[encoding]
        return rows.reshape(height, width, channels), tracker_encoding
    if encoding in _SIXTEEN_BIT:
        channels, tracker_encoding = _SIXTEEN_BIT[encoding]
        order = ">" if msg.is_bigendian else "<"
        values = np.ascontiguousarray(rows).view(order + "u2").reshape(height, width, channels)
        return (values >> 8).astype(np.uint8), tracker_encoding
    import cv2

    if encoding in _BAYER:
        return cv2.cvtColor(np.ascontiguousarray(rows), getattr(cv2, _BAYER[encoding])), "rgb8"
    packed = np.ascontiguousarray(rows).reshape(height, width, 2)
    if width % 2:
        raise ImageError(f"{width}x{height} {encoding} image: YUV 4:2:2 needs an even width")
    return cv2.cvtColor(packed, getattr(cv2, _YUV422[encoding])), "rgb8"


def compressed_to_array(msg) -> Tuple[np.ndarray, str]:
    """(uint8 [H, W, 3] BGR array, 'bgr8') for a sensor_msgs/CompressedImage (JPEG, PNG, ...)."""
    import cv2

    data = np.frombuffer(msg.data, np.uint8)
    if data.size == 0:
        raise ImageError(f"empty compressed image (format '{msg.format}'): no data")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ImageError(f"compressed image (format '{msg.format}', {data.size} bytes) could not be "
                         "decoded: corrupt, truncated or not an image OpenCV reads")
    return image, "bgr8"


def is_compressed(msg) -> bool:
    """True for a CompressedImage-like message (it has `format` and no `encoding`)."""
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def message_to_rgb(msg) -> np.ndarray:
    """Contiguous uint8 RGB [H, W, 3] of an Image or CompressedImage message."""
    array, encoding = compressed_to_array(msg) if is_compressed(msg) else image_to_array(msg)
    return to_rgb(array, encoding)


def encode_compressed(array: np.ndarray, encoding: str = "rgb8", format: str = "jpeg",
                      quality: int = 90) -> bytes:
    """CompressedImage data: `format` ('jpeg', 'png' or another OpenCV writes) bytes of
    uint8 [H, W, C] `array` in tracker `encoding`."""
    import cv2

    if encoding not in ENCODINGS:
        raise ImageError(f"cannot compress encoding '{encoding}'; supported: {', '.join(ENCODINGS)}")
    bgr = np.ascontiguousarray(to_rgb(array, encoding)[:, :, ::-1])
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if format == "jpeg" else []
    ok, encoded = cv2.imencode("." + ("jpg" if format == "jpeg" else format), bgr, params)
    if not ok:
        raise ImageError(f"OpenCV could not encode a {format} image ({tuple(array.shape)})")
    return encoded.tobytes()
