"""Time budgets, held-out clips, the label-free score and the teacher's label cache."""

import json
import sys

import numpy as np
import pytest
import torch

from bootstap_ros.model import load_checkpoint
from bootstap_ros.model.checkpoint import resolve_checkpoint
from helpers.small_model import blob_clip, small_model
from bootstap_ros_training.budget import CALIBRATION_STEPS, TimeBudget
from bootstap_ros_training.validate import cycle_score, holdout_split


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _steps(budget, clock, seconds, count, start=0, other=0.0):
    """Runs `count` steps of `seconds` each (plus `other` between steps) on the fake clock."""
    step = start
    for _ in range(count):
        clock.now += seconds
        step += 1
        budget.record_step(seconds)
        budget.fit(step)
        clock.now += other
        budget.record_other(other)
    return step


def test_the_budget_fits_the_steps_to_the_time_left_after_calibrating():
    clock = FakeClock()
    started = clock.now
    clock.now += 60.0  # a minute of set-up (decoding, labelling) counts too
    budget = TimeBudget(10.0, started, clock=clock)
    step = _steps(budget, clock, 2.0, CALIBRATION_STEPS - 1)
    assert not budget.calibrated
    step = _steps(budget, clock, 2.0, 1, step)
    # 600 s budget - 60 s set-up - 8 s of steps: 532 s left at 2 s a step.
    assert budget.steps == step + 266
    # The machine gets twice as slow: the schedule shrinks to what is left.
    step = _steps(budget, clock, 4.0, 60, step)
    left = budget.deadline - clock.now
    assert budget.steps == pytest.approx(step + left / 4.0, abs=2)


def test_time_between_steps_is_set_aside_and_the_run_stops_before_the_deadline():
    clock = FakeClock()
    budget = TimeBudget(1.0, clock.now, clock=clock)
    step = _steps(budget, clock, 1.0, 2 * CALIBRATION_STEPS, other=1.0)  # evaluations as long as steps
    left = budget.deadline - clock.now
    assert budget.steps == pytest.approx(step + left / 2.0, rel=0.1)
    while not budget.out_of_time():
        step = _steps(budget, clock, 1.0, 1, step, other=1.0)
    assert clock.now <= budget.deadline and budget.deadline - clock.now < 2.0


def test_the_budget_never_exceeds_a_given_step_count():
    clock = FakeClock()
    budget = TimeBudget(60.0, clock.now, max_steps=50, clock=clock)
    _steps(budget, clock, 1.0, CALIBRATION_STEPS)
    assert budget.steps == 50


def test_held_out_clips_are_the_end_of_each_source():
    clips = [{"source": "a"}] * 20 + [{"source": "b"}] * 5 + [{"source": "c"}]
    held = holdout_split(clips, 0.1, 16)
    assert held == [18, 19, 24]  # the last 2 of a, the last of b; c has one clip: never held out
    assert holdout_split(clips, 0.1, 2) == [19, 24]  # capped: the latest of each source first
    assert holdout_split(clips, 0.0, 16) == []


def _embedded():
    return load_checkpoint(resolve_checkpoint(None)).model.eval()


def test_the_cycle_score_is_high_on_a_still_clip_and_low_across_a_cut():
    """Invariants of the round trip: on a still clip every point comes back where it started;
    if the second half of the clip shows another scene, nothing can come back."""
    model = _embedded()
    still = np.repeat(blob_clip(num_frames=1, height=256, width=256, blobs=200, seed=1), 8, axis=0)
    other = blob_clip(num_frames=1, height=256, width=256, blobs=200, seed=2)
    cut = still.copy()
    cut[4:] = other
    device = torch.device("cpu")
    on_still = cycle_score(model, [still], device, num_points=24)
    on_cut = cycle_score(model, [cut], device, num_points=24)
    assert on_still["cycle_within_4"] > 0.8 and on_still["cycle_median_px"] < 1.5
    assert on_cut["cycle_within_16"] < on_still["cycle_within_16"] - 0.4
    assert on_cut["cycle_score"] < 0.5 * on_still["cycle_score"]


def test_the_cycle_score_ranks_a_trained_model_above_random_weights():
    clip = blob_clip(num_frames=8, height=256, width=256, dx=3.0, dy=2.0, blobs=200, seed=3)
    device = torch.device("cpu")
    trained = cycle_score(_embedded(), [clip], device, num_points=24)["cycle_score"]
    random = small_model(resolution=(256, 256), refinement_iters=1).eval()
    assert trained > cycle_score(random, [clip], device, num_points=24)["cycle_score"] + 0.2


