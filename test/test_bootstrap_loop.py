"""The bootstrapping loop (training/bootstrap.py) and what it needs from the model code."""

import copy
import csv
import dataclasses
import io
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

from bootstap_ros.model import load_checkpoint, save_checkpoint
from bootstap_ros.tracking import CausalTracker
from helpers.ddp import run_ddp
from helpers.runs import FakeClock, logged_steps
from helpers.small_model import blob_clip, moving_clip, small_model
from bootstap_ros_training.bootstrap import (BootstrapConfig, bootstrap, bootstrap_loss, build_parser, main,
                                             step_generators)
from bootstap_ros_training.logs import write_image_bag

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and a loaded CI machine loses much to them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_model_that_tracked_on_cpu_can_be_deep_copied_and_saved():
    # An EMA teacher is a deep copy of the student, and checkpoints pickle the model's
    # tensors: neither may meet the oneDNN packed weights of online tracking.
    model = small_model()
    tracker = CausalTracker(model, max_points=4, device="cpu", backend="torch")
    frames = moving_clip(num_frames=3, height=64, width=64)
    tracker.add_points(frames[0], np.array([[20.0, 30.0], [40.0, 12.0]], np.float32))
    with torch.no_grad():
        for frame in frames:
            first = tracker.step(frame)
    copied = copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    for key, value in model.state_dict().items():
        assert torch.equal(copied.state_dict()[key], value), key
    # The copy tracks on its own, with the same results.
    other = CausalTracker(copied, max_points=4, device="cpu", backend="torch")
    other.add_points(frames[0], np.array([[20.0, 30.0], [40.0, 12.0]], np.float32))
    with torch.no_grad():
        for frame in frames:
            second = other.step(frame)
    np.testing.assert_allclose(second.xy, first.xy, atol=1e-4)


# ----------------------------------------------------------------------------- the loss

def _tiny_config(**changes):
    values = dict(num_points=8, clip_frames=4, cycle_mask=False)
    values.update(changes)
    return BootstrapConfig(**values)


def confident_model():
    """The random-weight test model, made to call every point visible (occlusion and
    uncertainty logits pushed far down), so that pseudo-labels have positions to teach."""
    model = small_model()
    with torch.no_grad():
        model.torch_cost_volume_track_mods["occ_out"].bias.fill_(-8.0)
    return model


def _loss_gradients(siamese: bool):
    """Gradients of one bootstrapping loss, the teacher a separate copy that could take them."""
    student = confident_model().train()
    teacher = copy.deepcopy(student).train()  # requires_grad on: only the code may cut the path
    video = torch.from_numpy(moving_clip(num_frames=4, height=64, width=64))[None]
    numpy_rng, torch_rng = step_generators(0, 0, 0)
    loss, parts = bootstrap_loss(student, teacher, video, _tiny_config(siamese=siamese, teacher="ema"), numpy_rng,
                                 torch_rng, True, True)
    loss.backward()
    assert loss.item() > 0 and parts["kept_tracks"].item() == 1.0
    assert parts["position"].item() > 0  # the teacher's tracks are targets somewhere
    student_grads = [p.grad for p in student.parameters()]
    teacher_grads = [p.grad for p in teacher.parameters()]
    return student_grads, teacher_grads


def test_siamese_passes_gradients_through_the_teacher_and_the_default_does_not():
    student_grads, teacher_grads = _loss_gradients(siamese=False)
    assert sum(float(g.abs().sum()) for g in student_grads if g is not None) > 0
    assert all(g is None for g in teacher_grads)  # stop-gradient: the teacher is a constant
    student_grads, teacher_grads = _loss_gradients(siamese=True)
    assert sum(float(g.abs().sum()) for g in student_grads if g is not None) > 0
    assert sum(float(g.abs().sum()) for g in teacher_grads if g is not None) > 0


