"""bootstap-track end to end on real files (a project checkpoint of a small model)."""

import numpy as np
import pytest

from bootstap_ros.cli import track
from bootstap_ros.model import save_checkpoint
from bootstap_ros.tracking import track_online
from bootstap_ros.video import VideoWriter, open_video
from helpers.small_model import moving_clip, small_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("track")
    model = small_model()
    save_checkpoint(folder / "small.pt", model)
    clip = moving_clip(num_frames=6, height=48, width=80)
    np.save(folder / "clip.npy", clip)
    with VideoWriter(folder / "clip.mp4", fps=12) as writer:
        for frame in clip:
            writer.write(frame)
    (folder / "queries.csv").write_text("t,x,y\n0,10.5,12.5\n3,40,30\n")
    return folder, model, clip


def test_online_output_contract_and_engine_equality(files):
    folder, model, clip = files
    out = folder / "online.npz"
    assert track.main([str(folder / "clip.npy"), "--checkpoint", str(folder / "small.pt"),
                       "--queries", str(folder / "queries.csv"), "--output", str(out)]) == 0
    result = np.load(out)
    assert result["tracks"].shape == (2, 6, 2) and result["tracks"].dtype == np.float32
    assert result["occluded"].dtype == bool
    assert result["occlusion_logits"].shape == result["expected_dist_logits"].shape == (2, 6)
    assert np.isnan(result["tracks"][1, :3]).all() and result["occluded"][1, :3].all()
    assert np.isnan(result["occlusion_logits"][1, :3]).all()
    engine = track_online(model, clip, np.array([[0, 10.5, 12.5], [3, 40, 30]], np.float32))
    np.testing.assert_array_equal(result["tracks"], engine.tracks)
    np.testing.assert_array_equal(result["occluded"], engine.occluded)


def test_offline_grid_and_render_from_an_mp4(files, tmp_path):
    folder, _, _ = files
    out, render = tmp_path / "offline.npz", tmp_path / "render.mp4"
    assert track.main([str(folder / "clip.mp4"), "--checkpoint", str(folder / "small.pt"),
                       "--grid", "3", "--mode", "offline", "--output", str(out),
                       "--render", str(render)]) == 0
    result = np.load(out)
    assert result["tracks"].shape == (9, 6, 2) and np.isfinite(result["tracks"]).all()
    rendered = open_video(render)
    assert rendered.size == (48, 80) and len(rendered.read_all()) == 6


def test_errors_exit_2_with_a_message(files, tmp_path, capsys):
    folder, _, _ = files
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    assert track.main([str(folder / "clip.npy"), "--checkpoint", str(bad), "--output",
                       str(tmp_path / "o.npz")]) == 2
    assert "could not read checkpoint" in capsys.readouterr().err
    (tmp_path / "q.csv").write_text("t,x,y\n9,1,1\n")
    assert track.main([str(folder / "clip.npy"), "--checkpoint", str(folder / "small.pt"),
                       "--queries", str(tmp_path / "q.csv"), "--output", str(tmp_path / "o.npz")]) == 2
    assert "error" in capsys.readouterr().err
    assert track.main([str(folder / "clip.npy"), "--checkpoint", str(folder / "small.pt"), "--mode", "offline",
                       "--torch-compile", "--output", str(tmp_path / "o.npz")]) == 2
    assert "--torch-compile compiles the online torch backend" in capsys.readouterr().err
    assert not (tmp_path / "o.npz").exists()


def test_a_query_set_from_bootstap_queries_is_tracked_as_the_node_tracks_it(files, tmp_path, capsys):
    from bootstap_ros.cli import queries as queries_cli
    from bootstap_ros.tracking import CausalTracker
    from bootstap_ros.tracking.query_set import ModelIdentity, QuerySet, track_query_set

    folder, model, clip = files
    checkpoint = str(folder / "small.pt")
    (tmp_path / "pick.csv").write_text("x,y,label\n10.5,12.5,handle\n40,30,lid\n")
    assert queries_cli.main([str(folder / "clip.npy"), "--frame", "2", "--queries", str(tmp_path / "pick.csv"),
                             "--checkpoint", checkpoint, "--output", str(tmp_path / "pick.npz")]) == 0
    out = tmp_path / "tracks.npz"
    assert track.main([str(folder / "clip.npy"), "--checkpoint", checkpoint, "--queries",
                       str(tmp_path / "pick.npz"), "--output", str(out)]) == 0
    result = np.load(out)
    assert result["tracks"].shape == (2, 6, 2) and np.isfinite(result["tracks"]).all()
    # As the node does: the set's features are added before the first frame, then every frame is tracked.
    query_set = QuerySet.load(tmp_path / "pick.npz")
    direct = CausalTracker(model, max_points=2, backend="torch")
    direct.add_points_from_features(query_set.features)
    expected = np.stack([direct.step(frame).xy for frame in clip], axis=1)
    np.testing.assert_array_equal(result["tracks"], expected)
    api = track_query_set(model, clip, query_set, identity=ModelIdentity.of(checkpoint, model.config))
    np.testing.assert_array_equal(api.tracks, expected)

    # A set made with another model is re-encoded from its demonstration frame, as the node does.
    other = folder / "other.pt"
    save_checkpoint(other, small_model(seed=1))
    assert track.main([str(folder / "clip.npy"), "--checkpoint", str(other), "--queries",
                       str(tmp_path / "pick.npz"), "--output", str(tmp_path / "other.npz")]) == 0
    assert "re-encod" in capsys.readouterr().out
    # The offline forward cannot take stored query features.
    assert track.main([str(folder / "clip.npy"), "--checkpoint", checkpoint, "--mode", "offline", "--queries",
                       str(tmp_path / "pick.npz"), "--output", str(tmp_path / "offline.npz")]) == 2
    assert "query set is tracked online" in capsys.readouterr().err


