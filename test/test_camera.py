"""The training camera model (bootstap_ros_training.camera): exact lens tracks, photometry, seeds."""

import numpy as np
import pytest

from bootstap_ros_training.camera import CameraConfig, RadialLens, apply_camera, camera_rng
from bootstap_ros_training.data import SyntheticClips, clip_arrays
from bootstap_ros_training.domains.synthetic import SyntheticConfig

SMALL = SyntheticConfig(frames=6, height=64, width=96, num_points=32)
LENSES = [RadialLens("brown", 120, 160, k1=0.3, k2=0.08), RadialLens("brown", 120, 160, k1=-0.18, k2=-0.04),
          RadialLens("fisheye", 120, 160, render_angle=50.0, picture_angle=65.0)]


def _only(**probabilities) -> CameraConfig:
    return CameraConfig.off().replace(**probabilities)


@pytest.mark.parametrize("lens", LENSES, ids=lambda lens: f"{lens.kind}{lens.k1:+.2f}")
def test_lens_round_trip(lens):
    points = np.random.default_rng(0).uniform([0, 0], [160, 120], (500, 2))
    assert np.abs(lens.to_picture(lens.to_render(points)) - points).max() < 1e-6
    shown = lens.to_picture(points)
    inside = ((shown >= 0) & (shown < [160, 120])).all(-1)
    assert inside.sum() > 200
    assert np.abs(lens.to_render(shown[inside]) - points[inside]).max() < 1e-6


@pytest.mark.parametrize("lens", LENSES, ids=lambda lens: f"{lens.kind}{lens.k1:+.2f}")
def test_lens_moves_a_dot_where_the_track_goes(lens):
    """A bright dot drawn in the render at a known point lands, after warping the image
    through the lens, at the point's mapped track (centroid within 0.1 px)."""
    height, width = lens.height, lens.width
    rng = np.random.default_rng(1)
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    for _ in range(12):
        centre = rng.uniform([30, 25], [width - 30, height - 25])
        expected = lens.to_picture(centre)
        if not (8 < expected[0] < width - 8 and 8 < expected[1] < height - 8):
            continue
        # A smooth Gaussian dot, sampled at pixel centres, wide enough for bilinear resampling.
        dot = np.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * 1.5 ** 2)).astype(np.float32)
        warped = lens.warp(dot[None, ..., None])[0, ..., 0]
        near = (np.abs(xs - expected[0]) < 7) & (np.abs(ys - expected[1]) < 7)
        weight = warped * near
        found = np.array([(weight * xs).sum(), (weight * ys).sum()]) / weight.sum()
        assert np.linalg.norm(found - expected) < 0.1, (centre, expected, found)


def test_barrel_and_fisheye_bend_lines_and_darken_corners():
    for lens in (LENSES[0], LENSES[2]):
        seen = lens.seen()
        assert not seen[0, 0] and not seen[-1, -1] and seen[60, 80]
        line = lens.to_picture(np.stack([np.linspace(10, 150, 30), np.full(30, 15.0)], axis=-1))
        assert np.ptp(line[:, 1]) > 3


def test_probabilities_zero_give_the_clip_back_bit_identical():
    arrays = clip_arrays(5, SMALL)
    out = apply_camera(arrays, CameraConfig.off(), np.random.default_rng(0))
    for key, value in arrays.items():
        assert out[key].dtype == value.dtype and np.array_equal(out[key], value), key
    dataset = SyntheticClips(SMALL, seed=3, camera=CameraConfig.off())
    plain = SyntheticClips(SMALL, seed=3)
    for key, value in plain[2].items():
        assert np.array_equal(dataset[2][key], value)


@pytest.mark.parametrize("effect", ["motion_blur", "defocus", "vignetting", "noise", "exposure", "colour",
                                    "gamma", "compression"])
