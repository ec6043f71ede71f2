"""Training batches and the held-out set, from the Kubric-lite generator.

Every training clip is generated on the fly from its own seed, a pure function of
the run seed and the clip's global index; the batch of step ``s`` on rank ``r``
(of ``W``) holds the clips ``(s * W + r) * B ... + B - 1``. So a run is the same
whatever the number of DataLoader workers, resuming at step ``s`` sees exactly
the clips an uninterrupted run would have seen, and no two ranks share a clip.

Seeds: training clips use seeds from ``TRAIN_SEED_OFFSET`` (2**31) up; the
held-out set uses seeds below it, so the two never overlap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .camera import CameraConfig, apply_camera, camera_rng
from .domains.synthetic import SyntheticConfig, generate_clip, write_tapvid_pickle

TRAIN_SEED_OFFSET = 1 << 31
# Room for 2**40 clips per run seed before two run seeds could share a clip.
_RUN_SEED_STRIDE = 1 << 40


def train_clip_seed(run_seed: int, index: int) -> int:
    """The generator seed of training clip `index` of a run seeded `run_seed`."""
    if run_seed < 0 or index < 0:
        raise ValueError(f"run seed and clip index must be non-negative, got {run_seed} and {index}")
    return TRAIN_SEED_OFFSET + run_seed * _RUN_SEED_STRIDE + index


def clip_arrays(seed: int, config: SyntheticConfig) -> Dict[str, np.ndarray]:
    """One clip as the arrays a training step needs (the scene's textures are dropped).

    video uint8 [T, H, W, 3]; query_points float32 [N, 3] (t, y, x) in the clip's
    pixels, each visible on its query frame (the generator samples them on visible
    surfaces); target_points float32 [N, T, 2] (x, y); occluded bool [N, T].
    """
    clip = generate_clip(seed, config)
    return {
        "video": clip.video,
        "query_points": clip.query_points[:, [0, 2, 1]].astype(np.float32),
        "target_points": clip.tracks.astype(np.float32),
        "occluded": clip.occluded.astype(bool),
    }


class SyntheticClips(Dataset):
    """Clip `index` of a run: `clip_arrays(train_clip_seed(seed, index))`.

    pool: when positive, only `pool` distinct clips are used (index modulo pool),
    i.e. a finite training set seen once per `pool` clips; 0 = every clip is new.
    camera: when given, each clip is seen through a random camera (`camera.apply_camera`)
    drawn from the clip's seed, so a clip and its camera are the same on every visit;
    camera_share: the share of clips that get one (also drawn from the clip's seed), the
    rest stay clean.
    """

    def __init__(self, config: SyntheticConfig, seed: int = 0, pool: int = 0,
                 camera: Optional[CameraConfig] = None, camera_share: float = 1.0):
        if not 0 <= camera_share <= 1:
            raise ValueError(f"camera_share must lie in [0, 1], got {camera_share}")
        self.config = config
        self.seed = seed
        self.pool = pool
        self.camera = camera
        self.camera_share = camera_share

    def __getitem__(self, index: int) -> Dict[str, np.ndarray]:
        if self.pool > 0:
            index %= self.pool
        clip_seed = train_clip_seed(self.seed, index)
        arrays = clip_arrays(clip_seed, self.config)
        if self.camera is not None:
            rng = camera_rng(clip_seed)
            # A share of 1 draws nothing: every clip keeps the camera it had before the option.
            if self.camera_share >= 1 or rng.random() < self.camera_share:
                arrays = apply_camera(arrays, self.camera, rng)
        return arrays


class StepBatches(Sampler):
    """The clip indices of each step's batch on one rank, from `start_step` to `steps`."""

    def __init__(self, start_step: int, steps: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.start_step, self.steps = start_step, steps
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size

    def batch_indices(self, step: int) -> List[int]:
        first = (step * self.world_size + self.rank) * self.batch_size
        return list(range(first, first + self.batch_size))

    def __iter__(self) -> Iterator[List[int]]:
        for step in range(self.start_step, self.steps):
            yield self.batch_indices(step)

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step)


def _worker_init(worker_id: int) -> None:
    # The workers share the machine's cores with the training process: one thread each.
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def make_loader(dataset: SyntheticClips, batches: StepBatches, num_workers: int = 2,
                pin_memory: bool = False) -> DataLoader:
    """Batches of stacked tensors: video uint8 [B, T, H, W, 3], query_points [B, N, 3], ..."""
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                      worker_init_fn=_worker_init if num_workers > 0 else None,
                      pin_memory=pin_memory, prefetch_factor=4 if num_workers > 0 else None)


def heldout_seeds(first_seed: int, num_clips: int) -> range:
    """Seeds of the held-out set: `first_seed ...`, all below the training seeds."""
    if first_seed < 0 or first_seed + num_clips > TRAIN_SEED_OFFSET:
        raise ValueError(f"held-out seeds must lie in [0, {TRAIN_SEED_OFFSET}) to stay apart from the "
                         f"training seeds; got {first_seed} ... {first_seed + num_clips - 1}")
    return range(first_seed, first_seed + num_clips)


def write_heldout_set(path, config: SyntheticConfig, first_seed: int, num_clips: int) -> Path:
    """Writes the held-out clips as a TAP-Vid pickle once; an existing file is reused.

    The file name should encode everything that shapes the clips (see
    `heldout_path`), so reusing it is safe.
    """
    path = Path(path)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    clips = (generate_clip(seed, config) for seed in heldout_seeds(first_seed, num_clips))
    write_tapvid_pickle(partial, clips)
    os.replace(partial, path)
    return path


def heldout_path(directory, config: SyntheticConfig, first_seed: int, num_clips: int) -> Path:
    name = (f"heldout_{num_clips}clips_seed{first_seed}_{config.frames}f_{config.height}x{config.width}"
            f"_{config.num_points}pts.pkl")
    return Path(directory) / name