@pytest.mark.parametrize("causal, amp", [(False, "auto"), (True, "bf16")], ids=["offline-fp32", "causal-bf16"])
def test_the_loss_trains_offline_students_and_under_bf16_autocast(causal, amp):
    student = confident_model().train()
    if not causal:
        student = type(student)(student.config.replace(causal=False))
        student.load_state_dict(confident_model().state_dict())
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    video = torch.from_numpy(moving_clip(num_frames=4, height=64, width=64))[None]
    numpy_rng, torch_rng = step_generators(0, 3, 0)
    loss, parts = bootstrap_loss(student, teacher, video, _tiny_config(amp=amp), numpy_rng, torch_rng,
                                 causal, causal)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and loss.item() > 0
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("refinement_iters", [0, 2])
def test_the_loss_is_zero_where_the_student_agrees_with_the_teacher(refinement_iters):
    """Student and teacher the same weights, the student's view the clean clip and its query
    the teacher's: nothing to learn, so no loss. (The loss once took "occluded or uncertain"
    as the occlusion target, which left an occlusion BCE and a gradient here.) With
    refinement the unrefined stages still learn from the final one; the final stage's terms
    are zero."""
    student = small_model(refinement_iters=refinement_iters).train()
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    video = torch.from_numpy(blob_clip(num_frames=4, height=64, width=64, blobs=40))[None]
    numpy_rng, torch_rng = step_generators(0, 0, 0)
    config = _tiny_config(affine=False, jpeg=False, same_query=True, proximity_mask=False)
    loss, parts = bootstrap_loss(student, teacher, video, config, numpy_rng, torch_rng, True, True)
    for term in ("position", "occlusion", "uncertainty"):
        assert parts[term].item() == pytest.approx(0.0, abs=1e-5), term
    if refinement_iters == 0:
        loss.backward()
        assert loss.item() == pytest.approx(0.0, abs=1e-5)
        norm = torch.sqrt(sum(p.grad.square().sum() for p in student.parameters() if p.grad is not None))
        assert norm.item() < 1e-4


# ----------------------------------------------------------------------------- runs

