"""Queries, pseudo-labels, masks, the EMA teacher and capacity expansion of bootstrapping."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bootstap_ros.model import Trajectories, preprocess_frames
from bootstap_ros.model.layers import l2_normalize
from helpers.small_model import SMALL, moving_clip, small_model
from bootstap_ros_training.capacity import expand_capacity
from bootstap_ros_training.pseudo_labels import (cycle_consistency_mask, ema_update, make_ema_teacher, proximity_mask,
                                                 pseudo_labels, resample_student_queries, sample_teacher_queries)


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- teacher queries

def test_teacher_queries_cover_frames_and_pixels():
    queries = sample_teacher_queries(_generator(), 4, 500, 6, (48, 80))
    assert queries.shape == (4, 500, 3) and queries.dtype == torch.float32
    t, y, x = queries.unbind(-1)
    assert torch.equal(t, t.round()) and t.min() == 0 and t.max() == 5
    assert y.min() >= 0 and y.max() < 48 and x.min() >= 0 and x.max() < 80
    # Uniform: each frame gets ~1/6 of the queries, positions fill the frame.
    counts = torch.bincount(t.long().flatten(), minlength=6).float() / t.numel()
    assert torch.allclose(counts, torch.full((6,), 1 / 6), atol=0.03)
    assert abs(y.mean().item() - 24) < 2 and abs(x.mean().item() - 40) < 3
    assert torch.equal(queries, sample_teacher_queries(_generator(), 4, 500, 6, (48, 80)))


# ---------------------------------------------------------------- student queries

def _random_trajectories(seed, b=4, n=1000, t=8, size=64):
    g = _generator(seed)
    tracks = torch.rand(b, n, t, 2, generator=g) * size
    visible = torch.rand(b, n, t, generator=g) < 0.6
    queries = torch.stack([torch.randint(0, t, (b, n), generator=g).float(),
                           torch.rand(b, n, generator=g) * size, torch.rand(b, n, generator=g) * size], -1)
    return queries, tracks, visible


def _classify(student, teacher, tracks, visible):
    """Per point: 'same' (the teacher's query), or the visible frame it was taken from; fails otherwise."""
    same = torch.all(student == teacher, -1)
    b, n, t = visible.shape
    frames = student[..., 0].long()
    on_track = torch.gather(tracks, 2, frames[..., None, None].expand(b, n, 1, 2))[:, :, 0]
    taken = torch.all(student[..., [2, 1]] == on_track, -1) & torch.gather(visible, 2, frames[..., None])[..., 0]
    assert torch.all(same | taken), "a student query is neither the teacher's nor on its visible trajectory"
    return same, frames


def test_student_queries_lie_on_the_visible_trajectory_or_equal_the_teacher_query():
    queries, tracks, visible = _random_trajectories(1)
    visible[0, :10] = False  # never visible: must keep the teacher's query
    student = resample_student_queries(_generator(2), queries, tracks, visible)
    assert student.shape == queries.shape
    same, _ = _classify(student, queries, tracks, visible)
    assert torch.all(same[0, :10])
    fraction = same.flatten()[10:].float().mean().item()
    assert abs(fraction - 0.5) < 0.03, fraction
    # The "same query" ablation: every student query is the teacher's.
    assert torch.equal(resample_student_queries(_generator(2), queries, tracks, visible, same_prob=1.0), queries)


def test_resampled_frames_are_uniform_among_visible_frames():
    b, n, t = 1, 6000, 5
    tracks = torch.rand(b, n, t, 2, generator=_generator(3)) * 32
    visible = torch.zeros(b, n, t, dtype=torch.bool)
    visible[..., [1, 3, 4]] = True
    queries = torch.tensor([0.0, 5.0, 5.0]).expand(b, n, 3)
    student = resample_student_queries(_generator(4), queries, tracks, visible, same_prob=0.0)
    same, frames = _classify(student, queries, tracks, visible)
    assert not same.any()
    counts = torch.bincount(frames.flatten(), minlength=t).float() / n
    assert torch.allclose(counts, torch.tensor([0, 1 / 3, 0, 1 / 3, 1 / 3]), atol=0.03)


def test_uniform_query_sampling_gives_the_teacher_query_no_extra_weight():
    # Trajectories through the teacher's query: the query frame is one visible
    # frame among k, so uniform sampling returns it ~1/k of the time (not 1/2).
    b, n, t = 1, 6000, 4
    tracks = torch.rand(b, n, t, 2, generator=_generator(5)) * 32
    visible = torch.ones(b, n, t, dtype=torch.bool)
    query_t = torch.randint(0, t, (b, n), generator=_generator(6))
    at_query = torch.gather(tracks, 2, query_t[..., None, None].expand(b, n, 1, 2))[:, :, 0]
    queries = torch.stack([query_t.float(), at_query[..., 1], at_query[..., 0]], -1)
    uniform = resample_student_queries(_generator(7), queries, tracks, visible, uniform=True)
    same, _ = _classify(uniform, queries, tracks, visible)
    assert abs(same.float().mean().item() - 1 / t) < 0.03
    default = resample_student_queries(_generator(7), queries, tracks, visible)
    same, _ = _classify(default, queries, tracks, visible)
    assert abs(same.float().mean().item() - (0.5 + 0.5 / t)) < 0.03


def test_positions_outside_the_frame_are_not_taken_as_student_queries():
    tracks = torch.tensor([[[[10.0, 10.0], [70.0, 10.0], [10.0, -1.0], [20.0, 30.0]]]])
    visible = torch.ones(1, 1, 4, dtype=torch.bool)
    queries = torch.tensor([[[0.0, 10.0, 10.0]]])
    picked = set()
    for seed in range(40):
        student = resample_student_queries(_generator(seed), queries, tracks, visible, same_prob=0.0, size=64)
        picked.add(int(student[0, 0, 0]))
    assert picked == {0, 3}


# ---------------------------------------------------------------- masks

def test_cycle_consistency_mask_hand_built_cases():
    # One query at frame 2, (x, y) = (50, 100); the student's track is far off on
    # other frames, which must not matter.
    def mask(x, y, seen=True, size=256, threshold=4.0):
        tracks = torch.full((1, 1, 4, 2), 999.0)
        tracks[0, 0, 2] = torch.tensor([x, y])
        visible = torch.ones(1, 1, 4, dtype=torch.bool)
        visible[0, 0, 2] = seen
        queries = torch.tensor([[[2.0, 100.0, 50.0]]])
        return bool(cycle_consistency_mask(tracks, visible, queries, size, threshold)[0, 0])

    assert mask(53.0, 100.0)                    # 3 px
    assert mask(52.0, 102.0)                    # 2.83 px
    assert not mask(54.1, 100.0)                # 4.1 px
    assert not mask(50.0, 100.0, seen=False)    # on the spot but called occluded
    assert mask(55.0, 100.0, threshold=6.0)
    # A 128-pixel clip: 1.9 px there is 3.8 px in the 256 raster, 2.1 px is 4.2 px.
    assert mask(51.9, 100.0, size=128)
    assert not mask(52.1, 100.0, size=128)
    # Non-square (height 128, width 64): x errors count 4x, y errors 2x.
    assert mask(50.0, 101.9, size=(128, 64))
    assert not mask(51.1, 100.0, size=(128, 64))
    assert mask(50.9, 100.0, size=(128, 64))


def test_proximity_mask_hand_built_cases():
    t = 7
    teacher_t = torch.tensor([[1.0, 3.0, 6.0]])
    student_t = torch.tensor([[5.0, 3.0, 0.0]])
    mask = proximity_mask(teacher_t, student_t, t)
    assert mask.shape == (1, 3, t) and mask.dtype == torch.bool
    # Teacher 1, student 5: frames 4, 5, 6 are closer to 5; frame 3 is a tie (kept).
    assert mask[0, 0].tolist() == [True, True, True, True, False, False, False]
    assert mask[0, 1].all()  # same frame
    # Teacher 6, student 0: frames 0..2 closer to 0, frame 3 equal.
    assert mask[0, 2].tolist() == [False, False, False, True, True, True, True]
    # Against a direct loop over random cases.
    g = _generator(8)
    teacher_t = torch.randint(0, 11, (3, 50), generator=g).float()
    student_t = torch.randint(0, 11, (3, 50), generator=g).float()
    mask = proximity_mask(teacher_t, student_t, 11)
    for b in range(3):
        for n in range(50):
            for f in range(11):
                expected = not abs(f - student_t[b, n]) < abs(f - teacher_t[b, n])
                assert bool(mask[b, n, f]) == expected


# ---------------------------------------------------------------- pseudo-labels

def test_pseudo_labels_use_the_official_visibility_rule():
    tracks = torch.randn(1, 4, 1, 2, requires_grad=True)
    # (1 - sigmoid(occ)) * (1 - sigmoid(expd)) > 0.5:
    #   (-3, -3): 0.953^2 = 0.907 visible; (-0.5, 0): 0.622 * 0.5 = 0.311 occluded although
    #   occ alone says visible; (0, -10): 0.5 * 0.99995 < 0.5 occluded; (-1, -2): 0.731 * 0.881 = 0.644 visible.
    occ = torch.tensor([-3.0, -0.5, 0.0, -1.0]).reshape(1, 4, 1).requires_grad_()
    expd = torch.tensor([-3.0, 0.0, -10.0, -2.0]).reshape(1, 4, 1)
    labels, occluded = pseudo_labels(Trajectories(tracks * 2, occ * 1, expd))
    assert occluded.dtype == torch.bool and occluded[0, :, 0].tolist() == [False, True, True, False]
    assert not labels.requires_grad and torch.equal(labels, tracks.detach() * 2)


# ---------------------------------------------------------------- EMA teacher

class _Tiny(nn.Module):
    def __init__(self, weight, running, count):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(weight))
        self.register_buffer("running", torch.tensor(running))
        self.register_buffer("count", torch.tensor(count))