def test_the_label_cache_labels_each_clip_once_with_the_teachers_own_outputs(tmp_path):
    from bootstap_ros_training.teacher import LabelCache
    from bootstap_ros_training.loop import model_forward

    videos = torch.from_numpy(np.stack([blob_clip(num_frames=4, height=64, width=64, blobs=40, seed=s)
                                        for s in range(3)]))
    teacher = small_model().eval()
    calls = []

    def forward(net, video, queries):
        calls.append(len(video))
        return model_forward(net, video, queries, "off", True)

    files = ["a.npy", "b.npy", "c.npy"]

    def cache(model=teacher):
        return LabelCache(model, forward, 16, seed=0, textured_fraction=0.5, folder=tmp_path / "labels",
                          clip_files=files)

    labels = cache()
    queries, batch = labels.batch([2, 0], videos[[2, 0]], torch.Generator().manual_seed(1), 5)
    assert len(calls) == 2 and queries.shape == (2, 5, 3) and batch.tracks.shape == (2, 5, 4, 2)
    # The stored labels are what the teacher says for the stored queries.
    with torch.no_grad():
        direct = model_forward(teacher, videos[2:3], labels.queries[2][None], "off", True)
    torch.testing.assert_close(labels.labels[2].tracks, direct.tracks[0])
    torch.testing.assert_close(labels.labels[2].occlusion, direct.occlusion[0])
    # A batch draws distinct labelled queries of each clip, with their labels.
    for row in range(5):
        match = (labels.queries[2] == queries[0, row]).all(-1).nonzero()[:, 0]
        assert len(match) == 1
        torch.testing.assert_close(batch.tracks[0, row], labels.labels[2].tracks[match[0]])
    # Clips come back: no teacher pass. A new run with the same teacher reads the files.
    labels.batch([0, 2], videos[[0, 2]], torch.Generator().manual_seed(2), 5)
    assert len(calls) == 2
    again = cache()
    again.batch([2, 0], videos[[2, 0]], torch.Generator().manual_seed(1), 5)
    assert len(calls) == 2 and torch.equal(again.labels[0].tracks, labels.labels[0].tracks)
    # Another teacher's run labels afresh (and drops the old files).
    cache(small_model(seed=5).eval()).batch([0], videos[[0]], torch.Generator().manual_seed(1), 5)
    assert len(calls) == 3 and len(list((tmp_path / "labels").glob("*.pt"))) == 1


def test_textured_queries_avoid_flat_regions():
    from bootstap_ros_training.pseudo_labels import sample_textured_queries

    video = np.full((1, 2, 64, 64, 3), 128, np.uint8)
    video[0, :, 20:40, 30:50] = blob_clip(num_frames=2, height=20, width=20, blobs=30, seed=4)
    queries = sample_textured_queries(torch.Generator().manual_seed(0), torch.from_numpy(video), 200, 1.0)
    y, x = queries[0, :, 1], queries[0, :, 2]
    inside = (y >= 17) & (y < 43) & (x >= 27) & (x < 53)  # the texture and its edge
    assert inside.all()
    uniform = sample_textured_queries(torch.Generator().manual_seed(0), torch.from_numpy(video), 200, 0.0)
    assert not ((uniform[0, :, 1] >= 17) & (uniform[0, :, 1] < 43)).all()


def test_bootstap_validate_scores_checkpoints_on_a_bag(tmp_path, capsys):
    from bootstap_ros.model import save_checkpoint
    from bootstap_ros_training.logs import write_image_bag
    from bootstap_ros_training.validate import main

    frames = blob_clip(num_frames=24, height=96, width=128, dx=1.5, dy=0.5, blobs=120, seed=6)
    write_image_bag(tmp_path / "bag", frames, [i * 66_000_000 for i in range(len(frames))],
                    topic="/camera/image_raw", storage="mcap")
    save_checkpoint(tmp_path / "random.pt", small_model(resolution=(256, 256), refinement_iters=1))
    out = tmp_path / "scores.json"
    assert main(["--data", str(tmp_path / "bag"), "--checkpoint", "embedded", str(tmp_path / "random.pt"),
                 "--frames", "8", "--points", "16", "--output", str(out)]) == 0
    scores = json.loads(out.read_text())
    assert [s["checkpoint"] for s in scores] == ["embedded model", str(tmp_path / "random.pt")]
    assert scores[0]["cycle_score"] > scores[1]["cycle_score"] and scores[0]["clips"] == 3
    captured = capsys.readouterr()
    printed = captured.out
    assert "<- best" in printed.splitlines()[1]
    # It says what it is doing while it works (minutes at 32 clips), on stderr.
    assert "embedded model: 3/3 clips scored" in captured.err and "decoding the logs" in captured.err
    assert main(["--data", str(tmp_path / "missing")]) == 2  # input the user gave: exit status 2


