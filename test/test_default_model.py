"""The shipped default model, end to end, against two baselines on unseen clips.

Clips come from the synthetic generator with seeds that training never uses
(training seeds start at 2**31; the held-out set of docs/default-model.md uses 0..49), written
in the TAP-Vid pickle layout and scored by bootstap-eval's own protocol, online, as
the ROS node runs the model.
"""

import json

import numpy as np
import pytest

from bootstap_ros.eval.cli import main as eval_main
from bootstap_ros.eval.cli import parse_config, run_evaluation
from bootstap_ros.model.checkpoint import EMBEDDED_CHECKPOINT, load_checkpoint
from bootstap_ros_training.configs import SMALL
from bootstap_ros_training.domains.real_warps import write_dataset
from bootstap_ros_training.domains.robot_domain import RobotConfig, write_labeled
from bootstap_ros_training.domains.shifted_domains import main as shifted_domains_main
from bootstap_ros_training.domains.synthetic import SyntheticConfig, generate_clip, write_tapvid_pickle

pytestmark = pytest.mark.skipif(not EMBEDDED_CHECKPOINT.is_file(), reason="no embedded model installed")

# Camera clips of their own seeds (70000..70007), 24 frames, 64 points. Robot: Lucas-Kanade
# scores 60.8 AJ, the base model (trained on clean clips only; docs/default-model.md) 50.0,
# the default of 0.3 55.5 and today's default 62.6. Low light: LK 50.3, base 36.5, 0.3's
# 39.7, today's 45.9.
CAMERA_CLIPS = 8
ROBOT_BAR = 0.01  # AJ below LK allowed: today's default is 1.8 above, 0.3's 5.3 below
LOW_LIGHT_BAR = 0.075  # today's default is 4.4 below LK, 0.3's 10.6 below


class StandingStill:
    """The trivial tracker: every point stays visible where it was queried."""

    forward_only = False

    def predict(self, video, query_points):
        xy = np.asarray(query_points, np.float32)[:, [2, 1]]
        tracks = np.repeat(xy[:, None], len(video), axis=1)
        return tracks, np.zeros(tracks.shape[:2], bool)


def _evaluate(dataset, folder):
    results = {}
    for tracker in ("bootstapir", "lk"):
        out = folder / f"{dataset.stem}_{tracker}.json"
        assert eval_main([str(dataset), "--tracker", tracker, "--output", str(out), "--device", "cpu"]) == 0
        results[tracker] = json.loads(out.read_text())
    return results


@pytest.fixture(scope="module")
def real_warp_scores(tmp_path_factory):
    """The embedded model and Lucas-Kanade on clips of the other generator (real
    video frames under known warps): no Kubric-lite code or texture in them."""
    folder = tmp_path_factory.mktemp("real_warps")
    # docs/default-model.md's set: seeds 0..19, 24 frames, 64 points (`python -m bootstap_ros_training.domains.real_warps`).
    dataset = write_dataset(folder / "real_warps.pkl", range(20))
    return _evaluate(dataset, folder)


@pytest.fixture(scope="module")
def robot_scores(tmp_path_factory):
    """The embedded model and Lucas-Kanade on a wrist camera's clips (the robot domain: a
    cheap sensor's noise, softness and colour over weak table textures), seeds apart from
    the validation and test splits."""
    folder = tmp_path_factory.mktemp("robot")
    dataset = write_labeled(folder / "robot.pkl", 70_000, CAMERA_CLIPS, RobotConfig(frames=24, num_points=64))
    return _evaluate(dataset, folder)


@pytest.fixture(scope="module")
def low_light_scores(tmp_path_factory):
    """The embedded model and Lucas-Kanade at night (the low_light domain: a dark, noisy
    sensor), seeds apart from the validation and test splits, written by the domain's CLI."""
    folder = tmp_path_factory.mktemp("low_light")
    dataset = folder / "low_light.pkl"
    assert shifted_domains_main(["labeled", "--domain", "low_light", "--out", str(dataset), "--num-clips",
                                 str(CAMERA_CLIPS), "--seed", "70000", "--frames", "24", "--num-points", "64"]) == 0
    return _evaluate(dataset, folder)