def test_ema_update_by_hand():
    teacher = _Tiny([1.0, 2.0], [10.0], 3)
    student = _Tiny([3.0, 6.0], [20.0], 7)
    ema_update(teacher, student, 0.9)
    # 0.9 * teacher + 0.1 * student; integer buffers are copied.
    assert torch.allclose(teacher.weight, torch.tensor([1.2, 2.4]))
    assert torch.allclose(teacher.running, torch.tensor([11.0]))
    assert int(teacher.count) == 7
    ema_update(teacher, student, 0.9)
    assert torch.allclose(teacher.weight, torch.tensor([0.9 * 1.2 + 0.3, 0.9 * 2.4 + 0.6]))
    assert torch.allclose(teacher.running, torch.tensor([0.9 * 11.0 + 2.0]))
    # The student is untouched and no graph was recorded.
    assert student.weight.tolist() == [3.0, 6.0] and teacher.weight.grad_fn is None
    with pytest.raises(ValueError, match="same architecture|share one architecture"):
        ema_update(teacher, _Tiny([1.0, 2.0, 3.0], [1.0], 1), 0.9)


def test_ema_teacher_of_a_model_that_tracked_on_the_cpu():
    student = small_model(seed=1)
    grids_video = preprocess_frames(torch.from_numpy(moving_clip(num_frames=3, height=64, width=64))[None])
    queries = torch.tensor([[[0.0, 20.0, 30.0], [0.0, 40.0, 10.0]]])
    with torch.no_grad():  # the online step: fills the CPU packed-weight cache where there is one
        grids = student.get_feature_grids(grids_video[:, :1])
        student.track_step(grids, student.get_query_features(grids, queries), student.initial_state(2))
    teacher = make_ema_teacher(student)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    student_state = student.state_dict()
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, student_state[name]) and value.data_ptr() != student_state[name].data_ptr()
    with torch.no_grad():
        assert torch.equal(teacher(grids_video, queries).tracks, student(grids_video, queries).tracks)
    # An EMA step moves the teacher towards a changed student, by (1 - decay).
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update(teacher, student, 0.75)
    for name, p in teacher.named_parameters():
        assert torch.allclose(p, before[name] + 0.25, atol=1e-6)


