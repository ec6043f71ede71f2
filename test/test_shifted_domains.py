"""Tests for the shifted domains (training/domains/shifted_domains.py): the low-light sensor is a
pixel-wise map of the clean picture (labels exactly Kubric-lite's); the fisheye lens maps
frames and tracks alike (checked against OpenCV's own fisheye model and against rendered
dots), occludes what leaves its image circle, bends straight lines; determinism, disjoint
seeds, the TAP-Vid pickle and the unlabeled bag."""

import pickle

import cv2
import numpy as np
import pytest

from bootstap_ros.eval.datasets import TapVidDataset
from helpers.sampling import bilinear  # written independently of the generators
from bootstap_ros_training.domains.robot_domain import UNLABELED_SEED_OFFSET, RobotConfig, generate_robot_clip, unlabeled_seeds
from bootstap_ros_training.domains.shifted_domains import (OUTSIDE_VIEW, LensView, LowLightConfig, WideAngleConfig,
                                                           generate_low_light_clip, generate_wide_angle_clip, main,
                                                           sample_lens)
from bootstap_ros_training.domains.synthetic import SyntheticConfig, generate_clip, render_scene

NIGHT = LowLightConfig(frames=8, height=96, width=128, num_points=96)
WIDE = WideAngleConfig(frames=6, height=120, width=160, num_points=96)


def opencv_distort(lens, pinhole_points):
    """The lens applied by OpenCV's fisheye model (an independent implementation):
    pinhole raster points [N, 2] -> picture raster points."""
    rays = (np.asarray(pinhole_points, np.float64) - lens.pinhole_centre) / lens.pinhole_focal
    camera = np.array([[lens.focal, 0, lens.centre[0] - 0.5], [0, lens.focal, lens.centre[1] - 0.5], [0, 0, 1]])
    distorted = cv2.fisheye.distortPoints(rays[:, None], camera, np.array([lens.k1, lens.k2, 0.0, 0.0]))
    return distorted[:, 0] + 0.5  # OpenCV pixel centres are at integers


# ----------------------------------------------------------------------------- low light

@pytest.fixture(scope="module")
def night_and_day():
    return generate_low_light_clip(4, NIGHT), generate_low_light_clip(4, NIGHT.replace(photometric=False))


def test_low_light_scenes_and_labels_are_kubric_lites(night_and_day):
    """The daylight clip is exactly Kubric-lite's clip of the same seed and size (without its
    render noise), and the night clip shares every label with it."""
    night, day = night_and_day
    kubric = generate_clip(4, SyntheticConfig(frames=8, height=96, width=128, num_points=96, noise_std=0.0))
    for name in ("video", "tracks", "occluded", "query_frames", "layer_ids"):
        np.testing.assert_array_equal(getattr(day, name), getattr(kubric, name))
    for name in ("tracks", "occluded", "query_frames", "layer_ids"):
        np.testing.assert_array_equal(getattr(night, name), getattr(day, name))


