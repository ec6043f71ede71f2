"""bootstap-track against the official tapnet PyTorch TAPIR, on stored reference outputs.

test/data/official_reference.npz was produced by the official code
(tools/make_official_reference.py) for the full BootsTAPIR architecture with the
deterministic weights below, a non-square clip and points queried on different
frames: online as its live demo runs (one causal step per frame, the last
refinement iteration), offline as its forward with refinement_resolutions=[(256, 256)].
"""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from bootstap_ros.cli import track
from bootstap_ros.config import ModelConfig
from bootstap_ros.model import build_model

REFERENCE = Path(__file__).parent / "data" / "official_reference.npz"


def reference_clip():
    """A 5-frame 72x104 clip of smooth texture drifting right and down, and queries (t, y, x)."""
    t, y, x = np.meshgrid(np.arange(5), np.arange(72), np.arange(104), indexing="ij")
    xs, ys = x - 2.0 * t, y - 1.0 * t
    red = 128 + 90 * np.sin(xs / 5.0) * np.cos(ys / 7.0)
    green = 128 + 90 * np.sin((xs + ys) / 9.0)
    blue = 128 + 60 * np.cos(xs / 11.0 - ys / 4.0)
    video = np.stack([red, green, blue], -1).round().clip(0, 255).astype(np.uint8)
    queries_tyx = np.array([[0, 20.5, 30.5], [0, 50.0, 80.25], [2, 35.5, 10.5], [3, 60.0, 95.0]], np.float32)
    return video, queries_tyx


def reference_weights():
    """Deterministic weights in the official key layout (numpy PCG64, stable by seed)."""
    template = build_model(ModelConfig(causal=True)).state_dict()
    weights = {}
    for index, (name, tensor) in enumerate(sorted(template.items())):
        noise = np.random.Generator(np.random.PCG64(index)).standard_normal(tuple(tensor.shape))
        if name.endswith("bias"):
            values = 0.1 * noise
        elif "norm" in name or ".bn_" in name:
            values = 1 + 0.1 * noise
        else:
            values = noise / np.sqrt(max(tensor[0].numel(), 1))
        weights[name] = torch.from_numpy(values.astype(np.float32))
    return weights


def weights_checksum(state_dict):
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        digest.update(name.encode())
        digest.update(state_dict[name].numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    data = np.load(REFERENCE)
    weights = reference_weights()
    assert weights_checksum(weights) == str(data["weights_checksum"]), (
        "the deterministic reference weights changed (numpy RNG?): regenerate the reference")
    folder = tmp_path_factory.mktemp("parity")
    torch.save(weights, folder / "official_layout.pt")
    video, queries_tyx = reference_clip()
    np.save(folder / "clip.npy", video)
    with open(folder / "queries.csv", "w") as f:
        f.write("t,x,y\n")
        for t, y, x in queries_tyx:
            f.write(f"{int(t)},{x},{y}\n")
    return data, folder


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_track_command_equals_official_model(reference, mode):
    data, folder = reference
    out = folder / f"{mode}.npz"
    code = track.main([str(folder / "clip.npy"), "--checkpoint", str(folder / "official_layout.pt"),
                       "--queries", str(folder / "queries.csv"), "--output", str(out), "--mode", mode])
    assert code == 0
    ours = np.load(out)
    expected_tracks = data[f"{mode}_tracks"]
    # Frames before a point's query frame are NaN online, in both files.
    np.testing.assert_array_equal(np.isnan(ours["tracks"]), np.isnan(expected_tracks))
    np.testing.assert_allclose(ours["tracks"], expected_tracks, atol=1e-3, equal_nan=True)
    np.testing.assert_allclose(ours["occlusion_logits"], data[f"{mode}_occlusion"], atol=1e-3, equal_nan=True)
    np.testing.assert_allclose(ours["expected_dist_logits"], data[f"{mode}_expected_dist"], atol=1e-3,
                               equal_nan=True)
    # The tracks move (the clip drifts), so the comparison is not between constants.
    assert np.nanstd(expected_tracks) > 1.0
    # Visibility follows the official rule from the official logits.
    occ, expd = data[f"{mode}_occlusion"], data[f"{mode}_expected_dist"]
    started = ~np.isnan(occ)
    official_visible = (1 - 1 / (1 + np.exp(-occ[started]))) * (1 - 1 / (1 + np.exp(-expd[started]))) > 0.5
    np.testing.assert_array_equal(ours["occluded"][started], ~official_visible)
    assert ours["occluded"][~started].all()
