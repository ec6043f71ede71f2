"""Backends that run the network for the tracker: torch, onnxruntime, tensorrt.

Importing this package is cheap; onnxruntime, onnx and tensorrt are imported by
the backend that uses them, when it is created.
"""

from bootstap_ros.backends.base import (
    BACKENDS,
    PRECISIONS,
    Backend,
    BackendError,
    available_backends,
    create_backend,
    resolve_backend,
)

__all__ = ["BACKENDS", "PRECISIONS", "Backend", "BackendError", "available_backends", "create_backend",
           "resolve_backend"]
