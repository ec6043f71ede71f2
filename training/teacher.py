"""The teacher's side of bootstrapping: its queries and its pseudo-labels.

Two kinds of teacher:

* a moving one (the EMA of the student, or the student itself in the Siamese ablation)
  labels every batch afresh (`label_batch`);
* a fixed one (the starting model frozen, or a checkpoint) gives every clip the same
  labels whenever it comes back, so `LabelCache` labels each clip once, for more queries
  than a step takes, keeps them on the host and on disk beside the run, and each step
  draws its queries from them. On a CPU the teacher's forward pass is then paid once per
  clip instead of once per step.

Queries are (t, y, x) in the clip's raster; labels are the teacher's final refined
outputs (`Trajectories` without the unrefined stages).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from bootstap_ros.model.tapir import Trajectories

from .pseudo_labels import sample_teacher_queries, sample_textured_queries

LABELS_FORMAT = "bootstap_ros.teacher_labels"
LABELS_VERSION = 1


def sample_queries(generator: torch.Generator, videos: torch.Tensor, num_points: int,
                   textured_fraction: float) -> torch.Tensor:
    """Teacher queries [B, N, 3] for uint8 clips [B, T, H, W, 3], on the clips' device:
    uniform over frames, a share `textured_fraction` of them at textured pixels."""
    b, t, h, w = videos.shape[:4]
    if textured_fraction > 0:
        return sample_textured_queries(generator, videos, num_points, textured_fraction, videos.device)
    return sample_teacher_queries(generator, b, num_points, t, (h, w), videos.device)


def label_batch(teacher: torch.nn.Module, videos: torch.Tensor, queries: torch.Tensor,
                forward: Callable) -> Trajectories:
    """The teacher's final outputs for `queries` on uint8 clips (no gradients)."""
    with torch.no_grad():
        outputs = forward(teacher, videos, queries)
    return Trajectories(outputs.tracks.float(), outputs.occlusion.float(), outputs.expected_dist.float())


def weights_digest(model: torch.nn.Module) -> str:
    """A short hash of a model's weights and config: labels made by other weights are stale."""
    digest = hashlib.sha256(repr(getattr(model, "config", "")).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class LabelCache:
    """A fixed teacher's pseudo-labels for every clip of a `training.logs.LogClips`.

    Clip i gets `points_per_clip` queries drawn from a generator seeded by (seed, i),
    labelled once; `batch(indices, generator, num_points)` draws `num_points` of each
    clip's queries without replacement. The labels are kept on the host (a few hundred
    bytes a track) and written to `path`, keyed by the teacher's weights, the clips and
    the query settings, so a resumed run reuses them and a changed teacher relabels.
    """

    def __init__(self, path: Optional[Path], points_per_clip: int, seed: int, textured_fraction: float):
        self.path = None if path is None else Path(path)
        self.points_per_clip = int(points_per_clip)
        self.seed = int(seed)
        self.textured_fraction = float(textured_fraction)
        self.queries: Dict[int, torch.Tensor] = {}
        self.labels: Dict[int, Trajectories] = {}

    def key(self, teacher: torch.nn.Module, clip_files: Sequence[str]) -> str:
        digest = hashlib.sha256(weights_digest(teacher).encode())
        digest.update(repr((self.points_per_clip, self.seed, self.textured_fraction, list(clip_files))).encode())
        return digest.hexdigest()

    def build(self, teacher: torch.nn.Module, clips, forward: Callable, device: torch.device,
              clip_files: Sequence[str], indices: Optional[Sequence[int]] = None,
              progress: bool = True) -> "LabelCache":
        """Labels the clips `indices` (default: all) of `clips`, or loads the labels written for
        the same key."""
        indices = list(range(len(clips))) if indices is None else [int(i) for i in indices]
        key = self.key(teacher, [clip_files[i] for i in indices])
        if self.path is not None and self.path.exists():
            try:
                stored = torch.load(self.path, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - a damaged cache is relabelled
                stored = {}
            if (stored.get("format") == LABELS_FORMAT and stored.get("version") == LABELS_VERSION
                    and stored.get("key") == key):
                self.queries = dict(stored["queries"])
                self.labels = {i: Trajectories(*t) for i, t in stored["labels"].items()}
                return self
        iterator = indices
        if progress:
            from tqdm import tqdm

            iterator = tqdm(iterator, desc="teacher labels", unit="clip", dynamic_ncols=True)
        self.queries, self.labels = {}, {}
        for index in iterator:
            video = torch.from_numpy(clips[index]["video"])[None].to(device)
            generator = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, index, 31])
                                                          .generate_state(1, np.uint32)[0]))
            queries = sample_queries(generator, video, self.points_per_clip, self.textured_fraction)
            labels = label_batch(teacher, video, queries, forward)
            self.queries[index] = queries[0].cpu()
            self.labels[index] = Trajectories(labels.tracks[0].cpu(), labels.occlusion[0].cpu(),
                                              labels.expected_dist[0].cpu())
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_name(self.path.name + ".partial")
            torch.save({"format": LABELS_FORMAT, "version": LABELS_VERSION, "key": key,
                        "queries": self.queries, "labels": {i: tuple(t) for i, t in self.labels.items()}},
                       partial)
            partial.replace(self.path)
        return self

    def batch(self, indices: Sequence[int], generator: torch.Generator, num_points: int,
              device: torch.device) -> Tuple[torch.Tensor, Trajectories]:
        """(queries [B, N, 3], labels [B, N, T]) of clips `indices`, N = `num_points` of each
        clip's labelled queries drawn without replacement."""
        queries, tracks, occlusion, expected_dist = [], [], [], []
        for index in indices:
            chosen = torch.randperm(self.points_per_clip, generator=generator)[:num_points]
            labels = self.labels[int(index)]
            queries.append(self.queries[int(index)][chosen])
            tracks.append(labels.tracks[chosen])
            occlusion.append(labels.occlusion[chosen])
            expected_dist.append(labels.expected_dist[chosen])

        def stacked(parts):
            return torch.stack(parts).to(device)

        return stacked(queries), Trajectories(stacked(tracks), stacked(occlusion), stacked(expected_dist))
