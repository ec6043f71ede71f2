"""Readers for the published TAP-Vid / RoboTAP pickles and TAP-Vid query sampling.

This module owns turning a dataset file into evaluation samples: loading and
checking the pickles, resizing the videos to the evaluation raster, scaling the
ground truth and sampling query points exactly as the official TAP-Vid
evaluation does. It is numpy-only (Pillow is imported when a video has to be
resized).

Layouts (all videos uint8 [T, H, W, 3], points float32 [N, T, 2] as x, y in
[0, 1], occluded bool [N, T]):

- ``davis``: one pickle holding a dict ``name -> {"video", "points", "occluded"}``.
- ``robotap``: the same dict layout, split over ``robotap_split*.pkl`` files in
  a folder (read in sorted order), or one of those files on its own.
- ``rgb_stacking``: one pickle holding a list of such dicts; a video's name is
  its list index as a string.

Coordinates follow TAP-Vid: a raster coordinate ``x`` in a frame ``R`` pixels
wide is ``x_unit * R``, so pixel ``i`` spans ``[i, i + 1)``. Queries are
``[t, y, x]``; tracks are ``[x, y]``.

Pickles can run code when loaded: read only dataset files you trust.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

FORMATS = ("robotap", "davis", "rgb_stacking")
QUERY_MODES = ("first", "strided")
# The official evaluation samples strided queries every 5 frames.
QUERY_STRIDE = 5
ROBOTAP_SPLIT_GLOB = "robotap_split*.pkl"
_REQUIRED_KEYS = ("video", "points", "occluded")
# Visible points lie in [0, 1]; beyond this they are taken for pixels (even a 2-pixel-wide
# frame would put them there), well clear of rounding at the borders.
_MAX_UNIT_COORDINATE = 1.5


class DatasetFormatError(ValueError):
    """A dataset file that cannot be read or does not have the published layout.

    The message names the file, the video (when one is at fault) and what is
    wrong; ``path`` and ``video`` are kept as attributes for callers.
    """

    def __init__(self, path: str, problem: str, video: str | None = None):
        self.path = str(path)
        self.video = video
        self.problem = problem
        where = self.path if video is None else f"{self.path}, video {video!r}"
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class EvalSample:
    """One video ready for evaluation, everything in the R x R evaluation raster.

    Attributes:
      name: video name (dict key, or list index as a string).
      video: uint8 [T, R, R, 3] RGB frames.
      query_points: float32 [Q, 3] queries as (t, y, x).
      target_points: float64 [Q, T, 2] ground truth x, y for each query.
      occluded: bool [Q, T] ground-truth occlusion for each query.
      track_ids: int64 [Q] index of the annotated track each query came from.
      source: the file the video was read from.
      original_size: (H, W) of the video before resizing.
    """

    name: str
    video: np.ndarray
    query_points: np.ndarray
    target_points: np.ndarray
    occluded: np.ndarray
    track_ids: np.ndarray
    source: str
    original_size: tuple[int, int]


# ---------------------------------------------------------------------------
# Query sampling (same points, order and edge cases as the official code).
# ---------------------------------------------------------------------------


def sample_queries_first(
    occluded: np.ndarray, points: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Query each track at its first visible frame.

    Tracks never visible are dropped; the others keep their order.

    Args:
      occluded: bool [N, T].
      points: float [N, T, 2] x, y in raster coordinates.

    Returns:
      query_points float32 [Q, 3] (t, y, x), target_points [Q, T, 2] (dtype of
      ``points``), occluded bool [Q, T], track_ids int64 [Q].
    """
    visible = ~occluded
    track_ids = np.flatnonzero(visible.any(axis=1))
    # argmax returns the first True along time: the first visible frame.
    first_frame = np.argmax(visible[track_ids], axis=1)
    xy = points[track_ids, first_frame]
    query_points = np.stack([first_frame, xy[:, 1], xy[:, 0]], axis=-1)
    return (
        query_points.astype(np.float32).reshape(-1, 3),
        points[track_ids],
        occluded[track_ids],
        track_ids.astype(np.int64),
    )


