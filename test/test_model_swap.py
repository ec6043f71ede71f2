"""Model swaps without ROS: ids given to points, the kept query images and their memory bound,
re-encoding, TrackingSession.apply_swap, ModelLoader, and query sets that carry their images."""

import threading

import numpy as np
import pytest
import torch

from bootstap_ros.cli import queries as queries_cli
from bootstap_ros.model import load_checkpoint, save_checkpoint
from bootstap_ros.model.checkpoint import EMBEDDED_CHECKPOINT
from bootstap_ros.queries import grid_queries
from bootstap_ros.tracking import CausalTracker, TrackResult
from bootstap_ros.tracking.query_set import ModelIdentity, QuerySet, QuerySetError
from bootstap_ros.tracking.reencode import PointOrigins, reencode
from bootstap_ros.tracking.session import (ModelLoader, StartupError, TrackerInfo, TrackingSession,
                                           load_query_set)
from helpers.query_set_files import as_version_1
from helpers.small_model import blob_clip, moving_clip, small_model

needs_embedded = pytest.mark.skipif(not EMBEDDED_CHECKPOINT.is_file(),
                                    reason="the embedded default model is not installed")


@pytest.fixture(scope="module")
def models():
    return small_model(seed=0), small_model(seed=1)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, models):
    folder = tmp_path_factory.mktemp("swap")
    paths = folder / "a.pt", folder / "b.pt"
    for path, model in zip(paths, models):
        save_checkpoint(path, model)
    return paths


def identity(path, model):
    return ModelIdentity.of(path, model.config)


# ---------------------------------------------------------------- the tracker
def test_given_ids_are_kept_and_numbering_continues_after_them(models):
    tracker = CausalTracker(models[0], max_points=8, backend="torch")
    frame = moving_clip(num_frames=1)[0]
    features = tracker.query_features(frame, [[10.0, 10.0], [20.0, 20.0]])
    assert tracker.add_points_from_features(features, ids=[7, 3]).tolist() == [7, 3]
    assert tracker.ids.tolist() == [3, 7] and tracker.next_id == 8
    assert tracker.add_points(frame, [[5.0, 5.0]]).tolist() == [8]
    for bad in ([8, 9], [9, 9], [-1, 9]):  # active, repeated, negative
        with pytest.raises(ValueError, match="ids must be distinct"):
            tracker.add_points_from_features(features, ids=bad)
    with pytest.raises(ValueError, match="can only grow"):
        tracker.next_id = 2
    tracker.next_id = 20
    assert tracker.add_points(frame, [[6.0, 6.0]]).tolist() == [20]


def test_query_features_of_another_image_leave_the_live_frame_alone(models, caplog):
    tracker = CausalTracker(models[0], max_points=4, backend="torch")
    clip = moving_clip(num_frames=2)
    tracker.add_points(clip[0], [[10.0, 10.0]])
    big = moving_clip(num_frames=1, height=96, width=160)[0]
    features = tracker.query_features(big, [[150.0, 90.0]])  # inside the big image only
    assert tracker.frame_size == (48, 80)
    with caplog.at_level("WARNING"):
        tracker.step(clip[1])
    assert "input size changed" not in caplog.text
    # The live frame's size must not leak in: a tracker that never saw a frame agrees.
    fresh = CausalTracker(models[0], max_points=4, backend="torch").query_features(big, [[150.0, 90.0]])
    for name in ("lowres", "hires"):
        np.testing.assert_array_equal(features[name], fresh[name])


# ---------------------------------------------------------------- kept images
def result(ids, xy, visible):
    n = len(ids)
    zeros = np.zeros(n, np.float32)
    return TrackResult(ids=np.asarray(ids, np.int64), xy=np.asarray(xy, np.float32).reshape(-1, 2),
                       visible=np.asarray(visible, bool), occlusion=zeros, uncertainty=zeros,
                       occlusion_logit=zeros, expected_dist_logit=zeros, frame_size=(4, 4))


