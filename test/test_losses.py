"""The supervised TAPIR loss on hand-computed cases."""

import math

import pytest
import torch

from bootstap_ros.model import Trajectories
from bootstap_ros_training.losses import LossConfig, LossMasks, huber_distance, stage_loss, tapir_loss

LN2 = math.log(2.0)


def test_huber_is_quadratic_below_delta_and_linear_above():
    target = torch.zeros(3, 2)
    pred = torch.tensor([[3.0, 0.0], [3.0, 4.0], [0.0, 4.0]])  # distances 3, 5, 4
    loss = huber_distance(pred, target, delta=4.0)
    assert loss.tolist() == pytest.approx([4.5, 4.0 * (5 - 2), 4.0 * (4 - 2)])


def _one_point(errors_xy, occluded, occ_logits, expd_logits):
    """A batch of one point over len(errors_xy) frames, target at (100, 100)."""
    target = torch.full((1, 1, len(errors_xy), 2), 100.0)
    tracks = target + torch.tensor(errors_xy, dtype=torch.float32)[None, None]
    return (tracks, torch.tensor([[occ_logits]], dtype=torch.float32),
            torch.tensor([[expd_logits]], dtype=torch.float32), target,
            torch.tensor([[occluded]]))


def test_stage_loss_terms_by_hand():
    # Frame 0 visible, 5 px off; frame 1 occluded, 100 px off; frame 2 visible, 8 px off.
    tracks, occ, expd, target, occluded = _one_point(
        [[3.0, 4.0], [100.0, 0.0], [0.0, 8.0]], [False, True, False], [0.0, 2.0, -1.0], [0.0, 0.0, 3.0])
    position, occlusion, uncertainty = stage_loss(tracks, occ, expd, target, occluded)
    # Huber: 4 * (5 - 2) = 12 and 4 * (8 - 2) = 24 on the visible frames, mean over all 3 frames.
    assert position.item() == pytest.approx((12 + 24) / 3)
    # BCE(logit, target) = softplus(logit) - logit * target, every frame.
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    assert occlusion.item() == pytest.approx((LN2 + (softplus(2.0) - 2.0) + softplus(-1.0)) / 3)
    # Uncertainty targets: 5 px <= 6 -> 0, 8 px > 6 -> 1; the occluded frame does not count.
    assert uncertainty.item() == pytest.approx((LN2 + (softplus(3.0) - 3.0)) / 3)


def test_tapir_loss_weights_sums_stages_and_measures_in_a_256_raster():
    # A 128 x 64 (h x w) raster: an error of (1, 1) px is (4, 2) px at 256 x 256.
    target = torch.tensor([[[[10.0, 10.0]]]])
    tracks = target + torch.tensor([1.0, 1.0])
    logit = torch.zeros(1, 1, 1)
    occluded = torch.zeros(1, 1, 1, dtype=torch.bool)
    distance = math.hypot(4.0, 2.0)  # 4.47 > 4: linear part; < 6: uncertainty target 0
    per_stage = 0.05 * 4.0 * (distance - 2.0) + LN2 + LN2
    outputs = Trajectories(tracks, logit, logit, unrefined=((tracks, logit, logit),) * 2)
    total, parts = tapir_loss(outputs, target, occluded, image_size=(128, 64))
    assert total.item() == pytest.approx(3 * per_stage, rel=1e-6)
    assert parts["position"].item() == pytest.approx(4.0 * (distance - 2.0), rel=1e-6)
    assert parts["loss"].item() == pytest.approx(total.item())


def test_uncertainty_target_uses_the_prediction_without_gradient():
    tracks, occ, expd, target, occluded = _one_point([[7.0, 0.0]], [False], [0.0], [0.0])
    tracks.requires_grad_(True)
    expd.requires_grad_(True)
    config = LossConfig(position_weight=0.0, occlusion_weight=0.0)
    total, _ = tapir_loss(Trajectories(tracks, occ, expd), target, occluded, (256, 256), config)
    total.backward()
    assert tracks.grad is not None and torch.count_nonzero(tracks.grad) == 0
    # 7 px > 6 px: the target is "far", so the gradient pushes the logit up.
    assert expd.grad.item() == pytest.approx(0.5 - 1.0)