def test_ema_teacher_of_a_model_that_cannot_be_deep_copied():
    # An opaque oneDNN tensor in a module's __dict__ (where the CPU packed-weight
    # cache used to live) makes deepcopy fail; the teacher is then rebuilt from
    # the config and state_dict.
    student = small_model(seed=4)
    linear = student.torch_pips_mixer.linear
    linear.__dict__["_opaque"] = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 4)
    with pytest.raises((NotImplementedError, RuntimeError)):
        copy.deepcopy(student)
    teacher = make_ema_teacher(student)
    assert type(teacher) is type(student) and teacher.config == student.config
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    student_state = student.state_dict()
    assert all(torch.equal(v, student_state[k]) for k, v in teacher.state_dict().items())


# ---------------------------------------------------------------- capacity expansion

def _features_through_blocks(model, blocks, video):
    """Lowres features computed by hand: backbone, then each block's LayerNorm and residual."""
    images = video[0].permute(0, 3, 1, 2)
    lowres = model.resnet_torch(images)[1].permute(0, 2, 3, 1)
    for block in blocks:
        normed = F.layer_norm(lowres, lowres.shape[-1:], block.layer_norm.weight, block.layer_norm.bias,
                              block.layer_norm.eps)
        residual = F.conv2d(F.gelu(F.conv2d(normed.permute(0, 3, 1, 2), block.conv.weight, block.conv.bias,
                                            padding=1), approximate="tanh"),
                            block.conv_1.weight, block.conv_1.bias, padding=1)
        lowres = normed + residual.permute(0, 2, 3, 1)
    return l2_normalize(lowres, -1)[None]


