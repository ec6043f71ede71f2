"""The supervised TAPIR loss.

For each refinement stage (the cost-volume estimate, every intermediate
refinement iteration and the final one) three terms are summed, in the form of
the official tapnet code (`tapnet/utils/model_utils.py: tapnet_loss`):

* position: Huber loss with delta 4 px on the Euclidean distance d between the
  predicted and the true position, measured in a 256x256 raster whatever the
  clip's size, ``d^2 / 2`` for d < 4 and ``4 (d - 2)`` above, zero on frames
  where the point is occluded; weight 0.05.
* occlusion: binary cross-entropy of the occlusion logit against the true
  occlusion flag, on every frame; weight 1.
* uncertainty: binary cross-entropy of the expected-distance logit against the
  target "the prediction is more than 6 px (at 256x256) from the truth", zero
  on occluded frames; weight 1. The target is computed from the predicted
  position with the gradient stopped: this term teaches the model to judge its
  own error, it does not move the prediction.

Every term is a mean over all B x N x T entries (occluded entries contribute
zero to the two masked terms but still count in the denominator), as in the
official code. An optional `mask` [B, N, T] multiplies all three terms first;
`position_mask`, `occlusion_mask` and `uncertainty_mask` replace it for one term
each (as the official code's separate occlusion-loss mask), so that pseudo-labels
can drop, say, the position of an unreliable track while keeping its occlusion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from bootstap_ros.model.tapir import Trajectories

# The official loss measures positions in a 256x256 raster.
LOSS_RASTER = 256.0


@dataclass(frozen=True)
class LossConfig:
    """Weights and thresholds of the TAPIR loss (the official values)."""

    position_weight: float = 0.05
    occlusion_weight: float = 1.0
    uncertainty_weight: float = 1.0
    huber_delta: float = 4.0
    expected_dist_threshold: float = 6.0


def huber_distance(pred: torch.Tensor, target: torch.Tensor, delta: float) -> torch.Tensor:
    """Huber of the Euclidean distance, per entry: [..., 2] x 2 -> [...]."""
    squared = torch.sum(torch.square(pred - target), dim=-1)
    distance = torch.sqrt(squared + 1e-12)  # eps keeps the gradient finite at zero error
    return torch.where(distance < delta, squared / 2, delta * (distance - delta / 2))


@dataclass(frozen=True)
class LossMasks:
    """Per-entry weights [B, N, T] (bool or float, broadcastable) for each loss term.

    `all` multiplies every term; a term's own mask, when given, replaces `all` for
    that term. None everywhere: every entry counts (the supervised case).
    """

    all: Optional[torch.Tensor] = None
    position: Optional[torch.Tensor] = None
    occlusion: Optional[torch.Tensor] = None
    uncertainty: Optional[torch.Tensor] = None

    def of(self, term: str):
        """The weight of `term` ("position", "occlusion" or "uncertainty"): a tensor or 1.0."""
        mask = getattr(self, term)
        if mask is None:
            mask = self.all
        return 1.0 if mask is None else mask.float()


def stage_loss(tracks: torch.Tensor, occlusion_logits: torch.Tensor, expected_dist_logits: torch.Tensor,
               target_tracks: torch.Tensor, occluded: torch.Tensor, config: LossConfig = LossConfig(),
               mask: Optional[torch.Tensor] = None, *, position_mask: Optional[torch.Tensor] = None,
               occlusion_mask: Optional[torch.Tensor] = None,
               uncertainty_mask: Optional[torch.Tensor] = None,
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three unweighted terms for one stage's outputs, each a scalar.

    tracks, target_tracks: [B, N, T, 2] (x, y) already in the 256x256 loss raster;
    occlusion_logits, expected_dist_logits, occluded (bool or 0/1): [B, N, T];
    mask: weights of all three terms; position_mask / occlusion_mask / uncertainty_mask
    replace it for one term (all [B, N, T], bool or float). The position and
    uncertainty terms also stay zero where `occluded`.
    """
    masks = LossMasks(mask, position_mask, occlusion_mask, uncertainty_mask)
    tracks = tracks.float()
    occluded = occluded.float()
    visible = 1.0 - occluded

    position = huber_distance(tracks, target_tracks, config.huber_delta) * visible * masks.of("position")
    occlusion = F.binary_cross_entropy_with_logits(
        occlusion_logits.float(), occluded, reduction="none") * masks.of("occlusion")
    squared_error = torch.sum(torch.square(tracks.detach() - target_tracks), dim=-1)
    far = (squared_error > config.expected_dist_threshold ** 2).float()
    uncertainty = F.binary_cross_entropy_with_logits(
        expected_dist_logits.float(), far, reduction="none") * visible * masks.of("uncertainty")
    return position.mean(), occlusion.mean(), uncertainty.mean()


