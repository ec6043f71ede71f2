"""The torch backend's compiled step (`torch_compile`) against its eager step.

The compiled path traces a side-effect-free block step and copies the new causal
state back into the backend's state; the eager path updates the state in place.
Both must give the same tracks frame after frame, with points added and removed
mid-stream. The test compiles with torch's `aot_eager` backend (the same tracing,
functionalisation and state handling as inductor, without code generation, which
takes minutes on a 2-core CPU); inductor itself was checked on CPU and on an H200
(README, *Backends and speed*).
"""

import numpy as np
import pytest

from bootstap_ros.tracking import CausalTracker
from small_model import moving_clip, small_model

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
