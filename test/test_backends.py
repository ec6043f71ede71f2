"""Backends: the fast torch step, onnxruntime vs torch, the registry, TensorRT's pure parts."""

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from bootstap_ros.backends import (BackendError, available_backends, create_backend, resolve_backend,
                                   resolve_precision)
from bootstap_ros.model.layers import gelu_tanh, inference_linear
from bootstap_ros.model.tapir import CausalState, QueryFeatures, preprocess_frames, resize_video
from bootstap_ros.tracking import CausalTracker, track_online
from helpers.small_model import moving_clip, small_model


pytestmark = pytest.mark.usefixtures('no_grad')


POINTS = np.array([[10.0, 12.0], [40.5, 30.25], [70.0, 5.0], [3.0, 44.0], [55.5, 20.0]], np.float32)


@pytest.fixture(scope="module")
def model():
    return small_model()


def test_gelu_and_packed_linear_equal_the_plain_ops():
    torch.manual_seed(0)
    x = torch.randn(3, 7, 64) * 3
    torch.testing.assert_close(gelu_tanh(x), F.gelu(x, approximate="tanh"), atol=1e-6, rtol=1e-5)
    linear = torch.nn.Linear(64, 32)
    torch.testing.assert_close(inference_linear(linear, x), linear(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(inference_linear(linear, x, gelu=True),
                               F.gelu(linear(x), approximate="tanh"), atol=1e-5, rtol=1e-5)
    linear.weight.mul_(2)  # a changed weight is re-packed
    torch.testing.assert_close(inference_linear(linear, x), linear(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_points", [1, 6])
def test_track_step_equals_estimate_trajectories(model, num_points):
    torch.manual_seed(num_points)
    frames = torch.rand(1, 1, 64, 64, 3) * 2 - 1
    grids = model.get_feature_grids(frames)
    queries = model.get_query_features(grids, torch.rand(1, num_points, 3) * torch.tensor([0, 63.0, 63.0]))
    state = CausalState(*(torch.randn_like(t) for t in model.initial_state(num_points)))
    expected, expected_state = model.estimate_trajectories(grids, queries, state)
    functional, new_state = model.track_step(grids, queries, state)
    for got, want in [(functional.tracks, expected.tracks), (functional.occlusion, expected.occlusion),
                      (functional.expected_dist, expected.expected_dist),
                      (new_state.conv1, expected_state.conv1), (new_state.conv2, expected_state.conv2)]:
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    for (p, o, e), (pw, ow, ew) in zip(functional.unrefined, expected.unrefined):
        torch.testing.assert_close(p, pw, atol=1e-4, rtol=1e-4)
    in_place = CausalState(state.conv1.clone(), state.conv2.clone())
    result, same = model.track_step(grids, queries, in_place, in_place=True)
    assert same is in_place
    assert torch.equal(result.tracks, functional.tracks) and torch.equal(in_place.conv2, new_state.conv2)


def test_registry_names_and_errors(model):
    assert resolve_backend("auto", "cpu") == "torch"  # the fastest CPU step measured (docs/speed.md)
    assert resolve_backend("auto", "cuda") in ("tensorrt", "torch")
    assert "torch" in available_backends("cpu")
    assert "openvino" not in available_backends("cuda")
    with pytest.raises(BackendError, match="unknown backend 'jax'"):
        resolve_backend("jax")
    with pytest.raises(BackendError, match="fp16 on CUDA only; use bf16 or fp32 on cpu"):
        create_backend("torch", model, 8, 8, "cpu", "fp16")
    with pytest.raises(BackendError, match="unknown precision"):
        create_backend("torch", model, 8, 8, "cpu", "int3")
    # "auto": what each backend's users expect (TensorRT: fp16; the others: fp32).
    assert [resolve_precision("auto", b) for b in ("torch", "onnxruntime", "openvino", "tensorrt")] == [
        "fp32", "fp32", "fp32", "fp16"]
    assert resolve_precision("bf16", "tensorrt") == "bf16"
    assert create_backend("torch", model, 8, 8, "cpu").precision == "fp32"


# Operations a CUDA graph cannot capture: a tensor built from host data, a host sync,
# an output whose shape depends on data, a transfer between devices.
_NOT_CAPTURABLE = ("aten.lift_fresh", "aten.item", "aten._local_scalar_dense", "aten.nonzero",
                   "aten.masked_select", "aten.unique", "aten._unique")


class _OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        if name.startswith(("aten.to.", "aten._to_copy")) and "device" in kwargs:
            name = f"transfer to {kwargs['device']}"
        self.ops.append(name)
        return func(*args, **kwargs)


def test_the_online_step_is_capturable_in_a_cuda_graph(model):
    """After its first frame, the backbone pass and the causal step (what the torch
    backend captures on CUDA) build no tensor from host data, never sync with the
    host and have only static shapes. Checked on CPU by recording every aten op."""
    frame = torch.rand(1, 1, 64, 64, 3) * 2 - 1
    queries = model.get_query_features(model.get_feature_grids(frame), torch.tensor([[[0, 20.0, 30.0]] * 4]))
    state = model.initial_state(4)
    for recording in (False, True):  # the first frame may build its constants
        with _OpRecorder() as recorder:
            grids = model.get_feature_grids(frame)
            model.track_step(grids, queries, state, in_place=True)
        if recording:
            assert len(recorder.ops) > 100
            assert not _not_capturable(recorder.ops), "not capturable in a CUDA graph"
    # The recorder itself catches each kind.
    for breaker in (lambda: torch.tensor([1.0, 2.0]), lambda: frame.sum().item(),
                    lambda: frame.to("cpu", copy=True), lambda: torch.nonzero(frame > 0)):
        with _OpRecorder() as recorder:
            breaker()
        assert _not_capturable(recorder.ops)


def _not_capturable(ops):
    return sorted({op for op in ops if op.startswith(_NOT_CAPTURABLE + ("transfer",))})


def test_bf16_on_cpu_follows_float32(model):
    clip = moving_clip(num_frames=5)
    queries = np.array([[0, 20.0, 16.0], [0, 50.5, 30.0], [1, 33.0, 21.0]], np.float32)
    fp32 = track_online(model, clip, queries, backend="torch")
    bf16 = track_online(model, clip, queries, backend="torch", precision="bf16")
    assert bf16.tracks.dtype == np.float32
    visible = ~np.isnan(fp32.tracks[..., 0])
    assert np.array_equal(visible, ~np.isnan(bf16.tracks[..., 0]))
    # bf16 keeps 8 bits of mantissa: tracks move, but by a fraction of a pixel.
    difference = np.abs(fp32.tracks - bf16.tracks)[visible]
    assert 0 < np.median(difference) < 0.5 and difference.max() < 2.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_graphs_equal_the_eager_cuda_step(model, precision):
    clip = moving_clip(num_frames=8)
    adds = {0: POINTS[:3], 2: POINTS[3:], 5: POINTS[:1]}
    runs = {}
    # cuDNN's TF32 convolutions (on by default) rounded differently between the eager and the
    # captured run (0.009 px apart on an H200): compare true float32 in both.
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
        for graphs in (False, True):
            tracker = CausalTracker(model, max_points=8, block_size=4, device="cuda", backend="torch",
                                    precision=precision, cuda_graphs=graphs)
            runs[graphs] = _run(tracker, clip, adds)
            if graphs:
                assert tracker.backend.cuda_graphs and tracker.backend._step_graphs, "capture failed"
                tracker.remove_points([0])
                tracker.step(clip[0])  # removing keeps the graphs serving the others
    # A graph replaying stale inputs or state is off by pixels; rounding stays far under this.
    tolerance = 3e-4 if precision == "fp32" else 0.05
    for eager, graphed in zip(runs[False], runs[True]):
        assert np.array_equal(eager.ids, graphed.ids)
        np.testing.assert_allclose(graphed.xy, eager.xy, atol=tolerance * 64)
        np.testing.assert_allclose(graphed.occlusion, eager.occlusion, atol=tolerance * 10)


def _run(tracker, clip, adds):
    results = []
    for t, frame in enumerate(clip):
        results.append(tracker.step(frame, add=adds.get(t)))
    return results


@pytest.mark.parametrize("num_points, block_size", [(1, 4), (5, 4), (8, 8)])
def test_onnxruntime_agrees_with_torch(model, tmp_path, num_points, block_size):
    pytest.importorskip("onnxruntime")
    clip = moving_clip(num_frames=4)
    points = np.concatenate([POINTS, POINTS[:3] + 1.5])[:num_points]
    adds = {0: points[: (num_points + 1) // 2], 2: points[(num_points + 1) // 2:]}
    runs = {}
    for name, options in (("torch", {}), ("onnxruntime", {"cache_dir": tmp_path})):
        tracker = CausalTracker(model, max_points=8, block_size=block_size, backend=name, **options)
        runs[name] = _run(tracker, clip, adds)
    for ours, ref in zip(runs["onnxruntime"], runs["torch"]):
        assert ours.ids.tolist() == ref.ids.tolist()
        np.testing.assert_allclose(ours.xy, ref.xy, atol=1e-3)
        np.testing.assert_allclose(ours.occlusion_logit, ref.occlusion_logit, atol=1e-3)
        np.testing.assert_allclose(ours.expected_dist_logit, ref.expected_dist_logit, atol=1e-3)


def test_onnx_export_checks_itself_and_is_cached(model, tmp_path):
    pytest.importorskip("onnxruntime")
    from bootstap_ros.backends.onnx_export import OnnxExportError, cached_export, export_onnx

    export = cached_export(model, 4, tmp_path)
    assert set(export.max_abs_diff) >= {"outputs", "conv1_out", "conv2_out", "hires", "query_lowres"}
    assert max(export.max_abs_diff.values()) < 1e-3
    again = cached_export(model, 4, tmp_path)
    assert again.paths == export.paths and again.max_abs_diff == export.max_abs_diff
    with pytest.raises(OnnxExportError, match="differ from torch by more than"):
        export_onnx(model, tmp_path / "strict", 4, atol=-1.0)


def test_query_graph_equals_the_model_query_features(model):
    from bootstap_ros.backends.onnx_export import QueryGraph

    frames = torch.rand(1, 1, 64, 64, 3) * 2 - 1
    grids = model.get_feature_grids(frames)
    xy = torch.tensor([[0.0, 0.0], [10.25, 33.5], [63.9, 64.0], [31.0, 2.5]])
    expected = model.get_query_features(grids, torch.cat([torch.zeros(4, 1), xy.flip(-1)], -1)[None])
    hires, lowres = QueryGraph(model)(grids.hires[:, 0], grids.lowres[:, 0], xy)
    torch.testing.assert_close(hires, expected.hires[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(lowres, expected.lowres[0], atol=1e-6, rtol=1e-5)


def test_onnxruntime_engine_equals_the_track_commands_online_mode(model, tmp_path):
    pytest.importorskip("onnxruntime")
    clip = moving_clip(num_frames=4)
    queries = np.array([[0, 10.0, 12.0], [1, 40.5, 30.25], [3, 70.0, 5.0]], np.float32)
    offline_online = track_online(model, clip, queries, backend="torch")
    tracker = CausalTracker(model, max_points=4, backend="onnxruntime", cache_dir=tmp_path)
    for t, frame in enumerate(clip):
        starting = queries[queries[:, 0] == t]
        step = tracker.step(frame, add=starting[:, 1:] if len(starting) else None)
        for point_id, xy in zip(step.ids, step.xy):
            np.testing.assert_allclose(offline_online.tracks[point_id, t], xy, atol=1e-3)


def test_reset_zeroes_the_state_in_every_backend(model, tmp_path):
    pytest.importorskip("onnxruntime")
    clip = moving_clip(num_frames=3)
    for name, options in (("torch", {}), ("onnxruntime", {"cache_dir": tmp_path})):
        tracker = CausalTracker(model, max_points=4, backend=name, **options)
        tracker.add_points(clip[0], POINTS[:2])
        first = tracker.step(clip[1]).xy
        tracker.step(clip[2])
        tracker.reset()
        tracker.add_points(clip[0], POINTS[:2])
        np.testing.assert_allclose(tracker.step(clip[1]).xy, first, atol=1e-5)


# ----------------------------------------------------------------- OpenVINO


def _openvino():
    pytest.importorskip("onnxruntime")  # checks the ONNX export OpenVINO compiles
    return pytest.importorskip("openvino")


@pytest.mark.parametrize("num_points, block_size", [(1, 4), (5, 4), (8, 8)])
def test_openvino_agrees_with_torch(model, tmp_path, num_points, block_size):
    _openvino()
    clip = moving_clip(num_frames=4)
    points = np.concatenate([POINTS, POINTS[:3] + 1.5])[:num_points]
    adds = {0: points[: (num_points + 1) // 2], 2: points[(num_points + 1) // 2:]}
    runs = {}
    for name, options in (("torch", {}), ("openvino", {"cache_dir": tmp_path})):
        tracker = CausalTracker(model, max_points=8, block_size=block_size, backend=name, **options)
        runs[name] = _run(tracker, clip, adds)
    for ours, ref in zip(runs["openvino"], runs["torch"]):
        assert ours.ids.tolist() == ref.ids.tolist()
        np.testing.assert_allclose(ours.xy, ref.xy, atol=1e-3)
        np.testing.assert_allclose(ours.occlusion_logit, ref.occlusion_logit, atol=1e-3)
        np.testing.assert_allclose(ours.expected_dist_logit, ref.expected_dist_logit, atol=1e-3)


def test_openvino_checks_itself_and_caches_its_compilations(model, tmp_path):
    _openvino()
    backend = create_backend("openvino", model, 8, 4, cache_dir=tmp_path)
    assert set(backend.max_abs_diff) >= {"hires", "lowres", "query_hires", "outputs", "conv1_out", "conv2_out"}
    assert max(backend.max_abs_diff.values()) < 1e-3
    assert list((tmp_path / "openvino").iterdir()), "no compiled graph in the cache"
    again = create_backend("openvino", model, 8, 4, cache_dir=tmp_path)
    assert again.export.paths == backend.export.paths  # the ONNX export is made once
    from bootstap_ros.backends import openvino_backend

    compiled = {graph: again._requests[graph].get_compiled_model() for graph in ("encoder", "queries", "step")}
    with pytest.raises(BackendError, match="differ from torch by more than"):
        openvino_backend.check_against_torch(model, compiled, 4, "fp32", atol=-1.0)


def test_openvino_equals_the_track_commands_online_mode_and_resets(model, tmp_path):
    _openvino()
    clip = moving_clip(num_frames=4)
    queries = np.array([[0, 10.0, 12.0], [1, 40.5, 30.25], [3, 70.0, 5.0]], np.float32)
    offline_online = track_online(model, clip, queries, backend="torch")
    tracker = CausalTracker(model, max_points=4, backend="openvino", cache_dir=tmp_path)
    for t, frame in enumerate(clip):
        starting = queries[queries[:, 0] == t]
        step = tracker.step(frame, add=starting[:, 1:] if len(starting) else None)
        for point_id, xy in zip(step.ids, step.xy):
            np.testing.assert_allclose(offline_online.tracks[point_id, t], xy, atol=1e-3)
    tracker.reset()
    tracker.add_points(clip[0], POINTS[:2])
    first = tracker.step(clip[1]).xy
    tracker.reset()
    tracker.add_points(clip[0], POINTS[:2])
    np.testing.assert_allclose(tracker.step(clip[1]).xy, first, atol=1e-5)


def test_openvino_bf16_runs_the_encoder_in_bf16_and_the_step_in_float32(model, tmp_path):
    _openvino()
    from bootstap_ros.backends.openvino_backend import compile_config

    assert compile_config("encoder", "bf16")["INFERENCE_PRECISION_HINT"] == "bf16"
    assert compile_config("step", "bf16")["INFERENCE_PRECISION_HINT"] == "f32"
    # float32 is asked for explicitly: OpenVINO's own default on CPUs with AMX is bf16.
    assert {compile_config(g, "fp32")["INFERENCE_PRECISION_HINT"] for g in ("encoder", "queries", "step")} == {"f32"}
    clip = moving_clip(num_frames=5)
    queries = np.array([[0, 20.0, 16.0], [0, 50.5, 30.0], [1, 33.0, 21.0]], np.float32)
    fp32 = track_online(model, clip, queries, backend="torch")
    bf16 = track_online(model, clip, queries, backend="openvino", precision="bf16", cache_dir=tmp_path)
    visible = ~np.isnan(fp32.tracks[..., 0])
    assert np.array_equal(visible, ~np.isnan(bf16.tracks[..., 0]))
    difference = np.abs(fp32.tracks - bf16.tracks)[visible]
    assert np.median(difference) < 0.5 and difference.max() < 2.0
    with pytest.raises(BackendError, match="fp32 or bf16"):
        create_backend("openvino", model, 8, 4, precision="fp16", cache_dir=tmp_path)
    with pytest.raises(BackendError, match="CPU only"):
        create_backend("openvino", model, 8, 4, device="cuda", cache_dir=tmp_path)


def test_auto_is_torch_on_the_cpu_and_a_faster_choice_that_fails_gives_way_to_torch(model, tmp_path, monkeypatch):
    _openvino()
    from bootstap_ros.backends import factory

    monkeypatch.setenv("BOOTSTAP_CACHE", str(tmp_path))
    assert create_backend("auto", model, 8, 4).name == "torch"  # OpenVINO installed, yet slower
    # Where auto's order puts another backend first (TensorRT on CUDA), that one is made...
    monkeypatch.setitem(factory.AUTO_ORDER, "cpu", ("openvino", "torch"))
    assert create_backend("auto", model, 8, 4).name == "openvino"
    # ...but options only torch takes, or a model without causal state, mean torch.
    assert create_backend("auto", model, 8, 4, cuda_graphs=False).name == "torch"
    # A backend that cannot run here gives way to torch, with a warning that says why.
    def broken(*args, **kwargs):
        raise BackendError("no CPU plugin")

    monkeypatch.setattr("bootstap_ros.backends.openvino_backend.OpenVinoBackend", broken)
    assert create_backend("auto", model, 8, 4, cache_dir=tmp_path).name == "torch"
    assert factory.resolve_backend("auto", "cpu") == "openvino"


def test_bf16_hardware_is_read_from_the_cpu_flags_and_only_the_camera_precision_uses_it(monkeypatch):
    from bootstap_ros.backends import factory

    intel = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f amx_bf16 amx_tile\nbogomips\t: 4000\n"
    amd = "processor : 0\nflags : fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
    older = "processor : 0\nflags : fpu avx2 avx512f avx512_vnni\nbugs : avx512_bf16_not_a_flag\n"
    arm = "processor : 0\nFeatures : fp asimd bf16\n"  # ARM: no x86 bf16 flags
    assert factory.cpu_computes_bf16(intel) and factory.cpu_computes_bf16(amd)
    assert not factory.cpu_computes_bf16(older) and not factory.cpu_computes_bf16(arm)
    assert not factory.cpu_computes_bf16("")
    for hardware in (True, False):
        monkeypatch.setattr(factory, "cpu_computes_bf16", lambda cpuinfo=None: hardware)
        bf16_or_fp32 = "bf16" if hardware else "auto"
        assert factory.camera_precision("auto", "torch", "cpu") == bf16_or_fp32
        assert factory.camera_precision("auto", "auto", "cpu") == bf16_or_fp32
        assert factory.camera_precision("auto", "openvino", "cpu") == bf16_or_fp32
        assert factory.camera_precision("auto", "onnxruntime", "cpu") == "auto"  # onnxruntime runs fp32
        assert factory.camera_precision("auto", "torch", "cuda") == "auto"
        assert factory.camera_precision("fp32", "torch", "cpu") == "fp32"
        assert factory.resolve_precision("auto", "torch") == "fp32"  # offline tools keep fp32


def test_importing_the_package_imports_no_runtime():
    import subprocess
    import sys

    code = ("import sys, bootstap_ros, bootstap_ros.backends; "
            "print(sorted(m for m in ('openvino', 'onnxruntime', 'tensorrt', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ----------------------------------------------------------------- TensorRT: the parts without TensorRT
def test_tensorrt_engine_key_changes_with_every_input(tmp_path):
    from bootstap_ros.backends.tensorrt_backend import EngineKey, engine_path, file_sha256

    onnx = tmp_path / "step.onnx"
    onnx.write_bytes(b"graph-1")
    key = EngineKey(file_sha256(onnx), "10.3.0", "NVIDIA H100 80GB HBM3", (9, 0), "fp16")
    assert key.digest() == EngineKey(file_sha256(onnx), "10.3.0", "NVIDIA H100 80GB HBM3", (9, 0), "fp16").digest()
    variants = [key.__class__(**{**key.__dict__, field: value}) for field, value in [
        ("tensorrt_version", "10.4.0"), ("gpu_name", "NVIDIA A100"), ("compute_capability", (8, 0)),
        ("precision", "fp32")]]
    onnx.write_bytes(b"graph-2")
    variants.append(key.__class__(**{**key.__dict__, "onnx_sha256": file_sha256(onnx)}))
    paths = {engine_path(tmp_path, "step", k) for k in [key] + variants}
    assert len(paths) == 6
    name = engine_path(tmp_path, "step", key).name
    assert name.startswith("step-fp16-trt10.3.0-nvidia-h100-80gb-hbm3-sm90-") and name.endswith(".engine")


def test_tensorrt_shapes_match_the_exported_graphs(model, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from bootstap_ros.backends.onnx_export import cached_export
    from bootstap_ros.backends.tensorrt_backend import expected_shapes

    export = cached_export(model, 4, tmp_path)
    shapes = expected_shapes(model.config, 4)
    for graph, path in export.paths.items():
        proto = onnx.load(str(path))
        feeds = {}
        for value in proto.graph.input:  # inputs are static in the graph itself
            dims = tuple(d.dim_value for d in value.type.tensor_type.shape.dim)
            assert dims == shapes[graph][value.name], (graph, value.name)
            assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
            feeds[value.name] = np.zeros(dims, np.float32)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        for name, array in zip(names, session.run(None, feeds)):  # outputs follow from the inputs
            assert array.shape == shapes[graph][name], (graph, name)
        assert set(names) | set(feeds) == set(shapes[graph])


def test_tensorrt_shape_and_dtype_checks_explain_themselves():
    from bootstap_ros.backends.tensorrt_backend import check_static_shape, torch_dtype_for

    assert check_static_shape("outputs", (8, 4), (8, 4)) == (8, 4)
    with pytest.raises(BackendError, match="dynamic shape"):
        check_static_shape("outputs", (-1, 4), (8, 4))
    with pytest.raises(BackendError, match="expected \\(8, 4\\)"):
        check_static_shape("outputs", (16, 4), (8, 4))
    assert torch_dtype_for("HALF") == torch.float16 and torch_dtype_for("FLOAT") == torch.float32
    with pytest.raises(BackendError, match="FP8"):
        torch_dtype_for("FP8")


def test_tensorrt_backend_says_what_is_missing(model):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available():
        pytest.skip("TensorRT is installed here: the error path does not apply")
    with pytest.raises(BackendError, match="tensorrt|CUDA"):
        create_backend("tensorrt", model, 8, 8, "cuda")


# ----------------------------------------------------------------- the caller's model is left alone
def _snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {p.device for p in model.parameters()}, [m.training for m in model.modules()])


def _assert_unchanged(model, before):
    weights, devices, modes = before
    assert {p.device for p in model.parameters()} == devices
    assert [m.training for m in model.modules()] == modes
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name


def test_tracker_and_export_leave_a_training_model_as_it_is(model, tmp_path):
    """A model in training mode (as the training loop's evaluation hands it over) keeps its
    mode, device and weights through tracker creation, tracking and the ONNX export."""
    pytest.importorskip("onnxruntime")
    from bootstap_ros.backends.onnx_export import export_onnx

    trained = small_model()
    trained.train()
    before = _snapshot(trained)
    clip = moving_clip(num_frames=2)
    runtimes = [("onnxruntime", {"cache_dir": tmp_path})]
    try:
        import openvino  # noqa: F401
        runtimes.append(("openvino", {"cache_dir": tmp_path}))
    except ImportError:
        pass
    for backend, options in [("torch", {})] + runtimes:
        tracker = CausalTracker(trained, max_points=4, backend=backend, **options)
        tracker.add_points(clip[0], POINTS[:2])
        tracker.step(clip[1])
        _assert_unchanged(trained, before)
    export_onnx(trained, tmp_path / "direct", 4, check=False)
    _assert_unchanged(trained, before)
    # Tracking in training mode would differ from eval mode if the copy were not eval'd:
    # the results equal those of the same weights in eval mode.
    reference = CausalTracker(model, max_points=4, backend="torch")
    reference.add_points(clip[0], POINTS[:2])
    tracker = CausalTracker(trained, max_points=4, backend="torch")
    tracker.add_points(clip[0], POINTS[:2])
    np.testing.assert_allclose(tracker.step(clip[1]).xy, reference.step(clip[1]).xy, atol=1e-5)


@pytest.mark.gpu
def test_a_cpu_model_stays_on_the_cpu_when_tracking_on_cuda(model):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    before = _snapshot(model)
    tracker = CausalTracker(model, max_points=4, device="cuda")
    clip = moving_clip(num_frames=2)
    tracker.add_points(clip[0], POINTS[:2])
    tracker.step(clip[1])
    _assert_unchanged(model, before)


# ----------------------------------------------------------------- the export: opset, cache, checks
def test_export_uses_opset_18_and_the_ops_tensorrt_runs(model, tmp_path):
    """NVIDIA/TensorRT#4646: GridSample is wrong at opset 20 on TensorRT 10.13, right at 18."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from bootstap_ros.backends.onnx_export import cached_export

    export = cached_export(model, 4, tmp_path)
    allowed = {"Add", "ArgMax", "AveragePool", "Cast", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv",
               "Div", "Expand", "Gather", "Gemm", "GridSample", "Identity", "InstanceNormalization",
               "LayerNormalization", "Less", "MatMul", "Mod", "Mul", "Pad", "ReduceMean", "ReduceSum", "Relu",
               "Reshape", "Shape", "Sigmoid", "Slice", "Softmax", "Sqrt", "Sub", "Tanh", "Transpose",
               "Unsqueeze"}
    for name, path in export.paths.items():
        proto = onnx.load(str(path))
        assert [(o.domain, o.version) for o in proto.opset_import] == [("", 18)], name
        ops = {node.op_type for node in proto.graph.node}
        assert ops <= allowed, (name, ops - allowed)
        if name in ("queries", "step"):
            assert "GridSample" in ops


def test_export_cache_key_has_the_versions_and_a_damaged_export_is_made_again(model, tmp_path, monkeypatch,
                                                                                caplog):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from bootstap_ros.backends import onnx_export

    first = onnx_export.cached_export(model, 4, tmp_path)
    info = json.loads((first.directory / "export.json").read_text())
    assert info["torch"] == torch.__version__ and info["opset"] == 18 and info["onnx"]
    # Another torch version gets its own entry.
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    assert onnx_export.cache_directory(model, 4, tmp_path) != first.directory
    monkeypatch.undo()
    assert onnx_export.cache_directory(model, 4, tmp_path) == first.directory
    # A graph file replaced behind the cache's back is noticed and exported again.
    step = first.paths["step"]
    good = step.read_bytes()
    step.write_bytes(first.paths["queries"].read_bytes())
    with caplog.at_level(logging.WARNING, logger="bootstap_ros.backends.onnx_export"):
        again = onnx_export.cached_export(model, 4, tmp_path)
    assert "step.onnx changed since it was exported" in caplog.text
    assert again.paths["step"].read_bytes() == good
    # An export.json that lies about the versions is made again too.
    info = json.loads((first.directory / "export.json").read_text())
    (first.directory / "export.json").write_text(json.dumps({**info, "torch": "1.0"}))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bootstap_ros.backends.onnx_export"):
        onnx_export.cached_export(model, 4, tmp_path)
    assert "made by another torch (1.0 ->" in caplog.text
    assert not list(tmp_path.glob("onnx/*.tmp-*"))  # no staging directory left behind


def test_export_check_names_wrong_inputs_and_outputs(model, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from bootstap_ros.backends import onnx_export

    export = onnx_export.cached_export(model, 4, tmp_path)
    info = json.loads((export.directory / "export.json").read_text())
    assert onnx_export.export_problem(export, model.config, info) is None
    # The same files judged as a block of 8 (or another model) do not fit.
    other = onnx_export.OnnxExport(export.directory, 8, export.paths)
    assert "block size 4, expected 8" in onnx_export.export_problem(other, model.config, info)
    wider = model.config.replace(mixer_hidden_dim=model.config.mixer_hidden_dim * 2)
    problem = onnx_export.export_problem(export, wider, info)
    assert "'conv1'" in problem and "expected" in problem
    # A graph whose input was renamed (hashes updated, so only the signature check can tell).
    proto = onnx.load(str(export.paths["queries"]))
    proto.graph.input[2].name = "xy"
    for node in proto.graph.node:
        node.input[:] = ["xy" if name == "points" else name for name in node.input]
    onnx.save(proto, str(export.paths["queries"]))
    info["sha256"]["queries"] = onnx_export.file_sha256(export.paths["queries"])
    assert "has tensors" in onnx_export.export_problem(export, model.config, info)


# ----------------------------------------------------------------- onnxruntime: IO binding
def test_onnxruntime_io_binding_equals_plain_session_runs(model, tmp_path):
    """The backend (graphs run through IO bindings, state kept in ORT values) against the
    exported graphs run plainly with numpy feeds, the state carried by hand."""
    ort = pytest.importorskip("onnxruntime")
    from bootstap_ros.backends.onnx_export import cached_export

    backend = create_backend("onnxruntime", model, 8, 4, "cpu", cache_dir=tmp_path)
    export = cached_export(model, 4, tmp_path)
    sessions = {name: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                for name, path in export.paths.items()}
    clip = moving_clip(num_frames=4)
    frames = [resize_video(preprocess_frames(torch.from_numpy(f)[None, None]), model.config.resolution)[:, 0]
              .numpy() for f in clip]
    points = np.ascontiguousarray(POINTS[:4] * 0.5)  # model raster of the 64x64 small model
    slots = np.array([0, 1, 2, 4])  # block 0 and block 1
    backend.set_queries(backend.encode(frames[0]), slots, points)
    hires, lowres = sessions["encoder"].run(None, {"frame": frames[0]})
    padded = np.zeros((4, 2), np.float32)
    padded[:4] = points
    query_hires, query_lowres = sessions["queries"].run(None, {"hires": hires, "lowres": lowres, "points": padded})
    c = model.config
    shape = (c.refinement_iters, c.mixer_blocks, 4, c.mixer_kernel - 1)
    state = [[np.zeros(shape + (c.mixer_hidden_dim,), np.float32),
              np.zeros(shape + (4 * c.mixer_hidden_dim,), np.float32)] for _ in range(2)]
    rows = {0: [0, 1, 2], 1: [3]}  # rows of the query batch per block
    for frame in frames[1:]:
        ours = backend.step(backend.encode(frame), [0, 1])
        hires, lowres = sessions["encoder"].run(None, {"frame": frame})
        expected = []
        for block in (0, 1):
            qh = np.zeros((4, c.hires_dim), np.float32)
            ql = np.zeros((4, c.lowres_dim), np.float32)
            n = len(rows[block])
            qh[:n], ql[:n] = query_hires[rows[block]], query_lowres[rows[block]]
            out, state[block][0], state[block][1] = sessions["step"].run(None, {
                "hires": hires, "lowres": lowres, "query_hires": qh, "query_lowres": ql,
                "conv1": state[block][0], "conv2": state[block][1]})
            expected.append(out)
        expected = np.concatenate(expected)
        active = [0, 1, 2, 4]
        np.testing.assert_allclose(ours[active], expected[active], atol=1e-6, rtol=1e-6)
        assert np.abs(ours[active]).max() > 0


# ----------------------------------------------------------------- TensorRT: FP32 islands, engine writes
def test_fp32_nodes_cover_the_softmax_soft_argmax_and_position_sums(model, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from bootstap_ros.backends.onnx_export import cached_export
    from bootstap_ros.backends.tensorrt_backend import fp32_node_names

    export = cached_export(model, 4, tmp_path)
    step = onnx.load(str(export.paths["step"])).graph
    keep = fp32_node_names(step)
    nodes = {node.name: node for node in step.node}
    producer = {out: node for node in step.node for out in node.output}
    kinds = {nodes[name].op_type for name in keep}
    assert {"Softmax", "ArgMax", "ReduceSum", "Div", "GridSample"} <= kinds
    assert not kinds & {"Conv", "MatMul", "Gemm", "LayerNormalization"}  # learned layers stay reduced
    assert all(node.name in keep for node in step.node if node.op_type in ("Softmax", "GridSample"))
    assert producer["outputs"].name in keep
    # The temperature scaling in front of the softmax: back to the convolution.
    softmax = next(node for node in step.node if node.op_type == "Softmax")
    before = producer[softmax.input[0]]
    while before.op_type != "Conv":
        assert before.name in keep, before.op_type
        before = producer[before.input[0]]
    # The position sums: one `tracks + delta` per refinement iteration, delta sliced from the mixer.
    sums = [nodes[name] for name in keep if nodes[name].op_type == "Add"
            and any(i in producer and producer[i].op_type == "Slice" for i in nodes[name].input)]
    assert len(sums) == model.config.refinement_iters
    assert len(keep) < len(step.node) / 5
    # The sampled correlations go back to the engine's precision (as under torch autocast).
    samples = {out for node in step.node if node.op_type == "GridSample" for out in node.output}
    assert not [node.op_type for node in step.node if node.name in keep and set(node.input) & samples]
    # The query graph: its coordinates and samplers.
    queries = onnx.load(str(export.paths["queries"])).graph
    assert {n.op_type for n in queries.node if n.name in fp32_node_names(queries)} >= {"GridSample", "Mul"}
    encoder = onnx.load(str(export.paths["encoder"])).graph
    assert fp32_node_names(encoder) == set()


class _Tensor:
    def __init__(self, dtype):
        self.dtype = dtype


class _Layer:
    """What constrain_to_fp32 uses of a TensorRT ILayer."""

    def __init__(self, name, metadata, dtypes):
        self.name, self.metadata, self._outputs = name, metadata, [_Tensor(d) for d in dtypes]
        self.precision, self.output_types = None, {}

    @property
    def num_outputs(self):
        return len(self._outputs)

    def get_output(self, index):
        return self._outputs[index]

    def set_output_type(self, index, dtype):
        self.output_types[index] = dtype


def test_constrain_to_fp32_pins_the_matching_float_layers():
    from types import SimpleNamespace

    from bootstap_ros.backends.tensorrt_backend import constrain_to_fp32

    trt = SimpleNamespace(float32="f32", float16="f16", bfloat16="bf16", int64="i64")
    layers = [_Layer("/Softmax", "[ONNX Layer: /Softmax]", ["f32"]),
              _Layer("parser_made_7", "[ONNX Layer: /Add_76]", ["f32"]),  # a helper layer of a node
              _Layer("/ArgMax", "[ONNX Layer: /ArgMax]", ["i64"]),  # indices: left alone
              _Layer("/MatMul", "[ONNX Layer: /MatMul]", ["f32"]),  # not listed: left alone
              _Layer("/Mul_3", "", ["f32"])]  # no metadata: matched by name
    network = SimpleNamespace(num_layers=len(layers), get_layer=lambda i: layers[i])
    assert constrain_to_fp32(trt, network, {"/Softmax", "/Add_76", "/ArgMax", "/Mul_3"}) == 3
    assert [layer.precision for layer in layers] == ["f32", "f32", None, None, "f32"]
    assert layers[0].output_types == {0: "f32"} and layers[3].output_types == {}


def test_engine_writes_are_atomic_and_never_share_a_temporary_file(tmp_path, monkeypatch):
    from bootstap_ros.backends import tensorrt_backend

    target = tmp_path / "tensorrt" / "step.engine"
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append(Path(src).name)
        assert Path(src).read_bytes() in (b"engine-a", b"engine-b")  # complete before the rename
        real_replace(src, dst)

    monkeypatch.setattr(tensorrt_backend.os, "replace", replace)
    tensorrt_backend.write_atomically(target, b"engine-a")
    tensorrt_backend.write_atomically(target, b"engine-b")
    assert target.read_bytes() == b"engine-b"
    assert len(set(seen)) == 2 and all(name.startswith("step.engine.") for name in seen)
    assert [p.name for p in target.parent.iterdir()] == ["step.engine"]