def test_progress_lines_when_stderr_is_not_a_terminal(files, tmp_path, capsys):
    folder, _, _ = files
    assert track.main([str(folder / "clip.npy"), "--checkpoint", str(folder / "small.pt"), "--grid", "2",
                       "--output", str(tmp_path / "o.npz")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tracking (online)")]
    assert lines and lines[-1].startswith("tracking (online): 6/6 frames (100%)")
    assert all("\r" not in line for line in lines)


def test_input_and_output_problems_are_refused_before_tracking(files, tmp_path, capsys):
    folder, _, clip = files
    common = ["--checkpoint", str(folder / "small.pt")]
    np.save(tmp_path / "image.npy", clip[0])
    assert track.main([str(tmp_path / "image.npy"), "--output", str(tmp_path / "o.npz")] + common) == 2
    error = capsys.readouterr().err
    assert "single image [H, W, 3]" in error and "[T, H, W, 3]" in error
    assert track.main([str(folder / "clip.npy"), "--grid", "0", "--output", str(tmp_path / "o.npz")] + common) == 2
    assert "--grid must be at least 1" in capsys.readouterr().err
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert track.main([str(folder / "clip.npy"), "--output", str(blocker / "o.npz")] + common) == 2
    error = capsys.readouterr().err
    assert "a_file is a file, not a folder" in error and "tracking" not in error
    assert track.main([str(folder / "clip.npy"), "--output", str(tmp_path),] + common) == 2
    assert "is a folder" in capsys.readouterr().err
    # A missing output folder is created, as for bootstap-eval and bootstap-queries.
    assert track.main([str(folder / "clip.npy"), "--output", str(tmp_path / "new" / "o.npz")] + common) == 0
    assert (tmp_path / "new" / "o.npz").is_file()
    capsys.readouterr()
    np.save(tmp_path / "one.npy", clip[:1])
    assert track.main([str(tmp_path / "one.npy"), "--output", str(tmp_path / "one.npz")] + common) == 0
    assert "warning: " in capsys.readouterr().err and np.load(tmp_path / "one.npz")["tracks"].shape[1] == 1


def test_exit_code_1_for_a_failure_while_running(files, tmp_path, capsys, monkeypatch):
    import bootstap_ros.tracking

    folder, _, _ = files

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(bootstap_ros.tracking, "track_online", out_of_memory)
    assert track.main([str(folder / "clip.npy"), "--checkpoint", str(folder / "small.pt"),
                       "--output", str(tmp_path / "o.npz")]) == 1
    assert "bootstap-track: error: CUDA out of memory" in capsys.readouterr().err


def test_network_every_k_frames_answers_the_frames_between_by_propagation(files, tmp_path):
    from bootstap_ros.tracking.propagation import PropagationConfig

    folder, model, clip = files
    queries = np.array([[0, 10.5, 12.5], [0, 40.5, 30.5], [3, 40, 30]], np.float32)
    # The network sees frames 0 and 3 only (every third, and where points start): as if the clip
    # had those two frames.
    network = track_online(model, clip[[0, 3]], queries * [[1 / 3, 1, 1]])
    # Trusting the network always: on its frames the answers are the network's own; on the others
    # they are carried from its last frame.
    sparse = track_online(model, clip, queries, network_every=3,
                          propagation_config=PropagationConfig(trust_uncertainty=1.0))
    for t, s in ((0, 0), (3, 1)):
        np.testing.assert_array_equal(sparse.tracks[:, t], network.tracks[:, s])
        np.testing.assert_array_equal(sparse.occluded[:, t], network.occluded[:, s])
    assert np.isfinite(sparse.tracks[:2]).all() and np.isnan(sparse.tracks[2, :3]).all()
    # The logits between network frames are the network's last.
    np.testing.assert_array_equal(sparse.occlusion_logits[:, 1], network.occlusion_logits[:, 0])
    out = tmp_path / "sparse.npz"
    assert track.main([str(folder / "clip.npy"), "--checkpoint", str(folder / "small.pt"), "--grid", "2",
                       "--network-every", "2", "--output", str(out)]) == 0
    assert np.load(out)["tracks"].shape == (4, 6, 2)
    for flags in (["--network-every", "0"], ["--network-every", "2", "--mode", "offline"]):
        assert track.main([str(folder / "clip.npy"), "--checkpoint", str(folder / "small.pt"), "--grid", "2",
                           *flags, "--output", str(tmp_path / "x.npz")]) == 2