def test_photometric_effects_keep_shapes_types_and_labels(effect):
    arrays = clip_arrays(7, SMALL)
    out = apply_camera(arrays, _only(**{f"{effect}_probability": 1.0}), np.random.default_rng(2))
    assert out["video"].shape == arrays["video"].shape and out["video"].dtype == np.uint8
    assert not np.array_equal(out["video"], arrays["video"])
    for key in ("query_points", "target_points", "occluded"):
        assert np.array_equal(out[key], arrays[key]), key


def test_lens_clip_labels_are_consistent():
    arrays = clip_arrays(11, SyntheticConfig(frames=6, height=96, width=128, num_points=64))
    config = _only(lens_probability=1.0).replace(k1=(0.35, 0.35), k2=(0.1, 0.1), fisheye_share=0.0)
    out = apply_camera(arrays, config, np.random.default_rng(0))
    tracks, occluded, queries = out["target_points"], out["occluded"], out["query_points"]
    assert tracks.shape == arrays["target_points"].shape and queries.shape == arrays["query_points"].shape
    index = np.arange(len(queries))
    frames = queries[:, 0].astype(int)
    assert not occluded[index, frames].any()  # every query is visible on its frame
    assert np.allclose(queries[:, [2, 1]], tracks[index, frames])
    visible = ~occluded
    assert (tracks[visible] >= 0).all() and (tracks[visible][:, 0] < 128).all() and (tracks[visible][:, 1] < 96).all()
    # The strong barrel pushes some points that were visible out of the dark corners.
    assert occluded.sum() > arrays["occluded"].sum()


def test_same_seed_same_camera_and_default_is_applied():
    arrays = clip_arrays(13, SMALL)
    first = apply_camera(arrays, CameraConfig(), camera_rng(13))
    second = apply_camera(arrays, CameraConfig(), camera_rng(13))
    for key in first:
        assert np.array_equal(first[key], second[key]), key
    different = [not np.array_equal(apply_camera(arrays, CameraConfig(), camera_rng(s))["video"], arrays["video"])
                 for s in range(6)]
    assert sum(different) >= 4


def test_camera_share_leaves_the_other_clips_clean():
    """camera_share: a clip either equals the clean clip or the one seen through its camera,
    drawn from the clip's seed; both kinds occur at a share of one half, none at 0."""
    clean = SyntheticClips(SMALL, seed=5)
    every = SyntheticClips(SMALL, seed=5, camera=CameraConfig())
    half = SyntheticClips(SMALL, seed=5, camera=CameraConfig(), camera_share=0.5)
    none = SyntheticClips(SMALL, seed=5, camera=CameraConfig(), camera_share=0.0)
    kinds = []
    for index in range(12):
        plain, shared = clean[index]["video"], half[index]["video"]
        assert np.array_equal(none[index]["video"], plain)
        assert np.array_equal(shared, half[index]["video"])  # the same on every visit
        if np.array_equal(shared, plain):
            kinds.append("clean")
        else:
            kinds.append("camera")
            assert shared.shape == plain.shape
    assert 2 <= kinds.count("clean") <= 10, kinds
    assert sum(not np.array_equal(every[i]["video"], clean[i]["video"]) for i in range(12)) >= 10
    with pytest.raises(ValueError, match="camera_share"):
        SyntheticClips(SMALL, camera=CameraConfig(), camera_share=1.5)


def test_dark_noisy_frames_stay_in_range():
    arrays = clip_arrays(17, SMALL)
    config = _only(noise_probability=1.0, exposure_probability=1.0).replace(
        white_electrons=(30.0, 30.0), brightness=(0.35, 0.35))
    out = apply_camera(arrays, config, np.random.default_rng(4))
    assert out["video"].mean() < 0.6 * arrays["video"].mean()
    grain = np.abs(np.diff(out["video"].astype(int), axis=2)).mean()
    assert grain > np.abs(np.diff(arrays["video"].astype(int), axis=2)).mean()


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="noise_probability"):
        CameraConfig(noise_probability=1.5)
    with pytest.raises(ValueError, match="k1"):
        CameraConfig(k1=(-0.5, 0.1))