def test_origins_keep_the_images_points_need_within_the_bound():
    image = [np.full((4, 4, 3), k, np.uint8) for k in range(6)]  # 48 bytes each
    origins = PointOrigins(memory_bytes=3 * 48)
    f0 = origins.frame(image[0])
    origins.add([0, 1], f0, [[1, 1], [2, 2]])
    origins.observe(f0, result([0, 1], [[1, 1], [2, 2]], [True, True]))
    f1 = origins.frame(image[1])
    origins.add([2], f1, [[3, 3]])
    origins.observe(f1, result([0, 1, 2], [[1.5, 1], [2, 2.5], [3, 3]], [True, False, True]))
    # f0: the query of 0 and 1 and where 1 was last seen; f1: the query of 2, the latest.
    assert origins.kept == (2, 96)
    records = {r.id: r for r in origins.records()}
    assert records[1].query.image is image[0] and records[1].seen.image is image[0]
    assert records[1].seen.xy == (2.0, 2.0) and records[1].latest.xy == (2.0, 2.5)
    assert records[0].seen.image is image[1] and records[0].seen.xy == (1.5, 1.0)

    f2 = origins.frame(image[2])
    origins.observe(f2, result([1, 2], [[2, 3], [3, 4]], [False, False]))  # 0 removed
    assert [r.id for r in origins.records()] == [1, 2]
    f3 = origins.frame(image[3])
    origins.observe(f3, result([1, 2], [[2, 3], [3, 4]], [False, False]))
    # f0 (query and sighting of 1), f1 (query and sighting of 2), f3 (the latest); f2 unneeded.
    assert origins.kept == (3, 144) and origins.dropped_frames == 0
    origins.memory_bytes = 2 * 48
    f4 = origins.frame(image[4])
    origins.observe(f4, result([1, 2], [[2, 3], [3, 4]], [False, False]))
    # Past the bound the oldest goes: f0, so point 1 has neither query nor sighting left.
    assert origins.kept == (2, 96) and origins.dropped_frames == 1
    records = {r.id: r for r in origins.records()}
    assert records[1].query is None and records[1].seen is None and records[1].latest.image is image[4]
    assert records[2].query.image is image[1]
    origins.memory_bytes = 0
    f5 = origins.frame(image[5])
    origins.observe(f5, result([1, 2], [[2, 3], [3, 4]], [False, True]))
    assert origins.kept == (1, 48)  # the latest image is always kept
    records = {r.id: r for r in origins.records()}
    assert records[2].query is None and records[2].seen.image is image[5]


def test_reencode_takes_the_best_source_one_pass_per_image():
    images = [np.full((4, 4, 3), k, np.uint8) for k in range(3)]
    origins = PointOrigins()
    f0 = origins.frame(images[0])
    origins.add([0, 1], f0, [[1, 1], [2, 2]])
    origins.observe(f0, result([0, 1], [[1, 1], [2, 2]], [True, True]))
    f1 = origins.frame(images[1])
    origins.add([2], f1, [[3, 3]])
    origins.observe(f1, result([0, 1, 2], [[1, 2], [2, 3], [3, 3]], [True, True, False]))
    origins.memory_bytes = 2 * 48  # drops f0: 0 and 1 lose their query, keep their sightings
    f2 = origins.frame(images[2])
    origins.observe(f2, result([0, 1, 2], [[1, 3], [2, 4], [3, 4]], [False, True, False]))
    calls = []

    def query_features(image, xy):  # features that say which image and position they came from
        calls.append(int(image[0, 0, 0]))
        return {"a": np.concatenate([np.full((len(xy), 1), image[0, 0, 0], np.float32), xy], 1)}

    made = reencode(query_features, None, origins.records())
    assert made.ids.tolist() == [0, 1, 2] and made.kinds == ["seen", "seen", "query"]
    # 0 was last seen on f1 at (1, 2); 1 on f2 at (2, 4); 2's query is on f1 at (3, 3).
    np.testing.assert_array_equal(made.features["a"], [[1, 1, 2], [2, 2, 4], [1, 3, 3]])
    assert sorted(calls) == [1, 2]  # f1 once for points 0 and 2
    assert set(made.requeried) == {0, 1} and made.requeried[1].xy == (2.0, 4.0)
    ahead = reencode(query_features, None, origins.records(), queries_only=True)
    assert ahead.ids.tolist() == [2] and not ahead.lost


