"""Frames, stamps and clip settings for the robot-log tests: smooth textures panned by a few pixels a frame."""

import json
from pathlib import Path

import cv2
import numpy as np

from bootstap_ros_training.clips import ClipConfig

SIZE = 64
PERIOD_NS = 33_333_333  # 30 Hz
START_NS = 1_700_000_000 * 10**9


def texture(seed: int, height: int = 160, width: int = 400) -> np.ndarray:
    """A smooth random colour image: moving crops of it change a little per frame."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    return cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)


def moving(count: int, seed: int = 0, speed: int = 2, size: int = SIZE) -> np.ndarray:
    """`count` frames [T, size, size, 3] panning across a texture by `speed` px a frame."""
    image = texture(seed)
    return np.stack([image[20:20 + size, speed * i:speed * i + size] for i in range(count)])


def stamps(count: int, start: int = START_NS, period: int = PERIOD_NS):
    return [start + i * period for i in range(count)]


def config(**overrides) -> ClipConfig:
    return ClipConfig(**{"frames": 8, "size": SIZE, **overrides})


def manifest_of(path: Path) -> dict:
    return json.loads(Path(path).read_text())
