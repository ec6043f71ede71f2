"""Backends that run the network for the tracker: torch, onnxruntime, openvino, tensorrt.

Importing this package is cheap; onnxruntime, onnx, openvino and tensorrt are imported by
the backend that uses them, when it is created.
"""

from bootstap_ros.backends.base import (
    BACKEND_CHOICES,
    BACKENDS,
    PRECISION_CHOICES,
    PRECISIONS,
    Backend,
    BackendError,
)
from bootstap_ros.backends.factory import (
    available_backends,
    camera_precision,
    cpu_computes_bf16,
    create_backend,
    resolve_backend,
    resolve_precision,
)

__all__ = ["BACKEND_CHOICES", "BACKENDS", "PRECISION_CHOICES", "PRECISIONS", "Backend", "BackendError",
           "available_backends", "camera_precision", "cpu_computes_bf16", "create_backend", "resolve_backend",
           "resolve_precision"]
