"""TAP-Vid metrics against small cases worked out by hand."""

import math
import sys

import numpy as np
import pytest

from bootstap_ros.eval.metrics import (
    METRIC_NAMES,
    THRESHOLDS,
    compute_video_metrics,
    evaluation_mask,
    mean_over_videos,
)


def first_mode_case():
    """One track queried at frame 0; 4 frames; gt at (10, 10), occluded at frame 3.

    Scored frames: 1, 2, 3 (after the query). gt visible among them: 1, 2.
    Prediction, always visible: frame 1 exact, frame 2 at distance exactly 4
    (a tie: "within d" is strict, so not within 4), frame 3 anywhere.
      OA: frames 1, 2 agree, frame 3 does not -> 2/3.
      d = 1, 2, 4: within only at frame 1 -> pts 1/2; TP 1;
                   FP = frame 2 (too far) + frame 3 (gt occluded) = 2 -> J = 1/(2+2) = 1/4.
      d = 8, 16:   within at 1, 2 -> pts 1; TP 2; FP = frame 3 -> J = 2/(2+1) = 2/3.
      AJ = (3 * 1/4 + 2 * 2/3) / 5 = 5/12; <delta_avg = (3 * 1/2 + 2 * 1) / 5 = 7/10.
    """
    query = np.array([[0, 10, 10]], np.float32)
    gt_tracks = np.full((1, 4, 2), 10.0)
    gt_occluded = np.array([[False, False, False, True]])
    pred_tracks = np.array([[[50, 50], [10, 10], [14, 10], [99, 99]]], np.float32)
    pred_occluded = np.zeros((1, 4), bool)
    expected = {"occlusion_accuracy": 2 / 3, "average_jaccard": 5 / 12,
                "average_pts_within_thresh": 7 / 10}
    for d in (1, 2, 4):
        expected.update({f"pts_within_{d}": 1 / 2, f"jaccard_{d}": 1 / 4})
    for d in (8, 16):
        expected.update({f"pts_within_{d}": 1.0, f"jaccard_{d}": 2 / 3})
    return (query, gt_occluded, gt_tracks, pred_occluded, pred_tracks), expected


def strided_mode_case():
    """One track queried at frame 2; 4 frames; gt at (20, 30), occluded at frame 0.

    Scored frames: 0, 1, 3 (all but the query frame; the wild visible prediction
    at frame 2 must not count). gt visible among them: 1, 3.
      frame 0: predicted occluded, truly occluded (position irrelevant);
      frame 1: predicted visible at distance 1.5;
      frame 3: predicted occluded at distance 0 (a miss).
      OA: frames 0, 1 agree, 3 does not -> 2/3.
      d = 1:  within at frame 3 only -> pts 1/2 (pts ignores predicted occlusion);
              TP 0; FP = frame 1 (too far) -> J = 0/(2+1) = 0.
      d >= 2: within at 1 and 3 -> pts 1; TP = frame 1; FP 0 -> J = 1/2.
      AJ = (0 + 4 * 1/2) / 5 = 2/5; <delta_avg = (1/2 + 4) / 5 = 9/10.
    """
    query = np.array([[2, 30, 20]], np.float32)
    gt_tracks = np.tile(np.array([20.0, 30.0]), (1, 4, 1))
    gt_occluded = np.array([[True, False, False, False]])
    pred_tracks = np.array([[[200, 200], [21.5, 30], [250, 0], [20, 30]]], np.float32)
    pred_occluded = np.array([[True, False, False, True]])
    expected = {"occlusion_accuracy": 2 / 3, "average_jaccard": 2 / 5,
                "average_pts_within_thresh": 9 / 10,
                "pts_within_1": 1 / 2, "jaccard_1": 0.0}
    for d in (2, 4, 8, 16):
        expected.update({f"pts_within_{d}": 1.0, f"jaccard_{d}": 1 / 2})
    return (query, gt_occluded, gt_tracks, pred_occluded, pred_tracks), expected


