"""The onnxruntime backend: the exported encoder, query and step graphs (see onnx_export).

The export is made on first use (and checked against torch), then cached on disk
by model fingerprint and block size. The causal state of each block is a pair of
arrays that the step graph takes and returns; on CPU they stay numpy arrays in
host memory. The CUDA execution provider is used where `device` is CUDA and
onnxruntime has it.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from bootstap_ros.backends.base import BackendError
from bootstap_ros.backends.onnx_export import cached_export


def physical_cores() -> int:
    """Physical cores available to this process (logical CPUs / SMT siblings where known)."""
    try:
        logical = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        logical = os.cpu_count() or 1
    try:
        with open("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list") as f:
            text = f.read().strip()
        siblings = sum(int(b) - int(a) + 1 if "-" in part else 1
                       for part in text.split(",") for a, _, b in [part.partition("-")])
    except (OSError, ValueError):
        siblings = 1
    return max(1, logical // max(1, siblings))


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, model, max_points: int, block_size: int, device: str = "cpu",
                 precision: str = "fp32", cache_dir=None, threads: Optional[int] = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("the onnxruntime backend needs the onnxruntime package: "
                               "pip install onnxruntime (or onnxruntime-gpu)") from None
        if precision != "fp32":
            raise BackendError(f"the onnxruntime backend runs fp32 only, got {precision}; "
                               "use the tensorrt backend for fp16")
        if not model.config.causal:
            raise BackendError("the onnxruntime backend needs a causal model (--causal)")
        self.device = str(device)
        self.precision = precision
        self.max_points = max_points
        self.block_size = block_size
        self.config = model.config
        self.export = cached_export(model, block_size, cache_dir)
        providers = ["CPUExecutionProvider"]
        if self.device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendError("onnxruntime has no CUDAExecutionProvider here: install onnxruntime-gpu "
                                   "or use --device cpu")
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or physical_cores()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.sessions = {name: ort.InferenceSession(str(path), options, providers=providers)
                         for name, path in self.export.paths.items()}
        c = model.config
        self._query_lowres = np.zeros((max_points, c.lowres_dim), np.float32)
        self._query_hires = np.zeros((max_points, c.hires_dim), np.float32)
        shape = (c.refinement_iters, c.mixer_blocks, block_size, c.mixer_kernel - 1)
        self._state: List[Tuple[np.ndarray, np.ndarray]] = [
            (np.zeros(shape + (c.mixer_hidden_dim,), np.float32),
             np.zeros(shape + (4 * c.mixer_hidden_dim,), np.float32))
            for _ in range(max_points // block_size)]

    def encode(self, frame) -> Tuple[np.ndarray, np.ndarray]:
        frame = np.ascontiguousarray(np.asarray(frame, np.float32))
        hires, lowres = self.sessions["encoder"].run(None, {"frame": frame})
        return hires, lowres

    def set_queries(self, features, slots: np.ndarray, points: np.ndarray) -> None:
        self.set_query_features(slots, self.query_features(features, points))

    def query_features(self, features, points: np.ndarray) -> Dict[str, np.ndarray]:
        hires, lowres = features
        parts: Dict[str, List[np.ndarray]] = {"lowres": [], "hires": []}
        for start in range(0, len(points), self.block_size):  # the query graph takes a fixed Q
            chunk = points[start:start + self.block_size]
            padded = np.zeros((self.block_size, 2), np.float32)
            padded[:len(chunk)] = chunk
            query_hires, query_lowres = self.sessions["queries"].run(
                None, {"hires": hires, "lowres": lowres, "points": padded})
            parts["hires"].append(query_hires[:len(chunk)])
            parts["lowres"].append(query_lowres[:len(chunk)])
        dims = {"lowres": self.config.lowres_dim, "hires": self.config.hires_dim}
        return {name: np.concatenate(arrays) if arrays else np.zeros((0, dims[name]), np.float32)
                for name, arrays in parts.items()}

    def set_query_features(self, slots: np.ndarray, query: Dict[str, np.ndarray]) -> None:
        slots = np.asarray(slots, np.int64)
        self._query_hires[slots] = query["hires"]
        self._query_lowres[slots] = query["lowres"]
        for slot in slots:
            block, row = divmod(int(slot), self.block_size)
            self._state[block][0][:, :, row] = 0
            self._state[block][1][:, :, row] = 0

    def step(self, features, blocks: Sequence[int]) -> np.ndarray:
        hires, lowres = features
        outputs = []
        for block in blocks:
            rows = slice(block * self.block_size, (block + 1) * self.block_size)
            conv1, conv2 = self._state[block]
            result, conv1, conv2 = self.sessions["step"].run(None, {
                "hires": hires, "lowres": lowres, "query_hires": self._query_hires[rows],
                "query_lowres": self._query_lowres[rows], "conv1": conv1, "conv2": conv2})
            self._state[block] = (conv1, conv2)
            outputs.append(result)
        return np.concatenate(outputs) if outputs else np.zeros((0, 4), np.float32)

    def reset(self) -> None:
        for conv1, conv2 in self._state:
            conv1.fill(0)
            conv2.fill(0)
