"""The predictor protocol of the evaluation, the model's predictor, and how a video is run through it.

This module owns the contract between the evaluation and a tracker, and the
time-reversal trick that lets a forward-only (causal, online) tracker answer
strided queries: it tracks forward from each query frame, and for the frames
before it, runs again on the reversed video, where query frame ``t`` becomes
``T - 1 - t``, and merges the two.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Predictor(Protocol):
    """A point tracker as seen by the evaluation.

    ``predict`` takes the evaluation video, uint8 [T, R, R, 3], and queries,
    float32 [N, 3] as (t, y, x) in that raster, and returns tracks float32
    [N, T, 2] as (x, y) in the same raster and occluded bool [N, T].

    ``forward_only`` is True for a tracker whose output is only meaningful from
    each query frame on (a causal tracker run online, Lucas-Kanade); the
    evaluation then fills the earlier frames itself (see ``predict_tracks``).
    """

    forward_only: bool

    def predict(self, video: np.ndarray, query_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ...


def _call(predictor, video: np.ndarray, query_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tracks, occluded = predictor.predict(video, query_points)
    tracks = np.asarray(tracks, dtype=np.float32)
    occluded = np.asarray(occluded, dtype=bool)
    wanted = (len(query_points), len(video))
    if tracks.shape != (*wanted, 2) or occluded.shape != wanted:
        raise ValueError(
            f"{type(predictor).__name__}.predict returned tracks {tracks.shape} and occluded "
            f"{occluded.shape}; expected {(*wanted, 2)} and {wanted} for {wanted[0]} queries "
            f"and {wanted[1]} frames"
        )
    return tracks, occluded


def predict_tracks(
    predictor, video: np.ndarray, query_points: np.ndarray, query_mode: str
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``predictor`` on one video for the given query mode.

    A predictor that is not ``forward_only`` is called once and its output is
    used as is. For a forward-only predictor:

    - frames from the query frame on come from the forward call;
    - in ``strided`` mode, frames before the query frame come from a second
      call on the time-reversed video, with only the queries that have such
      frames, each at frame ``T - 1 - t``;
    - in ``first`` mode those frames are not scored, so no backward call is
      made: they are reported occluded, at the query position.

    Returns:
      tracks float32 [N, T, 2] (x, y) and occluded bool [N, T].
    """
    query_points = np.asarray(query_points, dtype=np.float32).reshape(-1, 3)
    num_frames = len(video)
    if len(query_points) == 0:
        return np.zeros((0, num_frames, 2), np.float32), np.zeros((0, num_frames), bool)
    tracks, occluded = _call(predictor, video, query_points)
    if not getattr(predictor, "forward_only", False):
        return tracks, occluded

    query_frames = np.round(query_points[:, 0]).astype(np.int64)
    before_query = np.arange(num_frames)[None, :] < query_frames[:, None]  # [N, T]
    needs_backward = np.zeros(len(query_points), bool)
    if query_mode == "strided":
        needs_backward = query_frames > 0

    if needs_backward.any():
        reversed_queries = query_points[needs_backward].copy()
        reversed_queries[:, 0] = num_frames - 1 - query_frames[needs_backward]
        reversed_video = np.ascontiguousarray(video[::-1])
        back_tracks, back_occluded = _call(predictor, reversed_video, reversed_queries)
        # Reversed frame s is original frame T - 1 - s.
        back_tracks, back_occluded = back_tracks[:, ::-1], back_occluded[:, ::-1]
        use_back = before_query[needs_backward]
        tracks[needs_backward] = np.where(use_back[..., None], back_tracks, tracks[needs_backward])
        occluded[needs_backward] = np.where(use_back, back_occluded, occluded[needs_backward])

    unscored = before_query & ~needs_backward[:, None]
    query_xy = query_points[:, [2, 1]]  # (t, y, x) -> (x, y)
    tracks[unscored] = np.broadcast_to(query_xy[:, None, :], tracks.shape)[unscored]
    occluded[unscored] = True
    return tracks, occluded


class ModelPredictor:
    """BootsTAPIR through the project's tracking code: online as the ROS node runs it
    (each point added on its query frame, causal state from zero), or offline
    (the whole-clip forward with the query points given)."""

    def __init__(self, model, mode: str, device: str, backend: str = "auto", precision: str = "auto"):
        self.model = model
        self.mode = mode
        self.device = device
        self.backend = backend
        self.precision = precision
        self.forward_only = mode == "online"

    def predict(self, video, query_points):
        from bootstap_ros.tracking import track_offline, track_online

        queries = query_points[:, [0, 2, 1]]  # (t, y, x) -> the engine's (t, x, y)
        if self.forward_only:
            result = track_online(self.model, video, queries, device=self.device, backend=self.backend,
                                  precision=self.precision)
        else:
            result = track_offline(self.model, video, queries, device=self.device)
        return result.tracks, result.occluded
