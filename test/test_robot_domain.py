"""Tests for the robot-domain generator (training/domains/robot_domain.py): exact labels under a
wrist camera and an arm occluder, determinism, disjoint seeds, an appearance that
differs from Kubric-lite's, the TAP-Vid pickle and the unlabeled bag."""

import pickle

import cv2
import numpy as np
import pytest

from bootstap_ros.eval.datasets import TapVidDataset
from bootstap_ros_training.domains.robot_domain import (UNLABELED_SEED_OFFSET, RobotConfig, episode_stamps,
                                                        generate_robot_clip, labeled_seeds, main, unlabeled_seeds,
                                                        write_bag)
from helpers.sampling import bilinear  # written independently of the generators
from bootstap_ros_training.domains.synthetic import SyntheticConfig, generate_clip

# Small clips keep the tests fast; `photometric=False` renders colours as the textures hold them.
SMALL = RobotConfig(frames=12, height=120, width=160, num_points=128)
CLEAN = SMALL.replace(photometric=False)


def to_layer(scene, layer, t, image_points):
    """Image raster points -> the layer's texture coordinates in frame t (rigid layers)."""
    matrix = np.linalg.inv(scene.image_from_layer[layer, t])
    mapped = np.concatenate([image_points, np.ones_like(image_points[..., :1])], axis=-1) @ matrix.T
    return mapped[..., :2] / mapped[..., 2:]


def colour_errors(clip, offset=(0.0, 0.0)):
    """|video at the labelled position - texture at the point's surface position| per
    visible (point, frame) away from layer edges (mean over RGB, 0..255)."""
    scene = clip.scene
    errors = []
    for t in range(clip.video.shape[0]):
        # Interior pixels only: bilinear sampling across a layer edge mixes two surfaces.
        interior = np.stack([cv2.erode((clip.layer_ids[t] == layer).astype(np.uint8), np.ones((5, 5), np.uint8))
                             for layer in range(scene.num_layers)])
        for n in np.flatnonzero(~clip.occluded[:, t]):
            x, y = clip.tracks[n, t]
            if not interior[clip.track_layers[n], int(y), int(x)]:
                continue
            layer = clip.track_layers[n]
            expected = 255 * bilinear(scene.textures[layer][..., :3], clip.surface_points[n])
            seen = bilinear(clip.video[t].astype(np.float64), clip.tracks[n, t].astype(np.float64)
                            + np.asarray(offset))
            errors.append(np.abs(seen - expected).mean())
    return np.array(errors)


@pytest.fixture(scope="module")
def clean_clip():
    return generate_robot_clip(5, CLEAN)


def test_contract_and_motion(clean_clip):
    clip = clean_clip
    assert clip.video.shape == (12, 120, 160, 3) and clip.video.dtype == np.uint8
    assert clip.tracks.shape == (128, 12, 2) and clip.occluded.shape == (128, 12)
    assert np.isfinite(clip.tracks).all()
    # Every point is visible on its query frame, and the tracks move (the wrist camera).
    assert not clip.occluded[np.arange(128), clip.query_frames].any()
    assert np.abs(clip.tracks[:, -1] - clip.tracks[:, 0]).max() > 5


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_a_point_shows_its_own_colour_where_it_is_labelled(seed):
    """With photometric effects off, the video sampled at a visible point's labelled position
    shows the colour of its surface point's texture; 2 px off is clearly worse."""
    clip = generate_robot_clip(seed, CLEAN)
    errors = colour_errors(clip)
    shifted = colour_errors(clip, offset=(1.5, -1.5))
    assert len(errors) > 200
    # Bilinear sampling of an already resampled image blurs fine grain a little.
    assert np.median(errors) < 4.0
    assert np.median(shifted) > 2.5 * np.median(errors)


def occluder_alpha(clip, points, t):
    """The arm's alpha, sampled by the test at the image pixel centres under `points` [N, 2]."""
    arm = clip.scene.num_layers - 1
    alpha = clip.scene.textures[arm][..., 3:]
    where = to_layer(clip.scene, arm, t, np.floor(points) + 0.5)
    # The sprite ends at its border: zero alpha beyond it (one pixel of padding).
    padded = np.pad(alpha, ((1, 1), (1, 1), (0, 0)))
    return bilinear(padded, where + 1)[:, 0]


def test_points_under_the_arm_are_flagged_occluded():
    """The arm reaches into the view: a point on the table or an object is occluded exactly
    where the arm's own alpha (sampled here from its sprite and path) covers its pixel."""
    config = CLEAN.replace(arm_probability=1.0, num_points=256)
    covered_total, checked = 0, 0
    for seed in (1, 2, 3):
        clip = generate_robot_clip(seed, config)
        arm = clip.scene.num_layers - 1
        # The arm enters from outside: some frame shows it, and it covers part of the view.
        assert (clip.layer_ids == arm).any()
        for t in range(config.frames):
            under = np.flatnonzero(clip.track_layers != arm)
            xy = clip.tracks[under, t].astype(np.float64)
            inside = (xy[:, 0] >= 0) & (xy[:, 0] < config.width) & (xy[:, 1] >= 0) & (xy[:, 1] < config.height)
            under, xy = under[inside], xy[inside]
            alpha = occluder_alpha(clip, xy, t)
            decided = np.abs(alpha - 0.5) > 0.05  # OpenCV samples the alpha at 1/32 pixel
            covered = alpha >= 0.5
            assert clip.occluded[under[decided & covered], t].all()
            covered_total += int((decided & covered).sum())
            checked += int(decided.sum())
    assert covered_total > 20, "the arm never covered a tracked point"
    assert covered_total < checked