def test_expand_capacity_adds_zero_initialised_trainable_blocks_without_touching_the_model():
    original = small_model(seed=2, extra_conv_blocks=0)
    state_before = copy.deepcopy(original.state_dict())
    expanded = expand_capacity(original, num_blocks=5)
    assert original.config.extra_conv_blocks == 0 and original.extra_convs is None
    assert all(torch.equal(v, state_before[k]) for k, v in original.state_dict().items())
    assert expanded.config.extra_conv_blocks == 5
    assert expanded.config.softmax_temperature == original.config.softmax_temperature
    keys = expanded.state_dict()
    for i in range(5):
        assert not keys[f"extra_convs.blocks.{i}.conv_1.weight"].any()
        assert not keys[f"extra_convs.blocks.{i}.conv_1.bias"].any()
        assert keys[f"extra_convs.blocks.{i}.conv.weight"].abs().sum() > 0
    for name, value in state_before.items():
        assert torch.equal(keys[name], value)

    video = preprocess_frames(torch.from_numpy(moving_clip(num_frames=4, height=64, width=64))[None])
    queries = torch.tensor([[[0.0, 20.0, 30.0], [1.0, 40.0, 12.0], [3.0, 50.0, 50.0]]])
    with torch.no_grad():
        grids = expanded.get_feature_grids(video)
        # The blocks compute exactly LayerNorm + a zero residual (second code path by hand).
        by_hand = _features_through_blocks(expanded, expanded.extra_convs.blocks, video)
        assert torch.allclose(grids.lowres, by_hand, atol=1e-6)
        # And the whole model equals the original fed those features: zero init
        # changes nothing but the (official) LayerNorm's removal of the channel mean.
        query_features = original.get_query_features(grids, queries)
        via_original, _ = original.estimate_trajectories(grids, query_features, None, queries)
        out, _ = expanded.estimate_trajectories(grids, expanded.get_query_features(grids, queries), None, queries)
        assert torch.allclose(out.tracks, via_original.tracks, atol=1e-5)
        assert torch.allclose(out.occlusion, via_original.occlusion, atol=1e-5)

    # Every new weight is trainable; the zero convs get gradient at once.
    expanded.train()
    loss = expanded(video, queries).tracks.square().mean()
    loss.backward()
    for block in expanded.extra_convs.blocks:
        assert block.conv_1.weight.requires_grad and block.conv_1.weight.grad.abs().sum() > 0


