"""Tests for the Kubric-lite generator: exact ground truth, the raster convention,
occlusion, determinism, the output contract and the TAP-Vid pickle layout."""

import pickle

import cv2
import numpy as np
import pytest

from bootstap_ros_training.domains.synthetic import SyntheticConfig, generate_clip, main, write_tapvid_pickle
from helpers.sampling import bilinear

# No lighting, brightness, blur or noise: rendered colours must equal the textures.
CLEAN = SyntheticConfig(lighting_gain=0.0, lighting_bias=0.0, object_brightness=0.0,
                        motion_blur_probability=0.0, noise_std=0.0)


def to_surface(scene, layer, t, image_points):
    """Image raster points -> texture coordinates of `layer` in frame `t` (the backward map)."""
    matrix = np.linalg.inv(scene.image_from_layer[layer, t])
    homogeneous = np.concatenate([image_points, np.ones_like(image_points[..., :1])], axis=-1)
    mapped = homogeneous @ matrix.T
    where = mapped[..., :2] / mapped[..., 2:]
    argument = where @ scene.wobble_vector[layer].T + scene.wobble_phase[layer, t]
    return where - scene.wobble_amplitude[layer] * np.sin(argument)


@pytest.fixture(scope="module")
def clip():
    return generate_clip(7, SyntheticConfig(deform_probability=0.5))


def test_contract(clip):
    frames, height, width, points = 24, 256, 256, 256
    assert clip.video.shape == (frames, height, width, 3) and clip.video.dtype == np.uint8
    assert clip.tracks.shape == (points, frames, 2) and clip.tracks.dtype == np.float32
    assert clip.occluded.shape == (points, frames) and clip.occluded.dtype == bool
    assert clip.query_frames.shape == (points,) and clip.query_frames.dtype == np.int32
    assert clip.layer_ids.shape == (frames, height, width)
    assert np.isfinite(clip.tracks).all()
    # Every point is visible in its query frame, and the queries are (t, x, y) rows.
    rows = np.arange(points)
    assert not clip.occluded[rows, clip.query_frames].any()
    queries = clip.query_points
    assert queries.shape == (points, 3) and queries.dtype == np.float32
    np.testing.assert_array_equal(queries[:, 0], clip.query_frames)
    np.testing.assert_array_equal(queries[:, 1:], clip.tracks[rows, clip.query_frames])
    # Both surfaces get points, and the scene has the configured number of objects.
    assert (clip.track_layers == 0).any() and (clip.track_layers > 0).any()
    assert 3 <= clip.scene.num_layers - 1 <= 8


