"""The tracker node's parts that need no ROS: the tracking session (its request queue, start-up
checks and frame handling), the node's queues, warning limiter and settings."""

import dataclasses
import threading
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import yaml

from bootstap_ros.ros.queues import LatestSlot, WarningLimiter
from bootstap_ros.ros.settings import (PARAMETER_NAMES, PARAMETERS, SettingsError,
                                       TrackerNodeConfig, config_from_parameters)
from bootstap_ros.tracking import CausalTracker
from bootstap_ros.tracking.session import RequestQueue, StartupError, TrackingSession, create_tracker
from helpers.small_model import moving_clip, small_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    return small_model()


class Recorder:
    def __init__(self):
        self.kinds = []
        self.messages = []

    def __call__(self, kind, message):
        self.kinds.append(kind)
        self.messages.append(message)


# ---------------------------------------------------------------- queues
def test_latest_slot_keeps_newest_and_counts_drops():
    slot = LatestSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True and slot.put(3) is True
    assert (slot.received, slot.dropped) == (3, 2)
    assert slot.get(timeout=0) == 3
    assert slot.get(timeout=0) is None


def test_latest_slot_close_wakes_a_waiting_worker():
    slot = LatestSlot()
    results = []
    worker = threading.Thread(target=lambda: results.append(slot.get(timeout=30)))
    worker.start()
    slot.close()
    worker.join(timeout=10)
    assert not worker.is_alive() and results == [None]


def test_warning_limiter_passes_one_per_period_per_kind():
    now = [0.0]
    emitted = []
    warn = WarningLimiter(emitted.append, period=5.0, clock=lambda: now[0])
    assert warn("a", "first a")
    assert not warn("a", "again a")
    assert warn("b", "first b")
    now[0] = 6.0
    assert warn("a", "later a")
    assert emitted == ["first a", "first b", "later a (1 more like this in the last 6 s)"]
    assert warn.counts == {"a": 3, "b": 1}


# ---------------------------------------------------------------- settings
def test_defaults_checks_and_grid_points():
    assert config_from_parameters({}) == TrackerNodeConfig()
    assert config_from_parameters({"grid_points": [1, 2.5, 3, 4]}).grid_points == (1.0, 2.5, 3.0, 4.0)
    assert config_from_parameters({"grid_points": 5}).grid_points == 5
    for values, match in [({"backend": "cuda"}, "backend='cuda' is not one of: auto, torch"),
                          ({"resolution": 100}, "multiple of 8"),
                          ({"device": "gpu"}, "device='gpu'"),
                          ({"grid_points": [1.0, 2.0, 3.0]}, "x, y pairs"),
                          ({"grid_points": -1}, ">= 0"),
                          ({"qos.image.reliability": "fast"}, "qos.image.reliability"),
                          ({"propagation": "flow"}, "propagation='flow' is not one of: lk, none")]:
        with pytest.raises(SettingsError, match=match):
            config_from_parameters(values)


def test_the_propagation_choices_are_the_realtime_trackers():
    from bootstap_ros.ros.settings import PROPAGATIONS
    from bootstap_ros.tracking.realtime import PROPAGATION_CHOICES

    assert PROPAGATIONS == PROPAGATION_CHOICES and TrackerNodeConfig().propagation == "lk"


def test_parameter_tables_take_their_defaults_from_their_config():
    from bootstap_ros_training.adapter import settings as adapter_settings
    from bootstap_ros.ros.parameters import ParameterSpec, parameter_table

    for specs, config in ((PARAMETERS, TrackerNodeConfig()), (adapter_settings.PARAMETERS,
                                                               adapter_settings.AdapterConfig())):
        # Every setting is a parameter, and each parameter's default is its setting's.
        assert sorted(spec.field for spec in specs) == sorted(f.name for f in dataclasses.fields(config))
        for spec in specs:
            assert spec.default == getattr(config, spec.field), spec.name
    with pytest.raises(TypeError, match=r"no field for the parameters \['nope'\]"):
        parameter_table(TrackerNodeConfig, ParameterSpec("nope", "nope", "a parameter"))


def test_array_parameters_come_back_as_lists():
    import array

    from bootstap_ros.ros.parameters import plain_value

    # rclpy returns integer arrays as array.array, which is never equal to the config's list.
    assert array.array("q", [0, 0]) != [0, 0]
    assert plain_value(array.array("q", [512, 512])) == [512, 512]
    assert plain_value((1.0, 2.5)) == [1.0, 2.5] and plain_value("x") == "x" and plain_value(3) == 3


