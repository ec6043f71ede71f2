"""3D tracks from a registered depth image: pairing, depth lookup and back-projection, no ROS.

The node's `tracks_3d` is built here from plain arrays:

* `DepthPairing` keeps the last depth images by stamp and finds the one for a colour
  image: the same stamp, else the nearest within a slop (the node waits a little for
  a depth image that has not arrived yet).
* `Tracks3D` is a stream's tracks_3d: it pairs each colour frame with its depth image
  (waiting only while the depth stream is alive) and turns the frame's tracks into
  points, noting once what it had to adapt (sizes, distortion).
* `depth_in_metres` reads a depth image as REP 118 and depth_image_proc do: `16UC1`
  in millimetres (0 = no reading) or `32FC1` in metres (0, NaN, inf = no reading).
* `depth_at` takes, for each track, the median of the valid depths in a small window
  around it. A depth image of another size than the colour image is looked up at the
  track's position scaled to the depth image (nearest pixel, no interpolation across
  depth edges).
* `back_project` turns positions and depths into points of the image's optical frame
  (x right, y down, z forward, metres) with the pinhole matrix K of CameraInfo. Mind
  the pixel conventions: tracks use TAPIR's raster (pixel centres at +0.5), K uses
  OpenCV's (the top-left pixel's centre at 0, 0), so u = x - 0.5. Like
  depth_image_proc, it uses K only: give it rectified images (or ones whose
  distortion is negligible).
* `CameraModel` reads a calibration file in the ROS camera_calibration format, or
  makes a pinhole model from an image size and a field of view.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

DEPTH_ENCODINGS = ("16UC1", "32FC1")
DEFAULT_FOV_DEG = 60.0  # horizontal field of view of the pinhole model made from an image size
# A depth stream with an image stamped within this long before a frame is alive: worth waiting for.
STREAM_ALIVE_NS = 1_000_000_000


class DepthError(ValueError):
    """A depth image or camera model that cannot be used; the message says what was found."""


# ---------------------------------------------------------------------------- depth images

def depth_in_metres(depth: np.ndarray, encoding: str) -> np.ndarray:
    """float32 [H, W] metres with NaN where there is no reading."""
    depth = np.asarray(depth)
    if encoding not in DEPTH_ENCODINGS:
        raise DepthError(f"unsupported depth encoding '{encoding}'; expected {' or '.join(DEPTH_ENCODINGS)} "
                         "(REP 118: 16UC1 millimetres, 32FC1 metres)")
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[:, :, 0]
    if depth.ndim != 2 or depth.size == 0:
        raise DepthError(f"expected a depth image [H, W], got shape {tuple(depth.shape)}")
    if encoding == "16UC1":
        if depth.dtype != np.uint16:
            raise DepthError(f"16UC1 depth must be uint16 millimetres, got {depth.dtype}")
        metres = depth.astype(np.float32) / np.float32(1000.0)
        metres[depth == 0] = np.nan
        return metres
    if depth.dtype != np.float32:
        raise DepthError(f"32FC1 depth must be float32 metres, got {depth.dtype}")
    metres = depth.astype(np.float32, copy=True)
    metres[~np.isfinite(metres) | (metres <= 0)] = np.nan
    return metres


def depth_at(depth_m: np.ndarray, xy: np.ndarray, window: int,
             colour_size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """float32 [K]: the median of the valid depths in a `window` x `window` pixel window
    around each track; NaN where the window holds none or the track is outside the image.

    xy: float32 [K, 2] track positions (TAPIR raster) in the colour image of `colour_size`
    (height, width); default: the depth image's own size.
    """
    if window < 1:
        raise DepthError(f"depth window must be >= 1 pixel, got {window}")
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    if not len(xy):
        return np.zeros(0, np.float32)
    height, width = depth_m.shape
    if colour_size is not None and tuple(colour_size) != (height, width):
        xy = xy * [width / colour_size[1], height / colour_size[0]]
    with np.errstate(invalid="ignore"):
        # The pixel holding each position: pixel i spans [i, i + 1) in TAPIR's raster.
        cols, rows = np.floor(xy[:, 0]), np.floor(xy[:, 1])
        inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    cols, rows = np.where(inside, cols, 0), np.where(inside, rows, 0)  # NaN/far ones are masked out
    offsets = np.arange(window) - (window - 1) // 2
    col_grid = cols[:, None, None] + offsets[None, None, :]
    row_grid = rows[:, None, None] + offsets[None, :, None]
    valid = (col_grid >= 0) & (col_grid < width) & (row_grid >= 0) & (row_grid < height) & inside[:, None, None]
    values = np.full(valid.shape, np.nan, np.float32)
    values[valid] = depth_m[row_grid.astype(np.int64).clip(0, height - 1),
                            col_grid.astype(np.int64).clip(0, width - 1)][valid]
    values = values.reshape(len(xy), -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows give NaN, as intended
        return np.nanmedian(values, axis=1).astype(np.float32)


def back_project(xy: np.ndarray, z: np.ndarray, K: np.ndarray) -> np.ndarray:
    """float32 [K, 3] points (x right, y down, z forward) of positions xy [K, 2] (TAPIR
    raster) at depths z [K] (metres; NaN stays NaN) through the pinhole matrix K (3x3)."""
    K = np.asarray(K, np.float64).reshape(3, 3)
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    z = np.asarray(z, np.float64).reshape(-1)
    u, v = xy[:, 0] - 0.5, xy[:, 1] - 0.5  # TAPIR raster -> OpenCV pixel coordinates
    fx, skew, cx, fy, cy = K[0, 0], K[0, 1], K[0, 2], K[1, 1], K[1, 2]
    y_norm = (v - cy) / fy
    x_norm = (u - cx - skew * y_norm) / fx
    return np.stack([x_norm * z, y_norm * z, z], axis=-1).astype(np.float32)


def tracks_to_3d(xy: np.ndarray, depth_m: np.ndarray, K: np.ndarray, colour_size: Tuple[int, int],
                 window: int) -> np.ndarray:
    """float32 [K, 3]: each track's point in the optical frame (NaN where no depth)."""
    return back_project(xy, depth_at(depth_m, xy, window, colour_size), K)


