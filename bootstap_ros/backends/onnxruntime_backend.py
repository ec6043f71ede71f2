"""The onnxruntime backend: the exported encoder, query and step graphs (see onnx_export).

The export is made on first use (and checked against torch), then cached on disk
by model fingerprint and block size. Every graph runs through an IO binding, with
inputs and outputs in ORT values on the backend's device that are allocated once:
the frame's feature grids, each block's query features and its causal state (the
step writes the new state into a spare pair, which then becomes the block's). On
CUDA nothing but the frame goes up and nothing but the [Q, 4] outputs come back,
and the state never leaves the GPU; on the CPU the same path runs on host memory.
The CUDA execution provider is used where `device` is CUDA and onnxruntime has it.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from bootstap_ros.backends.base import BackendError
from bootstap_ros.backends.onnx_export import cached_export, expected_shapes, frame_names, grid_names


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
        self._ort = ort
        kind, _, index = self.device.partition(":")
        self._ort_device = (kind, int(index or 0))
        shapes = expected_shapes(model.config, block_size)["step"]
        blocks = max_points // block_size
        # Host copies of the query features (they change only when points are added).
        self._query_host = {"hires": np.zeros((max_points, model.config.query_hires_dim), np.float32),
                            "lowres": np.zeros((max_points, model.config.query_lowres_dim), np.float32)}
        self._query = [{name: self._zeros(shapes[f"query_{name}"]) for name in ("hires", "lowres")}
                       for _ in range(blocks)]
        self._state = [(self._zeros(shapes["conv1"]), self._zeros(shapes["conv2"])) for _ in range(blocks)]
        self._spare = (self._zeros(shapes["conv1"]), self._zeros(shapes["conv2"]))
        encoder = expected_shapes(model.config, block_size)["encoder"]
        # One frame and two grids per backbone resolution (more than one with a refinement ladder).
        self.frames = {name: self._zeros(encoder[name]) for name in frame_names(model.config)}
        self._grids = {name: self._zeros(encoder[name]) for name in grid_names(model.config)}
        # The step's [Q, 4] outputs are bound to host memory: their one transfer per block.
        self._outputs = np.zeros((blocks, block_size, 4), np.float32)
        self._output_values = [ort.OrtValue.ortvalue_from_numpy(self._outputs[b]) for b in range(blocks)]

    def _zeros(self, shape):
        """A float32 ORT value of zeros on the backend's device."""
        kind, index = self._ort_device
        value = self._ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, kind, index)
        value.update_inplace(np.zeros(shape, np.float32))
        return value

    def _run(self, graph: str, inputs: Dict[str, object], outputs: Dict[str, object]) -> None:
        binding = self.sessions[graph].io_binding()
        for name, value in inputs.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        for name, value in outputs.items():
            binding.bind_ortvalue_output(name, value)
        self.sessions[graph].run_with_iobinding(binding)
        binding.synchronize_outputs()

    def encode(self, frame):
        """The frame's feature grids, {name: ORT value} on the device (overwritten by the next
        frame). frame: [1, H, W, 3], or a tuple of them at the grid resolutions."""
        for value, part in zip(self.frames.values(), frame if isinstance(frame, tuple) else (frame,)):
            value.update_inplace(np.ascontiguousarray(np.asarray(part, np.float32)))
        self._run("encoder", self.frames, self._grids)
        return self._grids

    def set_queries(self, features, slots: np.ndarray, points: np.ndarray) -> None:
        self.set_query_features(slots, self.query_features(features, points))

    def query_features(self, features, points: np.ndarray) -> Dict[str, np.ndarray]:
        parts: Dict[str, List[np.ndarray]] = {"lowres": [], "hires": []}
        dims = {"lowres": self.config.query_lowres_dim, "hires": self.config.query_hires_dim}
        out = {name: np.zeros((self.block_size, dim), np.float32) for name, dim in dims.items()}
        out_values = {f"query_{name}": self._ort.OrtValue.ortvalue_from_numpy(array) for name, array in out.items()}
        for start in range(0, len(points), self.block_size):  # the query graph takes a fixed Q
            chunk = points[start:start + self.block_size]
            padded = np.zeros((self.block_size, 2), np.float32)
            padded[:len(chunk)] = chunk
            self._run("queries", {**features, "points": padded}, out_values)
            parts["hires"].append(out["hires"][:len(chunk)].copy())
            parts["lowres"].append(out["lowres"][:len(chunk)].copy())
        return {name: np.concatenate(arrays) if arrays else np.zeros((0, dims[name]), np.float32)
                for name, arrays in parts.items()}

    def set_query_features(self, slots: np.ndarray, query: Dict[str, np.ndarray]) -> None:
        slots = np.asarray(slots, np.int64)
        for name in ("hires", "lowres"):
            self._query_host[name][slots] = query[name]
        for block in np.unique(slots // self.block_size):
            rows = slice(block * self.block_size, (block + 1) * self.block_size)
            for name in ("hires", "lowres"):
                self._query[block][name].update_inplace(np.ascontiguousarray(self._query_host[name][rows]))
            # The new points' state restarts at zero: a round trip of this block's state, on adds only.
            in_block = slots[slots // self.block_size == block] - block * self.block_size
            for value in self._state[block]:
                state = value.numpy()
                state[:, :, in_block] = 0
                value.update_inplace(np.ascontiguousarray(state))

    def step(self, features, blocks: Sequence[int]) -> np.ndarray:
        for block in blocks:
            conv1, conv2 = self._state[block]
            out1, out2 = self._spare
            self._run("step", {**features, "query_hires": self._query[block]["hires"],
                               "query_lowres": self._query[block]["lowres"], "conv1": conv1, "conv2": conv2},
                      {"outputs": self._output_values[block], "conv1_out": out1, "conv2_out": out2})
            # The new state becomes this block's, the old one the spare (both stay on the device).
            self._state[block], self._spare = (out1, out2), (conv1, conv2)
        if not len(blocks):
            return np.zeros((0, 4), np.float32)
        return self._outputs[list(blocks)].reshape(-1, 4).copy()

    def reset(self) -> None:
        for pair in self._state:
            for value in pair:
                value.update_inplace(np.zeros(value.shape(), np.float32))
