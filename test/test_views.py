"""The student's view: affine maps, their inverse, rendering and JPEG."""

import numpy as np
import pytest
import torch

from bootstap_ros_training.views import (ViewConfig, apply_affine, invert_affine, map_queries, map_tracks,
                                         render_student_clip, sample_affine, student_batch)

NO_JPEG = ViewConfig(jpeg=False)


def _blob_frame(centre_xy, size=128, sigma=4.0):
    """uint8 RGB frame, a bright Gaussian blob at `centre_xy` in TAPIR's raster (centres at +0.5)."""
    y, x = np.mgrid[0:size, 0:size] + 0.5
    weight = np.exp(-((x - centre_xy[0]) ** 2 + (y - centre_xy[1]) ** 2) / (2 * sigma**2))
    return np.repeat((weight * 250).round().astype(np.uint8)[..., None], 3, -1)


def _centroid(frame, floor=0):
    """Intensity-weighted centre (x, y) in TAPIR's raster, of the intensity above `floor`."""
    weight = np.clip(frame[..., 1].astype(np.float64) - floor, 0, None)
    y, x = np.mgrid[0:frame.shape[0], 0:frame.shape[1]] + 0.5
    return np.array([(weight * x).sum(), (weight * y).sum()]) / weight.sum()


def _affine(scale, ox, oy, frames=1):
    return np.tile(np.array([[scale, 0.0, ox], [0.0, scale, oy]]), (frames, 1, 1))


def test_sampled_offsets_move_linearly_and_keep_the_frame_inside_the_canvas():
    rng = np.random.default_rng(0)
    config = ViewConfig(min_scale=0.4, max_scale=0.8)
    for _ in range(200):
        size, frames = int(rng.integers(32, 300)), int(rng.integers(1, 30))
        affine = sample_affine(rng, frames, size, config)
        assert affine.shape == (frames, 2, 3)
        scale = affine[0, 0, 0]
        assert config.min_scale <= scale <= config.max_scale
        # Isotropic, no shear, one scale for the whole clip.
        np.testing.assert_array_equal(affine[:, 0, 0], scale)
        np.testing.assert_array_equal(affine[:, 1, 1], scale)
        np.testing.assert_array_equal(affine[:, 0, 1], 0)
        np.testing.assert_array_equal(affine[:, 1, 0], 0)
        offsets = affine[:, :, 2]
        if frames > 1:  # o(t) = o0 + (o1 - o0) t / (T - 1)
            expected = offsets[0] + (offsets[-1] - offsets[0]) * (np.arange(frames) / (frames - 1))[:, None]
            np.testing.assert_allclose(offsets, expected, atol=1e-9)
        # The whole scaled frame [o, o + s * size] lies inside [0, size].
        assert offsets.min() >= 0 and (offsets + scale * size).max() <= size + 1e-9
    # Offsets actually move (not a constant paste).
    moving = sample_affine(np.random.default_rng(1), 24, 256, config)
    assert np.abs(moving[-1, :, 2] - moving[0, :, 2]).max() > 1.0


def test_no_affine_gives_identity_maps_and_unchanged_frames():
    rng = np.random.default_rng(0)
    config = ViewConfig(affine=False, jpeg=False)
    affine = sample_affine(rng, 5, 64, config)
    np.testing.assert_array_equal(affine, np.tile(np.eye(2, 3), (5, 1, 1)))
    frames = rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(render_student_clip(frames, affine, config, rng), frames)


