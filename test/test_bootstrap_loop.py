"""The bootstrapping loop (training/bootstrap.py) and what it needs from the model code."""

import copy
import io

import numpy as np
import torch

from bootstap_ros.tracking import CausalTracker
from small_model import moving_clip, small_model


def test_a_model_that_tracked_on_cpu_can_be_deep_copied_and_saved():
    # An EMA teacher is a deep copy of the student, and checkpoints pickle the model's
    # tensors: neither may meet the oneDNN packed weights of online tracking.
    model = small_model()
    tracker = CausalTracker(model, max_points=4, device="cpu", backend="torch")
    frames = moving_clip(num_frames=3, height=64, width=64)
    tracker.add_points(frames[0], np.array([[20.0, 30.0], [40.0, 12.0]], np.float32))
    with torch.no_grad():
        for frame in frames:
            first = tracker.step(frame)
    copied = copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    for key, value in model.state_dict().items():
        assert torch.equal(copied.state_dict()[key], value), key
    # The copy tracks on its own, with the same results.
    other = CausalTracker(copied, max_points=4, device="cpu", backend="torch")
    other.add_points(frames[0], np.array([[20.0, 30.0], [40.0, 12.0]], np.float32))
    with torch.no_grad():
        for frame in frames:
            second = other.step(frame)
    np.testing.assert_allclose(second.xy, first.xy, atol=1e-4)