# ---------------------------------------------------------------- sessions
def play(session, frames, start=0):
    return [session.process(frame, "rgb8", start + t) for t, frame in enumerate(frames)]


def test_swap_keeps_ids_and_points_track_as_added_on_their_query_frames(models):
    a, b = models
    clip = moving_clip(num_frames=9)
    session = TrackingSession(CausalTracker(a, max_points=8, block_size=4, backend="torch"), grid_points=2)
    play(session, clip[:2])
    session.request_add([[33.0, 21.0], [70.0, 40.0]])
    play(session, clip[2:5], start=2)
    session.request_remove([1])
    play(session, clip[5:6], start=5)
    new = CausalTracker(b, max_points=8, block_size=4, backend="torch")
    session.request_swap(session.prepare_swap(new, None))
    after = play(session, clip[6:], start=6)
    outcome = session.take_swap_outcomes().pop()
    assert outcome.error is None and outcome.counts["query"] == 5 and not outcome.lost
    assert session.tracker is new
    assert all(r.ids.tolist() == [0, 2, 3, 4, 5] for r in after)
    session.request_add([[5.0, 5.0]])
    assert play(session, clip[8:], start=8)[0].ids.tolist() == [0, 2, 3, 4, 5, 6]  # never reused

    # Second path: a fresh tracker of model b with the points added on their own frames
    # (the grid on frame 0, the requests on frame 2) when the swap happened.
    reference = CausalTracker(b, max_points=8, block_size=4, backend="torch")
    grid = grid_queries(2, (48, 80))[:, 1:]
    reference.add_points(clip[0], grid[[0, 2, 3]])
    reference.add_points(clip[2], [[33.0, 21.0], [70.0, 40.0]])
    for frame, swapped in zip(clip[6:], after):
        np.testing.assert_allclose(reference.step(frame).xy, swapped.xy, atol=1e-4)


def test_without_kept_images_points_restart_from_their_latest_position(models):
    a, b = models
    clip = moving_clip(num_frames=7)
    for threshold, kind in ((0.0, "seen"), (1.0, "latest")):  # all visible / none visible
        tracker = CausalTracker(a, max_points=8, backend="torch", visibility_threshold=threshold)
        session = TrackingSession(tracker, grid_points=2, frame_memory_bytes=0)
        last = play(session, clip[:4])[-1]
        session.request_swap(session.prepare_swap(CausalTracker(b, max_points=8, backend="torch"), None))
        after = play(session, clip[4:], start=4)
        outcome = session.take_swap_outcomes().pop()
        assert outcome.counts[kind] == 4 and outcome.counts["query"] == 0
        assert session.tracker.visibility_threshold == threshold  # carried over
        reference = CausalTracker(b, max_points=8, backend="torch")
        reference.add_points(clip[3], last.xy)
        for frame, swapped in zip(clip[4:], after):
            assert swapped.ids.tolist() == [0, 1, 2, 3]
            np.testing.assert_allclose(reference.step(frame).xy, swapped.xy, atol=1e-4)


def test_a_swap_that_does_not_fit_changes_nothing(models):
    a, b = models
    clip = moving_clip(num_frames=4)
    tracker = CausalTracker(a, max_points=8, backend="torch")
    session = TrackingSession(tracker, grid_points=2)
    before = play(session, clip[:2])[-1]
    small = CausalTracker(b, max_points=2, backend="torch")
    session.request_swap(session.prepare_swap(small, None))
    after = play(session, clip[2:3], start=2)[0]
    outcome = session.take_swap_outcomes().pop()
    assert "holds at most 2 points and 4 are tracked" in outcome.error
    assert session.tracker is tracker and small.num_points == 0
    assert after.ids.tolist() == before.ids.tolist()
    # The same frame tracked by an untouched copy: the failed swap left no trace.
    twin = TrackingSession(CausalTracker(a, max_points=8, backend="torch"), grid_points=2)
    np.testing.assert_allclose(play(twin, clip[:3])[-1].xy, after.xy, atol=1e-5)


