"""Queries, pseudo-labels, masks and the EMA teacher of BootsTAP bootstrapping.

Small pure functions that `training/bootstrap.py` strings together:

* `sample_teacher_queries`: random (t, y, x) queries on the clean clip;
* `resample_student_queries`: the student's query on the teacher's trajectory
  (the same point with p = 0.5, else a random visible point of the trajectory);
* `pseudo_labels`: the teacher's final refined tracks and occlusion, with the
  official visibility rule;
* `cycle_consistency_mask` / `proximity_mask`: which pseudo-labels count;
* `ema_update` / `make_ema_teacher`: the teacher as an exponential moving average.

Conventions: batch first; positions are pixel (x, y) in the clip's raster
(pixel centres at +0.5); queries are TAPIR's (t, y, x).
"""

from __future__ import annotations

import copy
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn

from bootstap_ros.model.tapir import Trajectories, visibility

Size = Union[int, Sequence[int]]

#: The cycle-consistency threshold is measured in a 256x256 raster, as TAPIR's losses and metrics.
CYCLE_RASTER = 256.0


def _height_width(size: Size) -> Tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = (int(v) for v in size)
    return height, width


def sample_teacher_queries(generator: torch.Generator, batch: int, num_points: int, num_frames: int,
                           size: Size, device=None) -> torch.Tensor:
    """Teacher queries [B, N, 3] (t, y, x): t a uniformly random frame (integer-valued),
    (y, x) uniform over the frame, y in [0, height), x in [0, width).

    The paper (and its notes, 5.6) samples the teacher's query as a random
    coordinate on a random frame; the "uniform query sampling" ablation concerns
    the student's query (see `resample_student_queries`).
    """
    if num_frames < 1 or num_points < 1 or batch < 1:
        raise ValueError(f"sample_teacher_queries needs batch, num_points and num_frames >= 1, got "
                         f"{batch}, {num_points}, {num_frames}")
    height, width = _height_width(size)
    t = torch.randint(0, num_frames, (batch, num_points), generator=generator).float()
    y = torch.rand(batch, num_points, generator=generator) * height
    x = torch.rand(batch, num_points, generator=generator) * width
    # rand is in [0, 1), but x * width can round up to width in float32: keep it inside.
    y = torch.clamp(y, max=torch.nextafter(torch.tensor(float(height)), torch.tensor(0.0)))
    x = torch.clamp(x, max=torch.nextafter(torch.tensor(float(width)), torch.tensor(0.0)))
    return torch.stack([t, y, x], -1).to(device)


def resample_student_queries(generator: torch.Generator, teacher_queries: torch.Tensor,
                             tracks: torch.Tensor, visible: torch.Tensor, same_prob: float = 0.5,
                             uniform: bool = False, size: Optional[Size] = None) -> torch.Tensor:
    """The student's queries [B, N, 3] (t, y, x), in the teacher's raster.

    Default (the paper): with probability `same_prob` (0.5) the teacher's query,
    else the teacher's trajectory at a frame drawn uniformly among those where
    it is visible. `same_prob=1` is the "same query" ablation. `uniform=True` is
    the "uniform query sampling" ablation: a frame drawn uniformly among all
    visible frames of the trajectory, with no extra weight on the teacher's own
    query (`same_prob` is then ignored).

    tracks [B, N, T, 2] (x, y) and visible [B, N, T] (bool) are the teacher's
    pseudo-labels. With `size`, a frame whose position lies outside the frame
    does not count as visible. A point visible on no frame keeps the teacher's query.
    Random draws come from `generator` (CPU); the result is on the tracks' device.
    """
    if not 0.0 <= same_prob <= 1.0:
        raise ValueError(f"same_prob must be in [0, 1], got {same_prob}")
    b, n, t = visible.shape
    if tracks.shape[:3] != (b, n, t) or teacher_queries.shape[:2] != (b, n):
        raise ValueError(f"resample_student_queries: shapes disagree: teacher_queries "
                         f"{tuple(teacher_queries.shape)}, tracks {tuple(tracks.shape)}, visible "
                         f"{tuple(visible.shape)} (expected [B, N, 3], [B, N, T, 2], [B, N, T])")
    candidates = visible.bool()
    if size is not None:
        height, width = _height_width(size)
        x, y = tracks[..., 0], tracks[..., 1]
        candidates = candidates & (x >= 0) & (x < width) & (y >= 0) & (y < height)
    # A uniform draw among the candidate frames: the argmax of uniform scores over them.
    scores = torch.rand(b, n, t, generator=generator).to(tracks.device)
    frame = torch.where(candidates, scores, torch.full_like(scores, -1.0)).argmax(-1)  # [B, N]
    xy = torch.gather(tracks.detach(), 2, frame[..., None, None].expand(b, n, 1, 2))[:, :, 0]
    resampled = torch.stack([frame.to(teacher_queries.dtype), xy[..., 1].to(teacher_queries.dtype),
                             xy[..., 0].to(teacher_queries.dtype)], -1)
    keep = ~candidates.any(-1)
    if not uniform:
        keep = keep | (torch.rand(b, n, generator=generator).to(tracks.device) < same_prob)
    return torch.where(keep[..., None], teacher_queries.to(tracks.device), resampled)


