"""Weight-space interpolation of two checkpoints (bootstap_ros_training.average)."""

import numpy as np
import pytest
import torch

from bootstap_ros.model import load_checkpoint, save_checkpoint
from bootstap_ros_training.average import interpolate, main
from helpers.small_model import small_model


def _save(path, model):
    save_checkpoint(path, model)
    return str(path)


def test_the_written_model_is_the_weighted_mean_of_both(tmp_path, capsys):
    base, tuned = small_model(seed=1), small_model(seed=2)
    base_path, tuned_path = _save(tmp_path / "base.pt", base), _save(tmp_path / "tuned.pt", tuned)
    out = tmp_path / "sub" / "mixed.pt"
    assert main([base_path, tuned_path, "--weight", "0.25", "--output", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    loaded = load_checkpoint(out)
    assert loaded.config == base.config and loaded.extra["average"]["weight"] == 0.25
    mixed = loaded.model.state_dict()
    floating = 0
    for name, a in base.state_dict().items():
        b = tuned.state_dict()[name]
        if a.is_floating_point():
            floating += 1
            # By hand, in numpy: three parts of the base, one of the tuned model.
            expected = 0.75 * a.double().numpy() + 0.25 * b.double().numpy()
            np.testing.assert_allclose(mixed[name].double().numpy(), expected, rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(mixed[name], b)
    assert floating > 10
    # The ends give the two models back exactly.
    for weight, model in ((0.0, base), (1.0, tuned)):
        ends = interpolate(base.state_dict(), tuned.state_dict(), weight)
        for name, value in model.state_dict().items():
            assert torch.equal(ends[name], value), name


def test_different_architectures_and_bad_weights_are_refused(tmp_path, capsys):
    base_path = _save(tmp_path / "base.pt", small_model(seed=1))
    other = small_model(seed=2, mixer_hidden_dim=48)
    other_path = _save(tmp_path / "other.pt", other)
    assert main([base_path, other_path, "--weight", "0.5", "--output", str(tmp_path / "x.pt")]) == 2
    assert "one architecture" in capsys.readouterr().err
    assert main([base_path, base_path, "--weight", "1.5", "--output", str(tmp_path / "x.pt")]) == 2
    assert "weight must lie in [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(ValueError, match="different tensors"):
        interpolate({"a": torch.zeros(2)}, {"b": torch.zeros(2)}, 0.5)