def tapir_loss(outputs: Trajectories, target_tracks: torch.Tensor, occluded: torch.Tensor,
               image_size: Sequence[int], config: LossConfig = LossConfig(),
               mask: Optional[torch.Tensor] = None, masks: Optional[LossMasks] = None,
               ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The total loss over the final and every unrefined stage, and its parts.

    outputs: the model's Trajectories, positions in the clip's raster;
    target_tracks [B, N, T, 2] (x, y) in the same raster; occluded [B, N, T];
    image_size: (height, width) of that raster; mask: weights of every term;
    masks: per-term weights (`LossMasks`; give `mask` or `masks`, not both).
    Returns (total, parts): parts holds the weighted total and the unweighted
    position / occlusion / uncertainty terms of the final stage (detached), for logs.
    """
    if masks is None:
        masks = LossMasks(mask)
    elif mask is not None:
        raise ValueError("give tapir_loss either mask (all terms) or masks (per term), not both")
    height, width = image_size
    to_loss_raster = torch.tensor([LOSS_RASTER / width, LOSS_RASTER / height],
                                  device=target_tracks.device)
    target = target_tracks.float() * to_loss_raster
    stages = [*outputs.unrefined, (outputs.tracks, outputs.occlusion, outputs.expected_dist)]
    total = torch.zeros((), device=target.device)
    for tracks, occlusion_logits, expected_dist_logits in stages:
        position, occlusion, uncertainty = stage_loss(
            tracks.float() * to_loss_raster, occlusion_logits, expected_dist_logits, target, occluded,
            config, masks.all, position_mask=masks.position, occlusion_mask=masks.occlusion,
            uncertainty_mask=masks.uncertainty)
        total = total + (config.position_weight * position + config.occlusion_weight * occlusion
                         + config.uncertainty_weight * uncertainty)
    parts = {"loss": total.detach(), "position": position.detach(), "occlusion": occlusion.detach(),
             "uncertainty": uncertainty.detach()}
    return total, parts


# ----------------------------------------------------------------------------- pseudo-labels

def soft_binary_divergence(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-entry KL divergence of Bernoulli(target) from Bernoulli(sigmoid(logits)):
    BCE(logits, target) minus the target's own entropy. Zero where sigmoid(logits) equals
    the target, and its gradient, sigmoid(logits) - target, is zero there too."""
    target = target.float()
    bce = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    entropy = -(torch.xlogy(target, target) + torch.xlogy(1 - target, 1 - target))
    return bce - entropy


@dataclass(frozen=True)
class PseudoLabelTargets:
    """A teacher's pseudo-labels as the self-supervised loss takes them, all [B, N, T] but
    the tracks: the positions to learn where the teacher sees the point (`position_mask`),
    its probability that the point is occluded (from its occlusion logit alone) and that its
    own position is more than the uncertainty threshold off (from its uncertainty logit)."""

    tracks: torch.Tensor  # [B, N, T, 2] (x, y) in the teacher's raster
    position_mask: torch.Tensor  # bool: the teacher calls the point visible there
    occluded_prob: torch.Tensor
    far_prob: torch.Tensor


def pseudo_label_loss(outputs: Trajectories, student_tracks: Sequence[torch.Tensor], targets: PseudoLabelTargets,
                      target_in_student: torch.Tensor, image_size: Sequence[int],
                      config: LossConfig = LossConfig(), keep: Optional[torch.Tensor] = None,
                      ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The self-supervised loss of a student against a teacher's pseudo-labels, over the
    final and every unrefined stage; zero, with a zero gradient, where the student says
    what the teacher says.

    outputs: the student's Trajectories mapped back to the teacher's raster (positions
    compared with the teacher's there, as the paper maps them); student_tracks: the same
    stages' positions in the student's own raster, oldest first, final last;
    target_in_student: the teacher's tracks mapped into the student's raster [B, N, T, 2];
    keep: bool [B, N, T], the entries the masks keep (cycle consistency, proximity).

    * position: Huber of the distance to the teacher's track (256 raster), where
      `targets.position_mask`;
    * occlusion: KL divergence from the teacher's occlusion probability (its occlusion
      logit alone: uncertainty is the next term's, not a reason to call a point occluded);
    * uncertainty: KL divergence from the probability that the student is more than the
      threshold off: 1 where it is that far from the teacher's track, else the teacher's
      own probability of being that far off. The distance is measured in the student's
      raster (scaled to 256), where the student judges its error at inference, so a shrunk
      view does not tighten the threshold. Where `targets.position_mask`.
    """
    height, width = image_size
    to_loss_raster = torch.tensor([LOSS_RASTER / width, LOSS_RASTER / height],
                                  device=targets.tracks.device)
    target = targets.tracks.float() * to_loss_raster
    target_student = target_in_student.float() * to_loss_raster
    weight = torch.ones_like(targets.occluded_prob) if keep is None else keep.float()
    visible = targets.position_mask.float() * weight
    stages = [*outputs.unrefined, (outputs.tracks, outputs.occlusion, outputs.expected_dist)]
    if len(student_tracks) != len(stages):
        raise ValueError(f"pseudo_label_loss: {len(student_tracks)} student-raster stages for "
                         f"{len(stages)} output stages")
    total = torch.zeros((), device=target.device)
    threshold2 = config.expected_dist_threshold ** 2
    for (tracks, occlusion_logits, expected_dist_logits), own in zip(stages, student_tracks):
        position = (huber_distance(tracks.float() * to_loss_raster, target, config.huber_delta)
                    * visible).mean()
        occlusion = (soft_binary_divergence(occlusion_logits, targets.occluded_prob) * weight).mean()
        with torch.no_grad():
            squared = torch.sum(torch.square(own.detach().float() * to_loss_raster - target_student), -1)
            far = torch.where(squared > threshold2, torch.ones_like(squared), targets.far_prob.float())
        uncertainty = (soft_binary_divergence(expected_dist_logits, far) * visible).mean()
        total = total + (config.position_weight * position + config.occlusion_weight * occlusion
                         + config.uncertainty_weight * uncertainty)
    parts = {"loss": total.detach(), "position": position.detach(), "occlusion": occlusion.detach(),
             "uncertainty": uncertainty.detach()}
    return total, parts