@needs_embedded
def test_swapped_trained_model_keeps_following_the_known_motion(perturbed_embedded):
    dx, dy = 1.5, 1.0
    clip = blob_clip(num_frames=10, height=128, width=160, dx=dx, dy=dy)
    embedded = load_checkpoint(EMBEDDED_CHECKPOINT).model
    other = load_checkpoint(perturbed_embedded).model
    session = TrackingSession(CausalTracker(embedded, max_points=16, backend="torch"), grid_points=3)
    tracked = play(session, clip[:4])
    session.request_swap(session.prepare_swap(
        CausalTracker(other, max_points=16, backend="torch"), identity(perturbed_embedded, other)))
    tracked += play(session, clip[4:], start=4)
    assert session.take_swap_outcomes().pop().counts["query"] == 9
    start = grid_queries(3, (128, 160))[:, 1:]
    errors = np.stack([np.linalg.norm(r.xy - (start + [t * dx, t * dy]), axis=-1)
                       for t, r in enumerate(tracked)])
    assert all(r.ids.tolist() == list(range(9)) for r in tracked)
    assert np.median(errors[4:]) < 1.0 and (errors[4:] < 4.0).all(), errors


# ---------------------------------------------------------------- query sets with images
def make_set(folder, frame, checkpoint, *args):
    np.save(folder / "demo.npy", frame[None])
    out = folder / f"set_{checkpoint.stem}.npz"
    assert queries_cli.main([str(folder / "demo.npy"), "--output", str(out), "--checkpoint",
                             str(checkpoint), *args]) == 0
    return out


def info_for(path, model):
    return TrackerInfo(checkpoint=str(path), source="project", backend="torch", device="cpu",
                       resolution=tuple(model.config.resolution), causal=True,
                       identity=identity(path, model))


def test_a_set_keeps_its_image_exactly_and_serves_another_model(tmp_path, models, checkpoints):
    a, b = models
    clip = moving_clip(num_frames=5)
    path = make_set(tmp_path, clip[0], checkpoints[0], "--grid", "2")
    query_set = load_query_set(str(path), info_for(checkpoints[1], b))  # another model: accepted
    np.testing.assert_array_equal(query_set.images[0], clip[0])  # PNG: lossless
    assert query_set.image_index.tolist() == [0, 0, 0, 0] and query_set.reencodable

    session = TrackingSession(CausalTracker(b, max_points=8, backend="torch"),
                              identity=identity(checkpoints[1], b))
    session.query_set = query_set
    tracked = play(session, clip[1:])
    assert session.query_set.model == identity(checkpoints[1], b)  # kept re-encoded for resets
    # Second path: b's own features of the original frame, not the file's image.
    reference = CausalTracker(b, max_points=8, backend="torch")
    reference.add_points_from_features(reference.query_features(clip[0], grid_queries(2, (48, 80))[:, 1:]))
    for frame, result in zip(clip[1:], tracked):
        assert result.ids.tolist() == [0, 1, 2, 3]
        np.testing.assert_allclose(reference.step(frame).xy, result.xy, atol=1e-4)


def test_a_version_1_set_works_with_its_own_model_only(tmp_path, models, checkpoints):
    a, b = models
    clip = moving_clip(num_frames=4)
    new = make_set(tmp_path, clip[0], checkpoints[0], "--grid", "2")
    old = as_version_1(new, tmp_path / "old.npz")
    with pytest.raises(QuerySetError, match="holds no demonstration image .query set version 1"):
        load_query_set(str(old), info_for(checkpoints[1], b))
    loaded = load_query_set(str(old), info_for(checkpoints[0], a))
    assert not loaded.reencodable
    with pytest.raises(QuerySetError, match="version 1"):
        loaded.reencoded(None, identity(checkpoints[1], b))
    runs = []
    for path in (old, new):
        session = TrackingSession(CausalTracker(a, max_points=8, backend="torch"),
                                  identity=identity(checkpoints[0], a))
        session.query_set = load_query_set(str(path), info_for(checkpoints[0], a))
        runs.append(play(session, clip[1:]))
    for from_old, from_new in zip(*runs):
        assert from_old.ids.tolist() == [0, 1, 2, 3]
        np.testing.assert_array_equal(from_old.xy, from_new.xy)  # the same stored features