# ---------------------------------------------------------------------------- pairing

class DepthPairing:
    """The last `capacity` depth images by stamp (ns); thread-safe (callbacks add, a worker matches)."""

    def __init__(self, capacity: int = 30):
        self.capacity = capacity
        self._items: "OrderedDict[int, Any]" = OrderedDict()
        self._condition = threading.Condition()

    def add(self, stamp_ns: int, item: Any) -> None:
        with self._condition:
            self._items[int(stamp_ns)] = item
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
            self._condition.notify_all()

    def _nearest(self, stamp_ns: int, slop_ns: int):
        if stamp_ns in self._items:
            return self._items[stamp_ns]
        best = min(self._items, key=lambda s: abs(s - stamp_ns), default=None)
        if best is not None and abs(best - stamp_ns) <= slop_ns:
            return self._items[best]
        return None

    def match(self, stamp_ns: int, slop_s: float, wait_s: float = 0.0):
        """The item stamped `stamp_ns`, else the nearest within `slop_s`, else None.

        With `wait_s`, waits up to that long for one to arrive, but not once a depth image
        stamped later than stamp + slop is in (they come in order: none will match then).
        """
        slop_ns = int(round(slop_s * 1e9))
        with self._condition:
            found = self._condition.wait_for(
                lambda: self._nearest(stamp_ns, slop_ns) is not None
                or any(s > stamp_ns + slop_ns for s in self._items), timeout=wait_s)
            return self._nearest(stamp_ns, slop_ns) if found else None

    @property
    def latest_stamp(self) -> Optional[int]:
        """The newest stamp held (ns), or None."""
        with self._condition:
            return max(self._items, default=None)

    def clear(self) -> None:
        with self._condition:
            self._items.clear()


