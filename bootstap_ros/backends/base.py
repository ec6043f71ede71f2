"""The backend protocol and the registry that picks a backend by name.

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
"""

from __future__ import annotations

import importlib.util
from typing import Any, Dict, List, Protocol, Sequence, runtime_checkable

import numpy as np

BACKENDS = ("torch", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16")


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


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def available_backends(device: str = "cpu") -> List[str]:
    """The backends that can run on `device` in this environment (cheap: imports nothing heavy)."""
    names = ["torch"]
    if _importable("onnxruntime"):
        names.append("onnxruntime")
    if device.startswith("cuda") and _importable("tensorrt") and cuda_available():
        names.append("tensorrt")
    return names


def resolve_backend(name: str, device: str = "cpu") -> str:
    """The concrete backend for `name`; "auto" picks the fastest one available.

    On CUDA that is TensorRT where installed, else torch. On CPU it is torch: its
    one-frame step (oneDNN-packed mixer, correlation maps) measured faster than
    onnxruntime's on the same graph (see bootstap-bench).
    """
    if name == "auto":
        return "tensorrt" if "tensorrt" in available_backends(device) else "torch"
    if name not in BACKENDS:
        raise BackendError(f"unknown backend '{name}'; choose one of auto, {', '.join(BACKENDS)}")
    return name


def create_backend(name: str, model, max_points: int, block_size: int, device: str = "cpu",
                   precision: str = "fp32", **options) -> Backend:
    """A backend instance by name ("auto", "torch", "onnxruntime", "tensorrt")."""
    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    name = resolve_backend(name, device)
    if max_points % block_size:
        raise BackendError(f"max_points ({max_points}) must be a multiple of block_size ({block_size})")
    if name == "torch":
        from bootstap_ros.backends.torch_backend import TorchBackend

        return TorchBackend(model, max_points, block_size, device, precision, **options)
    if name == "onnxruntime":
        from bootstap_ros.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model, max_points, block_size, device, precision, **options)
    from bootstap_ros.backends.tensorrt_backend import TensorRTBackend

    return TensorRTBackend(model, max_points, block_size, device, precision, **options)