@pytest.fixture(scope="module")
def scores(tmp_path_factory):
    """AJ / <delta_avg / OA of the embedded model, Lucas-Kanade and standing still."""
    folder = tmp_path_factory.mktemp("unseen")
    dataset = folder / "unseen.pkl"
    config = SyntheticConfig(frames=16, num_points=48)
    write_tapvid_pickle(dataset, (generate_clip(seed, config) for seed in range(70_000, 70_004)))
    results = _evaluate(dataset, folder)
    still = parse_config([str(dataset), "--output", str(folder / "still.json")])
    results["still"] = run_evaluation(still, StandingStill())
    return results


def test_embedded_model_is_a_small_causal_project_checkpoint():
    loaded = load_checkpoint(EMBEDDED_CHECKPOINT)
    assert loaded.source == "project" and loaded.config.causal
    # The training command of docs/default-model.md (`--model small`) builds exactly this architecture.
    assert loaded.config == SMALL.replace(causal=True)
    assert EMBEDDED_CHECKPOINT.stat().st_size <= 20 * 2**20


def test_default_model_tracks_the_motion(scores):
    model, still = scores["bootstapir"], scores["still"]
    assert model["config"]["checkpoint"] == str(EMBEDDED_CHECKPOINT)
    # Points on these clips move (camera and objects): a model that did not follow
    # them would score near standing still.
    assert model["average_jaccard"] > still["average_jaccard"] + 0.15, (model, still)
    assert model["average_pts_within_thresh"] > still["average_pts_within_thresh"] + 0.15
    assert model["occlusion_accuracy"] > 0.75


def test_default_model_beats_lucas_kanade(scores):
    # On its own generator the margin is moderate (+8.1 AJ on the Kubric-lite test split of
    # docs/default-model.md; 66.4 vs 64.6 on these four), so the bar here is one AJ point.
    model, lk = scores["bootstapir"], scores["lk"]
    assert model["average_jaccard"] > lk["average_jaccard"] + 0.01, (model["average_jaccard"],
                                                                     lk["average_jaccard"])


def test_default_model_is_trained_for_a_robot_camera(robot_scores):
    # The camera training (docs/default-model.md) moved the robot test split from 33.5
    # (0.2) and 40.8 (0.3) to 47.3 AJ against Lucas-Kanade's 52.8. The bar sits between
    # today's gap to LK on these clips and 0.3's, so the models of 0.2 and 0.3 fail it.
    model, lk = robot_scores["bootstapir"], robot_scores["lk"]
    assert model["average_jaccard"] > lk["average_jaccard"] - ROBOT_BAR, (model["average_jaccard"],
                                                                         lk["average_jaccard"])


def test_default_model_is_trained_for_a_night_camera(low_light_scores):
    # Low light test split: 35.1 (0.2), 38.5 (0.3), 45.6 today, against LK's 50.0.
    model, lk = low_light_scores["bootstapir"], low_light_scores["lk"]
    assert model["average_jaccard"] > lk["average_jaccard"] - LOW_LIGHT_BAR, (model["average_jaccard"],
                                                                             lk["average_jaccard"])


def test_default_model_beats_lucas_kanade_on_the_other_generator(real_warp_scores):
    model, lk = real_warp_scores["bootstapir"], real_warp_scores["lk"]
    # 67.1 vs 63.2 on these clips (the test split of docs/default-model.md).
    assert model["average_jaccard"] > lk["average_jaccard"] + 0.03, (model["average_jaccard"],
                                                                     lk["average_jaccard"])
    assert model["occlusion_accuracy"] > lk["occlusion_accuracy"]
