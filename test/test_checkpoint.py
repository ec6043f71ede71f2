"""Checkpoints: official bare state_dicts, project checkpoints, and every way a file can be wrong."""

import numpy as np
import pytest
import torch

from bootstap_ros.config import ModelConfig
from bootstap_ros.model import CheckpointError, build_model, load_checkpoint, save_checkpoint
from bootstap_ros.model.checkpoint import infer_official_config
from helpers.small_model import SMALL, small_model


@pytest.fixture(scope="module")
def official_state_dict():
    torch.manual_seed(0)
    return build_model(ModelConfig()).state_dict()


@pytest.fixture(scope="module")
def official_file(tmp_path_factory, official_state_dict):
    path = tmp_path_factory.mktemp("ckpt") / "causal_bootstapir_checkpoint.pt"
    torch.save(official_state_dict, path)
    return path


def test_official_state_dict_loads_with_causality_from_the_caller(official_file, official_state_dict):
    for causal in (True, False):
        loaded = load_checkpoint(official_file, causal=causal)
        assert loaded.source == "official" and loaded.config.causal is causal
        assert loaded.config.extra_conv_blocks == 5
        for name, tensor in loaded.model.state_dict().items():
            assert torch.equal(tensor, official_state_dict[name])


def test_official_checkpoint_without_causal_flag_says_what_to_pass(official_file):
    with pytest.raises(CheckpointError, match="--causal.*--no-causal"):
        load_checkpoint(official_file)


def test_tapir_layout_without_extra_convs_is_recognised(official_state_dict):
    tapir = {k: v for k, v in official_state_dict.items() if not k.startswith("extra_convs.")}
    assert infer_official_config(tapir, causal=False).extra_conv_blocks == 0


def test_project_checkpoint_carries_its_config(tmp_path):
    model = small_model(seed=3)
    path = tmp_path / "sub" / "small.pt"
    save_checkpoint(path, model, step=12, train_config={"lr": 1e-3})
    loaded = load_checkpoint(path)
    assert loaded.source == "project" and loaded.config == SMALL
    assert loaded.extra == {"step": 12, "train_config": {"lr": 1e-3}}
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor)
    assert load_checkpoint(path, causal=False).config.causal is False
    assert [p.name for p in path.parent.iterdir()] == ["small.pt"]  # the atomic write left nothing behind


def _umask_of_this_process():
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration):
        return None


def test_checkpoint_write_is_fsynced_before_the_rename_and_leaves_the_umask_alone(tmp_path, monkeypatch):
    import os

    from bootstap_ros.model import checkpoint

    path = tmp_path / "model.pt"
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        real_replace(src, dst)

    def umask(mask):
        raise AssertionError("save_checkpoint changed the process-wide umask")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "umask", umask)
    save_checkpoint(path, small_model())
    rename = next(i for i, e in enumerate(events) if e[0] == "replace")
    temporary = events[rename][1]
    assert events[rename][2] == str(path) and temporary != str(path)
    assert ("fsync", temporary) in events[:rename]  # the data is on disk before the name points at it
    assert ("fsync", str(tmp_path)) in events[rename + 1:]  # and the rename itself is
    mask = _umask_of_this_process()
    if mask is not None:  # the usual permissions, from the kernel's own umask
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask
    # A write that fails half-way leaves the old checkpoint and no temporary file.
    monkeypatch.setattr(checkpoint.torch, "save", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, small_model(seed=1))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path).model.state_dict()["torch_cost_volume_track_mods.hid1.weight"],
                       small_model().state_dict()["torch_cost_volume_track_mods.hid1.weight"])


def test_truncated_file_is_named_with_its_size(official_file, tmp_path):
    data = official_file.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=rf"cut.pt \({len(data) // 3} bytes\).*truncated"):
        load_checkpoint(cut, causal=True)


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"this is not a checkpoint at all", "truncated, corrupt or not a PyTorch checkpoint"),
])
def test_garbage_files(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path, causal=True)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt", causal=True)
    with pytest.raises(CheckpointError, match="directory"):
        load_checkpoint(tmp_path, causal=True)


def test_missing_unexpected_and_mismatched_keys_are_listed(tmp_path, official_state_dict):
    broken = dict(official_state_dict)
    del broken["torch_pips_mixer.linear.weight"]
    broken["torch_pips_mixer.not_a_layer.weight"] = torch.zeros(3)
    broken["torch_cost_volume_track_mods.hid4.weight"] = torch.zeros(16, 31)
    path = tmp_path / "broken.pt"
    torch.save(broken, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path, causal=True)
    text = str(error.value)
    assert "1 missing keys: torch_pips_mixer.linear.weight" in text
    assert "1 unexpected keys: torch_pips_mixer.not_a_layer.weight" in text
    assert "torch_cost_volume_track_mods.hid4.weight: expected (16, 32), found (16, 31)" in text


def test_foreign_state_dict_and_foreign_objects(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(2), "fc.bias": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a TAPIR/BootsTAPIR checkpoint.*conv1.weight"):
        load_checkpoint(path, causal=True)
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(path, causal=True)
    path = tmp_path / "pickled.pt"
    torch.save({"model": np.zeros(2).tolist(), "notes": "x"}, path)
    with pytest.raises(CheckpointError, match="neither a state_dict"):
        load_checkpoint(path, causal=True)


def test_project_checkpoint_with_wrong_weights_names_the_mismatch(tmp_path):
    model = small_model()
    path = tmp_path / "small.pt"
    save_checkpoint(path, model)
    content = torch.load(path, weights_only=True)
    content["model_config"]["mixer_hidden_dim"] = 40
    torch.save(content, path)
    with pytest.raises(CheckpointError, match="shape mismatches.*torch_pips_mixer"):
        load_checkpoint(path)


def test_a_new_resolution_alone_refines_at_that_one_level():
    from bootstap_ros.model.checkpoint import with_settings
    from helpers.small_model import small_model

    ladder = with_settings(small_model(), refine_resolution=(128, 128))  # the small model is 64x64
    assert ladder.config.refinement_resolutions == ((64, 64), (128, 128))
    assert with_settings(ladder, resolution=(96, 96)).config.refinement_resolutions == ((96, 96),)
    both = with_settings(ladder, resolution=(96, 96), refine_resolution=(192, 192))
    assert both.config.refinement_resolutions[0] == (96, 96)
    assert both.config.refinement_resolutions[-1] == (192, 192)


@pytest.mark.parametrize("name", [None, "embedded", ""])
def test_the_embedded_model_loads_by_name_or_without_one(name):
    from bootstap_ros.model.checkpoint import EMBEDDED_CHECKPOINT

    loaded = load_checkpoint(name)
    assert loaded.path == str(EMBEDDED_CHECKPOINT) and loaded.source == "project"
    assert loaded.config.causal
