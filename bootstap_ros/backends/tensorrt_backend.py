"""The TensorRT backend: the ONNX graphs of onnx_export built into TensorRT engines.

Written against the TensorRT 10 Python API (`tensorrt` package): engines are
built with `Builder.build_serialized_network` (FP16 by default, i.e. for
precision "auto"; bf16 and fp32 on request; in fp16/bf16 the softmax, the
soft-argmax and the positions stay FP32, see `fp32_node_names`), cached on disk
under a key made of the ONNX file's hash, the TensorRT version, the GPU (name
and compute capability), the precision and the build recipe, written through a
uniquely named temporary file, and rebuilt when any of those changes or when
`force_engine_rebuild` is set.
Inference binds torch CUDA tensors by address (`set_tensor_address`) and runs
`execute_async_v3` on torch's current stream: no pycuda. The causal state of
each block stays on the GPU as two float32 tensors, swapped with the step's
outputs after every frame; the outputs of all blocks come back in one copy.

NOT VERIFIED: the engine build and the inference path have not run yet (the
tests run where TensorRT is not installed; CI has no GPU). What does run in the
tests are the pure parts: cache keys and paths, dtype/shape handling,
which ONNX nodes stay FP32 and how layers are pinned, the atomic engine write
and the ONNX export the engines are built from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from bootstap_ros.backends.base import BackendError
from bootstap_ros.backends.onnx_export import (cached_export, default_cache_dir, expected_shapes, file_sha256,
                                               frame_names, grid_names)

LOG = logging.getLogger(__name__)
ENGINE_PRECISIONS = ("fp16", "bf16", "fp32")
ENGINE_RECIPE = 2  # how engines are built (2: FP32 positions); part of the cache key


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on; any change means a rebuild."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: Tuple[int, int]
    precision: str
    recipe: int = ENGINE_RECIPE

    def digest(self) -> str:
        text = json.dumps([self.onnx_sha256, self.tensorrt_version, self.gpu_name,
                           list(self.compute_capability), self.precision, self.recipe])
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def filename(self, graph: str) -> str:
        gpu = "".join(ch if ch.isalnum() else "-" for ch in self.gpu_name).strip("-").lower()
        major, minor = self.compute_capability
        return f"{graph}-{self.precision}-trt{self.tensorrt_version}-{gpu}-sm{major}{minor}-{self.digest()}.engine"


def engine_path(cache_dir, graph: str, key: EngineKey) -> Path:
    return Path(cache_dir) / "tensorrt" / key.filename(graph)


def torch_dtype_for(trt_dtype_name: str):
    """The torch dtype for a TensorRT DataType name (e.g. 'FLOAT', 'HALF')."""
    import torch

    table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
             "INT64": torch.int64, "BOOL": torch.bool, "INT8": torch.int8, "UINT8": torch.uint8}
    if trt_dtype_name not in table:
        raise BackendError(f"an engine tensor has TensorRT type {trt_dtype_name}, which this backend does not bind")
    return table[trt_dtype_name]


def check_static_shape(name: str, engine_shape: Sequence[int], expected: Sequence[int]) -> Tuple[int, ...]:
    """The engine's shape for a tensor, which must be static and equal to the tracker's."""
    shape = tuple(int(d) for d in engine_shape)
    if any(d < 0 for d in shape):
        raise BackendError(f"engine tensor '{name}' has a dynamic shape {shape}; the exported graphs are "
                           "static: rebuild the engine (force_engine_rebuild=True)")
    if shape != tuple(expected):
        raise BackendError(f"engine tensor '{name}' has shape {shape}, expected {tuple(expected)} "
                           "(block size or model changed?): rebuild the engine (force_engine_rebuild=True)")
    return shape


# Where the FP32 islands of a reduced-precision engine stop: the learned layers and
# normalisations run in the engine's precision (as under torch autocast).
_LEARNED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "LayerNormalization",
                          "InstanceNormalization", "BatchNormalization"})
# Samplers: their coordinates and result stay FP32 (torch autocast runs grid_sample in
# float32 too), but what is computed from their result is ordinary network work.
_SAMPLER_OPS = frozenset({"GridSample"})


def fp32_node_names(graph) -> Set[str]:
    """Names of the ONNX nodes that a reduced-precision engine must run in FP32.

    graph: an `onnx.GraphProto`. Positions need more than FP16's 11 bits (at 256 px
    its step is 0.125 px, and the residual updates of every refinement iteration
    add up), so, as the torch backend does under autocast, these stay FP32:

    * the cost volume's softmax, with the temperature scaling before it (back to
      the convolution that makes the logits);
    * everything computed from the softmax or from query `points` up to a learned
      layer: the soft-argmax, the scaling to the model raster, every position sum
      `tracks + delta`, the sampling coordinates and the samplers themselves.
    """
    producer = {out: node for node in graph.node for out in node.output}
    consumers: Dict[str, List] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    keep: Set[str] = set()
    softmaxes = [node for node in graph.node if node.op_type == "Softmax"]
    backward = [name for node in softmaxes for name in node.input]
    while backward:  # the temperature scaling and reshapes in front of the softmax
        node = producer.get(backward.pop())
        if node is None or node.op_type in _LEARNED_OPS or node.name in keep:
            continue
        keep.add(node.name)
        backward.extend(node.input)
    sources = [out for node in softmaxes for out in node.output]
    sources += [value.name for value in graph.input if value.name == "points"]
    keep.update(node.name for node in softmaxes)
    forward = [node for name in sources for node in consumers.get(name, [])]
    while forward:
        node = forward.pop()
        if node.op_type in _LEARNED_OPS or node.name in keep:
            continue
        keep.add(node.name)
        if node.op_type not in _SAMPLER_OPS:
            forward.extend(c for out in node.output for c in consumers.get(out, []))
    return keep


def _is_float(trt, dtype) -> bool:
    return dtype in (trt.float32, trt.float16, getattr(trt, "bfloat16", trt.float16))


def constrain_to_fp32(trt, network, node_names: Set[str]) -> int:
    """Pin the layers made from `node_names` to FP32 (precision and float outputs); the count.

    A layer is matched by the ONNX node recorded in its metadata ("[ONNX Layer: name]",
    set by TensorRT 10's ONNX parser) or, failing that, by its name. Layers with
    non-float outputs (shapes, argmax indices) are left as they are.
    """
    pinned = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        metadata = getattr(layer, "metadata", "") or ""
        sources = set(re.findall(r"\[ONNX Layer: ([^\]]+)\]", metadata)) or {layer.name}
        if not sources & node_names:
            continue
        outputs = [layer.get_output(i) for i in range(layer.num_outputs)]
        if not outputs or not all(_is_float(trt, out.dtype) for out in outputs):
            continue
        layer.precision = trt.float32
        for i in range(layer.num_outputs):
            layer.set_output_type(i, trt.float32)
        pinned += 1
    return pinned


def build_engine(trt, onnx_path: Path, precision: str, workspace_gb: float = 4.0) -> bytes:
    """A serialized engine for `onnx_path` (TensorRT 10 API).

    In fp16/bf16 the positions stay FP32 (`fp32_node_names`), enforced with
    OBEY_PRECISION_CONSTRAINTS: a build that cannot honour them fails instead of
    silently running the soft-argmax in half precision.
    """
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if precision in ("fp16", "bf16"):
        config.set_flag(trt.BuilderFlag.FP16 if precision == "fp16" else trt.BuilderFlag.BF16)
        import onnx

        names = fp32_node_names(onnx.load(str(onnx_path), load_external_data=False).graph)
        pinned = constrain_to_fp32(trt, network, names)
        if names and not pinned:
            LOG.warning("no TensorRT layer of %s matched the %d FP32 nodes: positions run in %s",
                        onnx_path.name, len(names), precision)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        LOG.info("%s: %d layers pinned to FP32 (positions, softmax, soft-argmax)", onnx_path.name, pinned)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT failed to build an engine from {onnx_path} ({precision})")
    return bytes(serialized)


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file of a unique name in the same folder,
    renamed into place: two processes building the same engine never write one file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Engine:
    """One deserialized engine with an execution context and its static I/O description."""

    def __init__(self, trt, runtime, data: bytes, shapes: Dict[str, Tuple[int, ...]], graph: str):
        self.engine = runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise BackendError(f"TensorRT could not load the {graph} engine; rebuild it (force_engine_rebuild)")
        self.context = self.engine.create_execution_context()
        self.inputs, self.outputs, self.dtypes = [], [], {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            check_static_shape(name, self.engine.get_tensor_shape(name), shapes[name])
            self.dtypes[name] = torch_dtype_for(self.engine.get_tensor_dtype(name).name)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(name)

    def run(self, tensors: Dict[str, "object"], stream) -> None:
        """tensors: torch CUDA tensors by name (inputs and preallocated outputs), contiguous."""
        for name in self.inputs + self.outputs:
            self.context.set_tensor_address(name, tensors[name].data_ptr())
        if not self.context.execute_async_v3(stream_handle=stream.cuda_stream):
            raise BackendError("TensorRT execution failed")


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, model, max_points: int, block_size: int, device: str = "cuda",
                 precision: str = "fp16", cache_dir=None, force_engine_rebuild: bool = False,
                 workspace_gb: float = 4.0):
        try:
            import tensorrt as trt
        except ImportError:
            raise BackendError("the tensorrt backend needs NVIDIA TensorRT's Python package "
                               "(pip install tensorrt) and a CUDA GPU") from None
        import torch

        if not str(device).startswith("cuda") or not torch.cuda.is_available():
            raise BackendError(f"the tensorrt backend runs on CUDA only, got device {device}")
        if precision not in ENGINE_PRECISIONS:
            raise BackendError(f"unknown TensorRT precision {precision}; choose one of {ENGINE_PRECISIONS}")
        if not model.config.causal:
            raise BackendError("the tensorrt backend needs a causal model (--causal)")
        self.device, self.precision = str(device), precision
        self.max_points, self.block_size, self.config = max_points, block_size, model.config
        cache_dir = Path(cache_dir or default_cache_dir())
        export = cached_export(model, block_size, cache_dir)
        props = torch.cuda.get_device_properties(self.device)
        shapes = expected_shapes(model.config, block_size)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines: Dict[str, _Engine] = {}
        for graph, onnx_path in export.paths.items():
            key = EngineKey(file_sha256(onnx_path), trt.__version__, props.name, (props.major, props.minor),
                            precision)
            path = engine_path(cache_dir, graph, key)
            if force_engine_rebuild or not path.exists():
                LOG.info("building the TensorRT %s engine (%s) into %s", graph, precision, path)
                write_atomically(path, build_engine(trt, onnx_path, precision, workspace_gb))
            self.engines[graph] = _Engine(trt, runtime, path.read_bytes(), shapes[graph], graph)
        self._stream = torch.cuda.current_stream(self.device)
        zeros = lambda shape, name, graph: torch.zeros(shape, dtype=self.engines[graph].dtypes[name],  # noqa: E731
                                                       device=self.device)
        step = shapes["step"]
        blocks = max_points // block_size
        self._query_hires = torch.zeros((max_points, model.config.query_hires_dim), device=self.device)
        self._query_lowres = torch.zeros((max_points, model.config.query_lowres_dim), device=self.device)
        self._state = [(zeros(step["conv1"], "conv1", "step"), zeros(step["conv2"], "conv2", "step"))
                       for _ in range(blocks)]
        self._spare = (zeros(step["conv1_out"], "conv1_out", "step"), zeros(step["conv2_out"], "conv2_out", "step"))
        # One frame and two grids per backbone resolution (more than one with a refinement ladder).
        self._grids = {name: zeros(shapes["encoder"][name], name, "encoder") for name in grid_names(model.config)}
        self.frames = {name: zeros(shapes["encoder"][name], name, "encoder") for name in frame_names(model.config)}
        self._points = zeros(shapes["queries"]["points"], "points", "queries")
        self._query_out = {name: zeros(shapes["queries"][name], name, "queries")
                           for name in ("query_hires", "query_lowres")}
        self._outputs = torch.zeros((blocks, block_size, 4), device=self.device)

    def encode(self, frame):
        import torch

        for buffer, part in zip(self.frames.values(), frame if isinstance(frame, tuple) else (frame,)):
            buffer.copy_(torch.as_tensor(part), non_blocking=True)
        self.engines["encoder"].run({**self.frames, **self._grids}, self._stream)
        return self._grids

    def set_queries(self, features, slots: np.ndarray, points: np.ndarray) -> None:
        # Through the host: points are added rarely, and one path serves both ways of adding.
        self.set_query_features(slots, self.query_features(features, points))

    def query_features(self, features, points: np.ndarray) -> Dict[str, np.ndarray]:
        import torch

        parts = {"lowres": [], "hires": []}
        for start in range(0, len(points), self.block_size):
            chunk = np.zeros((self.block_size, 2), np.float32)
            part = points[start:start + self.block_size]
            chunk[:len(part)] = part
            self._points.copy_(torch.from_numpy(chunk))
            self.engines["queries"].run({**features, "points": self._points, **self._query_out}, self._stream)
            parts["hires"].append(self._query_out["query_hires"][:len(part)].float().cpu().numpy())
            parts["lowres"].append(self._query_out["query_lowres"][:len(part)].float().cpu().numpy())
        dims = {"lowres": self.config.query_lowres_dim, "hires": self.config.query_hires_dim}
        return {name: np.concatenate(arrays) if arrays else np.zeros((0, dims[name]), np.float32)
                for name, arrays in parts.items()}

    def set_query_features(self, slots: np.ndarray, query: Dict[str, np.ndarray]) -> None:
        import torch

        slots = np.asarray(slots, np.int64)
        rows = torch.from_numpy(slots).to(self.device)
        self._query_hires[rows] = torch.from_numpy(query["hires"]).to(self.device)
        self._query_lowres[rows] = torch.from_numpy(query["lowres"]).to(self.device)
        for slot in slots:
            block, row = divmod(int(slot), self.block_size)
            self._state[block][0][:, :, row] = 0
            self._state[block][1][:, :, row] = 0

    def step(self, features, blocks: Sequence[int]) -> np.ndarray:
        for block in blocks:
            rows = slice(block * self.block_size, (block + 1) * self.block_size)
            conv1, conv2 = self._state[block]
            out1, out2 = self._spare
            self.engines["step"].run({
                **features, "query_hires": self._query_hires[rows], "query_lowres": self._query_lowres[rows],
                "conv1": conv1, "conv2": conv2, "outputs": self._outputs[block], "conv1_out": out1,
                "conv2_out": out2}, self._stream)
            # Double buffering: the new state becomes this block's, the old one the spare.
            self._state[block], self._spare = (out1, out2), (conv1, conv2)
        if not len(blocks):
            return np.zeros((0, 4), np.float32)
        return self._outputs[list(blocks)].reshape(-1, 4).float().cpu().numpy()  # one host sync

    def reset(self) -> None:
        for conv1, conv2 in self._state:
            conv1.zero_()
            conv2.zero_()
