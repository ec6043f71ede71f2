"""A classical baseline: pyramidal Lucas-Kanade tracking with OpenCV.

This module owns the baseline tracker used to sanity-check the evaluation
pipeline without a network. Each point starts at its query frame and is
tracked frame to frame with ``cv2.calcOpticalFlowPyrLK``. A point is lost when
OpenCV reports failure, when tracking the new position back to the previous
frame misses the old one by more than ``max_forward_backward_error`` pixels,
or when it leaves the image; a lost point stays occluded from then on at its
last position. It tracks forward only: the evaluation runs it on the reversed
video for frames before the query frame (see ``predictors.predict_tracks``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class LKConfig:
    """Lucas-Kanade settings (pixels of the evaluation raster)."""

    window_size: int = 21
    pyramid_levels: int = 3
    max_iterations: int = 30
    epsilon: float = 0.01
    max_forward_backward_error: float = 1.0


class LucasKanadePredictor:
    """Forward-only point tracker with the evaluation's ``Predictor`` interface."""

    forward_only = True

    def __init__(self, config: LKConfig | None = None):
        self.config = config or LKConfig()
        self._lk_params = dict(
            winSize=(self.config.window_size, self.config.window_size),
            maxLevel=self.config.pyramid_levels,
            criteria=(
                cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS,
                self.config.max_iterations,
                self.config.epsilon,
            ),
        )

    def _track(self, previous: np.ndarray, current: np.ndarray, points: np.ndarray):
        """Track [M, 2] OpenCV-convention points; return new points and a keep mask."""
        start = points.reshape(-1, 1, 2).astype(np.float32)
        moved, status, _ = cv2.calcOpticalFlowPyrLK(previous, current, start, None, **self._lk_params)
        back, back_status, _ = cv2.calcOpticalFlowPyrLK(current, previous, moved, None, **self._lk_params)
        moved, back = moved.reshape(-1, 2), back.reshape(-1, 2)
        height, width = previous.shape
        error = np.linalg.norm(back - points, axis=-1)
        # Pixel centres are at integers here, so the image spans [-0.5, size - 0.5).
        inside = (
            (moved[:, 0] >= -0.5) & (moved[:, 0] < width - 0.5)
            & (moved[:, 1] >= -0.5) & (moved[:, 1] < height - 0.5)
        )
        keep = (
            (status.ravel() == 1)
            & (back_status.ravel() == 1)
            & (error <= self.config.max_forward_backward_error)
            & inside
        )
        return moved, keep

    def predict(self, video: np.ndarray, query_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Track queries (t, y, x) through uint8 [T, H, W, 3] video.

        Returns tracks float32 [N, T, 2] (x, y) and occluded bool [N, T]; frames
        before a point's query frame are occluded at the query position.
        """
        num_frames = len(video)
        query_points = np.asarray(query_points, dtype=np.float32).reshape(-1, 3)
        query_frames = np.round(query_points[:, 0]).astype(np.int64)
        if np.any((query_frames < 0) | (query_frames >= num_frames)):
            raise ValueError(f"query frames must lie in [0, {num_frames}), got {query_frames.tolist()}")
        # TAP-Vid raster coordinates put pixel centres at i + 0.5, OpenCV at i.
        positions = query_points[:, [2, 1]] - 0.5
        tracks = np.repeat(query_points[:, None, [2, 1]], num_frames, axis=1)
        occluded = np.ones(tracks.shape[:2], dtype=bool)
        started = np.zeros(len(query_points), bool)
        alive = np.zeros(len(query_points), bool)

        gray_previous = None
        for frame in range(num_frames):
            gray = cv2.cvtColor(np.ascontiguousarray(video[frame]), cv2.COLOR_RGB2GRAY)
            tracked = np.flatnonzero(alive)
            if tracked.size:
                moved, keep = self._track(gray_previous, gray, positions[tracked])
                positions[tracked[keep]] = moved[keep]
                alive[tracked[~keep]] = False
            starting = query_frames == frame
            started |= starting
            alive |= starting
            # Lost points keep the last position they were tracked to.
            tracks[started, frame] = positions[started] + 0.5
            occluded[alive, frame] = False
            gray_previous = gray
        return tracks.astype(np.float32), occluded