def test_deterministic_per_seed():
    config = SyntheticConfig(frames=8, height=96, width=128, num_points=32)
    first, again, other = generate_clip(3, config), generate_clip(3, config), generate_clip(4, config)
    for name in ("video", "tracks", "occluded", "query_frames", "layer_ids"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert not np.array_equal(first.video, other.video)
    assert not np.array_equal(first.tracks, other.tracks)


def test_tracks_follow_the_exact_surface_motion(clip):
    """Mapping each track position back through its layer's transform and wobble in every
    frame must land on the same surface point (the one sampled at the query frame)."""
    scene = clip.scene
    assert (scene.wobble_amplitude[clip.track_layers] > 0).any(), "no wobbling object was tracked"
    for n in range(len(clip.tracks)):
        layer = clip.track_layers[n]
        surface = np.stack([to_surface(scene, layer, t, clip.tracks[n, t].astype(np.float64))
                            for t in range(clip.tracks.shape[1])])
        np.testing.assert_allclose(surface, np.broadcast_to(clip.surface_points[n], surface.shape),
                                   atol=1e-3)
    # Tracks really move (camera and objects), so the check above is not vacuous.
    assert np.abs(clip.tracks[:, -1] - clip.tracks[:, 0]).max() > 10


@pytest.mark.parametrize("seed", [11, 12])
def test_rendering_follows_the_raster_convention(seed):
    """With photometric effects off, each pixel shows its layer's texture sampled at the
    pixel centre (+0.5) mapped to the layer; half a pixel off is clearly worse."""
    clip = generate_clip(seed, CLEAN.replace(deform_probability=0.5))
    scene = clip.scene
    errors, shifted_errors = [], []
    for t in (0, 11, 23):
        for layer in range(scene.num_layers):
            # Interior pixels only: no antialiased edge of this or a nearer layer nearby.
            interior = cv2.erode((clip.layer_ids[t] == layer).astype(np.uint8), np.ones((7, 7), np.uint8))
            rows, columns = np.nonzero(interior)
            if len(rows) == 0:
                continue
            centres = np.stack([columns, rows], axis=-1) + 0.5
            texture = scene.textures[layer]
            for offset, sink in ((0.0, errors), (0.5, shifted_errors)):
                expected = bilinear(texture, to_surface(scene, layer, t, centres + offset))
                opaque = expected[:, 3] > 0.999
                rendered = clip.video[t, rows, columns].astype(np.float64)
                sink.append(np.abs(rendered - 255 * expected[:, :3])[opaque].ravel())
    errors, shifted_errors = np.concatenate(errors), np.concatenate(shifted_errors)
    # OpenCV samples at 1/32 pixel and the video is rounded to integers.
    assert errors.max() <= 1.5
    assert errors.mean() < 0.4
    assert shifted_errors.mean() > 4 * errors.mean()


def test_colours_travel_with_the_tracks():
    """With all photometric effects on, a visible object point keeps its colour far more
    often than a random image position does."""
    clip = generate_clip(21)
    rng = np.random.default_rng(0)
    video = clip.video.astype(np.float64)
    queries = clip.query_points
    same, chance = [], []
    for n in np.flatnonzero(clip.track_layers > 0):
        query_colour = bilinear(video[int(queries[n, 0])], queries[n, 1:])
        for t in np.flatnonzero(~clip.occluded[n]):
            if t == queries[n, 0]:
                continue
            random_point = rng.uniform(0, 256, 2)
            same.append(np.abs(bilinear(video[t], clip.tracks[n, t]) - query_colour).mean())
            chance.append(np.abs(bilinear(video[t], random_point) - query_colour).mean())
    same, chance = np.array(same) < 30, np.array(chance) < 30
    assert len(same) > 500
    assert same.mean() > 0.75 and same.mean() > 2.5 * chance.mean()


def test_occlusion_follows_the_visibility_rule(clip):
    frames, height, width = clip.layer_ids.shape
    x, y = clip.tracks[..., 0], clip.tracks[..., 1]
    outside = (x < 0) | (x >= width) | (y < 0) | (y >= height)
    assert outside.any() and clip.occluded[outside].all()
    inside = np.argwhere(~outside)
    n, t = inside[:, 0], inside[:, 1]
    shown = clip.layer_ids[t, np.floor(y[n, t]).astype(int), np.floor(x[n, t]).astype(int)]
    np.testing.assert_array_equal(clip.occluded[n, t], shown != clip.track_layers[n])


def test_background_points_are_hidden_by_a_passing_object():
    """Static camera, one fast object: whether a background point is occluded follows the
    object's alpha mask, sampled by the test itself at the pixel the point falls in."""
    config = CLEAN.replace(num_objects=(1, 1), object_size=(0.5, 0.5), object_speed=8.0,
                           deform_probability=0.0, camera_shift=0.0, camera_rotation=0.0,
                           camera_zoom=0.0, camera_perspective=0.0, object_point_fraction=0.0,
                           num_points=1024)
    clip = generate_clip(7, config)
    scene = clip.scene
    assert (clip.track_layers == 0).all()
    # A static camera: background tracks do not move.
    np.testing.assert_allclose(clip.tracks, np.broadcast_to(clip.tracks[:, :1], clip.tracks.shape),
                               atol=1e-4)
    pixel_centres = np.floor(clip.tracks) + 0.5
    alpha = np.stack([bilinear(scene.textures[1][..., 3:], to_surface(scene, 1, t, pixel_centres[:, t]))[:, 0]
                      for t in range(config.frames)], axis=1)
    covered = alpha >= 0.5
    assert 0.02 < covered.mean() < 0.98
    assert ((alpha > 0.05) & (alpha < 0.95)).sum() > 20, "too few points on the antialiased edge"
    # Exact agreement except where the alpha is within OpenCV's 1/32 pixel sampling of 0.5.
    decided = np.abs(alpha - 0.5) > 0.03
    np.testing.assert_array_equal(clip.occluded[decided], covered[decided])


def _local_contrast(image: np.ndarray, tile: int = 32) -> float:
    """Median over tile x tile squares of the luminance's standard deviation in the square."""
    grey = image.astype(np.float64).mean(axis=-1)
    h, w = (grey.shape[0] // tile) * tile, (grey.shape[1] // tile) * tile
    tiles = grey[:h, :w].reshape(h // tile, tile, w // tile, tile).swapaxes(1, 2).reshape(-1, tile * tile)
    return float(np.median(tiles.std(axis=1)))


def test_faint_background_is_weak_fine_texture():
    """faint_background=1: the background seen by the camera has far less local contrast
    than the generator's usual canvas (measured on rendered frames, no objects), yet it is
    not flat: detail a few pixels in size remains."""
    config = CLEAN.replace(num_objects=(0, 0), frames=2, num_points=16)
    bold = [_local_contrast(generate_clip(seed, config).video[0]) for seed in range(16)]
    faint = [_local_contrast(generate_clip(seed, config.replace(faint_background=1.0)).video[0])
             for seed in range(16)]
    # Grey levels of 255: the faint canvases (thin lines at most about bold's level) have under
    # half the bold canvases' contrast at the median, and none is flat.
    assert np.median(faint) < 0.5 * np.median(bold), (faint, bold)
    assert min(faint) > 0.5 and max(faint) < 1.5 * np.median(bold), faint
    with pytest.raises(ValueError, match="faint_background"):
        SyntheticConfig(faint_background=1.2)


def test_motionless_scene_keeps_every_point_still_and_visible():
    config = CLEAN.replace(num_objects=(0, 0), camera_shift=0.0, camera_rotation=0.0,
                           camera_zoom=0.0, camera_perspective=0.0, frames=6, num_points=64)
    clip = generate_clip(2, config)
    np.testing.assert_allclose(clip.tracks, np.broadcast_to(clip.tracks[:, :1], clip.tracks.shape),
                               atol=1e-4)
    assert not clip.occluded.any()
    np.testing.assert_array_equal(clip.video, np.broadcast_to(clip.video[:1], clip.video.shape))


def test_tapvid_pickle_round_trip(tmp_path):
    config = SyntheticConfig(frames=6, height=64, width=96, num_points=16)
    clips = [generate_clip(seed, config) for seed in (100, 101)]
    path = tmp_path / "synthetic.pkl"
    write_tapvid_pickle(path, clips)
    with open(path, "rb") as file:
        dataset = pickle.load(file)
    assert sorted(dataset) == ["synthetic_100", "synthetic_101"]
    for clip, name in zip(clips, ("synthetic_100", "synthetic_101")):
        entry = dataset[name]
        assert set(entry) == {"video", "points", "occluded"}
        np.testing.assert_array_equal(entry["video"], clip.video)
        assert entry["points"].dtype == np.float32 and entry["occluded"].dtype == bool
        np.testing.assert_allclose(entry["points"] * np.array([96, 64]), clip.tracks, rtol=1e-6, atol=1e-4)
        np.testing.assert_array_equal(entry["occluded"], clip.occluded)
        visible = entry["points"][~entry["occluded"]]
        assert ((visible >= 0) & (visible < 1)).all()
    with pytest.raises(ValueError, match="unique"):
        write_tapvid_pickle(path, clips, names=["a", "a"])
    with pytest.raises(ValueError, match="names"):
        write_tapvid_pickle(path, clips, names=["only_one"])


def test_command_line(tmp_path, capsys):
    path = tmp_path / "held_out.pkl"
    main(["--num-clips", "2", "--seed", "1000", "--out", str(path), "--frames", "5", "--size", "64"])
    with open(path, "rb") as file:
        dataset = pickle.load(file)
    assert sorted(dataset) == ["synthetic_1000", "synthetic_1001"]
    assert dataset["synthetic_1000"]["video"].shape == (5, 64, 64, 3)
    assert "wrote 2 clips" in capsys.readouterr().out


def test_config_is_validated():
    with pytest.raises(ValueError, match="num_objects"):
        SyntheticConfig(num_objects=(5, 2))
    with pytest.raises(ValueError, match="camera_perspective"):
        SyntheticConfig(camera_perspective=0.7)
