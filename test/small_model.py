"""A small model configuration and a fast random-weight model for tests."""

import numpy as np
import torch

from bootstap_ros.config import ModelConfig
from bootstap_ros.model import build_model

SMALL = ModelConfig(
    backbone_channels=(16, 32, 32, 48), backbone_blocks=(1, 1, 1, 1), stem_channels=16,
    extra_conv_blocks=1, extra_conv_multiplier=2, mixer_hidden_dim=32, mixer_blocks=2,
    refinement_iters=2, resolution=(64, 64), causal=True,
)


def small_model(seed: int = 0, **changes):
    torch.manual_seed(seed)
    return build_model(SMALL.replace(**changes))


def moving_clip(num_frames=6, height=48, width=80, dx=2.0, dy=1.0):
    """uint8 RGB [T, H, W, 3]: smooth texture translating by (dx, dy) px per frame."""
    t, y, x = np.meshgrid(np.arange(num_frames), np.arange(height), np.arange(width), indexing="ij")
    xs, ys = x - dx * t, y - dy * t
    channels = [128 + 90 * np.sin(xs / 5.0) * np.cos(ys / 6.0), 128 + 90 * np.sin((xs + ys) / 8.0),
                128 + 60 * np.cos(xs / 9.0 - ys / 4.0)]
    return np.stack(channels, -1).round().clip(0, 255).astype(np.uint8)
