"""The backend protocol, its error type and the names of the backends and precisions.

A backend runs the network for `CausalTracker`; the tracker keeps everything
about points (slots, ids, input pixels, visibility) and the backend keeps the
per-slot query features and causal state, on its own device and in its own
array type, between frames. Slots are processed in blocks of `block_size`, so
every call has a static shape.

    encode(frame)                  frame [1, H, W, 3] float32 torch (CPU) tensor in [-1, 1]
                                   at the model resolution -> opaque per-frame features
    set_queries(features, slots, points)
                                   points [K, 2] (x, y, model raster) on that frame become
                                   the queries of `slots` [K]; their state restarts at zero
    query_features(features, points)
                                   the query features of points [K, 2] on that frame, without
                                   storing them: {"lowres": float32 [K, C_lowres],
                                   "hires": float32 [K, C_hires]} host arrays
    set_query_features(slots, query)
                                   such features become the queries of `slots`; their state
                                   restarts at zero (a query set made on another image)
    step(features, blocks)         advance the blocks (indices) by this frame; returns
                                   float32 [len(blocks) * block_size, 4] = x, y, occlusion
                                   logit, expected-distance logit (model raster), one
                                   host transfer per call
    reset()                        zero every slot's state

The factory that picks and creates a backend by name is `backends.factory`: the
concrete backends import this module, and this module imports none of them.
"""

from __future__ import annotations

from typing import Any, Dict, Protocol, Sequence, runtime_checkable

import numpy as np

BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16")
# What the command lines and the node accept: "auto" resolves in `factory` (the fastest
# backend here, by measurement: OpenVINO on the CPU, TensorRT on CUDA, else torch; fp16
# for TensorRT, fp32 for the others).
BACKEND_CHOICES = ("auto",) + BACKENDS
PRECISION_CHOICES = ("auto",) + PRECISIONS


class BackendError(RuntimeError):
    """A backend cannot be used here; the message says why and what to do."""


@runtime_checkable
class Backend(Protocol):
    name: str
    device: str
    precision: str
    max_points: int
    block_size: int

    def encode(self, frame) -> Any: ...

    def set_queries(self, features: Any, slots: np.ndarray, points: np.ndarray) -> None: ...

    def query_features(self, features: Any, points: np.ndarray) -> Dict[str, np.ndarray]: ...

    def set_query_features(self, slots: np.ndarray, query: Dict[str, np.ndarray]) -> None: ...

    def step(self, features: Any, blocks: Sequence[int]) -> np.ndarray: ...

    def reset(self) -> None: ...