def test_metric_names_cover_every_threshold():
    assert THRESHOLDS == (1, 2, 4, 8, 16)
    assert set(METRIC_NAMES) == {
        "average_jaccard", "average_pts_within_thresh", "occlusion_accuracy",
        *(f"jaccard_{d}" for d in THRESHOLDS), *(f"pts_within_{d}" for d in THRESHOLDS),
    }


@pytest.mark.parametrize("case, mode", [(first_mode_case, "first"), (strided_mode_case, "strided")])
def test_hand_worked_video(case, mode):
    inputs, expected = case()
    metrics = compute_video_metrics(*inputs, query_mode=mode)
    assert set(metrics) == set(METRIC_NAMES)
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=1e-12), name


def test_evaluation_mask_by_mode():
    queries = np.array([[0, 0, 0], [2, 0, 0], [1.6, 0, 0]])  # 1.6 rounds to frame 2
    first = evaluation_mask(queries, 4, "first")
    strided = evaluation_mask(queries, 4, "strided")
    np.testing.assert_array_equal(first, [[0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 1]])
    np.testing.assert_array_equal(strided, [[0, 1, 1, 1], [1, 1, 0, 1], [1, 1, 0, 1]])
    with pytest.raises(ValueError, match="query_mode"):
        evaluation_mask(queries, 4, "middle")


def test_same_predictions_scored_differently_by_mode():
    # The strided case read in first mode scores only frame 3: gt visible,
    # predicted occluded. OA 0; pts_within 1 for every d; no TP, no FP -> J 0.
    inputs, _ = strided_mode_case()
    metrics = compute_video_metrics(*inputs, query_mode="first")
    assert metrics["occlusion_accuracy"] == 0.0
    assert metrics["average_pts_within_thresh"] == 1.0
    assert metrics["average_jaccard"] == 0.0


def test_queries_of_one_video_are_pooled():
    # Two copies of the first case as two queries of one video: every count
    # doubles, so every ratio stays the same.
    (query, gt_occ, gt, pred_occ, pred), expected = first_mode_case()
    doubled = [np.concatenate([a, a]) for a in (query, gt_occ, gt, pred_occ, pred)]
    metrics = compute_video_metrics(*doubled, query_mode="first")
    assert metrics["average_jaccard"] == pytest.approx(expected["average_jaccard"])


def test_mean_over_videos_weighs_videos_equally():
    first_inputs, first_expected = first_mode_case()
    strided_inputs, strided_expected = strided_mode_case()
    videos = [
        compute_video_metrics(*first_inputs, query_mode="first"),
        compute_video_metrics(*strided_inputs, query_mode="strided"),
    ]
    mean = mean_over_videos(videos)
    assert mean["average_jaccard"] == pytest.approx((5 / 12 + 2 / 5) / 2)
    assert mean["occlusion_accuracy"] == pytest.approx(2 / 3)
    assert all(math.isnan(value) for value in mean_over_videos([]).values())


def test_nothing_visible_to_score_gives_nan_like_the_official_code():
    # The only visible frame is the query frame: no visible scored point, so
    # pts_within has 0/0; Jaccard still counts the false positive (0/1).
    query = np.array([[0, 5, 5]], np.float32)
    gt_occluded = np.array([[False, True, True]])
    tracks = np.full((1, 3, 2), 5.0)
    metrics = compute_video_metrics(query, gt_occluded, tracks, np.zeros((1, 3), bool), tracks, "first")
    assert math.isnan(metrics["pts_within_4"])
    assert metrics["jaccard_4"] == 0.0
    assert metrics["occlusion_accuracy"] == 0.0


def test_shape_mismatch_is_reported():
    inputs, _ = first_mode_case()
    query, gt_occ, gt, pred_occ, pred = inputs
    with pytest.raises(ValueError, match=r"pred_tracks has shape \(1, 3, 2\), expected \(1, 4, 2\)"):
        compute_video_metrics(query, gt_occ, gt, pred_occ, pred[:, :3], "first")


def test_metrics_module_imports_nothing_heavy():
    import os
    import subprocess

    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo_root, os.environ.get("PYTHONPATH", "")]))
    code = ("import sys, bootstap_ros.eval.metrics, bootstap_ros.eval.datasets; "
            "print([m for m in ('torch', 'cv2', 'matplotlib', 'PIL') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]"