def test_the_night_sensor_is_a_map_of_each_pixels_own_clean_value(night_and_day):
    """Per frame and channel, the night value's mean given the clean value (a lookup table
    fitted here) predicts the night picture: what is left is zero-mean noise everywhere in
    the image (no vignetting, no shift), and predicting from a neighbouring pixel's clean
    value is clearly worse."""
    night, day = night_and_day
    frames, height, width = night.video.shape[:3]

    def residual(clean, dark):
        """dark - E[dark | clean], per frame and channel."""
        out = np.empty(dark.shape, np.float64)
        for t in range(frames):
            for c in range(3):
                counts = np.bincount(clean[t, ..., c].ravel(), minlength=256)
                sums = np.bincount(clean[t, ..., c].ravel(), dark[t, ..., c].ravel().astype(np.float64), minlength=256)
                table = sums / np.maximum(counts, 1)
                out[t, ..., c] = dark[t, ..., c] - table[clean[t, ..., c]]
        return out

    own = residual(day.video, night.video)
    # 2 px to the side: the clean value of a neighbour.
    neighbour = residual(day.video[:, :, :-2], night.video[:, :, 2:])
    assert np.mean(neighbour ** 2) > 1.5 * np.mean(own ** 2), (np.mean(neighbour ** 2), np.mean(own ** 2))
    # Zero mean in every block of a 4 x 4 grid over the image: the map does not depend on position.
    blocks = own.reshape(frames, 4, height // 4, 4, width // 4, 3).mean(axis=(0, 2, 4, 5))
    assert np.abs(blocks).max() < 1.0, blocks
    assert own.std() > 2.0  # and the noise is there


def _relative_noise(video):
    """Fine-grain noise relative to brightness: the std of each channel minus its 3x3 median,
    over the mean value."""
    return float(np.mean([np.std(frame.astype(np.float32) - cv2.medianBlur(frame, 3)) for frame in video])
                 / video.mean())


def test_the_night_look_is_dark_noisy_and_banded():
    """Against Kubric-lite and the robot domain over the same seeds: under half the
    brightness, more fine-grain noise relative to it (three times Kubric-lite's, whose
    scenes these are; more than the robot domain's cheap sensor), and a combed histogram
    (the 8-bit brightness boost leaves codes unused)."""
    seeds = range(4)
    size = dict(frames=6, height=96, width=128, num_points=0)
    night = [generate_low_light_clip(s, LowLightConfig(**size)).video for s in seeds]
    kubric = [generate_clip(s, SyntheticConfig(**size)).video for s in seeds]
    robot = [generate_robot_clip(s, RobotConfig(**size)).video for s in seeds]
    brightness = {name: np.mean([v.mean() for v in videos])
                  for name, videos in (("night", night), ("kubric", kubric), ("robot", robot))}
    noise = {name: np.mean([_relative_noise(v) for v in videos])
             for name, videos in (("night", night), ("kubric", kubric), ("robot", robot))}
    assert brightness["night"] < brightness["kubric"] / 2 and brightness["night"] < brightness["robot"] / 2, brightness
    assert noise["night"] > 3 * noise["kubric"] and noise["night"] > 1.4 * noise["robot"], noise

    def unused_codes(video):
        counts = np.bincount(video.ravel(), minlength=256)
        low, high = np.percentile(video, [5, 95]).astype(int)
        return float(np.mean(counts[low:high + 1] == 0))

    assert min(unused_codes(v) for v in night) > 0.2
    assert max(unused_codes(v) for v in kubric + robot) < 0.05


# ----------------------------------------------------------------------------- wide-angle lens

@pytest.mark.parametrize("seed", range(4))
def test_the_lens_agrees_with_opencvs_fisheye_and_inverts_to_a_hundredth_of_a_pixel(seed):
    lens, (render_h, render_w) = sample_lens(np.random.default_rng(seed), WideAngleConfig())
    ys, xs = np.mgrid[0:240:3, 0:320:3] + 0.5
    picture = np.stack([xs, ys], -1).reshape(-1, 2)
    picture = picture[lens.in_view(picture)]
    pinhole = lens.undistort(picture)
    # Round trip both ways.
    assert np.abs(lens.distort(pinhole) - picture).max() < 0.01
    assert np.abs(lens.undistort(lens.distort(pinhole)) - pinhole).max() < 0.01
    # OpenCV's fisheye model maps the pinhole points back to the picture points.
    assert np.abs(opencv_distort(lens, pinhole) - picture).max() < 1e-3
    # The pinhole render holds the whole field of view.
    assert (pinhole >= 0).all() and (pinhole[:, 0] < render_w).all() and (pinhole[:, 1] < render_h).all()
    # Strong barrel distortion: the edge of the field of view is more than 55 degrees off axis.
    edge = lens.pinhole_focal * np.tan(np.radians(55))
    assert np.linalg.norm(pinhole - lens.pinhole_centre, axis=-1).max() > edge


def _dots(shape, points, sigma=1.2):
    """A white float32 image with dark Gaussian dots at raster points [N, 2]."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]] + 0.5
    image = np.ones(shape, np.float64)
    for x, y in points:
        image -= np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2))
    return np.clip(image, 0, 1)


def test_a_rendered_dot_lands_where_the_lens_maps_its_track():
    """Dots drawn at known pinhole positions, resampled into the picture, are centred (by the
    centroid of their darkness) where OpenCV's fisheye model maps those positions."""
    rng = np.random.default_rng(0)
    lens, size = sample_lens(rng, WideAngleConfig())
    view = LensView(lens, 240, 320, vignetting=0.0)
    # Dots on a ring pattern from the centre out to most of the field of view.
    angles = np.linspace(0, 2 * np.pi, 9)[:-1]
    radii = lens.radius * np.array([0.15, 0.4, 0.65, 0.85])
    targets = np.array([[160 + r * np.cos(a), 120 + r * np.sin(a)] for r in radii for a in angles + r])
    targets = targets[(targets[:, 0] > 8) & (targets[:, 0] < 312) & (targets[:, 1] > 8) & (targets[:, 1] < 232)]
    pinhole_points = lens.undistort(targets) + rng.uniform(-0.5, 0.5, targets.shape)
    frame = np.repeat((_dots(size, pinhole_points) * 255)[..., None], 3, -1)
    picture = view.picture(np.round(frame).astype(np.uint8)).astype(np.float64)[..., 0]
    expected = opencv_distort(lens, pinhole_points)
    errors = []
    for x, y in expected:
        left, top = int(x) - 5, int(y) - 5
        window = 255 - picture[top:top + 11, left:left + 11]
        window = np.maximum(window - np.percentile(window, 20), 0)
        wy, wx = np.mgrid[top:top + 11, left:left + 11] + 0.5
        errors.append(np.hypot((window * wx).sum() / window.sum() - x, (window * wy).sum() / window.sum() - y))
    assert len(errors) >= 24
    assert np.max(errors) < 0.2, np.max(errors)


def test_straight_lines_bend():
    """A straight line in the pinhole image is a curve in the picture: its darkest pixel per
    column leaves the best straight fit by pixels; through the clean pinhole camera it does not."""
    lens, size = sample_lens(np.random.default_rng(1), WideAngleConfig())
    ys, xs = np.mgrid[0:size[0], 0:size[1]] + 0.5
    line_y = lens.pinhole_centre[1] + 0.45 * size[0] / 2 + 0.1 * (xs - lens.pinhole_centre[0])
    frame = (255 * (1 - np.exp(-(ys - line_y) ** 2 / 2))).astype(np.uint8)
    frame = np.repeat(frame[..., None], 3, -1)
    picture = LensView(lens, 240, 320, vignetting=0.0).picture(frame)[..., 0]
    crop_top, crop_left = (size[0] - 240) // 2, (size[1] - 320) // 2
    pinhole = frame[crop_top:crop_top + 240, crop_left:crop_left + 320, 0]

    def deviation(image):
        columns = [c for c in range(20, 300) if image[:, c].min() < 100]
        rows = np.array([np.argmin(image[:, c]) for c in columns], np.float64)
        fit = np.polyval(np.polyfit(columns, rows, 1), columns)
        return np.abs(rows - fit).max(), len(columns)

    bent, seen = deviation(picture)
    straight, _ = deviation(pinhole)
    assert seen > 150
    assert bent > 5 and straight <= 1, (bent, straight)


@pytest.fixture(scope="module")
def wide_clips():
    return [generate_wide_angle_clip(seed, WIDE.replace(vignetting=(0.0, 0.0))) for seed in (2, 3)]


def test_wide_angle_tracks_are_the_pinhole_tracks_through_the_lens(wide_clips):
    """The picture's tracks are OpenCV's fisheye image of the pinhole tracks, and the pinhole
    tracks are exact in the pinhole render: the render sampled at a pinhole track shows the
    colour the picture shows at the track (where the lens does not squeeze much)."""
    for clip in wide_clips:
        points, frames = clip.tracks.shape[:2]
        expected = opencv_distort(clip.lens, clip.pinhole_tracks.reshape(-1, 2)).reshape(points, frames, 2)
        np.testing.assert_allclose(clip.tracks, expected, atol=1e-3)
        render_h, render_w = clip.pinhole_size
        rendered, _ = render_scene(clip.scene, SyntheticConfig(frames=frames, height=render_h, width=render_w))
        squeeze = clip.lens.squeeze(clip.tracks.astype(np.float64))
        errors, shifted = [], []
        for t in range(frames):
            interior = cv2.erode((clip.layer_ids[t][..., None] == np.arange(clip.scene.num_layers)).astype(np.uint8),
                                 np.ones((5, 5), np.uint8))
            for n in np.flatnonzero(~clip.occluded[:, t] & (squeeze[:, t] < 1.3)):
                x, y = clip.tracks[n, t]
                if not interior[int(y), int(x), clip.track_layers[n]]:
                    continue
                truth = bilinear(rendered[t].astype(np.float64), clip.pinhole_tracks[n, t].astype(np.float64))
                seen = bilinear(clip.video[t].astype(np.float64), clip.tracks[n, t].astype(np.float64))
                moved = bilinear(clip.video[t].astype(np.float64), clip.tracks[n, t].astype(np.float64) + [1.5, -1.5])
                errors.append(np.abs(seen - truth).mean())
                shifted.append(np.abs(moved - truth).mean())
        assert len(errors) > 100
        assert np.median(errors) < 4.0 and np.median(shifted) > 2 * np.median(errors), (
            np.median(errors), np.median(shifted))


def test_points_outside_the_image_circle_are_occluded_and_the_corners_are_black(wide_clips):
    left_the_view = 0
    for clip in wide_clips:
        lens = clip.lens
        height, width = clip.video.shape[1:3]
        pixel_centres = np.floor(clip.tracks.astype(np.float64)) + 0.5
        outside = np.linalg.norm(pixel_centres - lens.centre, axis=-1) > lens.radius
        in_frame = ((clip.tracks >= 0) & (clip.tracks < [width, height])).all(-1)
        assert clip.occluded[outside].all()
        left_the_view += int((outside & in_frame).sum())
        ys, xs = np.mgrid[0:height, 0:width] + 0.5
        beyond = np.hypot(xs - lens.centre[0], ys - lens.centre[1]) > lens.radius + 1
        assert beyond[0, 0] and (clip.video[:, beyond] == 0).all()
        assert (clip.layer_ids[:, beyond] == OUTSIDE_VIEW).all()
        # A point's query frame sees it.
        assert not clip.occluded[np.arange(len(clip.tracks)), clip.query_frames].any()
    assert left_the_view > 0, "no point went out of the image circle inside the frame"


def test_clean_wide_angle_clips_are_the_pinhole_camera_at_the_centre():
    """`lens=False`: the same scene through a centred pinhole camera; tracks are the pinhole
    tracks moved by the crop, and the picture is the render's centre."""
    config = WIDE.replace(lens=False)
    clip = generate_wide_angle_clip(3, config)
    render_h, render_w = clip.pinhole_size
    top, left = (render_h - config.height) // 2, (render_w - config.width) // 2
    np.testing.assert_allclose(clip.tracks, clip.pinhole_tracks - np.array([left, top], np.float32), atol=1e-4)
    rendered, _ = render_scene(clip.scene, SyntheticConfig(frames=config.frames, height=render_h, width=render_w))
    np.testing.assert_array_equal(clip.video, rendered[:, top:top + config.height, left:left + config.width])
    assert not clip.occluded[np.arange(len(clip.tracks)), clip.query_frames].any()


def test_the_wide_angle_camera_moves_faster_than_kubric_lites():
    """Median speed of visible points in the picture (pixels per frame, per picture width)."""
    def speed(clip):
        steps = np.linalg.norm(np.diff(clip.tracks, axis=1), axis=-1)
        visible = ~clip.occluded[:, 1:] & ~clip.occluded[:, :-1]
        return np.median(steps[visible]) / clip.video.shape[2]

    seeds = range(4)
    size = dict(frames=6, height=120, width=160, num_points=64)
    wide = np.mean([speed(generate_wide_angle_clip(s, WideAngleConfig(**size))) for s in seeds])
    kubric = np.mean([speed(generate_clip(s, SyntheticConfig(**size))) for s in seeds])
    assert wide > 2 * kubric, (wide, kubric)


# ----------------------------------------------------------------------------- both

@pytest.mark.parametrize("generate, config", [(generate_low_light_clip, NIGHT), (generate_wide_angle_clip, WIDE)])
def test_deterministic_per_seed(generate, config):
    first, again, other = generate(3, config), generate(3, config), generate(4, config)
    for name in ("video", "tracks", "occluded", "query_frames"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert not np.array_equal(first.video, other.video)


def test_labeled_command_writes_a_tapvid_pickle_that_eval_reads(tmp_path):
    out = tmp_path / "wide.pkl"
    assert main(["labeled", "--domain", "wide_angle", "--out", str(out), "--num-clips", "2", "--seed", "3",
                 "--frames", "4", "--num-points", "16", "--height", "96", "--width", "128"]) == 0
    raw = pickle.loads(out.read_bytes())
    assert sorted(raw) == ["wide_angle_3", "wide_angle_4"]
    clip = generate_wide_angle_clip(3, WideAngleConfig(frames=4, num_points=16, height=96, width=128))
    np.testing.assert_array_equal(raw["wide_angle_3"]["video"], clip.video)
    np.testing.assert_allclose(raw["wide_angle_3"]["points"] * np.array([128, 96]), clip.tracks, atol=1e-4)
    np.testing.assert_array_equal(raw["wide_angle_3"]["occluded"], clip.occluded)
    samples = list(TapVidDataset(str(out), query_mode="first"))
    assert len(samples) == 2 and samples[0].video.shape == (4, 256, 256, 3)
    # --clean: the low-light clips in daylight, i.e. Kubric-lite's clips of those seeds.
    day = tmp_path / "day.pkl"
    assert main(["labeled", "--domain", "low_light", "--clean", "--out", str(day), "--num-clips", "1", "--seed", "6",
                 "--frames", "4", "--num-points", "16", "--height", "96", "--width", "128"]) == 0
    kubric = generate_clip(6, SyntheticConfig(frames=4, height=96, width=128, num_points=16, noise_std=0.0))
    np.testing.assert_array_equal(pickle.loads(day.read_bytes())["low_light_6"]["video"], kubric.video)
    # Labeled seeds stay below the unlabeled episodes' seeds.
    with pytest.raises(ValueError, match="never overlap"):
        main(["labeled", "--domain", "low_light", "--out", str(tmp_path / "x.pkl"), "--num-clips", "2",
              "--seed", str(UNLABELED_SEED_OFFSET - 1)])


@pytest.mark.parametrize("domain, generate, storage, compressed", [
    ("low_light", generate_low_light_clip, "mcap", False),
    ("wide_angle", generate_wide_angle_clip, "sqlite3", True)])
def test_unlabeled_bag_is_one_stream_that_log_preparation_cuts_at_the_gaps(tmp_path, domain, generate, storage,
                                                                         compressed):
    """Three episodes in one bag: the clips bootstap-prepare-logs cuts never span the pause
    between two episodes, and each starts with its episode's first frame."""
    import json

    from bootstap_ros_training.logs import ClipConfig, LogClips, prepare_logs

    bag = tmp_path / "bag"
    arguments = ["bag", "--domain", domain, "--out", str(bag), "--episodes", "3", "--first-episode", "5",
                 "--frames", "6", "--height", "96", "--width", "128", "--storage", storage]
    assert main(arguments + (["--compressed"] if compressed else [])) == 0
    summary = json.loads((tmp_path / "bag.json").read_text())
    assert summary["frames"] == 18 and summary["seeds"] == [UNLABELED_SEED_OFFSET + 5, UNLABELED_SEED_OFFSET + 7]
    assert summary["topic"].endswith("/compressed") == compressed
    clips = LogClips(prepare_logs([bag], tmp_path / "cache", ClipConfig(frames=4, size=32)))
    # 6 frames per episode give one 4-frame clip each; spanning a gap would give a fourth.
    assert len(clips) == 3
    config = (LowLightConfig if domain == "low_light" else WideAngleConfig)(frames=6, height=96, width=128,
                                                                           num_points=0)
    for episode, seed in enumerate(unlabeled_seeds(5, 3)):
        first = generate(seed, config).video[0]
        expected = cv2.resize(first, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float64)
        error = np.abs(clips[episode]["video"][0].astype(np.float64) - expected).mean()
        assert error < (8.0 if compressed else 3.0), (episode, error)