def test_yaml_documents_every_parameter_with_its_default():
    text = (REPO / "config" / "tracker.yaml").read_text()
    values = yaml.safe_load(text)["/**"]["ros__parameters"]
    defaults = {spec.name: spec.default for spec in PARAMETERS}
    # grid_points is documented but commented out (see the file for why).
    assert set(values) == set(PARAMETER_NAMES) - {"grid_points"}
    assert "# grid_points:" in text
    for name, value in values.items():
        assert value == defaults[name] and type(value) is type(defaults[name]), name
    lines = text.splitlines()
    for spec in PARAMETERS:  # each under a comment (qos.X.depth shares its reliability's)
        index = next(i for i, line in enumerate(lines)
                     if line.strip().lstrip("# ").startswith(spec.name + ":"))
        assert any(line.strip().startswith("# ") for line in lines[index - 2:index]), spec.name
        # ... whose tag says how it changes: the first tag above it, in the comment block.
        tag = next(line for line in reversed(lines[:index]) if "# [" in line).split("]")[0] + "]"
        expected = "[swap]" if spec.swap else "[read-only]" if spec.read_only else "[runtime]"
        assert tag.strip().endswith(expected), (spec.name, tag)


# ---------------------------------------------------------------- start-up
def test_create_tracker_loads_a_checkpoint_at_a_chosen_resolution(checkpoint):
    tracker, info = create_tracker(TrackerNodeConfig(checkpoint=str(checkpoint), resolution=32,
                                                     max_points=8, device="auto"))
    assert isinstance(tracker, CausalTracker) and tracker.max_points == 8
    assert info.resolution == (32, 32) and info.device == "cpu" and info.source == "project"
    assert info.backend == "torch"


@pytest.mark.parametrize("hardware_bf16", [True, False])
def test_precision_auto_is_bf16_on_a_cpu_with_bf16_hardware_and_fp32_elsewhere(checkpoint, monkeypatch,
                                                                               hardware_bf16):
    from bootstap_ros.backends import factory

    monkeypatch.setattr(factory, "cpu_computes_bf16", lambda cpuinfo=None: hardware_bf16)
    tracker, info = create_tracker(TrackerNodeConfig(checkpoint=str(checkpoint), max_points=8, device="cpu"))
    expected = "bf16" if hardware_bf16 else "fp32"
    assert info.precision == expected and tracker.backend.precision == expected
    # Asked for by name, a precision is what it says.
    tracker, info = create_tracker(TrackerNodeConfig(checkpoint=str(checkpoint), max_points=8, device="cpu",
                                                     precision="fp32"))
    assert info.precision == "fp32" and tracker.backend.precision == "fp32"


def test_refine_resolution_and_softmax_temperature_reach_the_model(checkpoint):
    config = config_from_parameters({"checkpoint": str(checkpoint), "refine_resolution": [128, 96],
                                     "softmax_temperature": 15.0, "max_points": 8})
    tracker, info = create_tracker(config)
    assert tracker.config.refinement_resolutions == ((64, 64), (128, 96))  # the small model is 64x64
    assert tracker.config.softmax_temperature == 15.0 and info.resolution == (64, 64)
    # [0, 0] (the default) and a resolution alone: one level at that resolution.
    tracker, _ = create_tracker(config_from_parameters({"checkpoint": str(checkpoint), "resolution": 32}))
    assert tracker.config.refinement_resolutions == ((32, 32),)
    with pytest.raises(SettingsError, match="refine_resolution"):
        config_from_parameters({"refine_resolution": [128]})


def test_cpu_threads_sets_the_inference_pool(checkpoint):
    import torch

    before = torch.get_num_threads()
    try:
        create_tracker(TrackerNodeConfig(checkpoint=str(checkpoint), device="cpu", cpu_threads=1))
        assert torch.get_num_threads() == 1
        create_tracker(TrackerNodeConfig(checkpoint=str(checkpoint), device="cpu"))  # 0: left alone
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_start_up_errors_say_what_to_do(tmp_path, monkeypatch, checkpoint):
    from bootstap_ros.model import checkpoint as checkpoint_module

    monkeypatch.setattr(checkpoint_module, "EMBEDDED_CHECKPOINT", tmp_path / "missing" / "default.pt")
    with pytest.raises(StartupError, match="embedded default model is not installed.*checkpoint:="):
        create_tracker(TrackerNodeConfig())
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(StartupError, match="cannot load the model.*Set the checkpoint parameter"):
        create_tracker(TrackerNodeConfig(checkpoint=str(garbage)))
    with pytest.raises(StartupError, match="checkpoint not found"):
        create_tracker(TrackerNodeConfig(checkpoint=str(tmp_path / "nope.pt")))
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(StartupError, match="CUDA is not available.*device:=cpu"):
            create_tracker(TrackerNodeConfig(checkpoint=str(checkpoint), device="cuda"))
        with pytest.raises(StartupError, match="tensorrt.*backend:="):
            create_tracker(TrackerNodeConfig(checkpoint=str(checkpoint), backend="tensorrt"))


@pytest.mark.slow
def test_torch_compile_reaches_the_torch_backend(checkpoint):
    with pytest.raises(StartupError, match="torch_compile compiles the torch backend.*backend:=torch"):
        create_tracker(TrackerNodeConfig(checkpoint=str(checkpoint), backend="onnxruntime", torch_compile=True))
    tracker, info = create_tracker(config_from_parameters(
        {"checkpoint": str(checkpoint), "torch_compile": True, "max_points": 8}))
    assert info.backend == "torch" and tracker.backend.torch_compile


