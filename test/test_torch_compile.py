"""The torch backend's compiled step (`torch_compile`) against its eager step.

The compiled path compiles one mixer block (`layers.mixer_block_step`, which shifts
the block's causal history in place) and runs the rest of the step eagerly. It must
give the same tracks as the eager step frame after frame, with points added and
removed mid-stream, and one compilation must serve every block of every refinement
iteration (the point of compiling a block rather than the unrolled step). The test
compiles with torch's `aot_eager` backend (the same tracing, functionalisation and
state handling as inductor, without code generation, which is slow on a 2-core CPU);
one test runs inductor itself on the CPU, and two on CUDA where a GPU is at hand.
"""

import numpy as np
import pytest
import torch

from bootstap_ros.tracking import CausalTracker
from helpers.small_model import moving_clip, small_model

POINTS = [[10.5, 12.5], [30.0, 20.0], [50.0, 30.0], [70.0, 40.0], [20.0, 35.0]]


def _run(tracker, clip, adds, removes):
    results = []
    for t, frame in enumerate(clip):
        if t in removes:
            tracker.remove_points(removes[t])
        results.append(tracker.step(frame, add=adds.get(t)))
    return results


@pytest.mark.slow
def test_compiled_step_equals_the_eager_step():
    model = small_model()
    clip = moving_clip(num_frames=7)
    adds = {0: POINTS[:3], 2: POINTS[3:]}
    removes = {4: [1]}
    runs = {}
    for compiled in (False, "aot_eager"):
        tracker = CausalTracker(model, max_points=8, block_size=4, device="cpu", backend="torch",
                                torch_compile=compiled)
        assert tracker.backend.torch_compile == bool(compiled)
        runs[compiled] = _run(tracker, clip, adds, removes)
    for eager, compiled in zip(runs[False], runs["aot_eager"]):
        assert np.array_equal(eager.ids, compiled.ids)
        np.testing.assert_allclose(compiled.xy, eager.xy, atol=1e-4)
        np.testing.assert_allclose(compiled.occlusion_logit, eager.occlusion_logit, atol=1e-4)
        np.testing.assert_allclose(compiled.expected_dist_logit, eager.expected_dist_logit, atol=1e-4)


@pytest.mark.slow
def test_inductor_on_the_cpu_equals_the_eager_step():
    """The real compiler (inductor, C++ kernels on the CPU), as `torch_compile=True` runs it."""
    model = small_model()
    clip = moving_clip(num_frames=5)
    adds = {0: POINTS[:3], 2: POINTS[3:]}
    runs = {}
    for compiled in (False, True):
        tracker = CausalTracker(model, max_points=8, block_size=4, device="cpu", backend="torch",
                                torch_compile=compiled)
        assert tracker.backend.torch_compile == compiled
        runs[compiled] = _run(tracker, clip, adds, {})
    for eager, compiled in zip(runs[False], runs[True]):
        assert np.array_equal(eager.ids, compiled.ids)
        np.testing.assert_allclose(compiled.xy, eager.xy, atol=1e-3)
        np.testing.assert_allclose(compiled.occlusion_logit, eager.occlusion_logit, atol=1e-3)


@pytest.mark.slow
def test_one_compilation_at_start_serves_every_block_and_frame():
    model = small_model()
    graphs = []

    def counting_backend(graph_module, example_inputs):  # runs the traced graph as it is
        graphs.append(graph_module)
        return graph_module.forward

    tracker = CausalTracker(model, max_points=8, block_size=4, device="cpu", backend="torch",
                            torch_compile=counting_backend)
    at_start = len(graphs)  # compiled when the backend is made, before any frame
    clip = moving_clip(num_frames=4)
    tracker.step(clip[0], add=POINTS)
    for frame in clip[1:]:
        tracker.step(frame)
    tracker.step(np.kron(clip[-1], np.ones((2, 2, 1), np.uint8)))  # a frame to resize: another layout

    def calls(graph, function):
        return sum(node.op == "call_function" and node.target is function for node in graph.graph.nodes)

    block_graphs = [g for g in graphs if calls(g, torch.addcmul)]  # the mixer's temporal taps
    calls_per_block = 2  # addcmul starts each of a block's two temporal convolutions
    assert model.config.mixer_blocks * model.config.refinement_iters > 1
    assert len(block_graphs) == 1 and calls(block_graphs[0], torch.addcmul) == calls_per_block
    assert at_start == 2  # the backbone pass and the block
    assert len(graphs) == at_start  # the frames reuse them: no recompilation


def test_a_compiler_that_fails_leaves_the_backend_uncompiled(caplog):
    def failing_backend(graph_module, example_inputs):
        raise RuntimeError("no compiler here")

    model = small_model()
    clip = moving_clip(num_frames=3)
    with caplog.at_level("WARNING"):
        tracker = CausalTracker(model, max_points=8, block_size=4, device="cpu", backend="torch",
                                torch_compile=failing_backend)
    assert not tracker.backend.torch_compile
    assert "torch.compile failed" in caplog.text and "uncompiled" in caplog.text
    eager = CausalTracker(model, max_points=8, block_size=4, device="cpu", backend="torch")
    for t, frame in enumerate(clip):
        add = POINTS if t == 0 else None
        np.testing.assert_array_equal(tracker.step(frame, add=add).xy, eager.step(frame, add=add).xy)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_inductor_inside_cuda_graphs_equals_the_eager_cuda_step(precision):
    """What `bootstap-bench --torch-compile` times on a GPU: inductor's kernels captured in
    the backend's CUDA graphs, against the uncompiled eager CUDA step."""
    model = small_model()
    clip = moving_clip(num_frames=7)
    adds = {0: POINTS[:3], 2: POINTS[3:]}
    removes = {4: [1]}
    runs = {}
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
        for compiled in (False, True):
            tracker = CausalTracker(model, max_points=8, block_size=4, device="cuda", backend="torch",
                                    precision=precision, cuda_graphs=compiled, torch_compile=compiled)
            runs[compiled] = _run(tracker, clip, adds, removes)
            if compiled:
                assert tracker.backend.cuda_graphs and tracker.backend._step_graphs, "capture failed"
    tolerance = 3e-4 if precision == "fp32" else 0.05  # as test_backends' CUDA graph test
    for eager, compiled in zip(runs[False], runs[True]):
        assert np.array_equal(eager.ids, compiled.ids)
        np.testing.assert_allclose(compiled.xy, eager.xy, atol=tolerance * 64)
        np.testing.assert_allclose(compiled.occlusion, eager.occlusion, atol=tolerance * 10)