def test_mask_removes_entries_but_keeps_the_denominator():
    tracks, occ, expd, target, occluded = _one_point(
        [[3.0, 0.0], [3.0, 0.0]], [False, False], [0.0, 0.0], [0.0, 0.0])
    mask = torch.tensor([[[1.0, 0.0]]])
    position, occlusion, uncertainty = stage_loss(tracks, occ, expd, target, occluded, mask=mask)
    assert position.item() == pytest.approx(4.5 / 2)
    assert occlusion.item() == pytest.approx(LN2 / 2)
    assert uncertainty.item() == pytest.approx(LN2 / 2)


def test_per_term_masks_replace_the_common_mask_for_their_term_only():
    # Frame 0 visible, 5 px off; frame 1 visible, 8 px off; frame 2 occluded, far off.
    tracks, occ, expd, target, occluded = _one_point(
        [[3.0, 4.0], [0.0, 8.0], [50.0, 0.0]], [False, False, True], [1.0, -2.0, 0.5], [2.0, 3.0, 0.0])
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    huber = [12.0, 24.0, 0.0]  # 4 * (d - 2) on visible frames; the occluded frame never counts
    occ_bce = [softplus(1.0), softplus(-2.0), softplus(0.5) - 0.5]  # targets 0, 0, 1
    unc_bce = [softplus(2.0), softplus(3.0) - 3.0, 0.0]  # targets 0 (5 <= 6), 1 (8 > 6), occluded
    common = torch.tensor([[[1.0, 0.0, 1.0]]])
    position_only = torch.tensor([[[0.0, 1.0, 1.0]]])
    occlusion_only = torch.tensor([[[0.0, 0.0, 1.0]]])
    position, occlusion, uncertainty = stage_loss(
        tracks, occ, expd, target, occluded, mask=common, position_mask=position_only,
        occlusion_mask=occlusion_only)
    assert position.item() == pytest.approx(huber[1] / 3)  # its own mask: frame 1 only
    assert occlusion.item() == pytest.approx(occ_bce[2] / 3)  # its own mask: frame 2 only
    assert uncertainty.item() == pytest.approx(unc_bce[0] / 3)  # the common mask: frames 0 and 2

    # The same through tapir_loss with LossMasks (bool masks work too), one stage.
    masks = LossMasks(all=common.bool(), position=position_only.bool(), occlusion=occlusion_only.bool())
    config = LossConfig()
    total, parts = tapir_loss(Trajectories(tracks, occ, expd), target, occluded, (256, 256), config,
                              masks=masks)
    assert parts["position"].item() == pytest.approx(huber[1] / 3)
    assert parts["occlusion"].item() == pytest.approx(occ_bce[2] / 3)
    assert parts["uncertainty"].item() == pytest.approx(unc_bce[0] / 3)
    assert total.item() == pytest.approx(0.05 * huber[1] / 3 + occ_bce[2] / 3 + unc_bce[0] / 3)
    with pytest.raises(ValueError, match="not both"):
        tapir_loss(Trajectories(tracks, occ, expd), target, occluded, (256, 256), mask=common,
                   masks=masks)


# ----------------------------------------------------------------------------- pseudo-labels

from bootstap_ros_training.losses import PseudoLabelTargets, pseudo_label_loss, soft_binary_divergence  # noqa: E402


def _targets(tracks, occ_logits, expd_logits, visible_threshold=0.5):
    from bootstap_ros_training.pseudo_labels import teacher_targets

    return teacher_targets(Trajectories(tracks, occ_logits, expd_logits), visible_threshold)