def test_expand_capacity_appends_after_existing_blocks():
    original = small_model(seed=3)  # SMALL has one extra block already
    assert SMALL.extra_conv_blocks == 1
    expanded = expand_capacity(original, num_blocks=2)
    assert expanded.config.extra_conv_blocks == 3
    old = original.state_dict()
    new = expanded.state_dict()
    assert all(torch.equal(new[k], v) for k, v in old.items())
    assert not new["extra_convs.blocks.1.conv_1.weight"].any() and not new["extra_convs.blocks.2.conv_1.bias"].any()
    assert new["extra_convs.blocks.0.conv_1.weight"].any()
    with pytest.raises(ValueError, match="same multiplier"):
        expand_capacity(original, num_blocks=1, multiplier=3)
    with pytest.raises(ValueError, match="at least one"):
        expand_capacity(original, num_blocks=0)


def test_capacity_command_writes_an_expanded_checkpoint_and_a_report(tmp_path, capsys):
    import json

    from bootstap_ros.model.checkpoint import load_checkpoint, save_checkpoint
    from bootstap_ros_training.capacity import main

    source = tmp_path / "small.pt"
    save_checkpoint(source, small_model(seed=5, extra_conv_blocks=0))
    output = tmp_path / "expanded.pt"
    main(["--checkpoint", str(source), "--output", str(output), "--blocks", "2", "--clips", "1", "--frames", "3"])
    loaded = load_checkpoint(output)
    assert loaded.config.extra_conv_blocks == 2 and loaded.extra["added_extra_conv_blocks"] == 2
    assert not loaded.model.state_dict()["extra_convs.blocks.1.conv_1.weight"].any()
    report = json.loads((tmp_path / "expanded.json").read_text())
    assert report["clips"] == 1 and 0 <= report["track_difference_px_median"] <= report["track_difference_px_max"]
    assert 0 <= report["visibility_agreement"] <= 1 and 0 <= report["expanded"]["average_jaccard"] <= 1
    assert "visibility agrees" in capsys.readouterr().out


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_parts_keep_tensors_on_the_models_device(device):
    from bootstap_ros_training.views import ViewConfig, invert_affine, map_queries, map_tracks, student_batch

    g = _generator(9)
    videos = torch.randint(0, 256, (2, 3, 32, 32, 3), generator=g, dtype=torch.uint8).to(device)
    student_video, affines = student_batch(videos, ViewConfig(), np.random.default_rng(0))
    assert student_video.device == videos.device and affines.device == videos.device
    teacher_queries = sample_teacher_queries(g, 2, 5, 3, 32, device=device)
    tracks = (torch.rand(2, 5, 3, 2, generator=g) * 32).to(device)
    visible = torch.ones(2, 5, 3, dtype=torch.bool, device=device)
    student_queries = resample_student_queries(g, teacher_queries, tracks, visible, size=32)
    assert student_queries.device == videos.device
    mapped = map_queries(student_queries, affines)
    back = map_tracks(map_tracks(tracks, affines), invert_affine(affines))
    assert mapped.device == videos.device and torch.allclose(back, tracks, atol=1e-4)
    cycle = cycle_consistency_mask(tracks, visible, teacher_queries, 32)
    proximity = proximity_mask(teacher_queries[..., 0], student_queries[..., 0], 3)
    assert cycle.device == proximity.device == videos.device
    student = small_model(seed=6).to(device)
    teacher = make_ema_teacher(student)
    assert next(teacher.parameters()).device == next(student.parameters()).device
    ema_update(teacher, student, 0.5)
