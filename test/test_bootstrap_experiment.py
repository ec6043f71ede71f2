"""The bootstrapping experiment's arithmetic (tools/bootstrap_experiment.py): the rank
correlation it reports and the table's changes, against hand-computed values."""

import json
import math
from pathlib import Path

import pytest

from helpers.tools import load_tool


@pytest.fixture(scope="module")
def experiment():
    return load_tool("bootstrap_experiment")


def test_spearman_matches_hand_computed_ranks(experiment):
    assert experiment.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert experiment.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Without ties: 1 - 6 sum(d^2) / (n (n^2 - 1)); ranks y = 2, 1, 4, 3, 5: d^2 = 1+1+1+1+0.
    assert experiment.spearman([0.1, 0.2, 0.3, 0.4, 0.5], [5, 1, 9, 7, 11]) == pytest.approx(1 - 6 * 4 / (5 * 24))
    # Ties take their average rank: x ranks 1, 2.5, 2.5, 4; y ranks 1, 3, 2, 4.
    rx, ry = [1, 2.5, 2.5, 4], [1, 3, 2, 4]
    mx, my = sum(rx) / 4, sum(ry) / 4
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    expected = cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    assert experiment.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(expected)


def _write_eval(path: Path, videos):
    path.parent.mkdir(parents=True, exist_ok=True)
    mean = sum(videos.values()) / len(videos)
    path.write_text(json.dumps({"average_jaccard": mean, "average_pts_within_thresh": mean,
                                "occlusion_accuracy": mean,
                                "per_video": {k: {"average_jaccard": v} for k, v in videos.items()}}))


def test_the_table_reports_changes_against_the_embedded_model_and_the_control(experiment, tmp_path):
    evals = tmp_path / "eval"
    _write_eval(evals / "embedded__robot_test.json", {"a": 0.30, "b": 0.40})
    _write_eval(evals / "bootstrap_robot_seed0__robot_test.json", {"a": 0.33, "b": 0.43})
    _write_eval(evals / "bootstrap_robot_seed1__robot_test.json", {"a": 0.35, "b": 0.41})
    _write_eval(evals / "control_seed0__robot_test.json", {"a": 0.31, "b": 0.40})
    _write_eval(evals / "control_seed1__robot_test.json", {"a": 0.30, "b": 0.41})
    _write_eval(evals / "student_robot_seed0__robot_test.json", {"a": 0.36, "b": 0.44})
    _write_eval(evals / "student_robot_seed1__robot_test.json", {"a": 0.34, "b": 0.42})
    _write_eval(evals / "control_student_seed0__robot_test.json", {"a": 0.29, "b": 0.39})
    _write_eval(evals / "best_robot_seed1__robot_test.json", {"a": 0.30, "b": 0.38})
    args = experiment.argparse.Namespace(domains=["robot"], seeds=[0, 1], minutes=1.0, settings=[])
    summary = experiment.summarize(args, tmp_path, {}, 0.0)
    row = summary["table"]["robot"]
    # Means: before 35, seeds 38 and 38, controls 35.5 and 35.5 (AJ in per cent).
    assert row["change"] == pytest.approx([3.0, 3.0])
    assert row["control_change"] == pytest.approx([0.5, 0.5])
    assert row["minus_control"] == pytest.approx([2.5, 2.5])
    # Per clip: seeds' mean minus before = a: +4, b: +2 -> SE = stdev([4, 2]) / sqrt(2) = 1.
    assert row["change_clip_se"] == pytest.approx(1.0)
    # Before the merge: students 40 and 38, one control 34; one best.pt (seed 1) 34.
    assert row["change_before_merge"] == pytest.approx([5.0, 3.0])
    assert row["control_change_before_merge"] == pytest.approx([-1.0])
    assert row["best_change"] == pytest.approx([-1.0])
    line = (tmp_path / "table.md").read_text().splitlines()[2]
    assert line.startswith("| robot |") and line.endswith("| +4.0 ± 1.0 (-1.0) | -1.0 |")


def test_controls_are_merged_as_the_runs_are_unless_merge_is_1(experiment, tmp_path):
    def jobs(settings):
        args = experiment.argparse.Namespace(domains=["robot"], seeds=[0], settings=settings, no_control=False,
                                             python="python")
        return experiment.merge_jobs(args, tmp_path), experiment.after_jobs(args, tmp_path)

    merges, evals = jobs(["lr=1e-4", "merge=0.3"])
    assert [str(c) for c in merges[0].command[-4:]] == [
        "--weight", "0.3", "--output", str(tmp_path / "runs/robot/supervised_seed0/final_merged.pt")]
    control = {str(job.command[job.command.index("--checkpoint") + 1]) for job in evals
               if job.name.startswith("eval control_seed0")}
    assert control == {str(tmp_path / "runs/robot/supervised_seed0/final_merged.pt")}
    assert any(job.name.startswith("eval student_robot_seed0") for job in evals)
    merges, evals = jobs(["merge=1"])
    control = {str(job.command[job.command.index("--checkpoint") + 1]) for job in evals
               if job.name.startswith("eval control_seed0")}
    assert merges == [] and control == {str(tmp_path / "runs/robot/supervised_seed0/final.pt")}
    assert not any(job.name.startswith("eval student_") for job in evals)


def test_the_score_is_ranked_against_aj_within_each_run_and_pooled(experiment, tmp_path):
    """Two runs whose label-free scores differ in scale (each scores its own held-out
    queries): within each run the score orders the checkpoints as AJ does (1.0); pooled,
    the second run's higher scores on lower AJ pull the correlation down. Pooled ranks by
    hand: scores 1..6, AJ 30, 40, 50, 10, 20, 35 -> 3, 5, 6, 1, 2, 4; sum d^2 = 44, so
    1 - 6 * 44 / (6 * 35) = -9/35."""
    runs = {0: ([0.1, 0.2, 0.3], [0.30, 0.40, 0.50]), 1: ([0.6, 0.7, 0.8], [0.10, 0.20, 0.35])}
    for seed, (scores, ajs) in runs.items():
        run = tmp_path / "runs" / "robot" / f"bootstrap_seed{seed}"
        (run / "checkpoints").mkdir(parents=True)
        lines = ["step,cycle_score"]
        for step, score, aj in zip((40, 80, 120), scores, ajs):
            (run / "checkpoints" / f"step_{step:07d}.pt").touch()
            lines.append(f"{step},{score}")
            _write_eval(tmp_path / "eval" / f"curve_robot_seed{seed}_step_{step:07d}__robot_val.json", {"a": aj})
        (run / "eval_log.csv").write_text("\n".join(lines) + "\n")
    args = experiment.argparse.Namespace(seeds=[0, 1])
    result = experiment.curves(args, tmp_path)
    assert result["spearman_within_runs"] == pytest.approx({"seed0": 1.0, "seed1": 1.0})
    assert result["spearman_label_free_vs_aj"] == pytest.approx(-9 / 35)
    assert result["checkpoints_in_correlation"] == 6
