"""ONNX export of the online tracker: three static-shape graphs, checked against torch.

* ``encoder.onnx``: frame [1, H, W, 3] (model resolution, float in [-1, 1]) ->
  ``hires`` [1, H/4, W/4, C_hires], ``lowres`` [1, H/8, W/8, C_lowres] (the backbone
  and BootsTAP's extra convolutions, L2-normalised).
* ``queries.onnx``: the grids and ``points`` [Q, 2] (x, y in the model raster) ->
  ``query_hires`` [Q, C_hires], ``query_lowres`` [Q, C_lowres] (the query encoder).
* ``step.onnx``: the grids, a block of Q query features and its causal state
  (``conv1`` [I, M, Q, K-1, D], ``conv2`` [I, M, Q, K-1, 4D]) -> ``outputs`` [Q, 4]
  (x, y, occlusion logit, expected-distance logit in the model raster) and the
  new state ``conv1_out``/``conv2_out``. The state is an explicit input and
  output, so the runtime owns it and a point's history never leaves its row.

With a refinement ladder (`ModelConfig.refine_resolution`), every further level k
adds an encoder input ``frame_k`` (the frame at that level's resolution) and grids
``hires_k``/``lowres_k``, which the query and step graphs also take; the query
features hold every level's vectors (``[Q, C * L]``) and the state every level's
iterations (I = iterations x levels). With one level the graphs are as above.

Q is the tracker's block size. `export_onnx` writes the three files, runs them
with onnxruntime on a synthetic frame, random queries and a random state, and
raises `OnnxExportError` when any output differs from torch by more than the
tolerance (the measured difference is logged and returned).

`cached_export` keeps exports on disk under the model's fingerprint, the block
size, and the torch / onnx versions and opset that made them; `export.json`
records each graph's SHA-256, and a cached export is used only when its files
still have those hashes and the inputs and outputs the tracker expects
(`expected_shapes`), else it is made again (with a log line saying why).

Opset 18: NVIDIA/TensorRT issue 4646 reports wrong GridSample results for opset
20 graphs on TensorRT 10.13 (opset 20 moved GridSample to its N-d form), while
opset 18 works; the graphs use GridSample (query and correlation sampling).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bootstap_ros.backends.torch_backend import inference_model
from bootstap_ros.model.tapir import TAPIR, CausalState, FeatureGrids, QueryFeatures

LOG = logging.getLogger(__name__)

OPSET = 18  # not 20: see the module docstring (TensorRT GridSample)
GRAPHS = ("encoder", "queries", "step")
EXPORT_FORMAT_VERSION = 2  # 2: versions in the cache key, graph hashes


class OnnxExportError(RuntimeError):
    """The exported graphs do not reproduce torch (or could not be written)."""


@dataclass
class OnnxExport:
    """Paths of the exported graphs and what they were checked against."""

    directory: Path
    block_size: int
    paths: Dict[str, Path]
    max_abs_diff: Dict[str, float] = field(default_factory=dict)

    @property
    def step(self) -> Path:
        return self.paths["step"]


def frame_names(config) -> List[str]:
    """The encoder's inputs: one frame per backbone resolution (`config.grid_resolutions`)."""
    return ["frame"] + [f"frame_{k}" for k in range(1, len(config.grid_resolutions))]


def grid_names(config) -> List[str]:
    """The grids, in graph order: hires, lowres, then hires_k, lowres_k for each further level."""
    names = ["hires", "lowres"]
    for k in range(1, len(config.grid_resolutions)):
        names += [f"hires_{k}", f"lowres_{k}"]
    return names


def _grids_from_flat(flat) -> FeatureGrids:
    """[1, h, w, C] grids in `grid_names` order -> one-frame FeatureGrids."""
    levels = [FeatureGrids(flat[i + 1][:, None], flat[i][:, None]) for i in range(0, len(flat), 2)]
    return FeatureGrids(levels[0].lowres, levels[0].hires, tuple(levels[1:]))


