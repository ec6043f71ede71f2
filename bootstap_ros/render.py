"""Drawing point tracks on frames: the visual check of what the tracker did.

Visible points are filled discs; occluded points are hollow rings of the same
colour, so the two states stay distinguishable in any colour. Each point trails
a short line through its last few visible positions that fades with age. A
point's colour depends only on its id (`colors_for_ids`), so it keeps its colour
across frames and across runs. Positions that are NaN (a point before its
query frame) are not drawn.

Positions use the raster convention of `bootstap_ros.queries`: pixel (i, j) has
its centre at (i + 0.5, j + 0.5). OpenCV puts pixel centres at integers, hence
the half-pixel shift in `_to_cv`. Drawing is sub-pixel (fixed point with
`_SHIFT` fractional bits) and anti-aliased. All functions are pure: they
return new frames and keep no state. `Trails` is the one thing with state: a live
stream's last positions per point id, as `draw_tracks` takes them for trails.
"""

from __future__ import annotations

from collections import deque
from typing import Dict, Iterable, Optional

import cv2
import numpy as np

from bootstap_ros.video import VideoWriter

_SHIFT = 4  # fractional bits of OpenCV's fixed-point drawing coordinates
_GOLDEN_RATIO_CONJUGATE = 0.6180339887498949


def colors_for_ids(ids) -> np.ndarray:
    """A distinct, stable RGB colour per point id: uint8 ``[N, 3]``.

    Hues step around the HSV wheel by the golden ratio, so consecutive ids get
    far-apart hues and an id's colour does not depend on how many points exist.
    """
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if not len(ids):  # cvtColor rejects an empty image
        return np.zeros((0, 3), np.uint8)
    hues = (ids * _GOLDEN_RATIO_CONJUGATE) % 1.0
    hsv = np.empty((1, len(ids), 3), dtype=np.uint8)
    hsv[0, :, 0] = np.minimum(np.round(hues * 180), 179)  # OpenCV hue is 0..179
    hsv[0, :, 1] = 220
    hsv[0, :, 2] = 255
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]


def default_radius(size) -> int:
    """Marker radius in pixels for an image of ``(height, width)``: 3 at 256, 8 at 1080.

    Three pixels is the smallest radius at which a ring still shows its hole.
    """
    return max(3, round(min(size) / 128))


