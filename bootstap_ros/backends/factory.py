"""Which backend runs here, at which precision, and creating it by name.

The one place that knows every concrete backend: `create_backend` imports the
chosen one when it is asked for, so importing this module stays cheap.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import List, Optional

from bootstap_ros.backends.base import BACKENDS, PRECISION_CHOICES, Backend, BackendError

LOG = logging.getLogger(__name__)


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
    if device.startswith("cpu") and _importable("openvino") and _importable("onnxruntime"):
        names.append("openvino")  # its graphs come from the ONNX export, checked with onnxruntime
    if device.startswith("cuda") and _importable("tensorrt") and cuda_available():
        names.append("tensorrt")
    return names


# The concrete backends "auto" tries on each kind of device, fastest first, as measured
# side by side in one bootstap-bench run (docs/speed.md, "Which backend auto picks"): on
# the CPU torch's fp32 step beat OpenVINO's and onnxruntime's; on CUDA TensorRT beats torch.
AUTO_ORDER = {"cpu": ("torch",), "cuda": ("tensorrt", "torch")}


def resolve_backend(name: str, device: str = "cpu") -> str:
    """The concrete backend for `name`; "auto" picks the fastest one available.

    The rule, ordered by measurement (`AUTO_ORDER`, figures in docs/speed.md): on the
    CPU torch (its float32 step measured faster than OpenVINO's and onnxruntime's, which
    are chosen by name); on CUDA TensorRT where installed, else torch. A backend picked
    by "auto" that cannot be made here (an export, a compiler or its own check against
    torch fails) gives way to torch (`create_backend`).
    """
    if name == "auto":
        available = available_backends(device)
        order = AUTO_ORDER["cuda" if device.startswith("cuda") else "cpu"]
        return next(candidate for candidate in order if candidate in available)
    if name not in BACKENDS:
        raise BackendError(f"unknown backend '{name}'; choose one of auto, {', '.join(BACKENDS)}")
    return name


def resolve_precision(precision: str, backend: str) -> str:
    """The concrete precision for `precision` on the concrete `backend`.

    "auto" is fp16 for TensorRT (what its users, on Jetson above all, expect; the
    positions and the soft-argmax stay float32 inside the engine) and fp32 for
    torch, onnxruntime and openvino (their bf16 is asked for by name: it moves tracks
    by a fraction of a pixel, see docs/speed.md).
    """
    if precision not in PRECISION_CHOICES:
        raise BackendError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISION_CHOICES)}")
    if precision == "auto":
        return "fp16" if backend == "tensorrt" else "fp32"
    return precision


def cpu_computes_bf16(cpuinfo: Optional[str] = None) -> bool:
    """Whether this CPU computes bfloat16 in hardware: an x86 CPU with AVX512-BF16 or AMX-BF16
    among the flags of /proc/cpuinfo (or of the `cpuinfo` text given). Elsewhere bf16 is
    emulated and slower than fp32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def camera_precision(precision: str, backend: str, device: str) -> str:
    """What precision "auto" means where a camera waits (the node, `bootstap-eval --realtime`):
    bf16 for the torch and openvino backends on a CPU that computes bf16 in hardware, where
    the step measured 1.6-1.8x faster and AJ moved by at most 0.1 on the five validation sets
    of docs/speed.md; otherwise as `resolve_precision` (fp32 on the CPU). Offline tools keep
    fp32: they reproduce the official model's numbers."""
    if (precision == "auto" and not device.startswith("cuda")
            and resolve_backend(backend, device) in ("torch", "openvino") and cpu_computes_bf16()):
        return "bf16"
    return precision


_TORCH_ONLY_OPTIONS = {"cuda_graphs", "torch_compile"}


def create_backend(name: str, model, max_points: int, block_size: int, device: str = "cpu",
                   precision: str = "auto", **options) -> Backend:
    """A backend instance by name ("auto", "torch", "onnxruntime", "openvino", "tensorrt").

    The caller's model is never changed: a backend that needs it elsewhere (another
    device, eval mode, the CPU for export) works on its own copy.
    """
    if max_points % block_size:
        raise BackendError(f"max_points ({max_points}) must be a multiple of block_size ({block_size})")
    chosen = resolve_backend(name, device)
    if name == "auto" and chosen != "torch":
        # Options only torch takes, or a model the exported graphs cannot carry (no causal
        # state), mean torch; otherwise the faster backend, and torch where it fails here.
        if model.config.causal and not set(options) & _TORCH_ONLY_OPTIONS:
            try:
                return _create(chosen, model, max_points, block_size, device,
                               resolve_precision(precision, chosen), **options)
            except Exception as error:  # an export, a compiler or a check that fails here
                LOG.warning("backend auto: %s cannot run here (%s: %s); using torch", chosen,
                            type(error).__name__, error)
        options = {key: value for key, value in options.items() if key in _TORCH_ONLY_OPTIONS}
        chosen = "torch"
    return _create(chosen, model, max_points, block_size, device, resolve_precision(precision, chosen), **options)


def _create(name: str, model, max_points: int, block_size: int, device: str, precision: str, **options) -> Backend:
    if name == "torch":
        from bootstap_ros.backends.torch_backend import TorchBackend

        return TorchBackend(model, max_points, block_size, device, precision, **options)
    if name == "onnxruntime":
        from bootstap_ros.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model, max_points, block_size, device, precision, **options)
    if name == "openvino":
        from bootstap_ros.backends.openvino_backend import OpenVinoBackend

        return OpenVinoBackend(model, max_points, block_size, device, precision, **options)
    from bootstap_ros.backends.tensorrt_backend import TensorRTBackend

    return TensorRTBackend(model, max_points, block_size, device, precision, **options)
