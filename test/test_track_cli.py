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
