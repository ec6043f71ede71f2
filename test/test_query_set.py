"""Query sets: the file format, model identity, the tracker's feature path and bootstap-queries."""

import zipfile

import numpy as np
import pytest
import torch

from bootstap_ros.cli import queries as queries_cli
from bootstap_ros.model import save_checkpoint
from bootstap_ros.model.tapir import preprocess_frames
from bootstap_ros.tracking import CausalTracker, TrackerFullError
from bootstap_ros.tracking.query_set import ModelIdentity, QuerySet, QuerySetError, file_sha256
from bootstap_ros.tracking.session import TrackerInfo, TrackingSession, load_query_set
from helpers.small_model import moving_clip, small_model


@pytest.fixture(scope="module")
def model():
    return small_model()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("qs") / "small.pt"
    save_checkpoint(path, model)
    return path


def make_set(model, checkpoint, n=3, size=(48, 80), seed=0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform([0, 0], [size[1], size[0]], (n, 2)).astype(np.float32)
    features = {"lowres": rng.normal(size=(n, model.config.lowres_dim)).astype(np.float32),
                "hires": rng.normal(size=(n, model.config.hires_dim)).astype(np.float32)}
    return QuerySet(xy=xy, features=features, image_size=size, labels=[f"p{i}" for i in range(n)],
                    model=ModelIdentity.of(checkpoint, model.config), source="test")


def test_save_and_load_round_trip(tmp_path, model, checkpoint):
    original = make_set(model, checkpoint)
    original.save(tmp_path / "set.npz")
    loaded = QuerySet.load(tmp_path / "set.npz")
    np.testing.assert_array_equal(loaded.xy, original.xy)
    for name in ("lowres", "hires"):
        np.testing.assert_array_equal(loaded.features[name], original.features[name])
    assert loaded.labels == ("p0", "p1", "p2") and loaded.image_size == (48, 80)
    assert loaded.model.checkpoint_sha256 == file_sha256(checkpoint)
    assert loaded.model.mismatch(ModelIdentity.of(checkpoint, model.config)) is None
    assert loaded.source == "test" and loaded.path == str(tmp_path / "set.npz")
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically, nothing left behind


def test_bad_files_give_clear_errors(tmp_path, model, checkpoint):
    make_set(model, checkpoint).save(tmp_path / "good.npz")
    data = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[:len(data) // 2])
    (tmp_path / "text.npz").write_text("t,x,y\n0,1,2\n")
    np.savez(tmp_path / "other.npz", tracks=np.zeros((2, 3, 2)))
    with zipfile.ZipFile(tmp_path / "good.npz") as source, \
            zipfile.ZipFile(tmp_path / "old.npz", "w") as old, \
            zipfile.ZipFile(tmp_path / "partial.npz", "w") as partial:
        for item in source.namelist():
            content = source.read(item)
            if item == "version.npy":
                buffer = __import__("io").BytesIO()
                np.save(buffer, np.array(99, np.int64))
                content = buffer.getvalue()
            old.writestr(item, content)
            if item != "features.hires.npy":
                partial.writestr(item, source.read(item))
    cases = {
        "missing.npz": "query set not found",
        "truncated.npz": "truncated, corrupt or not an .npz",
        "text.npz": "truncated, corrupt or not an .npz",
        "other.npz": "not a query set",
        "old.npz": "version 99; this bootstap_ros reads versions 1, 2",
        "partial.npz": r"lacks \['features.hires'\]",
    }
    for name, match in cases.items():
        with pytest.raises(QuerySetError, match=match):
            QuerySet.load(tmp_path / name)


def test_inconsistent_sets_are_refused(model, checkpoint):
    good = make_set(model, checkpoint)
    with pytest.raises(QuerySetError, match=r"features.hires has shape \(2, 32\), expected \[3, C\]"):
        QuerySet(good.xy, {**good.features, "hires": good.features["hires"][:2]}, good.image_size, good.model)
    with pytest.raises(QuerySetError, match="2 labels for 3 points"):
        QuerySet(good.xy, good.features, good.image_size, good.model, labels=["a", "b"])
    with pytest.raises(QuerySetError, match="must lie in the 80x48 image"):
        QuerySet(good.xy + [81, 0], good.features, good.image_size, good.model)


def test_model_identity_names_what_differs(tmp_path, model, checkpoint):
    mine = ModelIdentity.of(checkpoint, model.config)
    save_checkpoint(tmp_path / "other.pt", small_model(seed=1))
    other_weights = ModelIdentity.of(tmp_path / "other.pt", model.config)
    other_size = ModelIdentity.of(checkpoint, model.config.replace(resolution=(96, 96)))
    assert "checkpoint SHA-256" in mine.mismatch(other_weights)
    assert "resolution [64, 64] vs [96, 96]" in mine.mismatch(other_size)
    # Causality does not change query features: the same weights run non-causally still fit.
    assert mine.mismatch(ModelIdentity.of(checkpoint, model.config.replace(causal=False))) is None
    assert mine.mismatch(ModelIdentity.of(checkpoint, model.config.replace(softmax_temperature=10.0))) is None

    info = TrackerInfo(checkpoint=str(tmp_path / "other.pt"), source="project", backend="torch",
                       device="cpu", resolution=(64, 64), causal=True, identity=other_weights)
    make_set(model, checkpoint).save(tmp_path / "set.npz")
    with pytest.raises(QuerySetError, match="made with another model.*bootstap-queries"):
        load_query_set(str(tmp_path / "set.npz"), info)


def test_positions_map_to_the_live_image_size(model, checkpoint):
    query_set = make_set(model, checkpoint, size=(48, 80))
    query_set.xy = np.array([[0, 0], [80, 48], [10, 12]], np.float32)
    # Hand-computed: a 160x96 image is the 80x48 one scaled by 2 in x and y; 40x48 by 0.5 and 1.
    np.testing.assert_allclose(query_set.positions_in((96, 160)), [[0, 0], [160, 96], [20, 24]])
    np.testing.assert_allclose(query_set.positions_in((48, 40)), [[0, 0], [40, 48], [5, 12]])


def bilinear_border(grid, x, y):
    """Independent numpy sampling of grid [h, w, C] at pixel-edge coordinates (x, y) of the grid
    (TAPIR raster: cell centres at +0.5), clamped to the border cells."""
    h, w = grid.shape[:2]
    gx, gy = np.clip(x - 0.5, 0, w - 1), np.clip(y - 0.5, 0, h - 1)
    x0, y0 = int(np.floor(gx)), int(np.floor(gy))
    x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
    fx, fy = gx - x0, gy - y0
    return ((1 - fy) * ((1 - fx) * grid[y0, x0] + fx * grid[y0, x1])
            + fy * ((1 - fx) * grid[y1, x0] + fx * grid[y1, x1]))


def test_query_features_sample_the_frames_features(model):
    frame = moving_clip(num_frames=1, height=48, width=80)[0]
    xy = np.array([[10.5, 12.5], [0.0, 0.0], [79.0, 47.5], [33.3, 20.1]], np.float32)
    features = CausalTracker(model, max_points=4, backend="torch").query_features(frame, xy)
    with torch.no_grad():
        grids = model.get_feature_grids(preprocess_frames(torch.from_numpy(frame)[None, None]))
    model_h, model_w = model.config.resolution
    for name in ("lowres", "hires"):
        grid = getattr(grids, name)[0, 0].numpy()
        scale = np.array([grid.shape[1] / 80, grid.shape[0] / 48])  # input pixels -> grid cells
        expected = np.stack([bilinear_border(grid, *(p * scale)) for p in xy])
        np.testing.assert_allclose(features[name], expected, atol=1e-5)
    assert model_h == model_w  # the scale above maps through the model raster unchanged


def test_points_from_features_track_as_points_added_on_that_frame(model):
    clip = moving_clip(num_frames=6, height=48, width=80)
    xy = np.array([[10.5, 12.5], [40.0, 30.0], [70.2, 5.5]], np.float32)
    direct = CausalTracker(model, max_points=8, block_size=4, backend="torch")
    from_set = CausalTracker(model, max_points=8, block_size=4, backend="torch")
    for tracker in (direct, from_set):  # existing points, with causal state
        tracker.add_points(clip[0], [[5.0, 5.0], [60.0, 20.0]])
        tracker.step(clip[0])
        tracker.step(clip[1])
    from_set.remove_points([0])  # the set's first point reuses this slot: its state must restart
    direct.add_points(clip[2], xy)
    features = CausalTracker(model, max_points=3, backend="torch").query_features(clip[2], xy)
    assert from_set.add_points_from_features(features).tolist() == [2, 3, 4]
    for frame in clip[3:]:
        a, b = direct.step(frame), from_set.step(frame)
        assert a.ids.tolist() == [0, 1, 2, 3, 4] and b.ids.tolist() == [1, 2, 3, 4]
        np.testing.assert_allclose(a.xy[1:], b.xy, atol=1e-4)
        np.testing.assert_allclose(a.occlusion_logit[1:], b.occlusion_logit, atol=1e-4)


def test_points_from_features_are_checked(model):
    tracker = CausalTracker(model, max_points=2, block_size=2, backend="torch")
    good = {"lowres": np.zeros((1, 48), np.float32), "hires": np.zeros((1, 32), np.float32)}
    with pytest.raises(ValueError, match=r"'lowres' have shape \(1, 40\).*needs \[1, 48\]"):
        tracker.add_points_from_features({**good, "lowres": np.zeros((1, 40), np.float32)})
    with pytest.raises(ValueError, match="must be"):
        tracker.add_points_from_features({"lowres": good["lowres"]})
    with pytest.raises(TrackerFullError):
        tracker.add_points_from_features({k: np.repeat(v, 3, 0) for k, v in good.items()})
    assert tracker.num_points == 0


def test_session_adds_the_set_first_and_again_after_a_reset(model, checkpoint):
    clip = moving_clip(num_frames=4, height=48, width=80)
    tracker = CausalTracker(model, max_points=8, block_size=4, backend="torch")
    session = TrackingSession(tracker, grid_points=1)
    session.query_set = make_set(model, checkpoint, n=2)
    assert session.process(clip[0], "rgb8").ids.tolist() == [0, 1, 2]  # the set's, then the grid's
    added = session.take_added_query_sets().pop()
    assert added.ids.tolist() == [0, 1] and added.labels == ["p0", "p1"]
    np.testing.assert_allclose(added.xy, session.query_set.xy[:2])  # same size: unchanged
    session.request_query_set(make_set(model, checkpoint, n=3, seed=1))  # at runtime: added now
    assert session.process(clip[1], "rgb8").ids.tolist() == [0, 1, 2, 3, 4, 5]
    session.request_reset()
    assert session.process(clip[2], "rgb8").ids.tolist() == [6, 7, 8, 9]
    session.request_query_set(None)
    session.request_reset()
    assert session.process(clip[3], "rgb8").ids.tolist() == [10]


def test_cli_writes_a_set_for_a_frame_of_a_clip(tmp_path, model, checkpoint):
    clip = moving_clip(num_frames=4, height=48, width=80)
    np.save(tmp_path / "clip.npy", clip)
    (tmp_path / "q.csv").write_text("t,x,y,label\n7,10.5,12.5,handle\n0,40,30,lid\n")
    out = tmp_path / "set.npz"
    assert queries_cli.main([str(tmp_path / "clip.npy"), "--frame", "2", "--queries", str(tmp_path / "q.csv"),
                             "--output", str(out), "--checkpoint", str(checkpoint)]) == 0
    query_set = QuerySet.load(out)
    np.testing.assert_array_equal(query_set.xy, [[10.5, 12.5], [40, 30]])  # t ignored
    assert query_set.labels == ("handle", "lid") and query_set.image_size == (48, 80)
    assert query_set.model.mismatch(ModelIdentity.of(checkpoint, model.config)) is None
    expected = CausalTracker(model, max_points=2, backend="torch").query_features(clip[2], query_set.xy)
    for name in ("lowres", "hires"):
        np.testing.assert_array_equal(query_set.features[name], expected[name])

    import cv2

    cv2.imwrite(str(tmp_path / "demo.png"), clip[1][:, :, ::-1])
    assert queries_cli.main([str(tmp_path / "demo.png"), "--grid", "2", "--labels", "a,b,c,d",
                             "--output", str(out), "--checkpoint", str(checkpoint)]) == 0
    query_set = QuerySet.load(out)
    assert len(query_set) == 4 and query_set.labels == ("a", "b", "c", "d")
    expected = CausalTracker(model, max_points=4, backend="torch").query_features(clip[1], query_set.xy)
    np.testing.assert_allclose(query_set.features["hires"], expected["hires"], atol=1e-6)


def test_cli_errors(tmp_path, checkpoint, capsys):
    clip = moving_clip(num_frames=3, height=48, width=80)
    np.save(tmp_path / "clip.npy", clip)
    common = ["--output", str(tmp_path / "set.npz"), "--checkpoint", str(checkpoint)]
    assert queries_cli.main([str(tmp_path / "clip.npy"), "--frame", "5", "--grid", "2"] + common) == 2
    assert "has 3 frames: there is no frame 5" in capsys.readouterr().err
    assert queries_cli.main([str(tmp_path / "clip.npy"), "--grid", "2", "--labels", "a,b"] + common) == 2
    assert "2 labels for 4 points" in capsys.readouterr().err
    (tmp_path / "q.csv").write_text("t,x,y\n0,90,10\n")
    assert queries_cli.main([str(tmp_path / "clip.npy"), "--queries", str(tmp_path / "q.csv")] + common) == 2
    assert "outside the 80x48" in capsys.readouterr().err
    assert not (tmp_path / "set.npz").exists()


def test_a_set_larger_than_the_free_slots_is_cut_with_a_warning(model, checkpoint):
    tracker = CausalTracker(model, max_points=4, block_size=4, backend="torch")
    warnings = []
    session = TrackingSession(tracker, warn=lambda kind, message: warnings.append((kind, message)))
    session.query_set = make_set(model, checkpoint, n=6)
    result = session.process(moving_clip(num_frames=1, height=48, width=80)[0], "rgb8")
    assert result.ids.tolist() == [0, 1, 2, 3]
    assert [kind for kind, _ in warnings] == ["capacity"] and "adding 4 of the 6 points" in warnings[0][1]
    assert session.take_added_query_sets()[0].labels == ["p0", "p1", "p2", "p3"]


def test_onnxruntime_query_features_match_torch_and_feed_its_tracker(model, tmp_path):
    pytest.importorskip("onnxruntime")
    clip = moving_clip(num_frames=4, height=48, width=80)
    xy = np.array([[10.5, 12.5], [40.0, 30.0]], np.float32)
    reference = CausalTracker(model, max_points=4, block_size=4, backend="torch")
    features = reference.query_features(clip[0], xy)
    onnx = CausalTracker(model, max_points=4, block_size=4, backend="onnxruntime", cache_dir=tmp_path)
    exported = onnx.query_features(clip[0], xy)
    for name in ("lowres", "hires"):
        np.testing.assert_allclose(exported[name], features[name], atol=1e-4)
    reference.add_points_from_features(features)
    onnx.add_points_from_features(features)
    for frame in clip[1:]:
        np.testing.assert_allclose(onnx.step(frame).xy, reference.step(frame).xy, atol=1e-3)


def test_cli_makes_sets_for_a_refinement_ladder(tmp_path, model, checkpoint):
    from bootstap_ros.model.checkpoint import with_settings

    clip = moving_clip(num_frames=2, height=48, width=80)
    np.save(tmp_path / "clip.npy", clip)
    out = tmp_path / "ladder.npz"
    assert queries_cli.main([str(tmp_path / "clip.npy"), "--grid", "2", "--refine-resolution", "128x128",
                             "--output", str(out), "--checkpoint", str(checkpoint)]) == 0
    query_set = QuerySet.load(out)
    ladder = with_settings(model, refine_resolution=(128, 128))  # the small model is 64x64
    assert len(ladder.config.refinement_resolutions) == 2
    assert query_set.model.mismatch(ModelIdentity.of(checkpoint, ladder.config)) is None
    expected = CausalTracker(ladder, max_points=4, backend="torch").query_features(clip[0], query_set.xy)
    for name in ("lowres", "hires"):
        np.testing.assert_allclose(query_set.features[name], expected[name], atol=1e-6)
    # A node running the ladder takes the set; one refining at a single level cannot.
    assert len(CausalTracker(ladder, max_points=4, backend="torch").add_points_from_features(
        query_set.features)) == 4
    with pytest.raises(ValueError, match="another model"):
        CausalTracker(model, max_points=4, backend="torch").add_points_from_features(query_set.features)


def test_cli_takes_x_y_rows_as_documented(tmp_path, checkpoint, capsys):
    clip = moving_clip(num_frames=3, height=48, width=80)
    np.save(tmp_path / "clip.npy", clip)
    common = ["--checkpoint", str(checkpoint), "--frame", "1"]
    (tmp_path / "xy.csv").write_text("x,y\n10.5,12.5\n40,30\n")
    assert queries_cli.main([str(tmp_path / "clip.npy"), "--queries", str(tmp_path / "xy.csv"),
                             "--output", str(tmp_path / "xy.npz")] + common) == 0
    (tmp_path / "txy.csv").write_text("t,x,y\n9,10.5,12.5\n0,40,30\n")
    assert queries_cli.main([str(tmp_path / "clip.npy"), "--queries", str(tmp_path / "txy.csv"),
                             "--output", str(tmp_path / "txy.npz")] + common) == 0
    np.testing.assert_array_equal(QuerySet.load(tmp_path / "xy.npz").xy, [[10.5, 12.5], [40, 30]])
    np.testing.assert_array_equal(QuerySet.load(tmp_path / "txy.npz").xy, [[10.5, 12.5], [40, 30]])
    assert queries_cli.main([str(tmp_path / "clip.npy"), "--grid", "0", "--output",
                             str(tmp_path / "g.npz")] + common) == 2
    assert "--grid must be at least 1" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")
    assert queries_cli.main([str(tmp_path / "clip.npy"), "--grid", "2", "--output",
                             str(tmp_path / "a_file" / "g.npz")] + common) == 2
    assert "a_file is a file, not a folder" in capsys.readouterr().err