# ---------------------------------------------------------------- session
def make_session(model, max_points=8, grid_points=2):
    warnings = Recorder()
    tracker = CausalTracker(model, max_points=max_points)
    return TrackingSession(tracker, grid_points, warn=warnings), warnings


def test_grid_seeds_on_first_frame_and_requests_apply_in_order(model):
    clip = moving_clip(num_frames=6)
    session, warnings = make_session(model)
    result = session.process(clip[0], "rgb8", 1)
    assert result.ids.tolist() == [0, 1, 2, 3] and result.new_ids.tolist() == [0, 1, 2, 3]
    session.request_add([[5.0, 6.0]])
    session.request_remove([1, 99])
    result = session.process(clip[1], "rgb8", 2)
    assert result.ids.tolist() == [0, 2, 3, 4]
    assert warnings.kinds == ["unknown_ids"] and "99" in warnings.messages[0]
    session.request_add([[7.0, 8.0]])
    session.request_reset()  # drops the point asked for before it too
    session.request_add([[9.0, 9.0]])
    result = session.process(clip[2], "rgb8", 3)
    assert result.ids.tolist() == [5, 6, 7, 8, 9]  # the grid again, then the new point


def test_bad_points_and_capacity_keep_the_good_ones(model):
    clip = moving_clip(num_frames=3)
    session, warnings = make_session(model, max_points=6, grid_points=0)
    session.request_add([[np.nan, 1], [1, np.inf], [-1, 5], [81, 5], [3, 49], [10, 10]])
    result = session.process(clip[0], "rgb8", 1)
    assert result.ids.tolist() == [0]
    assert warnings.kinds == ["bad_points"] and "ignoring 5 query point(s)" in warnings.messages[0]
    session.request_add(np.full((8, 2), 20.0))
    result = session.process(clip[1], "rgb8", 2)
    assert len(result.ids) == 6
    assert warnings.kinds[-1] == "capacity" and "adding 5 of 8" in warnings.messages[-1]


def test_time_jump_back_resets_and_bad_frames_keep_pending_points(model):
    clip = moving_clip(num_frames=4)
    session, warnings = make_session(model, grid_points=1)
    assert session.process(clip[0], "rgb8", 100).ids.tolist() == [0]
    session.request_add([[10.0, 10.0]])
    assert session.process(np.zeros((4, 4, 2), np.uint8), "rgb8", 101) is None
    assert warnings.kinds == ["bad_image"] and "shape" in warnings.messages[0]
    result = session.process(clip[1], "rgb8", 102)
    assert result.ids.tolist() == [0, 1]  # the grid point survived and the request waited
    result = session.process(clip[2], "rgb8", 50)
    assert warnings.kinds[-1] == "time_jump" and result.ids.tolist() == [2]  # re-seeded


def test_size_change_keeps_points_with_a_warning(model):
    clip = moving_clip(num_frames=2)
    big = moving_clip(num_frames=1, height=96, width=160)[0]
    session, warnings = make_session(model)
    session.process(clip[0], "rgb8", 1)
    result = session.process(big, "rgb8", 2)
    assert result.ids.tolist() == [0, 1, 2, 3] and result.frame_size == (96, 160)
    assert warnings.kinds == ["size_change"] and "80x48 to 160x96" in warnings.messages[0]


def test_requests_are_thread_safe(model):
    clip = moving_clip(num_frames=1)
    session, _ = make_session(model, max_points=64, grid_points=0)
    threads = [threading.Thread(target=lambda: [session.request_add([[1.0, 1.0]]) for _ in range(10)])
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)  # none deadlocked
    assert len(session.process(clip[0], "rgb8", 1).ids) == 40


class _PutDuringDrain(deque):
    """A deque whose iteration (the drain's copy) lets another thread put a request.

    Without the queue's lock the late request lands between the drain's copy and its
    clear and is lost; with the lock it waits and stays queued for the next drain.
    """

    def __init__(self, queue):
        super().__init__()
        self.queue = queue
        self.late = None

    def __iter__(self):
        snapshot = list(super().__iter__())
        if self.late is None:
            self.late = threading.Thread(target=self.queue.put, args=("late", None))
            self.late.start()
            self.late.join(timeout=1.0)  # finishes at once without the lock; with it, blocks here
        return iter(snapshot)


def test_requests_received_are_counted_also_once_drained():
    queue = RequestQueue()
    queue.put("add", 1)
    queue.put("remove", 2)
    assert queue.drain() == [("add", 1), ("remove", 2)]
    queue.put_front([("add", 1)])  # handed back, not received again
    assert queue.received == 2 and len(queue) == 1


def test_a_request_made_while_draining_is_never_lost():
    queue = RequestQueue()
    queue._items = _PutDuringDrain(queue)
    queue._items.append(("add", 1))
    drained = queue.drain()
    queue._items.late.join(timeout=30)
    assert not queue._items.late.is_alive()
    assert drained == [("add", 1)]
    assert queue.drain() == [("late", None)]  # kept for the next frame
