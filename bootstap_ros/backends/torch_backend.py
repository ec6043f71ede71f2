"""The torch backend: the model's fast one-frame step (`TAPIR.track_step`), CPU or CUDA.

The query features and the causal state of every slot live on the backend's
device; each block's state is updated in place (views into one state tensor), and
the outputs of all blocks come back to the host in one transfer per frame.

On CUDA the frame's backbone pass and each block's step are captured in CUDA
graphs (`cuda_graphs=True`, the default): a frame then costs one copy in, one
graph replay for the backbone and one per active block, and one copy out. Every
input and output of a graph is a buffer of fixed address (the frame, the
feature grids, the per-slot query features and state, the outputs), and the
model's step builds no tensor from host data after its first frame, which is
what capture needs. A graph is captured on first use (after warm-up runs whose
effect on the state is undone); if capture fails the backend logs a warning and
runs eagerly.

With `torch_compile` the backbone pass and one mixer block are compiled with
torch.compile when the backend is made; every mixer block of every refinement
iteration runs that one compilation, and the rest of the step stays eager (and,
on CUDA, all of it is still captured in the graphs).

Reduced precision runs the network under autocast (the state, the positions and
the soft-argmax stay float32): fp16 or bf16 on CUDA, bf16 on CPU. On a CPU with
AVX512-BF16 or AMX, bf16 runs the backbone about 2.5x faster than fp32 with the
same accuracy (docs/speed.md); on CPUs without them it is slower.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from bootstap_ros.backends.base import BackendError
from bootstap_ros.model.layers import mixer_block_step
from bootstap_ros.model.tapir import TAPIR, CausalState, FeatureGrids, QueryFeatures

LOG = logging.getLogger(__name__)
_WARMUP_RUNS = 3  # eager runs on a side stream before a capture, as torch.cuda.graphs asks
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def inference_model(model: TAPIR, device) -> TAPIR:
    """`model` on `device` in eval mode, without changing the caller's model.

    The model itself when it is already there and in eval mode (no copy for the
    common case of a freshly loaded model); otherwise a copy, so that a model
    being trained, or used on another device, keeps its device, mode and weights.
    """
    device = torch.device(device)
    on_device = all(t.device.type == device.type and (device.index is None or t.device.index == device.index)
                    for t in itertools.chain(model.parameters(), model.buffers()))
    if on_device and not any(m.training for m in model.modules()):
        return model
    # A copy on the target device (a deepcopy would first duplicate it where it is).
    copy = type(model)(model.config)
    copy.load_state_dict(model.state_dict())
    return copy.to(device).eval()


class TorchBackend:
    name = "torch"

    def __init__(self, model: TAPIR, max_points: int, block_size: int, device: str = "cpu",
                 precision: str = "fp32", cuda_graphs: bool = True, torch_compile: bool = False):
        self.device = str(device)
        if precision == "fp16" and not self.device.startswith("cuda"):
            raise BackendError(f"the torch backend runs fp16 on CUDA only; use bf16 or fp32 on {self.device}")
        self.precision = precision
        self.model = inference_model(model, self.device)
        self.max_points = max_points
        self.block_size = block_size
        c = model.config
        self._query_lowres = torch.zeros(1, max_points, c.query_lowres_dim, device=self.device)
        self._query_hires = torch.zeros(1, max_points, c.query_hires_dim, device=self.device)
        self._state = model.initial_state(max_points, device=self.device) if c.causal else None
        # Graphs serve the causal step; a non-causal model (no state) runs eagerly.
        self.cuda_graphs = cuda_graphs and self.device.startswith("cuda") and c.causal
        # torch.compile fuses the step's many small element-wise kernels (layer norms, the
        # mixer's temporal update, GELU, residuals): on a GPU the step is bound by kernel
        # count, not arithmetic. What is compiled is the backbone pass and one mixer block
        # (`layers.mixer_block_step`): the mixer blocks are 90% of the step's kernels, and
        # all blocks of all refinement iterations share one compilation (their weights are
        # inputs of the graph), so compiling costs a small part of compiling the unrolled
        # step (12 blocks x 4 iterations). Compiled here, at start-up (see `_compile`).
        # `torch_compile`: True (inductor), or a torch.compile backend (its name, or the callable).
        self.torch_compile = bool(torch_compile) and c.causal
        self._compiled_encode = self._compiled_block = None
        if self.torch_compile:
            compiler = "inductor" if torch_compile is True else torch_compile
            self._compiled_encode = torch.compile(self.model.get_feature_grids, dynamic=False, backend=compiler)
            self._compiled_block = torch.compile(mixer_block_step, dynamic=False, backend=compiler)
            self._compile()
        if self.cuda_graphs:
            # One input buffer per backbone resolution (more than one with a refinement ladder).
            self.frames = tuple(torch.zeros(1, h, w, 3, device=self.device) for h, w in c.grid_resolutions)
            self._outputs = torch.zeros(max_points, 4, device=self.device)
            self._grids: Optional[FeatureGrids] = None  # the encode graph's outputs
            self._encode_graph = None
            self._step_graphs: Dict[int, "torch.cuda.CUDAGraph"] = {}
            self._pool = torch.cuda.graph_pool_handle()  # one memory pool for all graphs

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        # Autocast's weight cache must be off while capturing a CUDA graph.
        return torch.autocast(torch.device(self.device).type, dtype=_DTYPES[self.precision],
                              cache_enabled=not self.cuda_graphs)

    def _compile(self) -> None:
        """Compile now, on a blank frame and blank copies of the slots, as the first frame would.

        So the first tracked frame is not held up, and a compiler that cannot work here (no
        C++ compiler, no Triton) leaves the backend uncompiled, with a warning, before any
        point exists. The blank copies have the real buffers' shapes, strides, dtypes and
        kind (made outside inference mode, as the buffers are), so the real frames reuse
        these compilations.
        """
        c = self.model.config
        block = slice(0, self.block_size)
        frames = tuple(torch.zeros(1, h, w, 3, device=self.device) for h, w in c.grid_resolutions)
        queries = QueryFeatures(torch.zeros_like(self._query_lowres)[:, block],
                                torch.zeros_like(self._query_hires)[:, block])
        state = CausalState(torch.zeros_like(self._state.conv1)[:, :, :, block],
                            torch.zeros_like(self._state.conv2)[:, :, :, block])
        LOG.info("torch.compile: compiling the backbone pass and a mixer block on %s (seconds to minutes; "
                 "the compiler caches its kernels on disk, so later starts take less)", self.device)
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                features = self._encode(frames if len(frames) > 1 else frames[0])
                with self._autocast():
                    self.model.track_step(features, queries, state, in_place=True,
                                          block_step=self._compiled_block)
            LOG.info("torch.compile: compiled in %.1f s", time.perf_counter() - start)
        except Exception as error:  # the compiler's failures have no common type
            LOG.warning("torch.compile failed here (%s: %s); the torch backend runs uncompiled",
                        type(error).__name__, str(error).splitlines()[0] if str(error) else "")
            self.torch_compile = False
            self._compiled_encode = self._compiled_block = None

    # ------------------------------------------------------------- eager parts
    def _encode(self, frame) -> FeatureGrids:
        """frame: [1, H, W, 3], or a tuple of them at the grid resolutions (refinement ladder)."""
        encode = self._compiled_encode or self.model.get_feature_grids
        if self._compiled_encode is not None:
            # Every frame in one form (resized ones come channels-first in memory, others not),
            # so that all meet the compilation's guards: a fresh contiguous copy (tiny).
            frame = (tuple(f.clone(memory_format=torch.contiguous_format) for f in frame)
                     if isinstance(frame, tuple) else frame.clone(memory_format=torch.contiguous_format))
        video = tuple(f[:, None] for f in frame) if isinstance(frame, tuple) else frame[:, None]
        with self._autocast():
            return encode(video)

    def _step_block(self, features: FeatureGrids, block_index: int) -> torch.Tensor:
        """Advance one block by a frame; returns its [block_size, 4] outputs (float32)."""
        block = slice(block_index * self.block_size, (block_index + 1) * self.block_size)
        queries = QueryFeatures(self._query_lowres[:, block], self._query_hires[:, block])
        with self._autocast():
            if self._state is not None:
                # Views into the backend's state: the step updates the block where it lies.
                state = CausalState(self._state.conv1[:, :, :, block], self._state.conv2[:, :, :, block])
                result, _ = self.model.track_step(features, queries, state, in_place=True,
                                                  block_step=self._compiled_block)
            else:
                result, _ = self.model.estimate_trajectories(features, queries)
        return torch.cat([result.tracks[0, :, 0], result.occlusion[0, :, :1],
                          result.expected_dist[0, :, :1]], dim=-1).float()

    # ------------------------------------------------------------- CUDA graphs
    def _capture(self, run) -> Optional["torch.cuda.CUDAGraph"]:
        """Warm `run` up on a side stream and capture it; None (and eager from now on) on failure."""
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(_WARMUP_RUNS):
                    run()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: only this thread's calls may break the capture. The node loads the
            # next model (allocations, weight copies) on another thread while this one tracks.
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                run()
            return graph
        except RuntimeError as error:
            LOG.warning("CUDA graph capture failed (%s); the torch backend runs eagerly from now on", error)
            self.cuda_graphs = False
            return None

    def _graph_encode(self, frame) -> FeatureGrids:
        for buffer, part in zip(self.frames, frame if isinstance(frame, tuple) else (frame,)):
            buffer.copy_(part)
        staged = self.frames if len(self.frames) > 1 else self.frames[0]
        if self._encode_graph is None:
            def run():
                self._grids = self._encode(staged)
            self._encode_graph = self._capture(run)
            if self._encode_graph is None:
                return self._encode(staged)
        self._encode_graph.replay()
        return self._grids

    def _graph_step(self, block_index: int) -> torch.Tensor:
        """One block by its graph (captured on first use); eager once a capture has failed."""
        graph = self._step_graphs.get(block_index)
        if graph is None and self.cuda_graphs:
            graph = self._capture_step(block_index)
        if graph is None or not self.cuda_graphs:
            return self._step_block(self._grids, block_index)
        graph.replay()
        return self._outputs[block_index * self.block_size:(block_index + 1) * self.block_size]

    def _capture_step(self, block_index: int):
        block = slice(block_index * self.block_size, (block_index + 1) * self.block_size)
        saved = None if self._state is None else (self._state.conv1[:, :, :, block].clone(),
                                                  self._state.conv2[:, :, :, block].clone())

        def run():
            self._outputs[block] = self._step_block(self._grids, block_index)

        graph = self._capture(run)
        if saved is not None:  # the warm-up runs advanced the block's state: undo them
            self._state.conv1[:, :, :, block] = saved[0]
            self._state.conv2[:, :, :, block] = saved[1]
        if graph is not None:
            self._step_graphs[block_index] = graph
        return graph

    # ------------------------------------------------------------- the protocol
    @torch.inference_mode()
    def encode(self, frame) -> FeatureGrids:
        if self.cuda_graphs:
            return self._graph_encode(frame)
        if isinstance(frame, tuple):
            return self._encode(tuple(f.to(self.device, non_blocking=True) for f in frame))
        return self._encode(frame.to(self.device, non_blocking=True))

    def _sample_queries(self, features: FeatureGrids, points: np.ndarray) -> QueryFeatures:
        tyx = np.concatenate([np.zeros((len(points), 1), np.float32), points[:, ::-1]], axis=1)
        with self._autocast():
            return self.model.get_query_features(
                features, torch.from_numpy(np.ascontiguousarray(tyx))[None].to(self.device))

    def _write_queries(self, slots: np.ndarray, lowres: torch.Tensor, hires: torch.Tensor) -> None:
        index = torch.from_numpy(np.asarray(slots, np.int64)).to(self.device)
        self._query_lowres[:, index] = lowres.float()
        self._query_hires[:, index] = hires.float()
        if self._state is not None:
            self._state.conv1[:, :, :, index] = 0
            self._state.conv2[:, :, :, index] = 0

    @torch.inference_mode()
    def set_queries(self, features: FeatureGrids, slots: np.ndarray, points: np.ndarray) -> None:
        queries = self._sample_queries(features, points)
        self._write_queries(slots, queries.lowres, queries.hires)

    @torch.inference_mode()
    def query_features(self, features: FeatureGrids, points: np.ndarray) -> Dict[str, np.ndarray]:
        queries = self._sample_queries(features, points)
        return {"lowres": queries.lowres[0].float().cpu().numpy(),
                "hires": queries.hires[0].float().cpu().numpy()}

    @torch.inference_mode()
    def set_query_features(self, slots: np.ndarray, query: Dict[str, np.ndarray]) -> None:
        self._write_queries(slots, torch.from_numpy(query["lowres"])[None].to(self.device),
                            torch.from_numpy(query["hires"])[None].to(self.device))

    @torch.inference_mode()
    def step(self, features: FeatureGrids, blocks: Sequence[int]) -> np.ndarray:
        if not len(blocks):
            return np.zeros((0, 4), np.float32)
        graphed = self.cuda_graphs and features is self._grids
        packed = [self._graph_step(b) if graphed else self._step_block(features, b) for b in blocks]
        return torch.cat(packed).cpu().numpy()  # the one host sync of the frame

    def reset(self) -> None:
        if self._state is not None:
            self._state.conv1.zero_()
            self._state.conv2.zero_()