class Tracks3D:
    """A stream's tracks_3d: each colour frame's depth image (by stamp) and its tracks in 3D.

    Callbacks `add` the depth images (as anything: the node keeps the messages and
    converts only the paired ones); the worker `pair`s a frame with one, then turns the
    frame's tracks into `points`. slop_s, window and wait_s may change at any time.
    """

    def __init__(self, slop_s: float, window: int, wait_s: float, capacity: int = 30):
        self.pairing = DepthPairing(capacity)
        self.slop_s, self.window, self.wait_s = slop_s, window, wait_s
        self._noted: set = set()  # the kinds of note already given

    def add(self, stamp_ns: int, depth: Any) -> None:
        self.pairing.add(stamp_ns, depth)

    def pair(self, stamp_ns: int, publisher: bool = False) -> Any:
        """The depth image for the frame stamped `stamp_ns` (`DepthPairing.match` within
        slop_s), or None. It waits up to wait_s for one still on its way only while the depth
        stream is alive (an image within the last second), or, before the first depth image,
        while a depth publisher is there (`publisher`): else waiting would only slow every
        frame down."""
        latest = self.pairing.latest_stamp
        alive = publisher if latest is None else stamp_ns - latest < STREAM_ALIVE_NS
        return self.pairing.match(stamp_ns, self.slop_s, wait_s=self.wait_s if alive else 0.0)

    def points(self, xy: np.ndarray, frame_size: Tuple[int, int], depth_m: np.ndarray,
               camera: CameraModel) -> Tuple[np.ndarray, List[str]]:
        """(float32 [K, 3] points of the tracks at `xy` in a frame of (height, width), NaN where
        no depth; the notes on what was adapted that were not given before, for the log).

        A depth image of another size is looked up at the scaled positions, a camera model of
        another size is scaled to the frame, and distortion is ignored (K only, as
        depth_image_proc does)."""
        size = tuple(frame_size)
        notes = []
        if depth_m.shape != size:
            notes.append(("depth_size", f"the depth image is {depth_m.shape[1]}x{depth_m.shape[0]}, the "
                          f"colour image {size[1]}x{size[0]}: looking depths up at the scaled positions"))
        if camera.width and camera.height and (camera.height, camera.width) != size:
            notes.append(("info_size", camera_size_note((camera.height, camera.width), size)))
            camera = camera.scaled_to(size)
        if np.any(camera.D != 0):
            notes.append(("distortion", "camera_info has distortion coefficients: tracks_3d use K "
                          "only (as depth_image_proc does); feed rectified images for exact points"))
        new = [message for kind, message in notes if kind not in self._noted]
        self._noted.update(kind for kind, _ in notes)
        return tracks_to_3d(xy, depth_m, camera.K, size, self.window), new


# ---------------------------------------------------------------------------- camera models

