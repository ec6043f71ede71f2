"""The training loop: one step, exact resume, checkpoints, logs, evaluation and DDP (gloo)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bootstap_ros.model import build_model, load_checkpoint
from helpers.ddp import run_ddp
from helpers.small_model import SMALL
from bootstap_ros_training.configs import SMALL as SMALL_TRAINING_MODEL
from bootstap_ros_training.configs import resolve_model_config
from bootstap_ros_training.data import (TRAIN_SEED_OFFSET, StepBatches, SyntheticClips, clip_arrays, heldout_seeds,
                                        train_clip_seed)
from bootstap_ros_training.loop import optimizer_step
from bootstap_ros_training.supervised import TrainConfig, batch_loss, learning_rate, main, make_optimizer, train
from helpers.runs import FakeClock, logged_steps

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = json.dumps(SMALL.to_dict())


def tiny_config(out, **changes) -> TrainConfig:
    """A run that takes a fraction of a second per step on a CPU."""
    values = dict(out=str(out), model=TINY_MODEL, steps=4, batch_size=2, frames=4, num_points=8,
                  image_size=64, warmup=2, num_workers=0, log_every=1, checkpoint_every=2,
                  eval_every=0, eval_clips=1, eval_frames=4, eval_points=8)
    values.update(changes)
    return TrainConfig(**values)


def fixed_batch(config: TrainConfig):
    dataset = SyntheticClips(config.synthetic(), seed=config.seed)
    items = [dataset[i] for i in range(config.batch_size)]
    return {key: torch.from_numpy(np.stack([item[key] for item in items])) for key in items[0]}


def test_batches_are_a_function_of_step_and_rank():
    one = StepBatches(0, 3, batch_size=2, rank=0, world_size=2)
    other = StepBatches(0, 3, batch_size=2, rank=1, world_size=2)
    resumed = StepBatches(2, 3, batch_size=2, rank=0, world_size=2)
    assert list(one) == [[0, 1], [4, 5], [8, 9]]
    assert list(other) == [[2, 3], [6, 7], [10, 11]]
    assert list(resumed) == [[8, 9]]
    assert train_clip_seed(0, 5) == TRAIN_SEED_OFFSET + 5
    assert train_clip_seed(1, 0) != train_clip_seed(0, 0)
    with pytest.raises(ValueError, match="held-out seeds"):
        heldout_seeds(TRAIN_SEED_OFFSET - 1, 2)


def test_clip_arrays_hold_visible_queries_as_t_y_x(tmp_path):
    config = tiny_config(tmp_path).synthetic()
    item = clip_arrays(7, config)
    assert set(item) == {"video", "query_points", "target_points", "occluded"}
    assert item["video"].shape == (4, 64, 64, 3) and item["video"].dtype == np.uint8
    t = item["query_points"][:, 0].astype(int)
    points = np.arange(len(t))
    # Queries are (t, y, x) on the track, and the track is visible there.
    np.testing.assert_allclose(item["query_points"][:, 1:], item["target_points"][points, t][:, ::-1])
    assert not item["occluded"][points, t].any()
    np.testing.assert_array_equal(clip_arrays(7, config)["video"], item["video"])


def test_learning_rate_warms_up_then_decays_to_zero():
    config = TrainConfig(lr=1e-3, warmup=10, steps=110)
    assert learning_rate(0, config) == pytest.approx(1e-4)
    assert learning_rate(9, config) == pytest.approx(1e-3)
    assert learning_rate(60, config) == pytest.approx(0.5e-3)
    assert learning_rate(110, config) == pytest.approx(0.0, abs=1e-12)


def test_one_step_changes_weights_and_lowers_the_loss_on_a_fixed_batch(tmp_path):
    config = tiny_config(tmp_path, lr=1e-3)
    torch.manual_seed(0)
    model = build_model(SMALL).train()
    optimizer = make_optimizer(model, config)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    batch = fixed_batch(config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss, parts = batch_loss(model, batch, torch.device("cpu"), config, causal=True)
    assert set(parts) == {"loss", "position", "occlusion", "uncertainty"}
    grad_norm, stepped = optimizer_step(model, optimizer, scaler, loss, config.grad_clip)
    assert stepped and np.isfinite(grad_norm) and grad_norm > 0
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) == len(before)
    with torch.no_grad():
        after, _ = batch_loss(model, batch, torch.device("cpu"), config, causal=True)
    assert after.item() < loss.item()


def test_bf16_autocast_on_cpu_trains_close_to_float32(tmp_path):
    batch = fixed_batch(tiny_config(tmp_path))
    torch.manual_seed(0)
    model = build_model(SMALL).train()
    losses = {}
    for amp in ("auto", "bf16"):  # auto is float32 on the CPU
        config = tiny_config(tmp_path, amp=amp)
        losses[amp], _ = batch_loss(model, batch, torch.device("cpu"), config, causal=True)
    assert losses["bf16"].dtype == torch.float32
    assert losses["bf16"].item() != losses["auto"].item()  # bf16 really ran
    assert losses["bf16"].item() == pytest.approx(losses["auto"].item(), rel=0.05)
    losses["bf16"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        tiny_config(tmp_path, amp="fp16", device="cpu")


def test_resume_continues_exactly_and_logs(tmp_path):
    straight = train(tiny_config(tmp_path / "straight", eval_every=4))
    # The same run interrupted at step 2 through the command line, then resumed.
    args = ["--output", str(tmp_path / "resumed"), "--model", TINY_MODEL, "--steps", "4",
            "--batch-size", "2", "--frames", "4", "--num-points", "8", "--image-size", "64",
            "--warmup", "2", "--num-workers", "0", "--log-every", "1", "--checkpoint-every", "2",
            "--eval-every", "0"]
    assert main([*args, "--stop-at", "2"]) == 0
    halfway = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert halfway["step"] == 2 and "optimizer" in halfway and halfway["train_config"]["steps"] == 4
    assert not (tmp_path / "resumed" / "final.pt").exists()
    assert main(["--output", str(tmp_path / "resumed"), "--resume", "--num-workers", "0"]) == 0

    resumed = load_checkpoint(tmp_path / "resumed" / "final.pt")
    assert resumed.extra["step"] == 4 and resumed.config == SMALL
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key

    with open(tmp_path / "resumed" / "train_log.csv") as file:
        assert [int(row["step"]) for row in csv.DictReader(file)] == [1, 2, 3, 4]
    with open(tmp_path / "straight" / "eval_log.csv") as file:
        rows = list(csv.DictReader(file))
    assert [int(row["step"]) for row in rows] == [4]
    assert 0.0 <= float(rows[0]["average_jaccard"]) <= 1.0
    assert (tmp_path / "straight" / "eval" / "step_0000004.json").exists()


def test_fresh_run_refuses_an_existing_checkpoint_and_resume_refuses_a_new_architecture(tmp_path):
    train(tiny_config(tmp_path, steps=1))
    with pytest.raises(ValueError, match="--resume"):
        train(tiny_config(tmp_path, steps=1))
    assert main(["--output", str(tmp_path), "--resume", "--model", "small"]) == 2  # a bad argument


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_stops(tmp_path):
    command = [sys.executable, "-m", "bootstap_ros_training.supervised", "--output", str(tmp_path), "--model", TINY_MODEL,
               "--steps", "100000", "--batch-size", "1", "--frames", "2", "--num-points", "4",
               "--image-size", "64", "--num-workers", "0", "--log-every", "1",
               "--checkpoint-every", "100000", "--eval-every", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(logged_steps(tmp_path / "train_log.csv")) < 2:
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "no training steps logged within 120 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, stderr.decode()
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == logged_steps(tmp_path / "train_log.csv")[-1] >= 2
    assert b"stopped by SIGTERM" in stdout


def test_named_model_configs():
    assert resolve_model_config("small", causal=False) == SMALL_TRAINING_MODEL.replace(causal=False)
    assert resolve_model_config(TINY_MODEL, causal=True) == SMALL
    assert resolve_model_config("official", causal=True).extra_conv_blocks == 5
    with pytest.raises(ValueError, match="unknown model"):
        resolve_model_config("huge", causal=True)


@pytest.mark.slow
def test_ddp_gloo_two_processes_end_with_identical_weights(tmp_path):
    config = tiny_config(tmp_path / "run", steps=2, checkpoint_every=1, device="cpu")
    run_ddp(train, config, tmp_path)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    torch.manual_seed(config.seed)
    initial = build_model(SMALL).state_dict()
    assert any(not torch.equal(rank0[k], initial[k]) for k in rank0)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    saved = load_checkpoint(tmp_path / "run" / "final.pt")
    for key, value in saved.model.state_dict().items():
        assert torch.equal(value, rank0[key]), key
    with open(tmp_path / "run" / "config.json") as file:
        assert json.load(file)["world_size"] == 2


def test_training_checkpoints_hold_several_parts_and_load_as_project_checkpoints(tmp_path):
    from bootstap_ros_training.loop import _CsvLog, load_training_parts, make_adamw, save_training_checkpoint

    torch.manual_seed(0)
    student, teacher = build_model(SMALL).train(), build_model(SMALL)
    optimizer = make_adamw(student, 1e-3, 0.0, 0.95)
    student(torch.zeros(1, 2, 64, 64, 3), torch.zeros(1, 1, 3)).tracks.sum().backward()
    optimizer.step()
    scaler = torch.amp.GradScaler("cuda", enabled=False)  # disabled: left out
    path = tmp_path / "run" / "checkpoint.pt"
    save_training_checkpoint(path, student, {"teacher": teacher, "optimizer": optimizer,
                                             "scaler": scaler}, step=3)
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt"]  # no temp file left
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    loaded = load_checkpoint(path)  # what bootstap-track does: no flags
    assert loaded.extra["step"] == 3 and "scaler" not in loaded.extra
    for key, value in student.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key

    other_teacher, other_optimizer = build_model(SMALL), make_adamw(loaded.model, 1e-3, 0.0, 0.95)
    content = torch.load(path, weights_only=True)
    load_training_parts(content, {"teacher": other_teacher, "optimizer": other_optimizer,
                                  "scaler": scaler})
    for key, value in teacher.state_dict().items():
        assert torch.equal(other_teacher.state_dict()[key], value), key
    assert other_optimizer.state_dict()["state"][0]["step"] == 1
    with pytest.raises(ValueError, match="no 'missing' state"):
        load_training_parts(content, {"missing": optimizer})

    # Logs take new columns as they come, keeping the rows already written.
    log = _CsvLog(tmp_path / "log.csv", ("step", "loss"), 0)
    log.write({"step": 1, "loss": 0.5})
    log.write({"step": 2, "loss": 0.25, "kept_tracks": 0.75})
    with open(tmp_path / "log.csv") as file:
        rows = list(csv.DictReader(file))
    assert rows == [{"step": "1", "loss": "0.5", "kept_tracks": ""},
                    {"step": "2", "loss": "0.25", "kept_tracks": "0.75"}]
    resumed = _CsvLog(tmp_path / "log.csv", ("step", "loss"), 1)  # a resume at step 1
    assert resumed.columns == ["step", "loss", "kept_tracks"]
    with open(tmp_path / "log.csv") as file:
        assert [row["step"] for row in csv.DictReader(file)] == ["1"]


def test_a_time_budget_fits_the_supervised_run_to_it(tmp_path, capsys):
    """The supervised trainer takes --time-budget as bootstrapping does: the schedule is fitted
    to the minutes given, the run ends within them and writes its final weights. The budget's
    clock is a fake one, so a loaded machine changes nothing; the progress bar starts once the
    schedule is fitted (never counting to the budget's cap of 1,000,000 steps)."""
    args = ["--output", str(tmp_path / "run"), "--model", TINY_MODEL, "--time-budget", "0.15",
            "--batch-size", "2", "--frames", "4", "--num-points", "8", "--image-size", "64",
            "--warmup", "2", "--num-workers", "0", "--log-every", "1", "--checkpoint-every", "50",
            "--eval-every", "0"]
    clock = FakeClock(tick=0.1)
    started = clock.now
    assert main(args, clock=clock) == 0
    assert clock.now - started < 9 + 15
    final = load_checkpoint(tmp_path / "run" / "final.pt")
    assert final.extra["step"] == final.extra["train_config"]["steps"] > 4
    assert "/1000000" not in capsys.readouterr().err


def test_the_old_output_flag_and_final_weights_name_still_work_with_a_warning(tmp_path, capsys):
    args = ["--out", str(tmp_path / "run"), "--model", TINY_MODEL, "--steps", "1", "--batch-size", "1",
            "--frames", "2", "--num-points", "4", "--image-size", "64", "--num-workers", "0",
            "--eval-every", "0"]
    assert main(args) == 0
    assert "--out is deprecated, use --output" in capsys.readouterr().err
    assert (tmp_path / "run" / "final.pt").is_file() and not (tmp_path / "run" / "model.pt").exists()
    # --init RUN/model.pt, the old name of a run's final weights, finds RUN/final.pt.
    args = ["--output", str(tmp_path / "next"), "--init", str(tmp_path / "run" / "model.pt"), "--steps", "1",
            "--batch-size", "1", "--frames", "2", "--num-points", "4", "--image-size", "64",
            "--num-workers", "0", "--eval-every", "0"]
    assert main(args) == 0
    assert "model.pt is deprecated" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc settings")
def test_training_keeps_freed_memory_instead_of_faulting_it_in_again():
    """A step's large activations are freed and allocated again every step: with the
    allocator's default they are unmapped and page-faulted in anew each time."""
    code = (
        "import resource, sys, torch\n"
        "from bootstap_ros_training.loop import keep_freed_memory\n"
        "if sys.argv[1] == 'keep': assert keep_freed_memory()\n"
        "def step():  # activations of 2 to 60 MB, all freed at the end\n"
        "    parts = [torch.ones(n << 18) for n in (2, 8, 16, 30, 60)]\n"
        "    return sum(float(p.sum()) for p in parts)\n"
        "step()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(10): step()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n")
    faults = {mode: int(subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True,
                                       check=True).stdout) for mode in ("default", "keep")}
    assert faults["default"] > 10 * 10000  # most of the 29,000 pages of a step, every step
    assert faults["keep"] < faults["default"] / 10