class EncoderGraph(nn.Module):
    def __init__(self, model: TAPIR):
        super().__init__()
        self.model = model

    def forward(self, *frames: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        grids = self.model.get_feature_grids(tuple(f[:, None] for f in frames))
        return tuple(t[:, 0] for level in grids.levels() for t in (level.hires, level.lowres))


def sample_query_features(grid: torch.Tensor, points: torch.Tensor, resolution) -> torch.Tensor:
    """Bilinear samples of grid [1, h, w, C] at points [Q, 2] (x, y, model raster), clamped
    to the border: the model's trilinear query sampling for a one-frame grid."""
    height, width = resolution
    scale = torch.tensor([2.0 / width, 2.0 / height], dtype=points.dtype, device=points.device)
    normalized = (points * scale - 1)[None, :, None, :]  # [1, Q, 1, 2]
    out = F.grid_sample(grid.permute(0, 3, 1, 2), normalized, mode="bilinear",
                        padding_mode="border", align_corners=False)
    return out[0, :, :, 0].t()


class QueryGraph(nn.Module):
    def __init__(self, model: TAPIR):
        super().__init__()
        self.resolution = model.config.resolution

    def forward(self, *grids_and_points):
        *grids, points = grids_and_points
        # Every level at the same normalised position; levels concatenated (QueryFeatures).
        hires = [sample_query_features(g, points, self.resolution) for g in grids[0::2]]
        lowres = [sample_query_features(g, points, self.resolution) for g in grids[1::2]]
        if len(hires) == 1:
            return hires[0], lowres[0]
        return torch.cat(hires, -1), torch.cat(lowres, -1)


class StepGraph(nn.Module):
    def __init__(self, model: TAPIR):
        super().__init__()
        self.model = model

    def forward(self, *inputs):
        *grids, query_hires, query_lowres, conv1, conv2 = inputs
        grids = _grids_from_flat(grids)
        queries = QueryFeatures(query_lowres[None], query_hires[None])
        state = CausalState(conv1[:, :, None], conv2[:, :, None])
        result, new_state = self.model.track_step(grids, queries, state, in_place=False)
        outputs = torch.cat([result.tracks[0, :, 0], result.occlusion[0, :, :1],
                             result.expected_dist[0, :, :1]], dim=-1)
        return outputs, new_state.conv1[:, :, 0], new_state.conv2[:, :, 0]


def model_fingerprint(model: TAPIR) -> str:
    """A hash of the model's config and weights (names the export cache entry)."""
    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def expected_shapes(config, block_size: int) -> Dict[str, Dict[str, Tuple[int, ...]]]:
    """The static shape of every input and output of the three graphs."""
    c = config
    frames, grids = {}, {}
    for k, (height, width) in enumerate(c.grid_resolutions):
        suffix = f"_{k}" if k else ""
        frames["frame" + suffix] = (1, height, width, 3)
        grids["hires" + suffix] = (1, height // 4, width // 4, c.hires_dim)
        grids["lowres" + suffix] = (1, height // 8, width // 8, c.lowres_dim)
    state = (c.state_iterations, c.mixer_blocks, block_size, c.mixer_kernel - 1)
    query = {"query_hires": (block_size, c.query_hires_dim), "query_lowres": (block_size, c.query_lowres_dim)}
    return {
        "encoder": {**frames, **grids},
        "queries": {**grids, "points": (block_size, 2), **query},
        "step": {**grids, **query, "conv1": state + (c.mixer_hidden_dim,),
                 "conv2": state + (4 * c.mixer_hidden_dim,), "outputs": (block_size, 4),
                 "conv1_out": state + (c.mixer_hidden_dim,), "conv2_out": state + (4 * c.mixer_hidden_dim,)},
    }


def default_cache_dir() -> Path:
    root = os.environ.get("BOOTSTAP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bootstap_ros")
    return Path(root)


def example_inputs(model: TAPIR, block_size: int, seed: int = 0):
    """Deterministic inputs for export and checking: a smooth frame (one per backbone
    resolution), spread queries, random state."""
    c = model.config
    height, width = c.resolution
    generator = torch.Generator().manual_seed(seed)
    frames = []
    for level_h, level_w in c.grid_resolutions:
        y, x = torch.meshgrid(torch.arange(level_h, dtype=torch.float32) * height / level_h,
                              torch.arange(level_w, dtype=torch.float32) * width / level_w, indexing="ij")
        frames.append(torch.stack([torch.sin(x / 7) * torch.cos(y / 5), torch.sin((x + y) / 11),
                                   torch.cos(x / 13 - y / 4)], -1)[None] * 0.9)
    frame = tuple(frames)
    points = torch.rand(block_size, 2, generator=generator) * torch.tensor([width - 1.0, height - 1.0]) + 0.5
    shape = (c.state_iterations, c.mixer_blocks, block_size, c.mixer_kernel - 1)
    conv1 = torch.randn(*shape, c.mixer_hidden_dim, generator=generator)
    conv2 = torch.randn(*shape, 4 * c.mixer_hidden_dim, generator=generator)
    return frame, points, conv1, conv2


def _export(module: nn.Module, args, path: Path, input_names, output_names) -> None:
    with warnings.catch_warnings():
        # The tracer warns about every python-side shape check; the shapes are static here.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=list(input_names),
                          output_names=list(output_names), opset_version=OPSET, dynamo=False,
                          do_constant_folding=True)


def export_onnx(model: TAPIR, directory, block_size: int, check: bool = True,
                atol: float = 1e-3) -> OnnxExport:
    """Write encoder/queries/step ONNX graphs for `block_size` points per step to `directory`.

    With `check`, runs them with onnxruntime (CPU) and raises OnnxExportError when an
    output differs from torch by more than `atol` (state and logits included).
    """
    if not model.config.causal:
        raise OnnxExportError("only causal models are exported (the online step carries a causal state)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = inference_model(model, "cpu")  # the caller's model stays where and as it is
    paths = {name: directory / f"{name}.onnx" for name in GRAPHS}
    frames, points, conv1, conv2 = example_inputs(model, block_size)
    grids = grid_names(model.config)
    with torch.no_grad():
        grid_values = EncoderGraph(model)(*frames)
        query_hires, query_lowres = QueryGraph(model)(*grid_values, points)
        _export(EncoderGraph(model), frames, paths["encoder"], frame_names(model.config), grids)
        _export(QueryGraph(model), (*grid_values, points), paths["queries"],
                grids + ["points"], ["query_hires", "query_lowres"])
        _export(StepGraph(model), (*grid_values, query_hires, query_lowres, conv1, conv2), paths["step"],
                grids + ["query_hires", "query_lowres", "conv1", "conv2"],
                ["outputs", "conv1_out", "conv2_out"])
    export = OnnxExport(directory, block_size, paths)
    if check:
        export.max_abs_diff = check_export(model, export, atol)
    (directory / "export.json").write_text(json.dumps({
        **export_environment(), "block_size": block_size, "model_config": model.config.to_dict(),
        "sha256": {name: file_sha256(path) for name, path in paths.items()},
        "max_abs_diff": export.max_abs_diff}, indent=1))
    return export


def check_export(model: TAPIR, export: OnnxExport, atol: float = 1e-3) -> Dict[str, float]:
    """Max abs difference per output between onnxruntime (CPU) and torch; raises above atol."""
    import onnxruntime as ort

    frames, points, conv1, conv2 = example_inputs(model, export.block_size, seed=1)
    names = grid_names(model.config)
    with torch.no_grad():
        grid_values = EncoderGraph(model)(*frames)
        query_hires, query_lowres = QueryGraph(model)(*grid_values, points)
        expected_step = StepGraph(model)(*grid_values, query_hires, query_lowres, conv1, conv2)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sessions = {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                for name, path in export.paths.items()}
    enc = sessions["encoder"].run(None, {name: f.numpy() for name, f in zip(frame_names(model.config), frames)})
    qry = sessions["queries"].run(None, {**dict(zip(names, enc)), "points": points.numpy()})
    # The step is checked on torch's own grids and queries, so each graph is judged alone.
    stp = sessions["step"].run(None, {
        **{name: g.numpy() for name, g in zip(names, grid_values)}, "query_hires": query_hires.numpy(),
        "query_lowres": query_lowres.numpy(), "conv1": conv1.numpy(), "conv2": conv2.numpy()})
    pairs = {
        **{name: (ours, theirs) for name, ours, theirs in zip(names, enc, grid_values)},
        "query_hires": (qry[0], query_hires), "query_lowres": (qry[1], query_lowres),
        "outputs": (stp[0], expected_step[0]), "conv1_out": (stp[1], expected_step[1]),
        "conv2_out": (stp[2], expected_step[2]),
    }
    diffs = {name: float(np.max(np.abs(ours - theirs.numpy()))) for name, (ours, theirs) in pairs.items()}
    LOG.info("ONNX export check (onnxruntime vs torch, max abs diff): %s",
             ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    bad = {k: v for k, v in diffs.items() if not v <= atol}
    if bad:
        raise OnnxExportError(
            f"the ONNX graphs in {export.directory} differ from torch by more than {atol}: "
            + ", ".join(f"{k} {v:.3g}" for k, v in bad.items())
            + "; the export is not usable (check the torch/onnx/onnxruntime versions)")
    return diffs


def file_sha256(path) -> str:
    """SHA-256 of a graph file (and of its external weights file, where it has one)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    data = Path(str(path) + ".data")  # weights exported as external data live beside the graph
    if data.exists():
        digest.update(file_sha256(data).encode())
    return digest.hexdigest()


def export_environment() -> Dict[str, object]:
    """What an export depends on besides the model and block size (part of the cache key)."""
    try:
        onnx_version = importlib.metadata.version("onnx")
    except importlib.metadata.PackageNotFoundError:
        onnx_version = None
    return {"format_version": EXPORT_FORMAT_VERSION, "opset": OPSET, "torch": torch.__version__,
            "onnx": onnx_version}


def cache_directory(model: TAPIR, block_size: int, cache_dir=None) -> Path:
    """Where the export of `model` for `block_size` lives in the cache."""
    environment = hashlib.sha256(json.dumps(export_environment(), sort_keys=True).encode()).hexdigest()[:8]
    return (Path(cache_dir or default_cache_dir()) / "onnx"
            / f"{model_fingerprint(model)}-b{block_size}-{environment}")


def graph_signature(path) -> Dict[str, Tuple[Tuple[int, ...], int]]:
    """{tensor name: (static shape, ONNX element type)} of a graph's inputs and outputs."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return {value.name: (tuple(d.dim_value if d.HasField("dim_value") else -1
                               for d in value.type.tensor_type.shape.dim),
                         value.type.tensor_type.elem_type)
            for value in list(graph.input) + list(graph.output)}


def export_problem(export: OnnxExport, config, info: Dict) -> Optional[str]:
    """Why a cached export cannot be used (None when it can): the checks that cost little.

    The recorded environment and block size; each graph file's SHA-256 against the
    one recorded when it was written and checked (a truncated or replaced file);
    its inputs and outputs against the names, static shapes and float32 type the
    tracker binds.
    """
    environment = export_environment()
    changed = [key for key, value in environment.items() if info.get(key) != value]
    if changed:
        return "made by another " + ", ".join(f"{k} ({info.get(k)} -> {environment[k]})" for k in changed)
    if info.get("block_size") != export.block_size:
        return f"block size {info.get('block_size')}, expected {export.block_size}"
    hashes = info.get("sha256", {})
    for name, path in export.paths.items():
        if hashes.get(name) != file_sha256(path):
            return f"{path.name} changed since it was exported (SHA-256 differs)"
    try:
        import onnx
    except ImportError:
        return None  # the hashes were checked; the signature needs the onnx package

    shapes = expected_shapes(config, export.block_size)
    for name, path in export.paths.items():
        signature = graph_signature(path)
        if set(signature) != set(shapes[name]):
            return f"{path.name} has tensors {sorted(signature)}, expected {sorted(shapes[name])}"
        for tensor, (shape, dtype) in signature.items():
            wanted = shapes[name][tensor]
            # Inputs are static; the exporter leaves some output dims unnamed (-1): those match any.
            if dtype != onnx.TensorProto.FLOAT or len(shape) != len(wanted) or any(
                    d not in (-1, w) for d, w in zip(shape, wanted)):
                return (f"{path.name}: '{tensor}' is {shape} of ONNX type {dtype}, expected {wanted} "
                        "float32")
    return None


def _read_export(directory: Path, block_size: int) -> OnnxExport:
    info = json.loads((directory / "export.json").read_text())
    return OnnxExport(directory, block_size, {name: directory / f"{name}.onnx" for name in GRAPHS},
                      info.get("max_abs_diff", {}))


def _cached_problem(model: TAPIR, directory: Path, block_size: int) -> Optional[str]:
    """None when `directory` holds a usable export, else why not ("missing" when absent)."""
    meta = directory / "export.json"
    paths = {name: directory / f"{name}.onnx" for name in GRAPHS}
    if not meta.exists() or not all(p.exists() for p in paths.values()):
        return "missing"
    try:
        info = json.loads(meta.read_text())
    except ValueError as error:
        return f"unreadable export.json: {error}"
    return export_problem(OnnxExport(directory, block_size, paths), model.config, info)


def cached_export(model: TAPIR, block_size: int, cache_dir=None, check: bool = True,
                  atol: float = 1e-3) -> OnnxExport:
    """The export for this model and block size from the cache, made on first use.

    A cached export is checked (`export_problem`) and made again when it fails.
    A new export is written to a directory of its own and renamed into place, so
    two processes exporting the same model at once never mix their files.
    """
    directory = cache_directory(model, block_size, cache_dir)
    problem = _cached_problem(model, directory, block_size)
    if problem is None:
        return _read_export(directory, block_size)
    if problem == "missing":
        LOG.info("exporting the model to ONNX in %s (block of %d points)", directory, block_size)
    else:
        LOG.warning("the cached ONNX export in %s is not usable (%s): exporting again", directory, problem)
    staging = directory.with_name(f"{directory.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        export_onnx(model, staging, block_size, check=check, atol=atol)
        if directory.exists():
            if _cached_problem(model, directory, block_size) is None:  # another process was first
                return _read_export(directory, block_size)
            shutil.rmtree(directory, ignore_errors=True)
        try:
            os.replace(staging, directory)
        except OSError:  # another process renamed its export into place meanwhile: use it
            LOG.info("another process exported to %s first; using its export", directory)
        return _read_export(directory, block_size)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
