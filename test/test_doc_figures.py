"""The commands that make the documentation's figures: learning curves from a run's CSV
logs (tools/plot_training.py) and the still and GIF of tracks (tools/demo_figures.py)."""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.tools import load_tool

REPO = Path(__file__).resolve().parents[1]


def run_tool(name, *args):
    return subprocess.run([sys.executable, str(REPO / "tools" / f"{name}.py"), *map(str, args)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)


def write_csv(path, header, rows):
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)


def test_learning_curves_take_every_numeric_column_by_name(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    # A column that a later trainer adds (blank before it appears), one that is never a
    # number, and a row whose step is unreadable.
    write_csv(run / "train_log.csv", ["step", "loss", "note", "precision"],
              [[10, 2.5, "warmup", ""], [20, 2.0, "x", 0.7], ["", 9.9, "", 9.9], [30, "nan", "", 0.8]])
    series = load_tool("plot_training").read_series(run)
    assert series == {"loss": ([10.0, 20.0], [2.5, 2.0]), "precision": ([20.0, 30.0], [0.7, 0.8])}

    write_csv(run / "eval_log.csv", ["step", "average_jaccard", "heldout_aj"], [[20, 0.5, ""], [40, 0.6, 0.55]])
    result = run_tool("plot_training", run)
    assert result.returncode == 0, result.stderr
    assert "loss, precision, eval:average_jaccard, eval:heldout_aj" in result.stdout
    with Image.open(run / "curves.png") as image:  # 2 rows of 3 panels at 90 dpi
        assert image.size == (round(4.2 * 3 * 90), round(2.8 * 2 * 90))

    chosen = tmp_path / "chosen.png"
    result = run_tool("plot_training", run, "--output", chosen, "--columns", "eval:heldout_aj,loss")
    assert result.returncode == 0 and chosen.is_file() and "eval:heldout_aj, loss" in result.stdout
    result = run_tool("plot_training", run, "--columns", "aj")
    assert result.returncode != 0 and "no column(s) aj" in result.stderr and "eval:heldout_aj" in result.stderr


def test_learning_curves_refuse_a_run_without_logs(tmp_path):
    result = run_tool("plot_training", tmp_path)
    assert result.returncode != 0 and "no numbers" in result.stderr


def test_demo_still_and_gif_draw_the_tracks_where_they_are(tmp_path):
    # 12 grey frames, 48x64, and two points moving right; point 1 is occluded on frame 5.
    frames = np.full((12, 48, 64, 3), 100, np.uint8)
    np.save(tmp_path / "clip.npy", frames)
    t = np.arange(12, dtype=np.float32)
    tracks = np.stack([np.stack([10.5 + 2 * t, np.full(12, 20.5, np.float32)], -1),
                       np.stack([30.5 + t, np.full(12, 30.5, np.float32)], -1)])
    occluded = np.zeros((2, 12), bool)
    occluded[1, 5] = True
    np.savez(tmp_path / "tracks.npz", tracks=tracks, occluded=occluded)

    still, gif = tmp_path / "still.png", tmp_path / "demo.gif"
    result = run_tool("demo_figures", tmp_path / "clip.npy", tmp_path / "tracks.npz", "--still", still,
                      "--still-frame", 5, "--scale", 3, "--gif", gif, "--gif-scale", 2, "--seconds", 1,
                      "--step", 3, "--colors", 16)
    assert result.returncode == 0, result.stderr
    from bootstap_ros.render import colors_for_ids

    colors = colors_for_ids([0, 1])
    with Image.open(still) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape == (48 * 3, 64 * 3, 3)
    # Point 0 (visible) is a filled disc at 3x its position on frame 5: (20.5, 20.5) -> (61.5, 61.5),
    # the pixel whose centre that is has index 61.
    np.testing.assert_array_equal(pixels[61, 61], colors[0])
    # Point 1 is occluded there: a ring, so its centre (105.5, 91.5) keeps the frame's grey.
    np.testing.assert_array_equal(pixels[91, 105], [100, 100, 100])

    with Image.open(gif) as image:
        assert image.size == (64 * 2, 48 * 2)
        # One second of a clip without a frame rate (25 assumed): 12 frames, every 3rd.
        assert image.n_frames == 4


@pytest.mark.parametrize("args", [[], ["--seconds", "1"]])
def test_demo_figures_need_an_output(tmp_path, args):
    result = run_tool("demo_figures", "clip.npy", "tracks.npz", *args)
    assert result.returncode == 2 and "nothing to write" in result.stderr