def test_deterministic_per_seed():
    first, again, other = generate_robot_clip(3, SMALL), generate_robot_clip(3, SMALL), generate_robot_clip(4, SMALL)
    for name in ("video", "tracks", "occluded", "query_frames"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert not np.array_equal(first.video, other.video)


def test_clean_and_sensor_clips_of_a_seed_share_every_label():
    """`photometric=False` changes pixels only: the scene, queries, tracks and occlusion stay."""
    seen, clean = generate_robot_clip(8, SMALL), generate_robot_clip(8, SMALL.replace(photometric=False))
    for name in ("tracks", "occluded", "query_frames", "layer_ids"):
        np.testing.assert_array_equal(getattr(seen, name), getattr(clean, name))
    assert np.abs(seen.video.astype(int) - clean.video).mean() > 5


def _high_frequency(video):
    grey = video.astype(np.float32).mean(-1)
    return float(np.mean([np.abs(cv2.Laplacian(frame, cv2.CV_32F)).mean() for frame in grey]))


def _vignetting(video):
    """Corner brightness over centre brightness."""
    grey = video.astype(np.float32).mean(-1)
    height, width = grey.shape[1:]
    corners = np.concatenate([grey[:, :height // 5, :width // 5], grey[:, -(height // 5):, -(width // 5):]])
    return float(corners.mean() / grey[:, 2 * height // 5:3 * height // 5, 2 * width // 5:3 * width // 5].mean())


def test_appearance_differs_from_kubric_lite():
    """Over the same seeds, the robot clips are darker in the corners (vignetting) and
    carry more high-frequency energy (fine table structure, sensor noise) than Kubric-lite's;
    the corners come from the sensor pipeline (the same scenes rendered clean lack them)."""
    seeds = range(8)
    robot = [generate_robot_clip(s, SMALL.replace(num_points=0)).video for s in seeds]
    clean = [generate_robot_clip(s, CLEAN.replace(num_points=0)).video for s in seeds]
    kubric = [generate_clip(s, SyntheticConfig(frames=12, height=120, width=160, num_points=0)).video
              for s in seeds]
    corners = {name: np.mean([_vignetting(v) for v in videos])
               for name, videos in (("robot", robot), ("clean", clean), ("kubric", kubric))}
    detail = {name: np.mean([_high_frequency(v) for v in videos])
              for name, videos in (("robot", robot), ("clean", clean), ("kubric", kubric))}
    assert corners["robot"] < corners["kubric"] - 0.1, corners
    assert corners["robot"] < corners["clean"] - 0.1, corners
    assert detail["robot"] > 1.3 * detail["kubric"], detail


def test_labeled_and_unlabeled_seeds_never_overlap():
    assert labeled_seeds(0, 20)[-1] < UNLABELED_SEED_OFFSET <= unlabeled_seeds(0, 20)[0]
    with pytest.raises(ValueError, match="never overlap"):
        labeled_seeds(UNLABELED_SEED_OFFSET - 5, 10)


def test_episode_stamps_have_gaps_between_episodes():
    stamps = episode_stamps(np.random.default_rng(0), [10, 10, 10], fps=15.0, gap_range=(3.0, 5.0))
    inside = np.concatenate([np.diff(s) for s in stamps]) / 1e9
    assert np.allclose(inside, 1 / 15, rtol=0.2)
    between = np.array([stamps[i + 1][0] - stamps[i][-1] for i in range(2)]) / 1e9
    assert ((between >= 3.0) & (between <= 5.0 + 1 / 15)).all()


def test_labeled_command_writes_a_tapvid_pickle_that_eval_reads(tmp_path):
    out = tmp_path / "robot.pkl"
    assert main(["labeled", "--out", str(out), "--num-clips", "2", "--seed", "3", "--frames", "4",
                 "--num-points", "16", "--height", "64", "--width", "96"]) == 0
    with open(out, "rb") as file:
        raw = pickle.load(file)
    assert sorted(raw) == ["robot_3", "robot_4"]
    clip = generate_robot_clip(3, RobotConfig(frames=4, num_points=16, height=64, width=96))
    np.testing.assert_array_equal(raw["robot_3"]["video"], clip.video)
    np.testing.assert_allclose(raw["robot_3"]["points"] * np.array([96, 64]), clip.tracks, atol=1e-4)
    samples = list(TapVidDataset(str(out), query_mode="first"))
    assert len(samples) == 2 and samples[0].video.shape == (4, 256, 256, 3)


@pytest.mark.parametrize("storage, compressed", [("mcap", False), ("sqlite3", True)])
def test_unlabeled_bag_is_one_stream_that_log_preparation_cuts_at_the_gaps(tmp_path, storage, compressed):
    """Three episodes in one bag: every frame comes back in order, and the clips that
    bootstap-prepare-logs cuts never span the pause between two episodes."""
    from bootstap_ros_training.logs import ClipConfig, LogClips, prepare_logs

    config = RobotConfig(frames=6, height=48, width=64)
    bag = tmp_path / "robot_bag"
    summary = write_bag(bag, 0, 3, config, storage=storage, compressed=compressed)
    assert summary["frames"] == 18 and summary["episodes"] == 3
    assert (tmp_path / "robot_bag.json").exists()
    manifest = prepare_logs([bag], tmp_path / "cache", ClipConfig(frames=4, size=32))
    clips = LogClips(manifest)
    # 6 frames per episode give one 4-frame clip each; spanning a gap would give a fourth.
    assert len(clips) == 3
    # Each clip starts an episode: its first frame is that episode's first frame, resized.
    for episode, seed in enumerate(unlabeled_seeds(0, 3)):
        first = generate_robot_clip(seed, config.replace(num_points=0)).video[0]
        expected = cv2.resize(first, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float64)
        error = np.abs(clips[episode]["video"][0].astype(np.float64) - expected).mean()
        assert error < (8.0 if compressed else 3.0), (episode, error)