def sample_textured_queries(generator: torch.Generator, videos: torch.Tensor, num_points: int,
                            textured_fraction: float = 0.5, device=None) -> torch.Tensor:
    """Teacher queries [B, N, 3] (t, y, x) on uint8 clips [B, T, H, W, 3]: a uniformly
    random frame, then with probability `textured_fraction` a pixel drawn in proportion to
    the frame's corner strength (the smaller eigenvalue of the local structure tensor, as
    Shi-Tomasi corners), else a uniform pixel as `sample_teacher_queries`.

    A point on a flat patch has no position to teach: the teacher's label there is a
    guess, and a student taught guesses learns to guess. Frames without texture fall back
    to uniform pixels. Positions are pixel centres plus a uniform jitter within the pixel.
    """
    import cv2
    import numpy as np

    if not 0.0 <= textured_fraction <= 1.0:
        raise ValueError(f"textured_fraction must lie in [0, 1], got {textured_fraction}")
    b, t, h, w = videos.shape[:4]
    queries = sample_teacher_queries(generator, b, num_points, t, (h, w))
    textured = torch.rand(b, num_points, generator=generator) < textured_fraction
    jitter = torch.rand(b, num_points, 2, generator=generator)
    clips = videos.detach().cpu().numpy()
    for i in range(b):
        frames = queries[i, :, 0].to(torch.int64)
        for frame in torch.unique(frames[textured[i]]).tolist():
            grey = cv2.cvtColor(np.ascontiguousarray(clips[i, frame]), cv2.COLOR_RGB2GRAY).astype(np.float32)
            strength = np.maximum(cv2.cornerMinEigenVal(grey, 5, 3), 0).reshape(-1).astype(np.float64)
            total = strength.sum()
            if not total > 0:
                continue
            chosen = torch.nonzero(textured[i] & (frames == frame))[:, 0]
            cumulative = torch.from_numpy(np.cumsum(strength / total))
            draws = torch.rand(len(chosen), generator=generator, dtype=torch.float64)
            cells = torch.searchsorted(cumulative, draws).clamp(max=h * w - 1)
            queries[i, chosen, 1] = (cells // w).float() + jitter[i, chosen, 1]
            queries[i, chosen, 2] = (cells % w).float() + jitter[i, chosen, 0]
    return queries.to(device)


def teacher_targets(outputs: Trajectories, visible_threshold: float = 0.5, stop_gradient: bool = True):
    """The self-supervised loss's targets (`bootstap_ros_training.losses.PseudoLabelTargets`) from a
    teacher's final refined outputs: its tracks; where it sees the point (the official
    rule `(1 - sigmoid(occ)) * (1 - sigmoid(expd))` above `visible_threshold`, so only
    positions it is sure of are taught); its occlusion probability from the occlusion
    logit alone and its probability of being far off from the uncertainty logit.
    `stop_gradient=False` (the Siamese ablation) keeps the tracks' gradient."""
    from .losses import PseudoLabelTargets

    occlusion = outputs.occlusion.detach().float()
    expected_dist = outputs.expected_dist.detach().float()
    tracks = outputs.tracks.float()
    return PseudoLabelTargets(
        tracks=tracks.detach() if stop_gradient else tracks,
        position_mask=visibility(occlusion, expected_dist, visible_threshold),
        occluded_prob=torch.sigmoid(occlusion),
        far_prob=torch.sigmoid(expected_dist))


def pseudo_labels(outputs: Trajectories) -> Tuple[torch.Tensor, torch.Tensor]:
    """(tracks [B, N, T, 2] detached, occluded bool [B, N, T]) from the teacher's final
    refined outputs; occluded is the negation of the official visibility rule
    `(1 - sigmoid(occ)) * (1 - sigmoid(expd)) > 0.5`."""
    visible = visibility(outputs.occlusion.detach(), outputs.expected_dist.detach())
    return outputs.tracks.detach(), ~visible


def cycle_consistency_mask(student_tracks: torch.Tensor, student_visible: torch.Tensor,
                           teacher_queries: torch.Tensor, size: Size, threshold: float = 4.0,
                           raster: float = CYCLE_RASTER) -> torch.Tensor:
    """bool [B, N]: the student's track (in the teacher's raster) at the teacher's query
    frame lies within `threshold` px of the teacher's query point, distances measured in
    a `raster` x `raster` image (4 px at 256, the paper's value), and the student calls it
    visible there.

    student_tracks [B, N, T, 2] (x, y); student_visible [B, N, T] bool;
    teacher_queries [B, N, 3] (t, y, x); size: the clip's side or (height, width).
    """
    height, width = _height_width(size)
    frames = student_tracks.shape[2]
    t = teacher_queries[..., 0].round().long().clamp(0, frames - 1)  # [B, N]
    at_query = torch.gather(student_tracks.detach(), 2, t[..., None, None].expand(-1, -1, 1, 2))[:, :, 0]
    scale = torch.tensor([raster / width, raster / height], device=student_tracks.device)
    error = (at_query.float() - teacher_queries[..., [2, 1]].float().to(at_query.device)) * scale
    close = torch.sum(torch.square(error), -1) < threshold ** 2
    seen = torch.gather(student_visible.bool(), 2, t[..., None])[..., 0]
    return close & seen


def proximity_mask(teacher_query_t: torch.Tensor, student_query_t: torch.Tensor,
                   num_frames: int) -> torch.Tensor:
    """bool [B, N, T]: False on frames strictly closer in time to the student's query
    frame than to the teacher's (those the student could solve by copying its own
    query); frames at equal distance count. All True where the two frames agree."""
    frames = torch.arange(num_frames, device=teacher_query_t.device, dtype=torch.float32)
    to_teacher = torch.abs(frames - teacher_query_t.round().float()[..., None])
    to_student = torch.abs(frames - student_query_t.round().float().to(frames.device)[..., None])
    return ~(to_student < to_teacher)


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher = decay * teacher + (1 - decay) * student, for every parameter and floating
    buffer (others are copied). Both models must have the same parameter names and shapes."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
    teacher, student = _unwrap(teacher), _unwrap(student)
    student_tensors = dict(student.named_parameters())
    student_tensors.update(student.named_buffers())
    for name, target in [*teacher.named_parameters(), *teacher.named_buffers()]:
        source = student_tensors.get(name)
        if source is None or source.shape != target.shape:
            raise ValueError(f"ema_update: the student has no tensor {name!r} of shape {tuple(target.shape)} "
                             f"(found {None if source is None else tuple(source.shape)}); teacher and "
                             f"student must share one architecture")
        if target.dtype.is_floating_point:
            target.lerp_(source.detach().to(target.dtype), 1.0 - decay)
        else:
            target.copy_(source)


def make_ema_teacher(student: nn.Module) -> nn.Module:
    """A copy of the student for the EMA teacher: eval mode, no gradients.

    A deep copy when possible. A TAPIR that has tracked on the CPU may hold
    oneDNN pre-packed weights that cannot be copied; then the copy is built from
    its config and state_dict (same values, device and dtype).
    """
    student = _unwrap(student)
    try:
        teacher = copy.deepcopy(student)
    except (NotImplementedError, RuntimeError):
        config = getattr(student, "config", None)
        if config is None:
            raise
        teacher = type(student)(config)
        teacher.load_state_dict(student.state_dict())
        reference = next(student.parameters(), None)
        if reference is not None:
            teacher.to(device=reference.device, dtype=reference.dtype)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher
