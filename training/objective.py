"""What one bootstrapping step computes: the teacher's pseudo-labels, the student's view,
queries and forward, the masks, the self-supervised loss, and the step's two updates
(supervised, then self-supervised) with the EMA teacher's update.

No run state here: the step's random draws are a pure function of the seed, the step and
the rank (`step_generators`), so a resumed run repeats them exactly. The run around it is
`bootstrap`; `grading` grades the same pass's pseudo-labels against truth.
"""

from __future__ import annotations

import typing
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from bootstap_ros.model import TAPIR, Trajectories, load_checkpoint
from bootstap_ros.model.checkpoint import resolve_checkpoint
from bootstap_ros.model.tapir import visibility

from .bootstrap_config import BootstrapConfig
from .loop import cosine_learning_rate, model_forward, optimizer_step, set_learning_rate, supervised_loss
from .losses import PseudoLabelTargets, pseudo_label_loss


# ----------------------------------------------------------------------------- models

def load_student(config: BootstrapConfig) -> TAPIR:
    """The model to bootstrap: `init` (default: the embedded model), capacity expanded if asked."""
    loaded = load_checkpoint(resolve_checkpoint(config.init), causal=config.causal,
                             official_default_causal=True)
    model = loaded.model
    if config.expand_capacity and model.config.extra_conv_blocks == 0:
        from .capacity import expand_capacity

        model = expand_capacity(model, num_blocks=5)
    return model


def load_fixed_teacher(config: BootstrapConfig) -> TAPIR:
    """A fixed teacher from a checkpoint (`config.teacher`): eval mode, no gradients."""
    loaded = load_checkpoint(config.teacher, causal=config.teacher_causal, official_default_causal=False)
    teacher = loaded.model
    teacher.eval().requires_grad_(False)
    return teacher


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def fixed_teacher(config: BootstrapConfig) -> bool:
    """Whether the teacher stays as it is for the whole run (so each clip is labelled once)."""
    return not config.siamese and config.teacher != "ema"


def cached_labels(config: BootstrapConfig) -> bool:
    """Whether labels are kept per clip: a fixed teacher's for the run, an EMA teacher's
    between relabellings (`relabel_every`)."""
    return fixed_teacher(config) or (config.teacher == "ema" and not config.siamese and config.relabel_every > 0)


def step_generators(seed: int, step: int, rank: int) -> Tuple[np.random.Generator, torch.Generator]:
    """The random draws of one step (views, queries): a pure function of seed, step and rank,
    so a resumed run repeats them exactly and no state needs saving."""
    entropy = np.random.SeedSequence([seed, step, rank, 12])
    numpy_rng = np.random.default_rng(entropy)
    torch_rng = torch.Generator().manual_seed(int(entropy.generate_state(1, np.uint64)[0] >> 1))
    return numpy_rng, torch_rng


# ----------------------------------------------------------------------------- the loss

def map_outputs(outputs: Trajectories, affines: torch.Tensor) -> Trajectories:
    """Student outputs with every stage's positions mapped by per-clip affines [B, T, 2, 3]."""
    from .views import map_tracks

    affines = affines.to(outputs.tracks.device)

    def mapped(tracks):
        return map_tracks(tracks.float(), affines)

    return Trajectories(mapped(outputs.tracks), outputs.occlusion, outputs.expected_dist,
                        tuple((mapped(t), o, e) for t, o, e in outputs.unrefined))


class StudentPass(typing.NamedTuple):
    """One self-supervised pass over a batch: what the loss and the grades are made of."""

    teacher_queries: torch.Tensor  # [B, N, 3] (t, y, x), clip raster
    student_queries: torch.Tensor  # [B, N, 3], clip raster
    targets: "PseudoLabelTargets"  # the teacher's, clip raster
    outputs: Trajectories  # the student's, in its own raster
    back: Trajectories  # the student's, mapped back to the clip raster
    affines: torch.Tensor  # [B, T, 2, 3] clip raster -> student raster
    keep: torch.Tensor  # bool [B, N, T]: the entries the masks keep


