"""The teacher's side of bootstrapping: its queries and its pseudo-labels.

Two kinds of teacher:

* a moving one (the EMA of the student, or the student itself in the Siamese ablation)
  labels every batch afresh (`label_batch`);
* a fixed one (the starting model frozen, or a checkpoint) gives every clip the same
  labels whenever it comes back, so `LabelCache` labels each clip the first time it is
  used, for more queries than a step takes, keeps them on the host and on disk beside
  the run, and each later visit draws its queries from them. On a CPU the teacher's
  forward pass is then paid once per clip instead of once per step.

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
LABELS_VERSION = 2


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


def round_trip_errors(teacher: torch.nn.Module, video: torch.Tensor, queries: torch.Tensor,
                      labels: Trajectories, forward: Callable) -> torch.Tensor:
    """How far each of the teacher's tracks comes back when it is queried again [B, N]
    (pixels, 256 raster; inf where it cannot be checked).

    Each track is queried again at its visible frame farthest in time from its query and
    tracked to the query frame (on the time-reversed clip when that lies earlier, as a
    causal tracker must); the distance is taken there from the original query. A label
    whose own teacher cannot retrace it is likely wrong (Sun et al., ICRA 2024, keep only
    cycle-consistent pseudo-labels). Tracks seen on no other frame get inf."""
    from bootstap_ros.model.tapir import visibility

    b, n, t = labels.occlusion.shape
    height, width = video.shape[2:4]
    seen = visibility(labels.occlusion, labels.expected_dist)
    query_t = queries[..., 0].round().long()
    frames = torch.arange(t, device=video.device)
    distance = (frames - query_t[..., None]).abs().float()
    distance = torch.where(seen & (frames != query_t[..., None]), distance, torch.full_like(distance, -1.0))
    far = distance.argmax(-1)  # [B, N]
    checkable = distance.max(-1).values > 0
    start = torch.gather(labels.tracks, 2, far[..., None, None].expand(b, n, 1, 2))[:, :, 0]  # (x, y)
    errors = torch.full((b, n), float("inf"), device=video.device)
    scale = torch.tensor([256.0 / width, 256.0 / height], device=video.device)
    for later in (True, False):
        chosen = checkable & ((far > query_t) if later else (far < query_t))
        if not bool(chosen.any()):
            continue
        clip = torch.flip(video, dims=[1]) if later else video
        begin = (t - 1 - far) if later else far
        target = (t - 1 - query_t) if later else query_t
        requery = torch.stack([begin.float(), start[..., 1], start[..., 0]], -1)
        back = label_batch(teacher, clip, requery, forward)
        returned = torch.gather(back.tracks, 2, target[..., None, None].expand(b, n, 1, 2))[:, :, 0]
        error = torch.linalg.norm((returned - queries[..., [2, 1]].float()) * scale, dim=-1)
        errors = torch.where(chosen, error, errors)
    return errors


def weights_digest(model: torch.nn.Module) -> str:
    """A short hash of a model's weights and config: labels made by other weights are stale."""
    digest = hashlib.sha256(repr(getattr(model, "config", "")).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class LabelCache:
    """A fixed teacher's pseudo-labels, one clip at a time, each computed once.

    Clip i gets `points_per_clip` queries drawn from a generator seeded by (seed, i) and is
    labelled the first time a batch holds it; `batch(indices, videos, generator, num_points)`
    then draws `num_points` of each clip's queries without replacement. Labels are kept on
    the host (a few hundred bytes a track) and, with a `folder`, written there one small
    file per clip, so a resumed or repeated run with the same teacher, clips and settings
    reads them instead of labelling again; labels of another teacher or other settings
    (`key`) are removed first. Labelling on first use spreads the teacher's cost over the
    run's first pass through the clips, however many clips there are.
    """

    def __init__(self, teacher: torch.nn.Module, forward: Callable, points_per_clip: int, seed: int,
                 textured_fraction: float, folder: Optional[Path] = None, clip_files: Sequence[str] = (),
                 round_trip: float = 0.0):
        self.teacher, self.forward = teacher, forward
        # With round_trip > 0 (px, 256 raster), only tracks the teacher retraces that closely
        # are drawn while there are enough of them (`round_trip_errors`).
        self.round_trip = float(round_trip)
        self.errors: Dict[int, torch.Tensor] = {}
        self.points_per_clip = int(points_per_clip)
        self.seed = int(seed)
        self.textured_fraction = float(textured_fraction)
        self.queries: Dict[int, torch.Tensor] = {}
        self.labels: Dict[int, Trajectories] = {}
        self.folder = None if folder is None else Path(folder)
        self.clip_files = list(clip_files)
        self.labelled = 0  # clips labelled by this process (not read back)
        if self.folder is not None:
            self._open_folder()

    def key(self) -> str:
        digest = hashlib.sha256(weights_digest(self.teacher).encode())
        digest.update(repr((LABELS_VERSION, self.points_per_clip, self.seed, self.textured_fraction,
                            self.round_trip > 0)).encode())
        return digest.hexdigest()[:32]

    def _open_folder(self) -> None:
        import json
        import shutil

        key_file = self.folder / "key.json"
        key = self.key()
        try:
            same = json.loads(key_file.read_text()).get("key") == key
        except (OSError, ValueError):
            same = False
        if not same and self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        key_file.write_text(json.dumps({"format": LABELS_FORMAT, "key": key}) + "\n")

    def _file(self, index: int) -> Optional[Path]:
        if self.folder is None:
            return None
        name = self.clip_files[index] if index < len(self.clip_files) else str(index)
        return self.folder / (hashlib.sha256(name.encode()).hexdigest()[:16] + ".pt")

    def clip(self, index: int, video: torch.Tensor) -> Tuple[torch.Tensor, Trajectories]:
        """(queries [Q, 3], labels [Q, T]) of clip `index`, whose uint8 frames [T, H, W, 3]
        are `video` (on the teacher's device)."""
        index = int(index)
        if index not in self.labels:
            path = self._file(index)
            stored = None
            if path is not None and path.exists():
                try:
                    stored = torch.load(path, map_location="cpu", weights_only=True)
                except Exception:  # noqa: BLE001 - a damaged file is labelled again
                    stored = None
            if stored is None:
                generator = torch.Generator().manual_seed(int(np.random.SeedSequence(
                    [self.seed, index, 31]).generate_state(1, np.uint32)[0]))
                queries = sample_queries(generator, video[None], self.points_per_clip, self.textured_fraction)
                labels = label_batch(self.teacher, video[None], queries, self.forward)
                stored = {"queries": queries[0].cpu(), "labels": tuple(t[0].cpu() for t in labels[:3])}
                if self.round_trip > 0:
                    stored["round_trip"] = round_trip_errors(self.teacher, video[None], queries, labels,
                                                             self.forward)[0].cpu()
                self.labelled += 1
                if path is not None:
                    partial = path.with_name(path.name + ".partial")
                    torch.save(stored, partial)
                    partial.replace(path)
            self.queries[index] = stored["queries"]
            self.labels[index] = Trajectories(*stored["labels"])
            if "round_trip" in stored:
                self.errors[index] = stored["round_trip"]
        return self.queries[index], self.labels[index]

    def _draw(self, index: int, generator: torch.Generator, num_points: int) -> torch.Tensor:
        """`num_points` of clip `index`'s tracks, without replacement: with a round-trip check,
        the retraced ones first (in random order), then the others."""
        order = torch.randperm(self.points_per_clip, generator=generator)
        if self.round_trip > 0 and index in self.errors:
            good = self.errors[index][order] < self.round_trip
            order = torch.cat([order[good], order[~good]])
        return order[:num_points]

    def clear(self) -> None:
        """Forgets every label held in memory (a moving teacher's, before it labels again)."""
        self.queries, self.labels, self.errors = {}, {}, {}

    def batch(self, indices: Sequence[int], videos: torch.Tensor, generator: torch.Generator, num_points: int,
              ) -> Tuple[torch.Tensor, Trajectories]:
        """(queries [B, N, 3], labels [B, N, T]) of the clips `indices` (uint8 `videos`
        [B, T, H, W, 3] on the teacher's device), N = `num_points` of each clip's labelled
        queries drawn without replacement."""
        queries, tracks, occlusion, expected_dist = [], [], [], []
        for index, video in zip(indices, videos):
            clip_queries, labels = self.clip(index, video)
            chosen = self._draw(int(index), generator, num_points)
            queries.append(clip_queries[chosen])
            tracks.append(labels.tracks[chosen])
            occlusion.append(labels.occlusion[chosen])
            expected_dist.append(labels.expected_dist[chosen])

        def stacked(parts):
            return torch.stack(parts).to(videos.device)

        return stacked(queries), Trajectories(stacked(tracks), stacked(occlusion), stacked(expected_dist))
