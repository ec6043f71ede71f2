"""The default block size follows the device: 64 points on the CPU, 256 on CUDA."""

import pytest
import torch

from bootstap_ros.tracking import CausalTracker
from bootstap_ros.tracking.tracker import default_block_size
from helpers.small_model import small_model


def test_default_block_size_follows_the_device():
    assert default_block_size("cpu") == 64
    assert default_block_size("cuda") == 256 and default_block_size("cuda:1") == 256
    tracker = CausalTracker(small_model(), max_points=300, device="cpu", backend="torch")
    assert tracker.block_size == 64 and tracker.max_points == 320  # whole blocks
    assert CausalTracker(small_model(), max_points=8, backend="torch").block_size == 8
    assert CausalTracker(small_model(), max_points=100, block_size=32, backend="torch").block_size == 32


@pytest.mark.gpu
def test_a_cuda_tracker_takes_blocks_of_256():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    tracker = CausalTracker(small_model(), max_points=1024, device="cuda", backend="torch")
    assert tracker.block_size == 256 and tracker.max_points == 1024