def test_affine_round_trip_is_exact_numpy_and_torch():
    rng = np.random.default_rng(3)
    affine = sample_affine(rng, 7, 256, ViewConfig())
    xy = rng.uniform(-20, 280, (4, 9, 7, 2))
    there = apply_affine(xy, affine)
    back = apply_affine(there, invert_affine(affine))
    np.testing.assert_allclose(back, xy, atol=1e-9)
    # A hand-computed point: s = 0.5, offset (10, 20) -> (0.5 x + 10, 0.5 y + 20).
    np.testing.assert_allclose(apply_affine(np.array([[30.0, 8.0]]), _affine(0.5, 10, 20)), [[25.0, 24.0]])
    # The same maths in torch, with a general (sheared) map too.
    general = torch.tensor([[[1.3, 0.2, -4.0], [-0.1, 0.7, 9.0]]], dtype=torch.float64)
    points = torch.tensor(xy[0, :, :1], dtype=torch.float64)
    np.testing.assert_allclose(apply_affine(apply_affine(points, general), invert_affine(general)),
                               points, atol=1e-9)
    np.testing.assert_allclose(invert_affine(general).numpy(), invert_affine(general.numpy()), atol=1e-12)
    # Composition with the inverse is the identity matrix.
    inverse = invert_affine(affine)
    composed = inverse[:, :, :2] @ affine[:, :, :2]
    np.testing.assert_allclose(composed, np.tile(np.eye(2), (7, 1, 1)), atol=1e-12)


def test_track_and_query_helpers_use_each_frames_map():
    rng = np.random.default_rng(4)
    affines = torch.tensor(np.stack([sample_affine(rng, 5, 64, ViewConfig()) for _ in range(2)]))
    tracks = torch.tensor(rng.uniform(0, 64, (2, 3, 5, 2)))
    mapped = map_tracks(tracks, affines)
    for b in range(2):
        for n in range(3):
            np.testing.assert_allclose(mapped[b, n], apply_affine(tracks[b, n].numpy(), affines[b].numpy()))
    queries = torch.tensor([[[2.0, 10.0, 20.0], [4.0, 30.0, 5.0]], [[0.0, 1.0, 2.0], [3.0, 60.0, 50.0]]],
                           dtype=torch.float64)
    out = map_queries(queries, affines)
    for b in range(2):
        for n in range(2):
            t = int(queries[b, n, 0])
            x, y = apply_affine(queries[b, n, [2, 1]].numpy()[None], affines[b, t].numpy()[None])[0]
            np.testing.assert_allclose(out[b, n].numpy(), [t, y, x])


def test_downscaled_frame_is_the_exact_2x2_average_where_the_map_says():
    # s = 1/2 with an integer offset: every student pixel centre maps to the corner
    # shared by four teacher pixels, so bilinear sampling is their exact mean. A
    # half-pixel error in the OpenCV convention would instead pick single pixels.
    rng = np.random.default_rng(5)
    frame = rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    ox, oy = 7, 12
    student = render_student_clip(frame, _affine(0.5, ox, oy), NO_JPEG)[0].astype(np.float64)
    blocks = frame[0].reshape(32, 2, 32, 2, 3).astype(np.float64).mean(axis=(1, 3))
    np.testing.assert_allclose(student[oy:oy + 32, ox:ox + 32], blocks, atol=1.0)
    # Black outside the pasted frame.
    inside = np.zeros((64, 64), bool)
    inside[oy:oy + 32, ox:ox + 32] = True
    assert student[~inside].max() == 0


def test_rendered_blob_lands_where_apply_affine_says():
    rng = np.random.default_rng(6)
    for scale, ox, oy in [(0.5, 3.3, 40.7), (0.77, 11.25, 0.5), (0.9, 5.9, 6.1)]:
        centre = np.array([40.3, 71.6])
        frame = _blob_frame(centre)[None]
        student = render_student_clip(frame, _affine(scale, ox, oy), NO_JPEG, rng)[0]
        expected = apply_affine(centre[None], _affine(scale, ox, oy)[0:1])[0]
        # A quarter pixel is the error a wrong half-pixel convention would make at s = 0.5.
        np.testing.assert_allclose(_centroid(student), expected, atol=0.1)
        # And the inverse brings the rendered centre back onto the teacher's.
        back = apply_affine(_centroid(student)[None], invert_affine(_affine(scale, ox, oy))[0:1])[0]
        np.testing.assert_allclose(back, centre, atol=0.1 / scale)


