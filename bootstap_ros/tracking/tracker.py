"""CausalTracker: online tracking of points added at any frame, one frame at a time.

The tracker owns everything per point: a fixed number of slots (`max_points`),
each with its query features, its causal state and a stable integer id that
is never reused. The track command, the evaluator and the ROS node all drive
this one class, so they produce the same numbers.

Slots are processed in fixed-size blocks (`block_size`): every computation has a
static shape, points never influence each other, and a block with no active
point costs nothing. Public coordinates are pixel (x, y) in the input image
(TAPIR raster: pixel centres at +0.5); the model resolution stays inside.

A change of input size mid-stream keeps every point: positions are carried in
the model's normalised frame and reported in the new image's pixels (as if the
camera output were resized), and a warning is logged once per change.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from bootstap_ros.model.tapir import (
    TAPIR,
    CausalState,
    FeatureGrids,
    QueryFeatures,
    preprocess_frames,
    resize_video,
)
from bootstap_ros.tracking.frames import to_rgb

LOG = logging.getLogger(__name__)


class TrackerFullError(RuntimeError):
    """More points were asked for than the tracker has free slots."""


@dataclass
class TrackResult:
    """Outputs for the active points after one frame, sorted by id.

    xy are pixels of the input frame; occlusion and uncertainty are
    probabilities (sigmoids of the model's logits); visible follows the
    official rule (1 - occlusion) * (1 - uncertainty) > visibility_threshold.
    """

    ids: np.ndarray  # int64 [K]
    xy: np.ndarray  # float32 [K, 2]
    visible: np.ndarray  # bool [K]
    occlusion: np.ndarray  # float32 [K]
    uncertainty: np.ndarray  # float32 [K]
    occlusion_logit: np.ndarray  # float32 [K]
    expected_dist_logit: np.ndarray  # float32 [K]
    frame_size: Tuple[int, int]  # (height, width) of the input frame
    new_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    timing_ms: Dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


class CausalTracker:
    """Online TAPIR tracking with per-point causal state (see module docstring)."""

    def __init__(self, model: TAPIR, max_points: int = 256, device: str = "cpu",
                 block_size: int = 64, visibility_threshold: float = 0.5):
        if max_points < 1:
            raise ValueError(f"max_points must be >= 1, got {max_points}")
        if not model.config.causal:
            LOG.warning("the model is not causal: each frame is tracked without temporal context; "
                        "use a causal model (--causal) for online tracking")
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.block_size = max(1, min(block_size, max_points))
        self.max_points = -(-max_points // self.block_size) * self.block_size
        self.visibility_threshold = visibility_threshold
        self.frame_size: Optional[Tuple[int, int]] = None
        c = model.config
        self._query_lowres = torch.zeros(1, self.max_points, c.lowres_dim, device=self.device)
        self._query_hires = torch.zeros(1, self.max_points, c.hires_dim, device=self.device)
        self._state = model.initial_state(self.max_points, device=self.device) if c.causal else None
        self._ids = np.full(self.max_points, -1, np.int64)
        self._next_id = 0

    # ------------------------------------------------------------- bookkeeping
    @property
    def num_points(self) -> int:
        return int((self._ids >= 0).sum())

    @property
    def ids(self) -> np.ndarray:
        return np.sort(self._ids[self._ids >= 0])

    def remove_points(self, ids: Sequence[int]) -> np.ndarray:
        """Drop points by id; unknown ids are ignored. Returns the ids removed."""
        mask = np.isin(self._ids, np.asarray(ids, np.int64)) & (self._ids >= 0)
        removed = np.sort(self._ids[mask])
        self._ids[mask] = -1
        return removed

    def reset(self) -> None:
        """Forget every point (ids keep counting up: they are never reused)."""
        self._ids[:] = -1
        if self._state is not None:
            self._state.conv1.zero_()
            self._state.conv2.zero_()

    # ------------------------------------------------------------- frames
    def _prepare(self, frame: np.ndarray, encoding: str) -> torch.Tensor:
        """Frame -> [1, 1, h, w, 3] float in [-1, 1] at the model resolution."""
        rgb = to_rgb(frame, encoding)
        size = rgb.shape[:2]
        if self.frame_size is not None and size != self.frame_size and self.num_points:
            LOG.warning("input size changed from %s to %s: keeping %d points, reporting them in the "
                        "new image's pixels", self.frame_size, size, self.num_points)
        self.frame_size = size
        if not rgb.flags.writeable:  # e.g. a memory-mapped .npy; torch wants writable memory
            rgb = rgb.copy()
        video = torch.from_numpy(rgb).to(self.device)[None, None]
        return resize_video(preprocess_frames(video), self.model.config.resolution)

    def _to_model(self, xy: np.ndarray) -> np.ndarray:
        height, width = self.frame_size
        model_h, model_w = self.model.config.resolution
        return xy * np.array([model_w / width, model_h / height], np.float32)

    def _validate(self, xy) -> np.ndarray:
        xy = np.asarray(xy, np.float32).reshape(-1, 2)
        height, width = self.frame_size
        bad = ~np.isfinite(xy).all(axis=1) | (xy[:, 0] < 0) | (xy[:, 0] > width) | (
            xy[:, 1] < 0) | (xy[:, 1] > height)
        if bad.any():
            raise ValueError(
                f"{int(bad.sum())} query point(s) are NaN/inf or outside the {width}x{height} image "
                f"(x in [0, {width}], y in [0, {height}]): {xy[bad][:5].tolist()}")
        free = np.flatnonzero(self._ids < 0)
        if len(xy) > len(free):
            raise TrackerFullError(
                f"cannot add {len(xy)} point(s): {self.num_points} of {self.max_points} slots are in "
                f"use; remove points or raise max_points")
        return xy

    def _add(self, grids: FeatureGrids, xy: np.ndarray) -> np.ndarray:
        slots = np.flatnonzero(self._ids < 0)[:len(xy)]
        model_xy = self._to_model(xy)
        queries = np.concatenate([np.zeros((len(xy), 1), np.float32), model_xy[:, ::-1]], axis=1)
        features = self.model.get_query_features(
            grids, torch.from_numpy(np.ascontiguousarray(queries))[None].to(self.device))
        index = torch.from_numpy(slots).to(self.device)
        self._query_lowres[:, index] = features.lowres
        self._query_hires[:, index] = features.hires
        if self._state is not None:
            self._state.conv1[:, :, :, index] = 0
            self._state.conv2[:, :, :, index] = 0
        new_ids = np.arange(self._next_id, self._next_id + len(xy), dtype=np.int64)
        self._next_id += len(xy)
        self._ids[slots] = new_ids
        return new_ids

    @torch.inference_mode()
    def add_points(self, frame: np.ndarray, xy, encoding: str = "rgb8") -> np.ndarray:
        """Add points at pixel positions `xy` [K, 2] of `frame`; returns their new ids.

        Their query features come from this frame and their causal state starts
        at zero. Raises ValueError for NaN/inf/out-of-image points and
        TrackerFullError when the free slots do not suffice (nothing is added then).
        """
        video = self._prepare(frame, encoding)
        xy = self._validate(xy)
        return self._add(self.model.get_feature_grids(video), xy)

    @torch.inference_mode()
    def step(self, frame: np.ndarray, encoding: str = "rgb8", add=None) -> TrackResult:
        """Track every active point into `frame`.

        add: optional pixel positions [K, 2] of points to add on this frame first
        (one backbone pass serves both); their ids are in `result.new_ids`.
        """
        start = time.perf_counter()
        video = self._prepare(frame, encoding)
        xy_new = self._validate(add) if add is not None and len(add) else None
        prepared = time.perf_counter()
        grids = self.model.get_feature_grids(video)
        new_ids = self._add(grids, xy_new) if xy_new is not None else np.zeros(0, np.int64)
        outputs = []
        for begin in range(0, self.max_points, self.block_size):
            block = slice(begin, begin + self.block_size)
            if (self._ids[block] < 0).all():
                continue
            state = None
            if self._state is not None:
                state = CausalState(self._state.conv1[:, :, :, block], self._state.conv2[:, :, :, block])
            result, new_state = self.model.estimate_trajectories(
                grids, QueryFeatures(self._query_lowres[:, block], self._query_hires[:, block]), state)
            if new_state is not None:
                self._state.conv1[:, :, :, block] = new_state.conv1
                self._state.conv2[:, :, :, block] = new_state.conv2
            outputs.append((begin, result))
        modelled = time.perf_counter()
        result = self._collect(outputs, new_ids)
        done = time.perf_counter()
        result.timing_ms = {
            "preprocess": (prepared - start) * 1e3,
            "model": (modelled - prepared) * 1e3,
            "postprocess": (done - modelled) * 1e3,
            "total": (done - start) * 1e3,
        }
        return result

    def _collect(self, outputs, new_ids: np.ndarray) -> TrackResult:
        if outputs:
            slots = np.concatenate([np.arange(b, b + self.block_size) for b, _ in outputs])
            # One device-to-host copy for all outputs.
            packed = torch.cat([
                torch.cat([r.tracks[0, :, 0], r.occlusion[0, :, :1], r.expected_dist[0, :, :1]], dim=-1)
                for _, r in outputs
            ]).float().cpu().numpy()
        else:
            slots = np.zeros(0, np.int64)
            packed = np.zeros((0, 4), np.float32)
        active = self._ids[slots] >= 0
        slots, packed = slots[active], packed[active]
        order = np.argsort(self._ids[slots])
        slots, packed = slots[order], packed[order]
        height, width = self.frame_size
        model_h, model_w = self.model.config.resolution
        xy = packed[:, :2] * np.array([width / model_w, height / model_h], np.float32)
        occ_logit, expd_logit = packed[:, 2], packed[:, 3]
        occlusion = _sigmoid(occ_logit)
        uncertainty = _sigmoid(expd_logit)
        visible = (1 - occlusion) * (1 - uncertainty) > self.visibility_threshold
        return TrackResult(
            ids=self._ids[slots].copy(), xy=xy.astype(np.float32), visible=visible,
            occlusion=occlusion, uncertainty=uncertainty, occlusion_logit=occ_logit,
            expected_dist_logit=expd_logit, frame_size=self.frame_size, new_ids=new_ids,
        )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)