def test_soft_binary_divergence_is_zero_with_a_zero_gradient_at_agreement_only():
    target = torch.tensor([0.02, 0.3, 0.5, 0.97])
    logits = torch.logit(target).requires_grad_()
    divergence = soft_binary_divergence(logits, target)
    divergence.sum().backward()
    assert divergence.abs().max().item() < 1e-6
    assert logits.grad.abs().max().item() < 1e-6
    # Elsewhere it is the KL divergence: p log(p/q) + (1-p) log((1-p)/(1-q)), by hand.
    p, q = 0.3, 0.8
    by_hand = p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    assert soft_binary_divergence(torch.logit(torch.tensor([q])), torch.tensor([p])).item() == pytest.approx(by_hand, rel=1e-5)


def test_the_self_supervised_loss_is_zero_when_every_stage_says_what_the_teacher_says():
    torch.manual_seed(0)
    tracks = torch.rand(2, 5, 4, 2) * 60
    occ, expd = torch.randn(2, 5, 4) * 3, torch.randn(2, 5, 4) * 3
    targets = _targets(tracks, occ, expd)
    stages = [(tracks.clone().requires_grad_(), occ.clone().requires_grad_(), expd.clone().requires_grad_())
              for _ in range(3)]
    outputs = Trajectories(*stages[-1], tuple(stages[:-1]))
    loss, parts = pseudo_label_loss(outputs, [s[0] for s in stages], targets, tracks, (64, 64))
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    for stage in stages:
        for tensor in stage:
            assert tensor.grad.abs().max().item() < 1e-6


def test_an_uncertain_but_visible_teacher_does_not_teach_occlusion():
    # The teacher sees the point (occlusion logit -4) but doubts its position (uncertainty
    # logit +2): the official rule calls it not visible, yet the occlusion target stays
    # the occlusion logit's 0.018, not "occluded".
    tracks = torch.full((1, 1, 1, 2), 30.0)
    targets = _targets(tracks, torch.tensor([[[-4.0]]]), torch.tensor([[[2.0]]]))
    assert not targets.position_mask.any()
    assert targets.occluded_prob.item() == pytest.approx(torch.sigmoid(torch.tensor(-4.0)).item())
    student_occ = torch.tensor([[[-4.0]]], requires_grad=True)
    outputs = Trajectories(tracks, student_occ, torch.tensor([[[2.0]]]))
    loss, parts = pseudo_label_loss(outputs, [tracks], targets, tracks, (64, 64))
    loss.backward()
    assert parts["occlusion"].item() == pytest.approx(0.0, abs=1e-6)
    assert student_occ.grad.abs().item() < 1e-6


def test_the_uncertainty_target_measures_the_error_in_the_students_raster():
    # A student view at half scale: 8 px off in the teacher's raster is 4 px in the
    # student's, under the 6 px threshold, so the target is the teacher's own doubt
    # (sigmoid(-3)); 16 px (8 in the student's raster) is past it: target 1.
    size = (256, 256)
    teacher = torch.tensor([[[[100.0, 100.0], [100.0, 100.0]]]])  # [1, 1, 2, 2]
    teacher_expd = torch.full((1, 1, 2), -3.0)
    targets = _targets(teacher, torch.full((1, 1, 2), -6.0), teacher_expd)
    back = teacher + torch.tensor([[8.0, 0.0], [16.0, 0.0]])
    in_student = teacher * 0.5 + 10
    own = back * 0.5 + 10
    logits = torch.zeros(1, 1, 2)
    outputs = Trajectories(back, torch.full((1, 1, 2), -6.0), logits)
    config = LossConfig(position_weight=0.0, occlusion_weight=0.0, uncertainty_weight=1.0)
    _, parts = pseudo_label_loss(outputs, [own], targets, in_student, size, config)
    doubt = torch.sigmoid(torch.tensor(-3.0)).item()
    expected = [float(soft_binary_divergence(torch.zeros(1), torch.tensor([p]))) for p in (doubt, 1.0)]
    assert parts["uncertainty"].item() == pytest.approx(sum(expected) / 2, rel=1e-5)