@dataclass
class CameraModel:
    """What a sensor_msgs/CameraInfo holds, as arrays (OpenCV's pixel convention)."""

    width: int
    height: int
    K: np.ndarray  # 3x3
    D: np.ndarray = field(default_factory=lambda: np.zeros(5))
    distortion_model: str = "plumb_bob"
    R: np.ndarray = field(default_factory=lambda: np.eye(3))
    P: Optional[np.ndarray] = None  # 3x4; default [K | 0]
    name: str = ""

    def __post_init__(self):
        self.K = np.asarray(self.K, np.float64).reshape(3, 3)
        self.D = np.asarray(self.D, np.float64).reshape(-1)
        self.R = np.asarray(self.R, np.float64).reshape(3, 3)
        self.P = (np.concatenate([self.K, np.zeros((3, 1))], axis=1) if self.P is None
                  else np.asarray(self.P, np.float64).reshape(3, 4))
        if self.width <= 0 or self.height <= 0 or self.K[0, 0] <= 0 or self.K[1, 1] <= 0:
            raise DepthError(f"camera model needs a positive size and focal lengths, got "
                             f"{self.width}x{self.height}, fx={self.K[0, 0]}, fy={self.K[1, 1]}")

    @classmethod
    def pinhole(cls, size: Tuple[int, int], fov_deg: float = DEFAULT_FOV_DEG) -> "CameraModel":
        """An ideal pinhole camera for an image of (height, width): square pixels, the principal
        point at the image centre ((W - 1) / 2, (H - 1) / 2 in OpenCV's convention) and a
        horizontal field of view of `fov_deg`."""
        height, width = size
        if not 0 < fov_deg < 180:
            raise DepthError(f"field of view must be in (0, 180) degrees, got {fov_deg}")
        focal = (width / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
        K = [[focal, 0, (width - 1) / 2.0], [0, focal, (height - 1) / 2.0], [0, 0, 1]]
        return cls(width=int(width), height=int(height), K=K, name="pinhole")

    @classmethod
    def from_yaml(cls, path) -> "CameraModel":
        """A calibration file in the ROS camera_calibration format (image_width,
        image_height, camera_name, camera_matrix, distortion_model,
        distortion_coefficients, rectification_matrix, projection_matrix)."""
        import yaml

        try:
            with open(path) as file:
                data = yaml.safe_load(file)
        except OSError as error:
            raise DepthError(f"cannot read camera calibration {path}: {error.strerror or error}") from None
        except yaml.YAMLError as error:
            raise DepthError(f"camera calibration {path} is not valid YAML: {error}") from None
        if not isinstance(data, dict):
            raise DepthError(f"camera calibration {path}: expected a mapping with image_width, "
                             "image_height, camera_matrix, ...")

        def matrix(name: str, rows: int, cols: int, required: bool = True):
            entry = data.get(name)
            if entry is None:
                if required:
                    raise DepthError(f"camera calibration {path} lacks {name} (the camera_calibration "
                                     "format: {rows, cols, data})")
                return None
            values = entry.get("data") if isinstance(entry, dict) else None
            if values is None or (rows * cols and len(values) != rows * cols):
                raise DepthError(f"camera calibration {path}: {name} must hold {rows}x{cols} numbers in "
                                 f"'data', found {values!r}")
            return np.asarray(values, np.float64)

        for key in ("image_width", "image_height"):
            if not isinstance(data.get(key), int):
                raise DepthError(f"camera calibration {path}: {key} must be an integer, found "
                                 f"{data.get(key)!r}")
        distortion = data.get("distortion_coefficients") or {}
        return cls(width=data["image_width"], height=data["image_height"], K=matrix("camera_matrix", 3, 3),
                   D=np.asarray(distortion.get("data") or [], np.float64),
                   distortion_model=str(data.get("distortion_model") or "plumb_bob"),
                   R=_or_default(matrix("rectification_matrix", 3, 3, False), np.eye(3)),
                   P=matrix("projection_matrix", 3, 4, False), name=str(data.get("camera_name") or ""))

    def scaled_to(self, size: Tuple[int, int]) -> "CameraModel":
        """The model of the same camera with its images resized to (height, width)."""
        height, width = size
        if (height, width) == (self.height, self.width):
            return self
        sx, sy = width / self.width, height / self.height
        # OpenCV's convention: pixel centres at integers, so a resize maps u -> (u + 0.5) s - 0.5.
        scale = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
        return CameraModel(width=width, height=height, K=scale @ self.K, D=self.D,
                           distortion_model=self.distortion_model, R=self.R, P=scale @ self.P,
                           name=self.name)


def _or_default(value, default):
    return default if value is None else value


def camera_size_note(model_size: Sequence[int], image_size: Sequence[int]) -> str:
    """A warning text when camera_info's size differs from the image's ('' when it does not)."""
    if tuple(model_size) == tuple(image_size):
        return ""
    return (f"camera_info is for {model_size[1]}x{model_size[0]} images but the colour image is "
            f"{image_size[1]}x{image_size[0]}: scaling K to it")
