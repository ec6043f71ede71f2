"""Which backend runs here, at which precision, and creating it by name.

The one place that knows every concrete backend: `create_backend` imports the
chosen one when it is asked for, so importing this module stays cheap.
"""

from __future__ import annotations

import importlib.util
from typing import List

from bootstap_ros.backends.base import BACKENDS, PRECISION_CHOICES, Backend, BackendError


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


def resolve_precision(precision: str, backend: str) -> str:
    """The concrete precision for `precision` on the concrete `backend`.

    "auto" is fp16 for TensorRT (what its users, on Jetson above all, expect; the
    positions and the soft-argmax stay float32 inside the engine) and fp32 for
    torch and onnxruntime.
    """
    if precision not in PRECISION_CHOICES:
        raise BackendError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISION_CHOICES)}")
    if precision == "auto":
        return "fp16" if backend == "tensorrt" else "fp32"
    return precision


def create_backend(name: str, model, max_points: int, block_size: int, device: str = "cpu",
                   precision: str = "auto", **options) -> Backend:
    """A backend instance by name ("auto", "torch", "onnxruntime", "tensorrt").

    The caller's model is never changed: a backend that needs it elsewhere (another
    device, eval mode, the CPU for export) works on its own copy.
    """
    name = resolve_backend(name, device)
    precision = resolve_precision(precision, name)
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