@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A robot-log-like bag (MCAP, raw rgb8) of a moving texture and a tiny causal model."""
    folder = tmp_path_factory.mktemp("bootstrap_inputs")
    frames = blob_clip(num_frames=16, height=64, width=80, dx=1.0, dy=0.5, blobs=60)
    write_image_bag(folder / "bag", frames, [i * 50_000_000 for i in range(len(frames))],
                    topic="/wrist/image_raw", storage="mcap")
    save_checkpoint(folder / "tiny.pt", confident_model())
    return folder


def test_a_fixed_offline_teacher_a_capacity_expanded_student_and_periodic_evaluation(inputs, tmp_path):
    from bootstap_ros_training.domains.synthetic import SyntheticConfig, generate_clip, write_tapvid_pickle

    save_checkpoint(tmp_path / "plain.pt", small_model(extra_conv_blocks=0))
    clips = [generate_clip(seed, SyntheticConfig(frames=4, height=64, width=64, num_points=4))
             for seed in range(2)]
    write_tapvid_pickle(tmp_path / "eval.pkl", clips)
    args = _run_args(inputs, tmp_path / "run", 2, "--teacher", str(inputs / "tiny.pt"),
                     "--eval", str(tmp_path / "eval.pkl"), "teacher_causal=false",
                     "expand_capacity=true", "eval_every=1")
    args[args.index("--init") + 1] = str(tmp_path / "plain.pt")
    assert main(args) == 0
    final = load_checkpoint(tmp_path / "run" / "final.pt")
    assert final.config.extra_conv_blocks == 5 and final.config.causal
    stored = _state(tmp_path / "run" / "checkpoint.pt")
    assert "teacher" not in stored  # a fixed teacher is read from its file again on resume
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["teacher_model"]["causal"] is False and config["model"]["extra_conv_blocks"] == 5
    with open(tmp_path / "run" / "eval_log.csv") as file:
        rows = list(csv.DictReader(file))
    # The evaluations at steps 1 and 2, after the label-free score at step 0 (as report.json has it).
    assert [int(row["step"]) for row in rows if row["average_jaccard"]] == [1, 2]
    assert [int(row["step"]) for row in rows] == [0, 1, 2]
    assert all(0.0 <= float(row["average_jaccard"]) <= 1.0 for row in rows if row["average_jaccard"])
    assert (tmp_path / "run" / "eval" / "step_0000002.json").exists()


def _run_args(inputs, output, steps=2, *extra):
    """The command line of a tiny CPU run (a fraction of a second per step)."""
    return ["--data", str(inputs / "bag"), "--init", str(inputs / "tiny.pt"), "--output", str(output),
            "--steps", str(steps), "--batch-size", "1", "--device", "cpu", "num_points=8",
            "supervised_points=8", "clip_frames=4", "num_workers=0", "log_every=1", "warmup=1",
            "lr=1e-3", *extra]


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_ema_teacher_is_the_moving_average_of_the_student(inputs, tmp_path):
    # One step with decay 0.5 and no supervised task: the stored teacher must be exactly the
    # average of the initial and the updated student (an optimiser step on the teacher, or a
    # gradient reaching it, would break that).
    assert main(_run_args(inputs, tmp_path / "run", 1, "--teacher", "ema", "ema_decay=0.5",
                          "supervised_batch_size=0", "cycle_mask=false")) == 0
    initial = _state(inputs / "tiny.pt")["state_dict"]
    stored = _state(tmp_path / "run" / "checkpoint.pt")
    student, teacher = stored["state_dict"], stored["teacher"]
    assert stored["step"] == 1 and "supervised_optimizer" not in stored
    moved = [k for k in student if not torch.equal(student[k], initial[k])]
    assert len(moved) > len(student) // 2
    for key in student:
        torch.testing.assert_close(teacher[key], 0.5 * initial[key] + 0.5 * student[key],
                                   atol=1e-7, rtol=1e-6, msg=key)


def test_a_run_from_a_bag_writes_a_checkpoint_the_tracker_cli_and_the_node_load(inputs, tmp_path):
    from bootstap_ros.cli import track
    from bootstap_ros.ros.settings import TrackerNodeConfig
    from bootstap_ros.tracking.session import create_tracker

    output = tmp_path / "run"
    assert main(_run_args(inputs, output, 2, "--image-topic", "/wrist/image_raw")) == 0
    final = output / "final.pt"
    loaded = load_checkpoint(final)
    assert loaded.config.causal and loaded.extra["step"] == 2
    assert "teacher" not in loaded.extra and "bootstrap_optimizer" not in loaded.extra
    assert loaded.extra["bootstrap_config"]["data"] == [str(inputs / "bag")]
    # Trained: the weights moved away from the initial model.
    initial = _state(inputs / "tiny.pt")["state_dict"]
    assert any(not torch.equal(v, initial[k]) for k, v in loaded.model.state_dict().items())
    with open(output / "train_log.csv") as file:
        header = file.readline().strip().split(",")
    assert {"loss", "kept_tracks", "supervised_loss"} <= set(header)

    np.save(tmp_path / "clip.npy", moving_clip(num_frames=4, height=48, width=64))
    assert track.main([str(tmp_path / "clip.npy"), "--checkpoint", str(final), "--grid", "2",
                       "--output", str(tmp_path / "tracks.npz")]) == 0
    assert np.load(tmp_path / "tracks.npz")["tracks"].shape[-1] == 2
    tracker, info = create_tracker(TrackerNodeConfig(checkpoint=str(final), device="cpu"))
    assert tracker.config == loaded.config

    from bootstap_ros.eval import cli as eval_cli
    from bootstap_ros_training.domains.synthetic import SyntheticConfig, generate_clip, write_tapvid_pickle

    write_tapvid_pickle(tmp_path / "eval.pkl",
                        [generate_clip(0, SyntheticConfig(frames=4, height=64, width=64, num_points=4))])
    assert eval_cli.main([str(tmp_path / "eval.pkl"), "--checkpoint", str(final), "--device", "cpu",
                          "--output", str(tmp_path / "results.json")]) == 0
    assert 0.0 <= json.loads((tmp_path / "results.json").read_text())["average_jaccard"] <= 1.0


def _clean_env():
    # One thread: the same float reductions in every process (bit-exact resume), and no
    # oversubscription of a loaded machine.
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _command(args):
    return [sys.executable, "-m", "bootstap_ros_training.bootstrap", *args]


@pytest.mark.slow
def test_resume_after_a_kill_gives_the_weights_of_an_uninterrupted_run(inputs, tmp_path):
    steps = 6
    # No cycle mask: every pseudo-label counts, so the teacher's state shapes the weights too.
    straight = subprocess.run(_command(_run_args(inputs, tmp_path / "straight", steps, "cycle_mask=false")),
                              cwd=REPO, env=_clean_env(), capture_output=True, timeout=600)
    assert straight.returncode == 0, straight.stderr.decode()[-3000:]

    killed = tmp_path / "killed"
    args = _run_args(inputs, killed, steps, "cycle_mask=false", "checkpoint_every=2")
    process = subprocess.Popen(_command(args), cwd=REPO, env=_clean_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not (killed / "checkpoint.pt").exists():
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint written within 300 s"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)  # no handler runs: as a crash or an OOM kill
        process.wait(timeout=60)
    finally:
        process.kill()
    assert not (killed / "final.pt").exists(), "the run ended before it could be killed"
    halfway = _state(killed / "checkpoint.pt")["step"]
    assert halfway in (2, 4)

    resumed = subprocess.run(_command(["--output", str(killed), "--resume"]), cwd=REPO,
                             env=_clean_env(), capture_output=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    want, got = _state(tmp_path / "straight" / "final.pt"), _state(killed / "final.pt")
    assert got["step"] == want["step"] == steps
    for key, value in want["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), key
    with open(killed / "train_log.csv") as file:
        assert [int(line.split(",")[0]) for line in file.readlines()[1:]] == list(range(1, steps + 1))


def test_help_documents_every_setting():
    text = build_parser().format_help()
    for name in (f.name for f in dataclasses.fields(BootstrapConfig)):
        if name not in ("output", "data"):
            assert f"  {name}=" in text, name
    for flag in ("--config", "--data", "--image-topic", "--init", "--teacher", "--steps",
                 "--batch-size", "--device", "--eval", "--resume", "--output"):
        assert flag in text, flag
    with pytest.raises(ValueError, match="lr expects a number"):
        BootstrapConfig.from_dict({"lr": "fast"})
    with pytest.raises(ValueError, match="unknown bootstrapping config keys"):
        BootstrapConfig.from_dict({"learning_rate": 1.0})
    assert BootstrapConfig.from_dict({"lr": "1e-3", "affine": "false"}).lr == 1e-3


@pytest.mark.slow
def test_ddp_gloo_two_processes_end_with_identical_weights(inputs, tmp_path):
    config = BootstrapConfig(output=str(tmp_path / "run"), data=[str(inputs / "bag")],
                             init=str(inputs / "tiny.pt"), steps=2, batch_size=1, device="cpu",
                             num_points=8, supervised_points=8, clip_frames=4, num_workers=0,
                             log_every=1, warmup=1, lr=1e-3, cycle_mask=False)
    run_ddp(bootstrap, config, tmp_path)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    initial = _state(inputs / "tiny.pt")["state_dict"]
    assert any(not torch.equal(rank0[k], initial[k]) for k in rank0)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    final = _state(tmp_path / "run" / "final_student.pt")["state_dict"]  # final.pt: merged with the start
    for key in rank0:
        assert torch.equal(final[key], rank0[key]), key
    assert json.loads((tmp_path / "run" / "config.json").read_text())["world_size"] == 2


def test_training_installs_under_its_own_name_not_as_a_top_level_training(tmp_path):
    # Outside the checkout (no repository on the path): the installed package is
    # bootstap_ros_training, and no generic `training` package comes from this project.
    code = ("import importlib.util, bootstap_ros_training.bootstrap as b\n"
            "spec = importlib.util.find_spec('training')\n"
            "print(b.__name__, spec.origin if spec else None)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    name, origin = result.stdout.split()
    assert name == "bootstap_ros_training.bootstrap"
    assert origin == "None" or not Path(origin).is_relative_to(REPO), origin


def test_log_batches_visit_every_clip_once_per_epoch_and_resume_in_place():
    from bootstap_ros_training.bootstrap import LogBatches

    one = list(LogBatches(5, 0, 5, batch_size=2, seed=3, rank=0, world_size=1))
    flat = [index for batch in one for index in batch]
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))
    assert flat[:5] != flat[5:10]  # a new order every epoch
    assert list(LogBatches(5, 3, 5, batch_size=2, seed=3)) == one[3:]  # resumed at step 3
    ranks = [list(LogBatches(4, 0, 2, batch_size=1, seed=0, rank=r, world_size=2)) for r in (0, 1)]
    assert sorted(ranks[0][0] + ranks[1][0] + ranks[0][1] + ranks[1][1]) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="no clips"):
        LogBatches(0, 0, 1, batch_size=1, seed=0)


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_stops(inputs, tmp_path):
    args = _run_args(inputs, tmp_path, 100000, "checkpoint_every=100000")
    process = subprocess.Popen(_command(args), cwd=REPO, env=_clean_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while len(logged_steps(tmp_path / "train_log.csv")) < 2:
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no bootstrapping steps logged within 300 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 0, stderr.decode()[-3000:]
    checkpoint = _state(tmp_path / "checkpoint.pt")
    assert checkpoint["step"] == logged_steps(tmp_path / "train_log.csv")[-1] >= 2
    assert "teacher" in checkpoint and "bootstrap_optimizer" in checkpoint
    assert not (tmp_path / "final.pt").exists()
    assert b"stopped by SIGTERM" in stdout + stderr


def test_settings_come_from_yaml_then_flags_then_key_value_pairs(tmp_path):
    from bootstap_ros_training.bootstrap import parse_command

    (tmp_path / "run.yaml").write_text("steps: 5\nlr: 1e-3\ndata: [a.bag]\naffine: true\n"
                                       "loss: {position_weight: 0.1}\n")
    given, output, resume, stop_at = parse_command(
        ["--config", str(tmp_path / "run.yaml"), "affine=false", "--output", "out", "--steps", "7",
         "lr=2e-3", "--data", "b.bag", "--data", "c", "jpeg_quality=[30, 60]"])
    config = BootstrapConfig.from_dict({**given, "output": output})
    assert (config.steps, config.lr, config.affine, config.data) == (7, 2e-3, False, ["b.bag", "c"])
    assert config.jpeg_quality == (30, 60) and config.loss.position_weight == 0.1
    assert output == "out" and not resume and stop_at is None


def test_a_time_budget_fits_the_run_and_keeps_the_best_scored_checkpoint(inputs, tmp_path, capsys):
    """--time-budget: the run fits its steps to the minutes given and runs them (the
    final evaluation on top), writes final.pt, best.pt (the best label-free score on the
    held-out clip) and report.json, and logs the score, from step 0 on as report.json has it.
    The budget's clock is a fake one: the run's pace does not depend on the machine's load.
    One held-out clip makes a noisy score: the run says so."""
    output = tmp_path / "run"
    args = _run_args(inputs, output, 2, "--time-budget", "0.25", "validate_every=5", "validate_points=4")
    args.remove("--steps")
    args.remove("2")
    assert main(args, clock=FakeClock(tick=0.25)) == 0
    final = load_checkpoint(output / "final.pt")
    steps = final.extra["step"]
    assert steps == final.extra["bootstrap_config"]["steps"] > 4  # the fitted schedule ran to its end
    report = json.loads((output / "report.json").read_text())
    assert report["held_out_clips"] == 1 and report["before"]["step"] == 0
    assert report["after"]["step"] == steps
    best = load_checkpoint(output / "best.pt")
    assert best.extra["step"] == report["best"]["step"]
    assert best.extra["label_free_score"]["cycle_score"] == pytest.approx(report["best"]["cycle_score"])
    assert max(h["cycle_score"] for h in report["history"]) == pytest.approx(report["best"]["cycle_score"])
    err = capsys.readouterr().err
    assert "time budget: timing the first" in err  # the budget, not a step count, set the schedule
    assert "label-free score on 1 held-out clips" in err
    assert "only 1 held-out clip(s)" in err and "noisy" in err
    with open(output / "eval_log.csv") as file:
        rows = list(csv.DictReader(file))
    assert rows and all(row["cycle_score"] for row in rows)
    assert rows[0]["step"] == "0"
    assert float(rows[0]["cycle_score"]) == pytest.approx(report["before"]["cycle_score"], abs=1e-5)


def test_best_pt_holds_the_step_of_the_highest_of_unequal_scores(tmp_path):
    """Validation scores each evaluated step with the label-free score and keeps the best in
    best.pt. Three models that track differently well, in an order where neither the first,
    the last nor the lowest is the best: the embedded model at step 5 between a noisier copy
    of it (step 0) and random weights (step 10)."""
    from bootstap_ros.model import build_model
    from bootstap_ros.model.checkpoint import EMBEDDED_CHECKPOINT
    from bootstap_ros_training.bootstrap import BEST_MODEL, REPORT, Validation
    from helpers.adapter_bags import panning

    embedded = load_checkpoint(EMBEDDED_CHECKPOINT).model
    noisy = copy.deepcopy(embedded)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in noisy.parameters():
            parameter.mul_(1 + 0.3 * torch.randn(parameter.shape, generator=generator))
    torch.manual_seed(0)
    random_weights = build_model(embedded.config)
    videos = [panning(6, seed=s, speed=3) for s in range(2)]
    validation = Validation(BootstrapConfig(validate_points=16), videos, tmp_path, torch.device("cpu"))
    scores = [validation.score(model, step)["cycle_score"]
              for model, step in ((noisy, 0), (embedded, 5), (random_weights, 10))]
    assert scores[1] > scores[0] > scores[2], scores  # unequal, the best in the middle
    validation.report(10)
    best = load_checkpoint(tmp_path / BEST_MODEL)
    assert best.extra["step"] == 5 and best.extra["label_free_score"]["cycle_score"] == scores[1]
    for key, value in embedded.state_dict().items():
        assert torch.equal(best.model.state_dict()[key], value), key
    report = json.loads((tmp_path / REPORT).read_text())
    assert report["best"]["step"] == 5 and report["best"]["cycle_score"] == scores[1]
    assert [h["cycle_score"] for h in report["history"]] == scores


def test_final_and_best_are_the_students_merged_with_the_starting_weights(inputs, tmp_path):
    """merge=0.25: final.pt and best.pt hold 0.75 x the starting weights + 0.25 x their
    student, computed here in float64 from the files the run kept (start.pt, the student
    in checkpoint.pt, final_student.pt, best_student.pt); merge=1 writes the student as is."""
    from bootstap_ros_training.bootstrap import merge_with_start

    output = tmp_path / "run"
    assert main(_run_args(inputs, output, 3, "validate_every=1", "validate_points=4", "merge=0.25")) == 0
    initial = _state(inputs / "tiny.pt")["state_dict"]
    start = _state(output / "start.pt")["state_dict"]
    assert all(torch.equal(start[k], v) for k, v in initial.items())
    student = _state(output / "checkpoint.pt")["state_dict"]
    assert all(torch.equal(_state(output / "final_student.pt")["state_dict"][k], v) for k, v in student.items())
    final, best = _state(output / "final.pt"), _state(output / "best.pt")
    best_student = _state(output / "best_student.pt")
    assert final["merged"]["weight"] == best["merged"]["weight"] == 0.25
    assert best["step"] == best_student["step"] and best["label_free_score"] == best_student["label_free_score"]
    moved = 0
    for merged, trained in ((final, student), (best, best_student["state_dict"])):
        for key, value in trained.items():
            if not value.is_floating_point():
                continue
            want = (0.75 * initial[key].double() + 0.25 * value.double()).float()
            torch.testing.assert_close(merged["state_dict"][key], want, rtol=0, atol=1e-7, msg=key)
            moved += not torch.equal(value, initial[key])
    assert moved > 0  # the students moved: the merge is not the start or the student by accident
    assert merge_with_start(output, 0.25) == []  # merged files are left as they are

    plain = tmp_path / "plain"
    assert main(_run_args(inputs, plain, 2, "holdout=0", "merge=1")) == 0
    assert not (plain / "final_student.pt").exists()
    trained = _state(plain / "checkpoint.pt")["state_dict"]
    assert all(torch.equal(_state(plain / "final.pt")["state_dict"][k], v) for k, v in trained.items())


def test_without_steps_or_budget_the_run_says_what_it_will_do(inputs, tmp_path, capsys):
    args = _run_args(inputs, tmp_path / "run", 6, "holdout=0")
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "plan: 6 steps at about" in captured.out + captured.err


def test_bf16_on_a_cpu_without_bf16_units_is_warned_about(monkeypatch, capsys):
    from bootstap_ros_training import bootstrap as module

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    module._warn_about_precision(BootstrapConfig(amp="bf16", device="cpu"))
    assert "bf16 arithmetic is emulated" in capsys.readouterr().err
    module._warn_about_precision(BootstrapConfig(amp="auto", device="cpu"))
    assert capsys.readouterr().err == ""


def test_a_fixed_teacher_stays_the_starting_model_and_labels_each_clip_once(inputs, tmp_path):
    output = tmp_path / "run"
    assert main(_run_args(inputs, output, 6, "--teacher", "fixed", "label_points=16", "holdout=0")) == 0
    initial = _state(inputs / "tiny.pt")["state_dict"]
    stored = _state(output / "checkpoint.pt")
    for key, value in stored["teacher"].items():
        assert torch.equal(value, initial[key]), key
    assert any(not torch.equal(stored["state_dict"][k], initial[k]) for k in initial)
    # The bag gives 4 clips: 6 steps of one clip label each clip once, in a file of its own.
    files = sorted((output / "teacher_labels" / "rank0").glob("*.pt"))
    assert len(files) == 4
    stamps = [f.stat().st_mtime_ns for f in files]
    assert main(["--output", str(output), "--resume", "--steps", "8"]) == 0
    assert [f.stat().st_mtime_ns for f in files] == stamps  # read back, not labelled again


def test_kept_checkpoints_hold_the_student_and_the_teacher_of_their_step(inputs, tmp_path):
    output = tmp_path / "run"
    assert main(_run_args(inputs, output, 4, "--teacher", "fixed", "label_points=16", "holdout=0",
                          "keep_every=2")) == 0
    kept = sorted((output / "checkpoints").glob("step_*.pt"))
    assert [p.name for p in kept] == ["step_0000002.pt", "step_0000004.pt"]
    last = load_checkpoint(kept[-1])
    final = load_checkpoint(output / "final_student.pt")  # final.pt is merged with the start
    for key, value in final.model.state_dict().items():
        assert torch.equal(last.model.state_dict()[key], value), key
    initial = _state(inputs / "tiny.pt")["state_dict"]
    assert all(torch.equal(v, initial[k]) for k, v in last.extra["teacher"].items())
    assert last.extra["step"] == 4 and last.extra["elapsed_s"] > 0


def test_an_ema_teacher_relabels_its_cached_clips_every_relabel_every_steps(inputs, tmp_path, monkeypatch):
    from bootstap_ros_training import teacher as teacher_module

    labelled = []
    original = teacher_module.label_batch

    def counting(*args, **kwargs):
        labelled.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(teacher_module, "label_batch", counting)
    # 4 clips, one a step: steps 0-3 label each once, step 4 relabels (the cache was cleared), 5 too.
    assert main(_run_args(inputs, tmp_path / "run", 6, "--teacher", "ema", "relabel_every=4", "label_points=16", "holdout=0",
                          "supervised_batch_size=0")) == 0
    assert len(labelled) == 6
    assert not (tmp_path / "run" / "teacher_labels").exists()  # a moving teacher's labels stay in memory


def test_loss_settings_of_each_task_are_read_from_key_value_pairs_and_checked():
    from bootstap_ros_training.bootstrap import parse_command

    given, _, _, _ = parse_command(["--output", "x", "ssl_loss={uncertainty_weight: 0, position_weight: 0.1}"])
    config = BootstrapConfig.from_dict(given)
    assert config.ssl_loss.uncertainty_weight == 0.0 and config.ssl_loss.position_weight == 0.1
    assert config.loss == BootstrapConfig().loss  # the supervised task keeps its own weights
    with pytest.raises(ValueError, match="ssl_loss expects a mapping of position_weight"):
        BootstrapConfig.from_dict(parse_command(["--output", "x", "ssl_loss={uncertainty_weight:0}"])[0])


def test_the_supervised_task_sees_the_camera_the_default_model_was_trained_with():
    """The supervised share rehearses the default model's training data: by default a share
    of its synthetic clips comes through a random camera and a share on faint backgrounds
    (the rest equal the clean clips of the same seeds); 0 turns each off; out-of-range
    shares are refused."""
    from bootstap_ros_training.data import clip_arrays, train_clip_seed

    def config(**shares):
        return BootstrapConfig(supervised_points=16, **shares).for_device("cpu")

    assert (BootstrapConfig().supervised_camera, BootstrapConfig().supervised_faint_background) == (0.7, 0.4)
    plain = config(supervised_camera=0.0, supervised_faint_background=0.0)
    camera = config(supervised_faint_background=0.0).supervised_clips(64)
    faint = config(supervised_camera=0.0).supervised_clips(64)
    clean = plain.supervised_clips(64)
    changed = {"camera": 0, "faint": 0}
    for index in range(8):
        reference = clip_arrays(train_clip_seed(plain.seed, index), plain.synthetic(64))["video"]
        assert np.array_equal(clean[index]["video"], reference)
        changed["camera"] += not np.array_equal(camera[index]["video"], reference)
        changed["faint"] += not np.array_equal(faint[index]["video"], reference)
    assert 2 <= changed["camera"] < 8 and changed["faint"] >= 1, changed
    with pytest.raises(ValueError, match="supervised_camera must lie in"):
        BootstrapConfig(supervised_camera=1.5)


def test_the_self_supervised_loss_takes_its_own_weights():
    from bootstap_ros_training.losses import LossConfig

    student = confident_model().train()
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    video = torch.from_numpy(moving_clip(num_frames=4, height=64, width=64))[None]
    losses = {}
    for name, weights in {"default": LossConfig(), "no position": LossConfig(position_weight=0.0),
                          "none": LossConfig(0.0, 0.0, 0.0)}.items():
        numpy_rng, torch_rng = step_generators(0, 0, 0)
        config = _tiny_config(ssl_loss=weights, loss=LossConfig(position_weight=7.0))
        losses[name] = bootstrap_loss(student, teacher, video, config, numpy_rng, torch_rng, True, True)[0].item()
    assert losses["none"] == 0.0 < losses["no position"] < losses["default"]


def test_a_run_whose_logs_give_no_clip_fails_with_status_2_and_leaves_no_clip_folders(inputs, tmp_path, capsys):
    # 16 frames cannot make one clip of 40: input the user gave, and nothing half made stays.
    output = tmp_path / "run"
    assert main(_run_args(inputs, output, 2, "clip_frames=40")) == 2
    assert "no clip of 40 frames" in capsys.readouterr().err
    assert not (output / "clips" / "clips").exists() and not (output / "clips").exists()
    assert main(_run_args(inputs, tmp_path / "other", 2, "lr=fast")) == 2  # a bad setting: 2 as well


def test_each_settings_help_is_written_once_and_the_docs_table_is_generated_from_it():
    from bootstap_ros_training.bootstrap_config import KEY_HELP, settings_table

    fields = dataclasses.fields(BootstrapConfig)
    assert set(KEY_HELP) == {f.name for f in fields}
    help_text = build_parser().format_help()
    for f in fields:
        if f.metadata["flag"]:  # a flag's help is its setting's help
            assert " ".join(f.metadata["help"].split()[:4]) in " ".join(help_text.split()), f.name
    # The default teacher is the fixed one, and every description of it says so.
    assert BootstrapConfig().teacher == "fixed"
    assert KEY_HELP["teacher"].startswith("fixed: the starting model, frozen")
    assert "EMA teacher's pseudo-labels" not in help_text
    from bootstap_ros_training import bootstrap as module

    assert "by default the starting model, frozen" in " ".join(module.__doc__.split())
    page = (REPO / "docs" / "training.md").read_text()
    assert settings_table() in page, "docs/training.md's settings table differs: paste settings_table()'s"