def sample_queries_strided(
    occluded: np.ndarray, points: np.ndarray, stride: int = QUERY_STRIDE
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Query every track at frames 0, stride, 2*stride, ... where it is visible.

    A track gives one query per such frame, so it may appear several times;
    queries are ordered by frame, then by track index. Tracks not visible at
    any of those frames give no query.

    Args and returns: as ``sample_queries_first``.
    """
    num_frames = occluded.shape[1]
    track_ids = []
    query_frames = []
    for frame in range(0, num_frames, stride):
        visible_here = np.flatnonzero(~occluded[:, frame])
        track_ids.append(visible_here)
        query_frames.append(np.full(visible_here.shape, frame))
    track_ids = np.concatenate(track_ids).astype(np.int64)
    query_frames = np.concatenate(query_frames)
    xy = points[track_ids, query_frames]
    query_points = np.stack([query_frames, xy[:, 1], xy[:, 0]], axis=-1)
    return (
        query_points.astype(np.float32).reshape(-1, 3),
        points[track_ids],
        occluded[track_ids],
        track_ids,
    )


def sample_queries(
    occluded: np.ndarray, points: np.ndarray, query_mode: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Dispatch to ``sample_queries_first`` or ``sample_queries_strided``."""
    if query_mode == "first":
        return sample_queries_first(occluded, points)
    if query_mode == "strided":
        return sample_queries_strided(occluded, points)
    raise ValueError(f"query_mode must be one of {QUERY_MODES}, got {query_mode!r}")


# ---------------------------------------------------------------------------
# Resizing.
# ---------------------------------------------------------------------------


def resize_video(video: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 RGB frames [T, H, W, 3] to [T, size, size, 3].

    The official readers call ``mediapy.resize_video``, which resizes every
    uint8 RGB frame with Pillow's Lanczos filter (widened when shrinking, so it
    antialiases). OpenCV's INTER_LANCZOS4 is a different kernel without that
    antialiasing, and the published numbers were measured on Pillow's pixels,
    so Pillow is used here too. Frames already at the size are left untouched,
    as the official code does.
    """
    if video.shape[1:3] == (size, size):
        return video
    from PIL import Image  # Only needed when a video is not already R x R.

    resized = np.empty((video.shape[0], size, size, 3), dtype=np.uint8)
    for index, frame in enumerate(video):
        image = Image.fromarray(np.ascontiguousarray(frame))
        resized[index] = np.asarray(image.resize((size, size), Image.Resampling.LANCZOS))
    return resized


# ---------------------------------------------------------------------------
# Reading and checking the pickles.
# ---------------------------------------------------------------------------


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of length {len(value)}"
    return f"a {type(value).__name__}"


def check_entry(entry, path: str, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check one video record and return its (video, points, occluded).

    Raises:
      DatasetFormatError: naming the file, the video and what is wrong.
    """

    def fail(problem: str):
        raise DatasetFormatError(path, problem, video=name)

    if not isinstance(entry, Mapping):
        fail(f"expected a dict with keys {list(_REQUIRED_KEYS)}, found {_describe(entry)}")
    missing = [key for key in _REQUIRED_KEYS if key not in entry]
    if missing:
        fail(f"missing key(s) {missing}; found keys {sorted(map(str, entry.keys()))}")
    video, points, occluded = (entry[key] for key in _REQUIRED_KEYS)

    if not (
        isinstance(video, np.ndarray)
        and video.dtype == np.uint8
        and video.ndim == 4
        and video.shape[-1] == 3
        and min(video.shape) > 0
    ):
        fail(f"'video' must be a non-empty uint8 array [T, H, W, 3], found {_describe(video)}")
    num_frames = video.shape[0]
    if not (
        isinstance(points, np.ndarray)
        and np.issubdtype(points.dtype, np.floating)
        and points.ndim == 3
        and points.shape[1:] == (num_frames, 2)
    ):
        fail(
            f"'points' must be a float array [N, {num_frames}, 2] (x, y in [0, 1], "
            f"{num_frames} frames as in 'video'), found {_describe(points)}"
        )
    if not (
        isinstance(occluded, np.ndarray)
        and occluded.dtype == np.bool_
        and occluded.shape == points.shape[:2]
    ):
        fail(
            f"'occluded' must be a bool array {list(points.shape[:2])} matching 'points', "
            f"found {_describe(occluded)}"
        )
    visible = points[~occluded]
    largest = float(np.abs(visible).max()) if visible.size else 0.0
    if largest > _MAX_UNIT_COORDINATE:
        height, width = video.shape[1:3]
        fail(
            f"'points' hold visible positions up to {largest:.1f}, which look like pixels: this layout "
            f"needs x, y normalised to [0, 1]; divide x by the width ({width}) and y by the height "
            f"({height}) of 'video', e.g. points / np.array([{width}, {height}], np.float32)"
        )
    return video, points, occluded


def _load_pickle(path: str):
    try:
        with open(path, "rb") as file:
            return pickle.load(file)
    except OSError:
        raise
    except Exception as error:  # Truncated or foreign pickles fail in many ways.
        raise DatasetFormatError(
            path,
            f"cannot be unpickled ({type(error).__name__}: {error}); "
            "the file is truncated or is not a TAP-Vid pickle",
        ) from error


def _format_of_loaded(path: str, data) -> str:
    if isinstance(data, Mapping):
        return "robotap" if os.path.basename(path).startswith("robotap") else "davis"
    if isinstance(data, list):
        return "rgb_stacking"
    raise DatasetFormatError(
        path, f"expected a dict (DAVIS, RoboTAP) or a list (RGB-Stacking), found {_describe(data)}"
    )


class TapVidDataset:
    """Lazily yields ``EvalSample``s from a TAP-Vid or RoboTAP pickle (or folder).

    Files are loaded one at a time and each video is resized, scaled and
    sampled only when it is reached, so memory holds one file plus one video.

    Attributes:
      path: the dataset path as given.
      files: the pickle files that will be read, in order.
      format: the resolved format; with ``fmt="auto"`` on a single file it is
        known only once the file has been loaded (``None`` before that).
    """

    def __init__(
        self,
        path: str,
        fmt: str = "auto",
        query_mode: str = "first",
        resolution: int = 256,
    ):
        if fmt != "auto" and fmt not in FORMATS:
            raise ValueError(f"format must be 'auto' or one of {FORMATS}, got {fmt!r}")
        if query_mode not in QUERY_MODES:
            raise ValueError(f"query_mode must be one of {QUERY_MODES}, got {query_mode!r}")
        if resolution < 1:
            raise ValueError(f"resolution must be positive, got {resolution}")
        self.path = str(path)
        self.query_mode = query_mode
        self.resolution = int(resolution)
        self.format: str | None = None if fmt == "auto" else fmt
        self._requested_format = fmt

        if os.path.isdir(self.path):
            if fmt not in ("auto", "robotap"):
                raise DatasetFormatError(
                    self.path, f"is a folder, which only the robotap format reads (got --format {fmt})"
                )
            names = sorted(
                name
                for name in os.listdir(self.path)
                if name.startswith("robotap_split") and name.endswith(".pkl")
            )
            if not names:
                raise DatasetFormatError(
                    self.path, f"folder has no {ROBOTAP_SPLIT_GLOB} files (found {sorted(os.listdir(self.path))[:10]})"
                )
            self.files = [os.path.join(self.path, name) for name in names]
            self.format = "robotap"
        elif os.path.isfile(self.path):
            self.files = [self.path]
        else:
            raise FileNotFoundError(f"dataset path {self.path} does not exist")

    def __iter__(self) -> Iterator[EvalSample]:
        for path in self.files:
            yield from self._read_file(path)

    def _read_file(self, path: str) -> Iterator[EvalSample]:
        data = _load_pickle(path)
        found = _format_of_loaded(path, data)
        expected = self._requested_format
        same_layout = {"robotap": "dict", "davis": "dict", "rgb_stacking": "list"}
        if expected != "auto" and same_layout[expected] != same_layout[found]:
            raise DatasetFormatError(
                path,
                f"--format {expected} expects a {same_layout[expected]} of videos, "
                f"found {_describe(data)}",
            )
        if self.format is None:
            self.format = found

        if isinstance(data, Mapping):
            # Insertion order, as the official reader; pop so that videos
            # already evaluated are freed while the rest of the file is read.
            for name in list(data.keys()):
                yield self._make_sample(data.pop(name), path, str(name))
        else:
            for index in range(len(data)):
                entry, data[index] = data[index], None
                yield self._make_sample(entry, path, str(index))

    def _make_sample(self, entry, path: str, name: str) -> EvalSample:
        video, points, occluded = check_entry(entry, path, name)
        original_size = (int(video.shape[1]), int(video.shape[2]))
        video = resize_video(video, self.resolution)
        # x in [0, 1] times the resized width (and y the height): both are R.
        # float64 as in the official reader (float32 points times an int64
        # array), so that distances to the predictions are computed in float64.
        raster_points = points.astype(np.float64) * self.resolution
        query_points, target_points, target_occluded, track_ids = sample_queries(
            occluded, raster_points, self.query_mode
        )
        return EvalSample(
            name=name,
            video=video,
            query_points=query_points,
            target_points=target_points,
            occluded=target_occluded,
            track_ids=track_ids,
            source=path,
            original_size=original_size,
        )
