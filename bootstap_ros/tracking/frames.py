"""Input frames: image encodings to RGB, with errors a user can act on.

The tracker accepts numpy images in the common ROS encodings; everything is
turned into a contiguous uint8 RGB [H, W, 3] array here, before any model code.
"""

from __future__ import annotations

import numpy as np

#: encoding -> (channels, channel order to take as R, G, B)
ENCODINGS = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, (0, 0, 0)),
}


class FrameError(ValueError):
    """A frame cannot be used (encoding, dtype or shape); the message names what was found."""


def to_rgb(frame: np.ndarray, encoding: str = "rgb8") -> np.ndarray:
    """A contiguous uint8 RGB [H, W, 3] view or copy of `frame` in `encoding`."""
    if encoding not in ENCODINGS:
        raise FrameError(f"unsupported image encoding '{encoding}'; supported: {', '.join(ENCODINGS)}")
    channels, order = ENCODINGS[encoding]
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise FrameError(f"expected a uint8 image for encoding {encoding}, got dtype {frame.dtype}")
    if channels == 1 and frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.ndim != 3 or frame.shape[2] != channels:
        raise FrameError(
            f"expected an image of shape [H, W, {channels}] for encoding {encoding}, "
            f"got shape {tuple(frame.shape)}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise FrameError(f"empty image of shape {tuple(frame.shape)}")
    if encoding == "rgb8":
        return np.ascontiguousarray(frame)
    return np.ascontiguousarray(frame[:, :, list(order)])
