"""bootstap-eval with the model: the online protocol runs the engine, metrics follow PREDS."""

import json

import numpy as np
import pytest
import torch

from bootstap_ros.eval.cli import main
from bootstap_ros.eval.metrics import compute_video_metrics, mean_over_videos
from bootstap_ros.model import save_checkpoint
from bootstap_ros.model.tapir import preprocess_frames
from helpers.eval_fixtures import translating_square, write_davis
from helpers.small_model import small_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evalmodel")
    model = small_model(resolution=(256, 256))
    save_checkpoint(folder / "small.pt", model)
    entries = {"a": translating_square(num_frames=7, step=(3, 2)),
               "b": translating_square(num_frames=6, height=96, width=128, size=40, start=(10, 12), step=(2, 1))}
    entries["b"]["occluded"][0, :2] = True
    return folder, model, write_davis(folder / "davis.pkl", entries)


@pytest.mark.parametrize("mode, query_mode", [("online", "first"), ("online", "strided"), ("offline", "strided")])
def test_results_equal_metrics_of_saved_predictions(setup, tmp_path, mode, query_mode):
    folder, model, dataset = setup
    results_path, preds_path = tmp_path / "r.json", tmp_path / "p.npz"
    assert main([dataset, "--checkpoint", str(folder / "small.pt"), "--output", str(results_path),
                 "--mode", mode, "--query-mode", query_mode, "--save-predictions", str(preds_path),
                 "--device", "cpu"] + (["--no-causal"] if mode == "offline" else [])) == 0
    results = json.loads(results_path.read_text())
    assert results["config"]["causal"] is (mode == "online")
    per_video = []
    with np.load(preds_path) as preds:
        for name in ("a", "b"):
            metrics = compute_video_metrics(
                preds[f"{name}/query_points"], preds[f"{name}/gt_occluded"], preds[f"{name}/gt_tracks"],
                preds[f"{name}/occluded"], preds[f"{name}/tracks"], query_mode)
            per_video.append(metrics)
            assert np.isfinite(preds[f"{name}/tracks"]).all()
        mean = mean_over_videos(per_video)
        for key, value in mean.items():
            assert results[key] == pytest.approx(float(value), abs=1e-6), key
        if mode == "online":
            # Forward from the query frame, the predictions are the engine's, as the ROS node runs it.
            queries, tracks = preds["a/query_points"], preds["a/tracks"]
    if mode == "online":
        from bootstap_ros.eval.datasets import TapVidDataset

        video = next(iter(TapVidDataset(dataset, "davis", query_mode, 256))).video
        # An independent computation: the causal model's whole-clip forward (not the online
        # engine) on the frames from each query frame on, the query features taken there.
        frames = preprocess_frames(torch.from_numpy(video))[None]
        checked = 0
        for query, track in zip(queries, tracks):
            t0 = int(round(query[0]))
            with torch.no_grad():
                expected = model(frames[:, t0:], torch.tensor([[[0.0, query[1], query[2]]]]),
                                 constrain_query_points=False).tracks[0, 0].numpy()
            np.testing.assert_allclose(track[t0:], expected, atol=1e-3)
            checked += len(expected) - 1
        assert checked > 0


def test_online_without_causal_is_refused(setup, tmp_path, capsys):
    folder, _, dataset = setup
    assert main([dataset, "--checkpoint", str(folder / "small.pt"), "--output", str(tmp_path / "r.json"),
                 "--no-causal"]) == 2
    assert "needs a causal model" in capsys.readouterr().err
