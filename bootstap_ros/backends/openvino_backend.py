"""The OpenVINO backend: the exported encoder, query and step graphs (see onnx_export) on
OpenVINO's CPU runtime, the x86 edge runtime.

It reads the same ONNX export as the onnxruntime backend (made on first use, checked
against torch, cached on disk by model fingerprint and block size) and compiles each
graph for the CPU with the LATENCY hint; OpenVINO keeps the compiled graphs in its own
cache beside the export (`<cache>/openvino`), so later starts skip the compilation.
Every input and output is a host array of the backend's, wrapped once in an OpenVINO
tensor that shares its memory: the frame's feature grids are written by the encoder
where the step reads them, and each block's causal state goes in and its new state
comes out into a spare pair (which then becomes the block's), with no copy.

Precision: fp32 runs every graph in float32 (the inference precision is set
explicitly: OpenVINO would otherwise pick bf16 on CPUs with AMX). bf16 runs the
encoder (the backbone, most of the arithmetic) in bf16 and keeps the query and step
graphs in float32, so the state, the cost volumes, the soft-argmax and the positions
stay float32; it pays only on CPUs with AVX512-BF16 or AMX (docs/speed.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from bootstap_ros.backends.base import BackendError
from bootstap_ros.backends.onnx_export import (cached_export, default_cache_dir, expected_shapes, frame_names,
                                               grid_names)

# OpenVINO's inference precision per graph for each of the backend's precisions.
_GRAPH_PRECISION = {"fp32": {"encoder": "f32", "queries": "f32", "step": "f32"},
                    "bf16": {"encoder": "bf16", "queries": "f32", "step": "f32"}}


def compile_config(graph: str, precision: str, threads: Optional[int] = None) -> Dict[str, str]:
    """The OpenVINO CPU properties a graph is compiled with."""
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": _GRAPH_PRECISION[precision][graph]}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    return config


def check_against_torch(model, compiled, block_size: int, precision: str, atol: float = 1e-3) -> Dict[str, float]:
    """Max abs difference per output between the compiled graphs and torch, on the export's
    check inputs; BackendError above `atol`. Graphs compiled for bf16 are not held to it
    (the encoder in bf16); the float32 ones always are, so the step this backend runs is
    checked on this machine, with this OpenVINO, each time the backend is made."""
    import torch

    from bootstap_ros.backends.onnx_export import EncoderGraph, QueryGraph, StepGraph, example_inputs
    from bootstap_ros.backends.torch_backend import inference_model

    model = inference_model(model, "cpu")
    frames, points, conv1, conv2 = example_inputs(model, block_size, seed=1)
    names = grid_names(model.config)
    with torch.no_grad():
        grids = EncoderGraph(model)(*frames)
        query_hires, query_lowres = QueryGraph(model)(*grids, points)
        step = StepGraph(model)(*grids, query_hires, query_lowres, conv1, conv2)
    grid_inputs = {name: grid.numpy() for name, grid in zip(names, grids)}
    expected = {
        "encoder": ({name: frame.numpy() for name, frame in zip(frame_names(model.config), frames)},
                    dict(zip(names, grids))),
        "queries": ({**grid_inputs, "points": points.numpy()},
                    {"query_hires": query_hires, "query_lowres": query_lowres}),
        "step": ({**grid_inputs, "query_hires": query_hires.numpy(), "query_lowres": query_lowres.numpy(),
                  "conv1": conv1.numpy(), "conv2": conv2.numpy()},
                 dict(zip(("outputs", "conv1_out", "conv2_out"), step))),
    }
    diffs, bad = {}, []
    for graph, (inputs, wanted) in expected.items():
        request = compiled[graph].create_infer_request()
        request.infer(inputs)
        for name, reference in wanted.items():
            got = request.get_tensor(name).data
            diffs[name] = float(np.max(np.abs(got - reference.numpy())))
            if _GRAPH_PRECISION[precision][graph] == "f32" and not diffs[name] <= atol:
                bad.append(f"{name} {diffs[name]:.3g}")
    if bad:
        raise BackendError(f"OpenVINO's compiled graphs differ from torch by more than {atol}: {', '.join(bad)}; "
                           "use another backend (torch or onnxruntime) or another openvino version")
    return diffs


class OpenVinoBackend:
    name = "openvino"

    def __init__(self, model, max_points: int, block_size: int, device: str = "cpu",
                 precision: str = "fp32", cache_dir=None, threads: Optional[int] = None):
        try:
            import openvino as ov
        except ImportError:
            raise BackendError("the openvino backend needs the openvino package: pip install openvino") from None
        if not str(device).startswith("cpu"):
            raise BackendError(f"the openvino backend runs on the CPU only, got device {device}; use the "
                               "tensorrt or torch backend on CUDA")
        if precision not in _GRAPH_PRECISION:
            raise BackendError(f"the openvino backend runs fp32 or bf16, got {precision}")
        if not model.config.causal:
            raise BackendError("the openvino backend needs a causal model (--causal)")
        self.device = "cpu"
        self.precision = precision
        self.max_points = max_points
        self.block_size = block_size
        self.config = model.config
        self.export = cached_export(model, block_size, cache_dir)
        core = ov.Core()
        core.set_property({"CACHE_DIR": str(Path(cache_dir or default_cache_dir()) / "openvino")})
        compiled = {graph: core.compile_model(str(path), "CPU", compile_config(graph, precision, threads))
                    for graph, path in self.export.paths.items()}
        self.max_abs_diff = check_against_torch(model, compiled, block_size, precision)
        self._requests = {graph: graph_model.create_infer_request() for graph, graph_model in compiled.items()}
        self._ov = ov
        shapes = expected_shapes(model.config, block_size)
        blocks = max_points // block_size
        step = shapes["step"]
        zeros = lambda shape: np.zeros(shape, np.float32)  # noqa: E731
        self.frames = {name: zeros(shapes["encoder"][name]) for name in frame_names(model.config)}
        self._grids = {name: zeros(shapes["encoder"][name]) for name in grid_names(model.config)}
        self._query = {"hires": zeros((max_points, model.config.query_hires_dim)),
                       "lowres": zeros((max_points, model.config.query_lowres_dim))}
        self._state = [(zeros(step["conv1"]), zeros(step["conv2"])) for _ in range(blocks)]
        self._spare = (zeros(step["conv1"]), zeros(step["conv2"]))
        self._outputs = zeros((blocks, block_size, 4))
        self._query_out = {name: zeros((block_size, array.shape[1])) for name, array in self._query.items()}
        self._points = zeros((block_size, 2))
        # The tensors that never move: the encoder's frames and grids, the query graph's points
        # and outputs; the step's grids (the encoder's outputs, read in place).
        self._bind("encoder", {**self.frames, **self._grids})
        self._bind("queries", {**self._grids, "points": self._points,
                               **{f"query_{name}": array for name, array in self._query_out.items()}})
        self._bind("step", self._grids)

    def _tensor(self, array: np.ndarray):
        """An OpenVINO tensor over `array`'s memory (no copy)."""
        return self._ov.Tensor(array, shared_memory=True)

    def _bind(self, graph: str, arrays: Dict[str, np.ndarray]) -> None:
        request = self._requests[graph]
        for name, array in arrays.items():
            request.set_tensor(name, self._tensor(array))

    def encode(self, frame):
        """The frame's feature grids, {name: host array} (overwritten by the next frame).
        frame: [1, H, W, 3], or a tuple of them at the grid resolutions."""
        for array, part in zip(self.frames.values(), frame if isinstance(frame, tuple) else (frame,)):
            array[...] = np.asarray(part, np.float32)
        self._requests["encoder"].infer()
        return self._grids

    def _check_features(self, features) -> None:
        if features is not self._grids:
            raise BackendError("the openvino backend reads the grids of its own latest encode(); "
                               "call encode() on this backend first")

    def set_queries(self, features, slots: np.ndarray, points: np.ndarray) -> None:
        self.set_query_features(slots, self.query_features(features, points))

    def query_features(self, features, points: np.ndarray) -> Dict[str, np.ndarray]:
        self._check_features(features)
        parts: Dict[str, List[np.ndarray]] = {"lowres": [], "hires": []}
        for start in range(0, len(points), self.block_size):  # the query graph takes a fixed Q
            chunk = points[start:start + self.block_size]
            self._points[...] = 0
            self._points[:len(chunk)] = chunk
            self._requests["queries"].infer()
            for name in parts:
                parts[name].append(self._query_out[name][:len(chunk)].copy())
        return {name: np.concatenate(arrays) if arrays else np.zeros((0, self._query[name].shape[1]), np.float32)
                for name, arrays in parts.items()}

    def set_query_features(self, slots: np.ndarray, query: Dict[str, np.ndarray]) -> None:
        slots = np.asarray(slots, np.int64)
        for name in ("hires", "lowres"):
            self._query[name][slots] = query[name]
        blocks, rows = np.divmod(slots, self.block_size)
        for block in np.unique(blocks):
            for state in self._state[block]:  # the new points' state restarts at zero
                state[:, :, rows[blocks == block]] = 0

    def step(self, features, blocks: Sequence[int]) -> np.ndarray:
        self._check_features(features)
        request = self._requests["step"]
        for block in blocks:
            rows = slice(block * self.block_size, (block + 1) * self.block_size)
            conv1, conv2 = self._state[block]
            out1, out2 = self._spare
            self._bind("step", {"query_hires": self._query["hires"][rows], "query_lowres": self._query["lowres"][rows],
                                "conv1": conv1, "conv2": conv2, "outputs": self._outputs[block],
                                "conv1_out": out1, "conv2_out": out2})
            request.infer()
            # The new state becomes this block's, the old one the spare.
            self._state[block], self._spare = (out1, out2), (conv1, conv2)
        if not len(blocks):
            return np.zeros((0, 4), np.float32)
        return self._outputs[list(blocks)].reshape(-1, 4).copy()

    def reset(self) -> None:
        for pair in self._state:
            for array in pair:
                array[...] = 0