def draw_tracks(frame_rgb: np.ndarray, xy: np.ndarray, visible: np.ndarray,
                trail: Optional[np.ndarray] = None, colors: Optional[np.ndarray] = None,
                radius: Optional[int] = None) -> np.ndarray:
    """Draws the points of one frame onto a copy of it.

    Args:
      frame_rgb: uint8 ``[H, W, 3]``; not modified.
      xy: float ``[N, 2]`` pixel positions ``(x, y)``; NaN rows are skipped.
      visible: bool ``[N]``: filled disc when True, hollow ring when False.
      trail: optional float ``[N, K, 2]``: each point's positions over the last
        K frames, oldest first, ending at this frame. NaN entries (occluded or
        not yet tracked) break the trail; a segment is drawn only between two
        consecutive finite entries, and older segments are fainter.
      colors: uint8 ``[N, 3]`` RGB, by default ``colors_for_ids(range(N))``.
      radius: marker radius in pixels, by default `default_radius` of the frame.

    Returns:
      A new uint8 ``[H, W, 3]`` frame.
    """
    frame = np.array(frame_rgb, order="C", copy=True)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"frame must be uint8 [H, W, 3] RGB, got {frame.dtype} {frame.shape}")
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    visible = np.asarray(visible, dtype=bool).reshape(-1)
    num_points = len(xy)
    if len(visible) != num_points:
        raise ValueError(f"visible has {len(visible)} entries for {num_points} points")
    colors = colors_for_ids(np.arange(num_points)) if colors is None else np.asarray(colors)
    if colors.shape != (num_points, 3):
        raise ValueError(f"colors must be [{num_points}, 3], got {colors.shape}")
    radius = default_radius(frame.shape[:2]) if radius is None else radius
    thickness = max(1, radius // 2)

    if trail is not None:
        trail = np.asarray(trail, dtype=np.float64)
        if trail.ndim != 3 or trail.shape[0] != num_points or trail.shape[2] != 2:
            raise ValueError(f"trail must be [{num_points}, K, 2], got {trail.shape}")
        _draw_trails(frame, trail, colors, thickness)

    for point in range(num_points):
        if not np.isfinite(xy[point]).all():
            continue
        color = _cv_color(colors[point])
        centre = _to_cv(xy[point])
        if visible[point]:
            cv2.circle(frame, centre, radius << _SHIFT, color, cv2.FILLED,
                       cv2.LINE_AA, _SHIFT)
        else:
            # A ring leaves the centre untouched: occlusion reads at a glance.
            cv2.circle(frame, centre, radius << _SHIFT, color, thickness,
                       cv2.LINE_AA, _SHIFT)
    return frame


def _draw_trails(frame: np.ndarray, trail: np.ndarray, colors: np.ndarray,
                 thickness: int) -> None:
    """Draws trail segments in place, one blended layer per age."""
    num_segments = trail.shape[1] - 1
    for age in range(num_segments):  # oldest first, so newer segments end on top
        start, end = trail[:, age], trail[:, age + 1]
        drawn = np.isfinite(start).all(axis=1) & np.isfinite(end).all(axis=1)
        if not drawn.any():
            continue
        # Blend only the box around this layer's segments: a full-frame copy per
        # age would dominate the cost on large frames.
        corners = np.concatenate([start[drawn], end[drawn]])
        pad = thickness + 2
        x0, y0 = np.maximum(np.floor(corners.min(axis=0)).astype(int) - pad, 0)
        x1, y1 = np.ceil(corners.max(axis=0)).astype(int) + pad
        x1, y1 = min(x1, frame.shape[1]), min(y1, frame.shape[0])
        if x0 >= x1 or y0 >= y1:
            continue
        region = frame[y0:y1, x0:x1]
        layer = region.copy()
        offset = np.array([x0, y0], dtype=np.float64)
        for point in np.flatnonzero(drawn):
            cv2.line(layer, _to_cv(start[point] - offset), _to_cv(end[point] - offset),
                     _cv_color(colors[point]), thickness, cv2.LINE_AA, _SHIFT)
        opacity = (age + 1) / num_segments
        cv2.addWeighted(layer, opacity, region, 1.0 - opacity, 0.0, dst=region)


def _to_cv(xy) -> tuple:
    """Raster (x, y) to OpenCV fixed-point coordinates (pixel centres at integers)."""
    scale = 1 << _SHIFT
    return (int(round((xy[0] - 0.5) * scale)), int(round((xy[1] - 0.5) * scale)))


def _cv_color(rgb) -> tuple:
    return tuple(int(channel) for channel in rgb)


class Trails:
    """The last `length` positions of each live point of a stream, for `draw_tracks`.

    A position is NaN where the point was not visible; a point missing from a frame is
    forgotten. `length` may change at any time: each point keeps its latest positions.
    """

    def __init__(self, length: int):
        self.length = length
        self._history: Dict[int, deque] = {}

    def update(self, ids, xy, visible) -> Optional[np.ndarray]:
        """Add a frame's points (ids [N], xy [N, 2], visible [N]) and return their trails:
        float ``[N, length, 2]``, oldest first, NaN before a point's first position; None
        (and nothing kept) when `length` is 0 or 1."""
        length = self.length
        if length <= 1:
            return None
        ids = np.asarray(ids).reshape(-1).tolist()
        history = {}
        for point_id, position, seen in zip(ids, xy, visible):
            past = self._history.get(point_id) or deque(maxlen=length)
            if past.maxlen != length:
                past = deque(past, maxlen=length)
            past.append(position if seen else (np.nan, np.nan))
            history[point_id] = past
        self._history = history
        trail = np.full((len(ids), length, 2), np.nan)
        for row, point_id in enumerate(ids):
            past = np.asarray(history[point_id], np.float64)
            trail[row, length - len(past):] = past
        return trail


def render_video(frames: Iterable[np.ndarray], tracks: np.ndarray, occluded: np.ndarray,
                 path, fps: float, trail: int = 8, colors: Optional[np.ndarray] = None) -> int:
    """Draws tracks on every frame and writes the result with `VideoWriter`.

    Args:
      frames: uint8 RGB frames ``[H, W, 3]``, exactly T of them.
      tracks: float ``[N, T, 2]`` pixel positions ``(x, y)``, NaN where unknown.
      occluded: bool ``[N, T]``.
      path: an .mp4 (or other video suffix) path, or a folder for PNG frames.
      fps: frames per second of the output video.
      trail: how many frames of history the trail spans (0 or 1: no trail).
      colors: uint8 ``[N, 3]`` RGB, by default ``colors_for_ids(range(N))``.

    Returns:
      The number of frames written.
    """
    tracks = np.asarray(tracks, dtype=np.float64)
    occluded = np.asarray(occluded, dtype=bool)
    if tracks.ndim != 3 or tracks.shape[2] != 2 or occluded.shape != tracks.shape[:2]:
        raise ValueError(f"expected tracks [N, T, 2] and occluded [N, T], got "
                         f"{tracks.shape} and {occluded.shape}")
    num_points, num_frames = occluded.shape
    if colors is None:
        colors = colors_for_ids(np.arange(num_points))
    # The trail follows visible positions only.
    visible_tracks = np.where(occluded[..., None], np.nan, tracks)

    count = 0
    with VideoWriter(path, fps) as writer:
        for t, frame in enumerate(frames):
            if t >= num_frames:
                raise ValueError(f"more frames than the {num_frames} frames of tracks")
            history = visible_tracks[:, max(0, t - trail + 1):t + 1] if trail > 1 else None
            writer.write(draw_tracks(frame, tracks[:, t], ~occluded[:, t], history, colors))
            count += 1
    if count != num_frames:
        raise ValueError(f"tracks cover {num_frames} frames but only {count} frames came")
    return count
