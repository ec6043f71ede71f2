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


def blob_clip(num_frames=10, height=128, width=160, dx=1.5, dy=1.0, blobs=150, seed=0):
    """uint8 RGB [T, H, W, 3]: a non-repeating texture of coloured Gaussian blobs
    translating by (dx, dy) px per frame, rendered exactly at every (sub-pixel) shift.

    Unlike moving_clip's sinusoids it has no period a tracker could slip by, so a
    trained model is expected to follow every point of it."""
    rng = np.random.default_rng(seed)
    margin = 20 + abs(dx) * num_frames + abs(dy) * num_frames
    centres = rng.uniform([-margin, -margin], [width + margin, height + margin], (blobs, 2))
    sigmas = rng.uniform(3.0, 9.0, blobs)
    colours = rng.uniform(-120.0, 120.0, (blobs, 3))
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    frames = []
    for t in range(num_frames):
        image = np.full((height, width, 3), 128.0)
        for (cx, cy), sigma, colour in zip(centres + [t * dx, t * dy], sigmas, colours):
            weight = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
            image += weight[..., None] * colour
        frames.append(image)
    return np.stack(frames).round().clip(0, 255).astype(np.uint8)
