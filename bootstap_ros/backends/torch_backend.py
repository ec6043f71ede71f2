"""The torch backend: the model's fast one-frame step (`TAPIR.track_step`), CPU or CUDA.

The query features and the causal state of every slot live on the backend's
device; each block's state is updated in place (views into one state tensor), and
the outputs of all blocks come back to the host in one transfer per frame.

On CUDA, fp16/bf16 run the network under autocast (the state stays float32).
CUDA graphs are not used yet; the per-frame step is the eager one. On CPU only
fp32 is offered: reduced precision is slower there and changes the tracks.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import torch

from bootstap_ros.backends.base import BackendError
from bootstap_ros.model.tapir import TAPIR, CausalState, FeatureGrids, QueryFeatures

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchBackend:
    name = "torch"

    def __init__(self, model: TAPIR, max_points: int, block_size: int, device: str = "cpu",
                 precision: str = "fp32"):
        self.device = str(device)
        if precision != "fp32" and not self.device.startswith("cuda"):
            raise BackendError(f"the torch backend runs {precision} on CUDA only; use fp32 on {self.device}")
        self.precision = precision
        self.model = model.to(self.device).eval()
        self.max_points = max_points
        self.block_size = block_size
        c = model.config
        self._query_lowres = torch.zeros(1, max_points, c.lowres_dim, device=self.device)
        self._query_hires = torch.zeros(1, max_points, c.hires_dim, device=self.device)
        self._state = model.initial_state(max_points, device=self.device) if c.causal else None

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=_DTYPES[self.precision])

    @torch.inference_mode()
    def encode(self, frame: torch.Tensor) -> FeatureGrids:
        with self._autocast():
            return self.model.get_feature_grids(frame.to(self.device, non_blocking=True)[:, None])

    @torch.inference_mode()
    def set_queries(self, features: FeatureGrids, slots: np.ndarray, points: np.ndarray) -> None:
        tyx = np.concatenate([np.zeros((len(points), 1), np.float32), points[:, ::-1]], axis=1)
        with self._autocast():
            queries = self.model.get_query_features(
                features, torch.from_numpy(np.ascontiguousarray(tyx))[None].to(self.device))
        index = torch.from_numpy(np.asarray(slots, np.int64)).to(self.device)
        self._query_lowres[:, index] = queries.lowres.float()
        self._query_hires[:, index] = queries.hires.float()
        if self._state is not None:
            self._state.conv1[:, :, :, index] = 0
            self._state.conv2[:, :, :, index] = 0

    @torch.inference_mode()
    def step(self, features: FeatureGrids, blocks: Sequence[int]) -> np.ndarray:
        if not len(blocks):
            return np.zeros((0, 4), np.float32)
        packed = []
        for block_index in blocks:
            block = slice(block_index * self.block_size, (block_index + 1) * self.block_size)
            queries = QueryFeatures(self._query_lowres[:, block], self._query_hires[:, block])
            with self._autocast():
                if self._state is not None:
                    # Views into the backend's state: the step updates the block where it lies.
                    state = CausalState(self._state.conv1[:, :, :, block], self._state.conv2[:, :, :, block])
                    result, _ = self.model.track_step(features, queries, state, in_place=True)
                else:
                    result, _ = self.model.estimate_trajectories(features, queries)
            packed.append(torch.cat([result.tracks[0, :, 0], result.occlusion[0, :, :1],
                                     result.expected_dist[0, :, :1]], dim=-1).float())
        return torch.cat(packed).cpu().numpy()  # the one host sync of the frame

    def reset(self) -> None:
        if self._state is not None:
            self._state.conv1.zero_()
            self._state.conv2.zero_()
