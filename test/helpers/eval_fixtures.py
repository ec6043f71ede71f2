"""Small datasets for the eval tests, written in the published TAP-Vid pickle layouts.

Every helper writes into a directory the test gives it (pytest's tmp_path).
"""

import os
import pickle

import cv2
import numpy as np


def make_entry(video, points, occluded):
    """One video record as in the published pickles."""
    return {
        "video": np.asarray(video, dtype=np.uint8),
        "points": np.asarray(points, dtype=np.float32),
        "occluded": np.asarray(occluded, dtype=bool),
    }


def random_entry(rng, num_frames=6, height=32, width=48, num_points=4):
    """Random frames and tracks; point 0 is never visible, the rest mostly visible."""
    video = rng.integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)
    points = rng.random((num_points, num_frames, 2)).astype(np.float32)
    occluded = rng.random((num_points, num_frames)) < 0.3
    occluded[0] = True
    return make_entry(video, points, occluded)


def write_pickle(path, data):
    with open(path, "wb") as file:
        pickle.dump(data, file)
    return str(path)


def write_davis(path, entries):
    """A TAP-Vid DAVIS pickle: dict name -> record."""
    return write_pickle(path, dict(entries))


def write_rgb_stacking(path, entries):
    """A TAP-Vid RGB-Stacking pickle: a list of records."""
    return write_pickle(path, list(entries))


def write_robotap(folder, splits):
    """RoboTAP: robotap_split{i}.pkl files, each a dict name -> record."""
    os.makedirs(folder, exist_ok=True)
    for index, entries in enumerate(splits):
        write_pickle(os.path.join(folder, f"robotap_split{index}.pkl"), dict(entries))
    return str(folder)


def smooth_texture(size, seed=0):
    """uint8 [size, size, 3] blurred noise: corners everywhere, no aliasing."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (size, size, 3)).astype(np.float32)
    texture = cv2.GaussianBlur(texture, (0, 0), 1.5)
    texture = (texture - texture.min()) / (texture.max() - texture.min()) * 255
    return texture.astype(np.uint8)


def translating_square(
    num_frames=10,
    height=256,
    width=256,
    size=96,
    start=(40, 50),
    step=(3, 2),
    grid=4,
    seed=0,
):
    """A smoothly textured square moving ``step`` (dx, dy) pixels per frame.

    The background is flat grey; a ``grid`` x ``grid`` set of points sits well
    inside the square, so their true motion is exactly the square's. Returns a
    record with points in [0, 1] (pixel i spans [i, i + 1), so its centre is at
    (i + 0.5) / width).
    """
    texture = smooth_texture(size, seed)
    video = np.full((num_frames, height, width, 3), 128, np.uint8)
    offsets = np.linspace(size * 0.3, size * 0.7, grid).round()
    local = np.stack(np.meshgrid(offsets, offsets), axis=-1).reshape(-1, 2)  # (u, v)
    points = np.zeros((len(local), num_frames, 2), np.float32)
    for frame in range(num_frames):
        x0, y0 = start[0] + step[0] * frame, start[1] + step[1] * frame
        assert 0 <= x0 and x0 + size <= width and 0 <= y0 and y0 + size <= height
        video[frame, y0:y0 + size, x0:x0 + size] = texture
        points[:, frame, 0] = (x0 + local[:, 0] + 0.5) / width
        points[:, frame, 1] = (y0 + local[:, 1] + 0.5) / height
    occluded = np.zeros(points.shape[:2], bool)
    return make_entry(video, points, occluded)
