"""CausalTracker: online tracking of points added at any frame, one frame at a time.

The tracker owns everything per point: a fixed number of slots (`max_points`),
each with its query features, its causal state and a stable integer id that
is never reused. The track command, the evaluator and the ROS node all drive
this one class, so they produce the same numbers.

Slots are processed in fixed-size blocks (`block_size`): every computation has a
static shape, points never influence each other, and a block with no active
point costs nothing. The network runs in a backend (`bootstap_ros.backends`:
torch, onnxruntime, tensorrt), which keeps the per-slot query features and
causal state on its device. Public coordinates are pixel (x, y) in the input image
(TAPIR raster: pixel centres at +0.5); the model resolution stays inside.

Points can also be added from query features taken on another image
(`query_features`, `add_points_from_features`): a query set made on a
demonstration frame (`tracking.query_set`, `bootstap-queries`).

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

from bootstap_ros.model.tapir import TAPIR, preprocess_frames, resize_video
from bootstap_ros.tracking.frames import to_rgb

LOG = logging.getLogger(__name__)


class TrackerFullError(RuntimeError):
    """More points were asked for than the tracker has free slots."""


def invalid_query_points(xy, frame_size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray, str]:
    """Which query points cannot be tracked on an image of `frame_size` (height, width).

    Returns xy as float32 [K, 2], a bool [K] mask of the points that are NaN/inf or
    outside the image (x in [0, width], y in [0, height]), and a message naming
    them ('' when none is). The tracker refuses such points; the node drops them
    with a warning and keeps the others.
    """
    xy = np.asarray(xy, np.float32).reshape(-1, 2)
    height, width = frame_size
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(xy).all(axis=1) | (xy[:, 0] < 0) | (xy[:, 0] > width) | (
            xy[:, 1] < 0) | (xy[:, 1] > height)
    message = (f"{int(bad.sum())} query point(s) that are NaN/inf or outside the {width}x{height} image "
               f"(x in [0, {width}], y in [0, {height}]): {xy[bad][:5].tolist()}") if bad.any() else ""
    return xy, bad, message


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


def default_block_size(device) -> int:
    """Points per block when none is given: 64 on the CPU; 256 on a GPU, where each block is
    one CUDA-graph replay of the whole refinement and fewer, larger blocks cost less (H200,
    bf16: 256 points 19.4 -> 7.2 ms, 1024 points 71.9 -> 23.2 ms per frame; docs/speed.md)."""
    return 256 if torch.device(device).type == "cuda" else 64


class CausalTracker:
    """Online TAPIR tracking with per-point causal state (see module docstring)."""

    def __init__(self, model: TAPIR, max_points: int = 256, device: str = "cpu",
                 block_size: Optional[int] = None, visibility_threshold: float = 0.5, backend="auto",
                 precision: str = "auto", **backend_options):
        """backend: a name ("torch", "onnxruntime", "tensorrt", or "auto" for the fastest
        available here) or a ready `bootstap_ros.backends.Backend`; precision ("auto": fp16
        for tensorrt, fp32 otherwise) and backend_options (e.g. cache_dir) go to the backend
        it creates. block_size: points per block (None: `default_block_size(device)`).
        The model is not changed (mode, device, weights)."""
        if max_points < 1:
            raise ValueError(f"max_points must be >= 1, got {max_points}")
        if not model.config.causal:
            LOG.warning("the model is not causal: each frame is tracked without temporal context; "
                        "use a causal model (--causal) for online tracking")
        self.model = model  # never changed here: the backend runs its own copy where it must
        self.config = model.config
        self.device = torch.device(device)
        if block_size is None:
            block_size = default_block_size(device)
        self.block_size = max(1, min(block_size, max_points))
        self.max_points = -(-max_points // self.block_size) * self.block_size
        self.visibility_threshold = visibility_threshold
        self.frame_size: Optional[Tuple[int, int]] = None
        if isinstance(backend, str):
            from bootstap_ros.backends import create_backend

            backend = create_backend(backend, model, self.max_points, self.block_size, device, precision,
                                     **backend_options)
        elif backend.max_points != self.max_points or backend.block_size != self.block_size:
            raise ValueError(
                f"the backend was made for {backend.max_points} points in blocks of {backend.block_size}, "
                f"the tracker needs {self.max_points} in blocks of {self.block_size}")
        self.backend = backend
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
        self.backend.reset()

    # ------------------------------------------------------------- frames
    def _prepare(self, frame: np.ndarray, encoding: str, live: bool = True):
        """Frame -> [1, h, w, 3] float in [-1, 1] at the model resolution (CPU); with a
        refinement ladder a tuple of them, one per `config.grid_resolutions`, each resized
        from the input frame. A live frame (one the points are tracked into) sets
        `frame_size`; another image (a demonstration frame, a kept query frame) does not."""
        rgb = to_rgb(frame, encoding)
        size = rgb.shape[:2]
        if live:
            if self.frame_size is not None and size != self.frame_size and self.num_points:
                LOG.warning("input size changed from %s to %s: keeping %d points, reporting them in "
                            "the new image's pixels", self.frame_size, size, self.num_points)
            self.frame_size = size
        if not rgb.flags.writeable:  # e.g. a memory-mapped .npy; torch wants writable memory
            rgb = rgb.copy()
        # Preprocessing runs in torch on the CPU for every backend, so all see the same input.
        video = preprocess_frames(torch.from_numpy(rgb)[None, None])
        frames = tuple(resize_video(video, size)[:, 0] for size in self.config.grid_resolutions)
        return frames[0] if len(frames) == 1 else frames

    def _to_model(self, xy: np.ndarray, size: Optional[Tuple[int, int]] = None) -> np.ndarray:
        height, width = size or self.frame_size
        model_h, model_w = self.config.resolution
        return xy * np.array([model_w / width, model_h / height], np.float32)

    def _validate(self, xy) -> np.ndarray:
        xy, bad, message = invalid_query_points(xy, self.frame_size)
        if bad.any():
            raise ValueError(f"cannot add {message}")
        free = np.flatnonzero(self._ids < 0)
        if len(xy) > len(free):
            raise TrackerFullError(
                f"cannot add {len(xy)} point(s): {self.num_points} of {self.max_points} slots are in "
                f"use; remove points or raise max_points")
        return xy

    def _add(self, features, xy: np.ndarray) -> np.ndarray:
        slots = np.flatnonzero(self._ids < 0)[:len(xy)]
        self.backend.set_queries(features, slots, np.ascontiguousarray(self._to_model(xy)))
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
        return self._add(self.backend.encode(video), xy)

    @torch.inference_mode()
    def query_features(self, frame: np.ndarray, xy, encoding: str = "rgb8") -> Dict[str, np.ndarray]:
        """The query features of pixel positions `xy` [K, 2] on `frame`, as `add_points` would
        take them, without adding any point: {"lowres": [K, C], "hires": [K, C]} float32.
        What `bootstap-queries` stores in a query set (`tracking.query_set`), and how a model
        swap re-encodes a point (`tracking.reencode`). `frame` may be any image: the tracker's
        points and live frame size are left alone."""
        rgb = to_rgb(frame, encoding)
        video, size = self._prepare(rgb, "rgb8", live=False), rgb.shape[:2]
        xy, bad, message = invalid_query_points(xy, size)
        if bad.any():
            raise ValueError(message)
        return self.backend.query_features(self.backend.encode(video),
                                           np.ascontiguousarray(self._to_model(xy, size)))

    @property
    def next_id(self) -> int:
        """The id the next point added will get (ids count up and are never reused)."""
        return self._next_id

    @next_id.setter
    def next_id(self, value: int) -> None:
        """Continue another tracker's numbering (a model swap); ids never go back."""
        if int(value) < self._next_id:
            raise ValueError(f"next_id can only grow: {value} < {self._next_id}")
        self._next_id = int(value)

    def add_points_from_features(self, features: Dict[str, np.ndarray], ids=None) -> np.ndarray:
        """Add points whose query features were taken elsewhere (`query_features`, e.g. on a
        demonstration image); returns their new ids, in the rows' order. They are tracked from
        the next `step` on, with zero causal state. Raises ValueError for features of another
        shape than this model's and TrackerFullError when the free slots do not suffice.

        ids: the ids to give them instead of new ones (a model swap keeps each point's id);
        none may be active or repeated, and later points are numbered after the largest."""
        dims = {"lowres": self.config.query_lowres_dim, "hires": self.config.query_hires_dim}
        if set(features) != set(dims):
            raise ValueError(f"query features must be {sorted(dims)}, got {sorted(features)}")
        features = {k: np.ascontiguousarray(v, np.float32) for k, v in features.items()}
        count = len(features["lowres"])
        for name, dim in dims.items():
            if features[name].shape != (count, dim):
                raise ValueError(f"query features '{name}' have shape {features[name].shape}, this model "
                                 f"needs [{count}, {dim}]: they were made with another model")
            if not np.isfinite(features[name]).all():
                raise ValueError(f"query features '{name}' hold NaN or infinite values")
        if ids is not None:
            ids = np.asarray(ids, np.int64).reshape(-1)
            if len(ids) != count:
                raise ValueError(f"{len(ids)} ids for {count} points")
            if (ids < 0).any() or len(np.unique(ids)) != count or np.isin(ids, self._ids).any():
                raise ValueError(f"ids must be distinct, non-negative and not active: {ids[:10].tolist()}")
        free = np.flatnonzero(self._ids < 0)
        if count > len(free):
            raise TrackerFullError(
                f"cannot add {count} point(s): {self.num_points} of {self.max_points} slots are in "
                f"use; remove points or raise max_points")
        slots = free[:count]
        self.backend.set_query_features(slots, features)
        if ids is None:
            ids = np.arange(self._next_id, self._next_id + count, dtype=np.int64)
        if count:
            self._next_id = max(self._next_id, int(ids.max()) + 1)
        self._ids[slots] = ids
        return ids

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
        features = self.backend.encode(video)
        new_ids = self._add(features, xy_new) if xy_new is not None else np.zeros(0, np.int64)
        # Blocks with no active point cost nothing.
        blocks = [b for b in range(self.max_points // self.block_size)
                  if (self._ids[b * self.block_size:(b + 1) * self.block_size] >= 0).any()]
        packed = self.backend.step(features, blocks)
        modelled = time.perf_counter()
        result = self._collect(blocks, packed, new_ids)
        done = time.perf_counter()
        result.timing_ms = {
            "preprocess": (prepared - start) * 1e3,
            "model": (modelled - prepared) * 1e3,
            "postprocess": (done - modelled) * 1e3,
            "total": (done - start) * 1e3,
        }
        return result

    def _collect(self, blocks, packed: np.ndarray, new_ids: np.ndarray) -> TrackResult:
        slots = np.concatenate([np.arange(b * self.block_size, (b + 1) * self.block_size) for b in blocks]
                               ) if blocks else np.zeros(0, np.int64)
        packed = np.asarray(packed, np.float32).reshape(-1, 4)
        active = self._ids[slots] >= 0
        slots, packed = slots[active], packed[active]
        order = np.argsort(self._ids[slots])
        slots, packed = slots[order], packed[order]
        height, width = self.frame_size
        model_h, model_w = self.config.resolution
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