def student_pass(student: torch.nn.Module, teacher: torch.nn.Module, video: torch.Tensor,
                 config: BootstrapConfig, numpy_rng: np.random.Generator, torch_rng: torch.Generator,
                 student_causal: bool, teacher_causal: bool,
                 labels: Optional[Tuple[torch.Tensor, Trajectories]] = None) -> StudentPass:
    """The teacher's labels, the student's view, queries and forward, and the masks, for one
    batch of clean clips uint8 [B, T, S, S, 3] (on the device). `labels`: the teacher's
    (queries [B, N, 3], final outputs) for these clips when they are known (a fixed
    teacher's `LabelCache`); otherwise `teacher` labels random queries now (the student
    itself in Siamese mode: no stop-gradient)."""
    from .pseudo_labels import cycle_consistency_mask, proximity_mask, resample_student_queries, teacher_targets
    from .teacher import label_batch, sample_queries
    from .views import invert_affine, map_queries, student_batch

    batch, frames, height, width = video.shape[:4]
    device = video.device
    if labels is not None:
        teacher_queries, outputs = labels
    else:
        teacher_queries = sample_queries(torch_rng, video, config.num_points, config.textured_queries)
        if config.siamese:
            outputs = model_forward(teacher, video, teacher_queries, config.amp, teacher_causal)
        else:
            outputs = label_batch(teacher, video, teacher_queries,
                                  lambda model, v, q: model_forward(model, v, q, config.amp, teacher_causal))
    targets = teacher_targets(outputs, config.visible_threshold, stop_gradient=not config.siamese)
    num_points = teacher_queries.shape[1]
    same_prob = 1.0 if config.same_query else config.same_query_prob
    student_queries = resample_student_queries(
        torch_rng, teacher_queries, targets.tracks.detach(), targets.position_mask, same_prob,
        uniform=config.uniform_queries and not config.same_query, size=(height, width))

    student_video, affines = student_batch(video, config.view(), numpy_rng)
    affines = affines.to(device)
    student_outputs = model_forward(student, student_video, map_queries(student_queries, affines),
                                    config.amp, student_causal)
    back = map_outputs(student_outputs, invert_affine(affines))

    with torch.no_grad():
        keep = torch.ones(batch, num_points, frames, dtype=torch.bool, device=device)
        if config.cycle_mask:
            student_visible = visibility(back.occlusion.float(), back.expected_dist.float())
            cycle = cycle_consistency_mask(back.tracks, student_visible, teacher_queries,
                                           (height, width), config.cycle_threshold)
            keep &= cycle[..., None]
        if config.proximity_mask:
            keep &= proximity_mask(teacher_queries[..., 0], student_queries[..., 0], frames)
        if config.loss_frames == "from_query" and student_causal:
            # A causal student answers from its query frame on: frames before it are never
            # asked of it online.
            keep &= torch.arange(frames, device=device) >= student_queries[..., 0:1].round()
    return StudentPass(teacher_queries, student_queries, targets, student_outputs, back, affines, keep)


def bootstrap_loss(student: torch.nn.Module, teacher: torch.nn.Module, video: torch.Tensor,
                   config: BootstrapConfig, numpy_rng: np.random.Generator,
                   torch_rng: torch.Generator, student_causal: bool, teacher_causal: bool,
                   labels: Optional[Tuple[torch.Tensor, Trajectories]] = None):
    """The self-supervised loss of one batch of clean clips uint8 [B, T, S, S, 3] (on the
    device): (loss, parts); `student_pass` says what goes in."""
    from .views import map_tracks

    result = student_pass(student, teacher, video, config, numpy_rng, torch_rng, student_causal,
                          teacher_causal, labels)
    stages = [*result.outputs.unrefined, (result.outputs.tracks,)]
    loss, parts = pseudo_label_loss(result.back, [stage[0] for stage in stages], result.targets,
                                    map_tracks(result.targets.tracks, result.affines), video.shape[2:4],
                                    config.ssl_loss, result.keep)
    parts["kept_tracks"] = result.keep.any(-1).float().mean()
    parts["kept_positions"] = (result.keep & result.targets.position_mask).float().mean()
    return loss, parts


def bootstrap_step(trained: torch.nn.Module, teacher: torch.nn.Module, optimizers: Dict, scaler,
                   video: torch.Tensor, supervised: Optional[Dict[str, torch.Tensor]],
                   config: BootstrapConfig, step: int, rank: int, teacher_causal: bool,
                   ema: bool, labels=None, clip_indices: Optional[Sequence[int]] = None,
                   ) -> Tuple[Dict[str, torch.Tensor], float, bool]:
    """One step of the run: a supervised update on `supervised` (when given, with
    optimizers["supervised_optimizer"]), a self-supervised update on the log clips `video`
    (uint8 [B, T, S, S, 3] on the device, optimizers["bootstrap_optimizer"]), each at its
    own point of the learning-rate schedule, then the EMA teacher update (when `ema`).
    `trained` is the student (or its DDP wrapper); `labels`: a fixed teacher's `LabelCache`,
    with the batch's `clip_indices`. Returns (loss parts, the self-supervised gradient norm,
    whether both updates stepped)."""
    student = _unwrap(trained)
    causal = student.config.causal
    device = video.device
    parts: Dict[str, torch.Tensor] = {}
    stepped = True
    if supervised is not None:
        set_learning_rate(optimizers["supervised_optimizer"], cosine_learning_rate(
            step, config.ssl_supervised_lr, config.warmup, config.steps))
        loss, supervised_parts = supervised_loss(trained, supervised, device, config.loss, config.amp,
                                                 causal)
        _, stepped = optimizer_step(trained, optimizers["supervised_optimizer"], scaler, loss,
                                    config.grad_clip)
        parts["supervised_loss"] = supervised_parts["loss"]
    set_learning_rate(optimizers["bootstrap_optimizer"],
                      cosine_learning_rate(step, config.lr, config.warmup, config.steps))
    numpy_rng, torch_rng = step_generators(config.seed, step, rank)
    batch_labels = None
    if labels is not None:
        batch_labels = labels.batch(clip_indices, video, torch_rng, config.num_points)
    loss, ssl_parts = bootstrap_loss(trained, teacher, video, config, numpy_rng, torch_rng, causal,
                                     teacher_causal, batch_labels)
    parts.update(ssl_parts)
    grad_norm, ssl_stepped = optimizer_step(trained, optimizers["bootstrap_optimizer"], scaler, loss,
                                            config.grad_clip)
    if ema:
        from .pseudo_labels import ema_update

        ema_update(teacher, student, config.ema_decay)
    return parts, grad_norm, stepped and ssl_stepped