def test_after_a_swap_a_version_1_set_is_requeried_and_not_added_again(tmp_path, models, checkpoints):
    a, b = models
    clip = moving_clip(num_frames=5)
    old = as_version_1(make_set(tmp_path, clip[0], checkpoints[0], "--grid", "2"), tmp_path / "old.npz")
    warnings = []
    session = TrackingSession(CausalTracker(a, max_points=8, backend="torch"), grid_points=1,
                              warn=lambda kind, message: warnings.append((kind, message)),
                              identity=identity(checkpoints[0], a))
    session.query_set = QuerySet.load(old)
    play(session, clip[:2])
    session.request_swap(session.prepare_swap(CausalTracker(b, max_points=8, backend="torch"),
                                              identity(checkpoints[1], b)))
    assert play(session, clip[2:3], start=2)[0].ids.tolist() == [0, 1, 2, 3, 4]
    counts = session.take_swap_outcomes().pop().counts
    assert counts["query"] == 1 and counts["seen"] + counts["latest"] == 4  # the set had no image
    session.request_reset()
    assert play(session, clip[3:4], start=3)[0].ids.tolist() == [5]  # the grid only
    assert warnings[-1][0] == "query_set" and "version 1" in warnings[-1][1]


def test_a_set_tracks_as_made_after_a_swap_to_its_own_model(tmp_path, models, checkpoints):
    a, b = models
    clip = moving_clip(num_frames=5)
    path = make_set(tmp_path, clip[0], checkpoints[1], "--grid", "2")  # made with b
    session = TrackingSession(CausalTracker(a, max_points=8, backend="torch"),
                              identity=identity(checkpoints[0], a))
    session.query_set = QuerySet.load(path)  # re-encoded for a on the first frame
    play(session, clip[:2])
    session.request_swap(session.prepare_swap(CausalTracker(b, max_points=8, backend="torch"),
                                              identity(checkpoints[1], b)))
    after = play(session, clip[2:], start=2)
    counts = session.take_swap_outcomes().pop().counts
    assert counts["features"] + counts["query"] == 4  # from the set's image or its b features
    reference = CausalTracker(b, max_points=8, backend="torch")
    reference.add_points_from_features(QuerySet.load(path).features)
    for frame, result in zip(clip[2:], after):
        np.testing.assert_allclose(reference.step(frame).xy, result.xy, atol=1e-5)


# ---------------------------------------------------------------- the loader
def test_model_loader_lets_the_latest_request_win_and_reports_failures():
    started, release = threading.Event(), threading.Event()
    done = []
    finished = threading.Event()

    def load(request):
        if request == "slow":
            started.set()
            assert release.wait(30)
        if request == "bad":
            raise StartupError("cannot load the model: bad file")
        return f"model {request}"

    def report(request, result, error):
        done.append((request, result, error))
        finished.set()

    loader = ModelLoader(load, report)
    loader.request("slow")
    assert started.wait(30) and loader.pending == "slow" and loader.alive
    loader.request("fast")  # while "slow" still loads
    release.set()
    assert finished.wait(30)
    loader.close(timeout=30) or pytest.fail("the loader did not stop")
    assert done == [("fast", "model fast", None)]  # "slow" was dropped unseen

    finished.clear()
    loader = ModelLoader(load, report)
    loader.request("bad")
    assert finished.wait(30)
    assert done[-1] == ("bad", None, "cannot load the model: bad file") and loader.pending is None
    assert loader.close(timeout=30)


def test_swap_bench_prints_and_writes_its_figures(tmp_path, checkpoints, capsys):
    from bootstap_ros.bench import swap as swap_bench

    out = tmp_path / "swap.json"
    assert swap_bench.main(["--checkpoint", str(checkpoints[0]), "--grid", "2", "--size", "80x48",
                            "--frames", "3", "--output", str(out)]) == 0
    import json

    runs = json.loads(out.read_text())["runs"]
    assert [run["memory_mib"] for run in runs] == [128, 0]
    assert runs[0]["sources"]["query"] == 4 and runs[1]["sources"]["query"] == 0
    assert runs[1]["sources"]["seen"] + runs[1]["sources"]["latest"] == 4
    assert all(run["apply_over_frame"] > 0 for run in runs)
    assert "swap (worker)" in capsys.readouterr().out
