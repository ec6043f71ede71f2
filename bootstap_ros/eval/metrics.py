"""TAP-Vid metrics: occlusion accuracy, pts_within_X, Jaccard_X and their averages.

This module owns the metric definitions, computed per video and then averaged
over videos with a plain mean, as in the TAP-Vid papers. It is numpy-only.

All positions are in the evaluation raster (256 x 256 for the paper numbers),
so the thresholds 1, 2, 4, 8 and 16 are pixels of that raster. Scored frames:

- ``first``: only frames after the query frame (the query is the first visible
  point, so earlier frames are known to be occluded and are not scored);
- ``strided``: every frame except the query frame.

Definitions, for each threshold d over the scored frames of all queries:
  within   = |pred - gt| < d (strictly, Euclidean)
  pts_within_d = #(gt visible & within) / #(gt visible)
  jaccard_d    = TP / (#(gt visible) + FP), with
                 TP = pred visible & gt visible & within,
                 FP = pred visible & (gt occluded | not within)
  occlusion_accuracy = #(pred occluded == gt occluded) / #(scored)
A ratio with nothing to count is NaN, and a NaN propagates into the mean.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

THRESHOLDS = (1, 2, 4, 8, 16)
QUERY_MODES = ("first", "strided")
METRIC_NAMES = (
    "average_jaccard",
    "average_pts_within_thresh",
    "occlusion_accuracy",
    *(f"jaccard_{d}" for d in THRESHOLDS),
    *(f"pts_within_{d}" for d in THRESHOLDS),
)


def evaluation_mask(query_points: np.ndarray, num_frames: int, query_mode: str) -> np.ndarray:
    """Which (query, frame) pairs are scored: bool [N, T]."""
    query_frames = np.round(np.asarray(query_points)[:, 0]).astype(np.int64)
    frames = np.arange(num_frames)
    if query_mode == "first":
        return frames[None, :] > query_frames[:, None]
    if query_mode == "strided":
        return frames[None, :] != query_frames[:, None]
    raise ValueError(f"query_mode must be one of {QUERY_MODES}, got {query_mode!r}")


def _ratio(numerator: int, denominator: int) -> float:
    return float(numerator) / float(denominator) if denominator else float("nan")


def compute_video_metrics(
    query_points: np.ndarray,
    gt_occluded: np.ndarray,
    gt_tracks: np.ndarray,
    pred_occluded: np.ndarray,
    pred_tracks: np.ndarray,
    query_mode: str,
    frames: np.ndarray | None = None,
) -> dict[str, float]:
    """TAP-Vid metrics of one video.

    Args:
      query_points: [N, 3] queries (t, y, x); only t is used.
      gt_occluded: bool [N, T].
      gt_tracks: [N, T, 2] x, y.
      pred_occluded: bool [N, T].
      pred_tracks: [N, T, 2] x, y.
      query_mode: "first" or "strided".
      frames: optional bool [T]: score only these frames (e.g. the frames a real-time
        tracker answered); all by default.

    Returns:
      A dict with every name in ``METRIC_NAMES``, as floats in [0, 1] (NaN
      where a ratio has nothing to count).
    """
    gt_occluded = np.asarray(gt_occluded, dtype=bool)
    pred_occluded = np.asarray(pred_occluded, dtype=bool)
    # Keep the callers' dtypes: distances are computed at numpy's promoted
    # precision, exactly as the official code does (float64 ground truth from
    # the readers makes that float64), so threshold ties resolve the same way.
    gt_tracks = np.asarray(gt_tracks)
    pred_tracks = np.asarray(pred_tracks)
    num_queries, num_frames = gt_occluded.shape
    expected = {
        "query_points": (np.shape(query_points), (num_queries, 3)),
        "gt_tracks": (gt_tracks.shape, (num_queries, num_frames, 2)),
        "pred_occluded": (pred_occluded.shape, (num_queries, num_frames)),
        "pred_tracks": (pred_tracks.shape, (num_queries, num_frames, 2)),
    }
    for name, (found, wanted) in expected.items():
        if tuple(found) != wanted:
            raise ValueError(f"{name} has shape {tuple(found)}, expected {wanted} (from gt_occluded)")

    scored = evaluation_mask(query_points, num_frames, query_mode)
    if frames is not None:
        scored = scored & np.asarray(frames, bool).reshape(1, num_frames)
    gt_visible = ~gt_occluded & scored
    pred_visible = ~pred_occluded & scored
    num_gt_visible = int(gt_visible.sum())

    metrics = {
        "occlusion_accuracy": _ratio(
            np.count_nonzero((pred_occluded == gt_occluded) & scored), np.count_nonzero(scored)
        )
    }
    squared_distance = np.sum(np.square(pred_tracks - gt_tracks), axis=-1)
    for threshold in THRESHOLDS:
        within = squared_distance < threshold**2
        correct = gt_visible & within
        true_positives = np.count_nonzero(correct & pred_visible)
        false_positives = np.count_nonzero(pred_visible & ~(gt_visible & within))
        metrics[f"pts_within_{threshold}"] = _ratio(np.count_nonzero(correct), num_gt_visible)
        metrics[f"jaccard_{threshold}"] = _ratio(true_positives, num_gt_visible + false_positives)
    metrics["average_jaccard"] = float(np.mean([metrics[f"jaccard_{d}"] for d in THRESHOLDS]))
    metrics["average_pts_within_thresh"] = float(
        np.mean([metrics[f"pts_within_{d}"] for d in THRESHOLDS])
    )
    return {name: metrics[name] for name in METRIC_NAMES}


def mean_over_videos(per_video: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Plain mean of each metric over videos (every video weighs the same)."""
    per_video = list(per_video)
    if not per_video:
        return {name: float("nan") for name in METRIC_NAMES}
    return {name: float(np.mean([video[name] for video in per_video])) for name in METRIC_NAMES}