def test_sampled_clip_renders_every_frame_on_its_own_map():
    rng = np.random.default_rng(7)
    centre = np.array([64.0, 50.0])
    frames = np.repeat(_blob_frame(centre)[None], 6, 0)
    affine = sample_affine(rng, 6, 128, ViewConfig(min_scale=0.5, max_scale=0.7))
    student = render_student_clip(frames, affine, NO_JPEG)
    for t in range(6):
        expected = apply_affine(centre[None], affine[t:t + 1])[0]
        np.testing.assert_allclose(_centroid(student[t]), expected, atol=0.1)


def test_jpeg_changes_pixels_but_not_geometry():
    rng = np.random.default_rng(8)
    centre = np.array([50.4, 60.8])
    frames = np.repeat(_blob_frame(centre, sigma=5.0)[None], 4, 0)
    config = ViewConfig(jpeg=True, jpeg_quality=(10, 30))
    identity = np.tile(np.eye(2, 3), (4, 1, 1))
    out = render_student_clip(frames, identity, config, rng)
    assert out.shape == frames.shape and out.dtype == np.uint8
    for t in range(4):
        difference = np.abs(out[t].astype(int) - frames[t].astype(int))
        assert difference.max() >= 5 and (difference > 0).mean() > 0.05  # pixels changed
        # JPEG may lift the whole black level by a step or two (its DC quantisation):
        # the floor keeps that flat offset out of the centre.
        np.testing.assert_allclose(_centroid(out[t], floor=10), centre, atol=0.3)
    # With the affine map too, the blob still lands where the map says.
    affine = _affine(0.6, 20.2, 9.7, 4)
    out = render_student_clip(frames, affine, config, rng)
    assert not np.array_equal(out, render_student_clip(frames, affine, NO_JPEG))
    for t in range(4):
        np.testing.assert_allclose(_centroid(out[t], floor=10), apply_affine(centre[None], affine[t:t + 1])[0],
                                   atol=0.3)


def test_student_batch_shapes_and_consistency():
    rng = np.random.default_rng(9)
    videos = torch.from_numpy(rng.integers(0, 256, (2, 3, 32, 32, 3), dtype=np.uint8))
    student, affines = student_batch(videos, NO_JPEG, np.random.default_rng(10))
    assert student.shape == videos.shape and student.dtype == torch.uint8
    assert affines.shape == (2, 3, 2, 3) and affines.dtype == torch.float32
    # Same seed, same view; and each clip's frames match a direct render with its map.
    again, affines_again = student_batch(videos, NO_JPEG, np.random.default_rng(10))
    assert torch.equal(again, student) and torch.equal(affines, affines_again)
    for b in range(2):
        direct = render_student_clip(videos[b].numpy(), affines[b].double().numpy(), NO_JPEG)
        assert np.abs(direct.astype(int) - student[b].numpy().astype(int)).max() <= 1


def test_bad_inputs_are_refused_with_clear_errors():
    with pytest.raises(ValueError, match="min_scale"):
        ViewConfig(min_scale=0.9, max_scale=0.5)
    with pytest.raises(ValueError, match="jpeg_quality"):
        ViewConfig(jpeg_quality=(0, 50))
    with pytest.raises(ValueError, match="uint8"):
        render_student_clip(np.zeros((2, 8, 8, 3), np.float32), np.tile(np.eye(2, 3), (2, 1, 1)), NO_JPEG)
    with pytest.raises(ValueError, match="one \\[2, 3\\] map per frame"):
        render_student_clip(np.zeros((2, 8, 8, 3), np.uint8), np.tile(np.eye(2, 3), (3, 1, 1)), NO_JPEG)
    with pytest.raises(ValueError, match="singular"):
        invert_affine(np.zeros((1, 2, 3)))