def test_pseudo_label_grades_by_hand():
    from bootstap_ros_training.grading import summarise

    # Six entries: kept by the masks / taught as positions (teacher visible) / truly visible,
    # the teacher's error in px.
    kept = torch.tensor([1, 1, 1, 0, 0, 1], dtype=torch.bool)
    position = torch.tensor([1, 1, 1, 1, 0, 0], dtype=torch.bool)
    truly = torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.bool)
    error = torch.tensor([1.0, 9.0, 2.0, 3.0, 50.0, 0.5])
    gap = torch.tensor([2.0, 4.0, 6.0, 8.0, 10.0, 12.0])
    occlusion_visible = torch.tensor([1, 1, 1, 1, 1, 0], dtype=torch.bool)
    grades = summarise(kept, position, truly, error, gap, occlusion_visible)
    # Taught: entries 0, 1, 2; right (truly visible, teacher visible, within 4 px): 0 and 3.
    assert grades["grade_precision"] == pytest.approx(1 / 3)
    assert grades["grade_recall"] == pytest.approx(1 / 2)
    assert grades["grade_teacher_error_kept_px"] == pytest.approx((1.0 + 9.0) / 2)  # taught and truly visible
    assert grades["grade_teacher_error_dropped_px"] == pytest.approx(3.0)  # entry 3
    assert grades["grade_visibility_agreement"] == pytest.approx(3 / 6)  # entries 0, 1, 3
    assert grades["grade_occlusion_agreement"] == pytest.approx(4 / 6)  # 0, 1, 3, 4
    assert grades["grade_gap_px"] == pytest.approx((2.0 + 4.0 + 6.0) / 3)
    assert grades["grade_kept"] == pytest.approx(4 / 6)


def test_a_runs_kept_checkpoints_are_graded_afterwards(tmp_path):
    from bootstap_ros.model import save_checkpoint
    from bootstap_ros_training.bootstrap import main as bootstrap_main
    from bootstap_ros_training.grading import main as grading_main
    from bootstap_ros_training.logs import write_image_bag
    from bootstap_ros_training.domains.synthetic import SyntheticConfig, generate_clip, write_tapvid_pickle

    frames = blob_clip(num_frames=16, height=64, width=80, dx=1.0, dy=0.5, blobs=60)
    write_image_bag(tmp_path / "bag", frames, [i * 50_000_000 for i in range(len(frames))],
                    topic="/wrist/image_raw", storage="mcap")
    save_checkpoint(tmp_path / "tiny.pt", small_model())
    assert bootstrap_main(["--data", str(tmp_path / "bag"), "--init", str(tmp_path / "tiny.pt"), "--output",
                           str(tmp_path / "run"), "--steps", "2", "--teacher", "fixed", "--device", "cpu",
                           "num_points=8", "label_points=8", "clip_frames=4", "supervised_batch_size=0",
                           "num_workers=0", "holdout=0", "keep_every=1", "warmup=1"]) == 0
    clips = [generate_clip(seed, SyntheticConfig(frames=6, height=64, width=64, num_points=6)) for seed in range(2)]
    write_tapvid_pickle(tmp_path / "labelled.pkl", clips)
    assert grading_main([str(tmp_path / "run"), "--grade", str(tmp_path / "labelled.pkl")]) == 0
    with open(tmp_path / "run" / "grades.csv") as file:
        rows = list(__import__("csv").DictReader(file))
    assert [int(r["step"]) for r in rows] == [1, 2]
    for row in rows:
        assert 0.0 <= float(row["grade_kept"]) <= 1.0 and 0.0 <= float(row["grade_visibility_agreement"]) <= 1.0


def test_the_teacher_retraces_right_labels_and_not_wrong_ones():
    from bootstap_ros.model import Trajectories
    from bootstap_ros_training.teacher import label_batch, round_trip_errors
    from bootstap_ros_training.loop import model_forward

    model = _embedded()

    def forward(net, video, queries):
        return model_forward(net, video, queries, "off", True)

    video = torch.from_numpy(blob_clip(num_frames=8, height=256, width=256, dx=2.0, dy=1.0, blobs=200, seed=7))[None]
    generator = torch.Generator().manual_seed(0)
    queries = torch.stack([torch.randint(0, 8, (1, 24), generator=generator).float(),
                           40 + torch.rand(1, 24, generator=generator) * 176,
                           40 + torch.rand(1, 24, generator=generator) * 176], -1)
    labels = label_batch(model, video, queries, forward)
    right = round_trip_errors(model, video, queries, labels, forward)[0]
    # The same labels 30 px off: queried again there, the teacher tracks another point back.
    shifted = Trajectories(labels.tracks + torch.tensor([30.0, 0.0]), labels.occlusion, labels.expected_dist)
    wrong = round_trip_errors(model, video, queries, shifted, forward)[0]
    finite = torch.isfinite(right)
    assert finite.float().mean() > 0.8 and right[finite].median() < 2.0
    assert (wrong[finite] > 10.0).float().mean() > 0.8


def test_the_label_cache_draws_retraced_tracks_first():
    from bootstap_ros_training.teacher import LabelCache

    cache = LabelCache(small_model().eval(), None, 8, seed=0, textured_fraction=0.0, round_trip=4.0)
    cache.queries[0] = torch.arange(8.0)[:, None].repeat(1, 3)
    cache.errors[0] = torch.tensor([9.0, 1.0, float("inf"), 3.0, 5.0, 0.5, 7.0, 2.0])
    for seed in range(5):
        drawn = cache._draw(0, torch.Generator().manual_seed(seed), 4)
        assert sorted(drawn.tolist()) == [1, 3, 5, 7]
    assert set(cache._draw(0, torch.Generator().manual_seed(0), 6).tolist()) > {1, 3, 5, 7}
