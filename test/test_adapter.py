"""The adapter's parts without ROS: the clip store (filters, MCAP bags that training reads,
the disk bound, a full disk, a failed write, pins), the round children (nice, threads,
killed with their parent), the decision and the model history, and real rounds with the
small model (adopted, kept, failed, stopped)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bootstap_ros_training.adapter.adaptation import (Adaptation, ModelHistory, RoundConfig, RoundReport, decide,
                                                      run_child, split_clips)
from bootstap_ros_training.adapter.clip_store import ClipRecorder, ClipStore
from bootstap_ros_training.clips import ClipBuilder, ClipConfig
from helpers.adapter_bags import (FAST, IMAGE, PERIOD_NS, START_NS, TOPIC, clip_messages, feed, panning,
                                  read_bag, stream)
from helpers.runs import FakeClock

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- the recorder

def test_recorded_clips_are_bags_of_the_stream_that_training_reads(tmp_path):
    from bootstap_ros_training.logs import LogClips, prepare_logs

    # Scene A pans, stands still, pans on (with a time gap), then scene B (a cut from A).
    scene_a = panning(28, seed=0)
    still = np.repeat(scene_a[19:20], 12, axis=0)
    scene_b = panning(20, seed=5) // 2 + 128
    frames = np.concatenate([scene_a[:20], still, scene_a[20:], scene_b])
    stamps = [START_NS + i * PERIOD_NS for i in range(len(frames))]
    gap_at = 20 + 12 + 8 // 2  # four frames into the second pan of A: a 3 s pause
    stamps = stamps[:gap_at] + [s + 3 * 10**9 for s in stamps[gap_at:]]
    config = ClipConfig(frames=8, size=64)
    store = ClipStore(tmp_path / "store", max_bytes=1 << 30)
    recorder = ClipRecorder(store, TOPIC, clip_config=config, interval_s=0.0)
    clips = feed(recorder, stream(frames, stamps))

    # The same stream through the clip filters directly: the recorder keeps exactly these.
    expected = []
    builder = ClipBuilder(config, expected.append)
    for index, (frame, stamp) in enumerate(zip(frames, stamps)):
        builder.add(stamp, stamp + 1_000_000, lambda frame=frame: frame)
    assert [(c.start_ns, c.end_ns) for c in clips] == [(c.start_ns, c.end_ns) for c in expected]
    assert len(clips) >= 4 and builder.stats.gaps == 1 and builder.stats.cuts == 1
    assert builder.stats.static_dropped > 0
    assert recorder.stats.filters.gaps == 1 and recorder.stats.kept == len(clips)
    for clip, cut in zip(clips, expected):
        topic, messages = read_bag(clip.path)
        assert topic == TOPIC and clip.frames == 8 and (clip.path / "metadata.yaml").is_file()
        indices = range(cut.first_index, cut.last_index + 1)
        assert [m[1] for m in messages] == [stamps[i] for i in indices]  # header stamps as sent
        assert [m[0] for m in messages] == [stamps[i] + 1_000_000 for i in indices]  # receive times
        for (_, _, frame), i in zip(messages, indices):
            np.testing.assert_array_equal(frame, frames[i])  # the messages, unchanged
    # bootstap_ros_training.logs reads the store as ordinary logs: every bag one clip, frame exact.
    dataset = LogClips(prepare_logs([store.clips_folder], tmp_path / "decoded", config))
    assert len(dataset) == len(clips)
    for index, cut in enumerate(expected):
        np.testing.assert_array_equal(dataset[index]["video"], cut.video)


def test_clip_interval_spreads_clips_over_time(tmp_path):
    frames = np.concatenate([panning(40, seed=s) for s in range(3)])  # three pans: two cuts
    stamps = [START_NS + i * PERIOD_NS for i in range(len(frames))]
    store = ClipStore(tmp_path / "store", max_bytes=1 << 30)
    recorder = ClipRecorder(store, TOPIC, frames=6, interval_s=2.0)
    clips = feed(recorder, stream(frames, stamps))
    starts = [clip.start_ns for clip in clips]
    assert len(clips) >= 3
    # The next clip starts at least 2 s after the receive time of the previous clip's end.
    assert all(b - (a_end + 1_000_000) >= 2 * 10**9 - PERIOD_NS
               for a_end, b in zip([c.end_ns for c in clips], starts[1:]))
    # Without the interval the same stream gives clips back to back.
    store_all = ClipStore(tmp_path / "all", max_bytes=1 << 30)
    assert len(feed(ClipRecorder(store_all, TOPIC, frames=6, interval_s=0.0), stream(frames, stamps))) > 2 * len(clips)


def test_undecodable_messages_split_the_stream_and_are_counted(tmp_path):
    frames = panning(24)
    stamps = [START_NS + i * PERIOD_NS for i in range(24)]
    messages = stream(frames, stamps)
    messages[5] = (b"\x00\x01\x00\x00garbage", messages[5][1])  # not an Image
    store = ClipStore(tmp_path / "store", max_bytes=1 << 30)
    recorder = ClipRecorder(store, TOPIC, frames=8, interval_s=0.0)
    clips = feed(recorder, messages)
    assert recorder.stats.decode_errors == 1
    for clip in clips:  # no clip holds frames from both sides of the bad message
        received = [m[1] for m in read_bag(clip.path)[1]]
        assert all(s > stamps[5] for s in received) or all(s < stamps[5] for s in received)


# ---------------------------------------------------------------------------- the store


def test_disk_bound_deletes_the_oldest_clips_first(tmp_path):
    probe = ClipStore(tmp_path / "probe", max_bytes=1 << 30)
    size = probe.add(TOPIC, IMAGE, clip_messages()).bytes
    store = ClipStore(tmp_path / "store", max_bytes=int(3.5 * size))
    numbers = [store.add(TOPIC, IMAGE, clip_messages(start=START_NS + k * 10**10)).number for k in range(6)]
    assert numbers == [1, 2, 3, 4, 5, 6]
    assert [clip.number for clip in store.clips] == [4, 5, 6]  # the three newest fit in 3.5 clips
    assert store.deleted == 3 and store.total_bytes <= store.max_bytes
    on_disk = sorted(p.name for p in store.clips_folder.iterdir() if p.name.startswith("clip_"))
    assert on_disk == ["clip_000004", "clip_000005", "clip_000006"]
    # A new store on the folder finds them, and numbers on.
    again = ClipStore(tmp_path / "store", max_bytes=int(3.5 * size))
    assert [c.number for c in again.clips] == [4, 5, 6] and again.clips[0].frames == 6
    assert again.add(TOPIC, IMAGE, clip_messages()).number == 7


def test_pinned_clips_stay_and_a_full_store_stops_recording_until_retry(tmp_path):
    clock = [0.0]
    warnings = []
    probe = ClipStore(tmp_path / "probe", max_bytes=1 << 30)
    size = probe.add(TOPIC, IMAGE, clip_messages()).bytes
    store = ClipStore(tmp_path / "store", max_bytes=int(2.5 * size), retry_s=60.0, warn=warnings.append,
                      clock=lambda: clock[0])
    first, second = (store.add(TOPIC, IMAGE, clip_messages()) for _ in range(2))
    with store.pinned([first, second]):
        assert store.add(TOPIC, IMAGE, clip_messages()) is None
        assert not store.recording and "in use by a bootstrapping round" in store.stopped
        assert len(warnings) == 1 and "tracking is not affected" in warnings[0]
    assert store.add(TOPIC, IMAGE, clip_messages()) is None  # stopped until retry_s passes
    clock[0] = 61.0
    assert store.recording
    third = store.add(TOPIC, IMAGE, clip_messages())
    assert third is not None and store.stopped is None
    assert [c.number for c in store.clips] == [second.number, third.number]


def test_a_full_disk_stops_recording_with_a_warning_and_it_resumes(tmp_path):
    clock = [0.0]
    free = [10 << 20]
    warnings = []
    store = ClipStore(tmp_path / "store", max_bytes=1 << 30, min_free_bytes=64 << 20, retry_s=30.0,
                      warn=warnings.append, disk_usage=lambda path: (1 << 40, 0, free[0]),
                      clock=lambda: clock[0])
    recorder = ClipRecorder(store, TOPIC, frames=6, interval_s=0.0)
    frames = panning(30)
    messages = stream(frames, [START_NS + i * PERIOD_NS for i in range(30)])
    assert feed(recorder, messages[:12]) == []
    assert "the disk is full" in store.stopped and recorder.stats.not_written == 1
    assert len(warnings) == 1 and "min_free_disk_mb" in warnings[0]
    assert not any(store.clips_folder.glob("clip_*"))  # nothing written, nothing half written
    free[0] = 1 << 30
    assert feed(recorder, messages[12:18]) == []  # still stopped: not even cut into clips
    clock[0] = 31.0
    assert len(feed(recorder, messages[18:])) == 2 and store.stopped is None


WRITE_ERROR_SCRIPT = textwrap.dedent("""
    import json, resource, signal, sys
    sys.path.insert(0, sys.argv[2])
    from helpers.adapter_bags import clip_messages, IMAGE, TOPIC
    from bootstap_ros_training.adapter.clip_store import ClipStore
    warnings = []
    store = ClipStore(sys.argv[1], max_bytes=1 << 30, warn=warnings.append)
    messages = clip_messages(count=12)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    clip = store.add(TOPIC, IMAGE, messages)
    print(json.dumps({"clip": clip is not None, "stopped": store.stopped, "warnings": warnings}))
""")


def test_a_failed_write_stops_recording_and_leaves_no_half_bag(tmp_path):
    # A real failing write: the file size limit (RLIMIT_FSIZE) makes the bag's write fail
    # with EFBIG, as a full disk fails it with ENOSPC.
    result = subprocess.run([sys.executable, "-c", WRITE_ERROR_SCRIPT, str(tmp_path / "store"),
                             str(REPO / "test")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert not report["clip"] and "writing clip_000001 failed" in report["stopped"]
    assert "File too large" in report["stopped"] or "EFBIG" in report["stopped"], report
    assert len(report["warnings"]) == 1
    clips = tmp_path / "store" / "clips"
    assert not any(clips.glob("clip_*")) and not any((clips / ".writing").glob("*"))


def test_a_bag_cut_short_by_a_kill_is_never_a_clip(tmp_path):
    store = ClipStore(tmp_path / "store", max_bytes=1 << 30)
    store.add(TOPIC, IMAGE, clip_messages())
    half = store.clips_folder / ".writing" / "clip_000002"
    half.mkdir(parents=True)
    (half / "clip_000002.mcap").write_bytes(b"\x89MCAP0\r\n partial")
    again = ClipStore(tmp_path / "store", max_bytes=1 << 30)
    assert [c.number for c in again.clips] == [1] and not half.exists()


# ---------------------------------------------------------------------------- decisions, history

def test_decision_needs_more_than_the_margin():
    assert decide(0.40, 0.42, 0.01)[0]  # +0.02 > 0.01
    assert not decide(0.40, 0.405, 0.01)[0]  # +0.005
    assert not decide(0.40, 0.40, 0.0)[0]  # equal is not better
    assert decide(0.40, 0.39, -0.05)[0]  # a negative margin adopts a slightly worse model
    assert "+0.0200" in decide(0.40, 0.42, 0.01)[1]


def test_the_newest_clips_are_held_out():
    from bootstap_ros_training.adapter.clip_store import StoredClip

    clips = [StoredClip(n, Path(f"clip_{n}"), 1, 6) for n in (5, 2, 9, 7, 3)]
    train, held = split_clips(clips, holdout=2, min_train=3)
    assert [c.number for c in held] == [7, 9] and [c.number for c in train] == [2, 3, 5]
    with pytest.raises(ValueError, match="a round needs 2 held out and 4 to train on"):
        split_clips(clips, holdout=2, min_train=4)


def test_history_keeps_the_last_models_and_rolls_back_one_adoption_at_a_time(tmp_path):
    history = ModelHistory(tmp_path / "models")
    base = tmp_path / "mine.pt"
    base.write_text("the user's model")
    in_use = str(base)
    for number in (1, 2, 3):
        candidate = tmp_path / f"candidate_{number}.pt"
        candidate.write_text(f"round {number}")
        report = RoundReport(round=number, in_use=in_use, score_in_use=0.1 * number,
                             score_candidate=0.1 * number + 0.05)
        in_use = str(history.adopt(candidate, report, keep=2))
        assert not candidate.exists() and Path(in_use).read_text() == f"round {number}"
    kept = sorted(p.name for p in (tmp_path / "models").glob("round_*.pt"))
    assert kept == ["round_0002.pt", "round_0003.pt"]  # keep=2; round 1's file went
    # Saved: a new history (a restarted adapter) rolls back the same way.
    history = ModelHistory(tmp_path / "models")
    target, undone = history.rollback()
    assert undone["round"] == 3 and target == str(tmp_path / "models" / "round_0002.pt")
    with pytest.raises(ValueError, match="round_0001.pt\\) is no longer kept"):
        history.rollback()  # round 2's predecessor, round 1, was deleted
    assert history.latest["round"] == 2  # a refused rollback changes nothing
    (tmp_path / "models" / "round_0001.pt").write_text("restored by hand")
    assert history.rollback()[0].endswith("round_0001.pt")
    assert history.rollback()[0] == str(base)  # back to where the adapter started
    with pytest.raises(ValueError, match="no adoption to roll back"):
        history.rollback()
    assert base.read_text() == "the user's model"  # never touched


def test_round_settings_are_checked():
    assert RoundConfig(settings=("steps=1",)).settings == ("steps=1",)
    for changes, match in [({"minutes": 0}, "minutes"), ({"device": "gpu"}, "device"),
                           ({"nice": 20}, "nice"), ({"settings": ("steps",)}, "key=value")]:
        with pytest.raises(ValueError, match=match):
            RoundConfig(**changes)


def test_node_settings_and_round_config_share_the_defaults():
    from bootstap_ros_training.adapter.settings import AdapterConfig, config_from_parameters

    import dataclasses

    config = AdapterConfig()
    assert dataclasses.asdict(config.round_config()) == dataclasses.asdict(RoundConfig())
    parsed = config_from_parameters({"round_settings": "steps=2 'ssl_loss={uncertainty_weight: 0.5}'"})
    assert parsed.settings_list == ("steps=2", "ssl_loss={uncertainty_weight: 0.5}")


def test_adapter_yaml_documents_every_parameter_with_its_default():
    import yaml

    from bootstap_ros_training.adapter.settings import PARAMETERS

    text = (REPO / "config" / "adapter.yaml").read_text()
    values = yaml.safe_load(text)["/**"]["ros__parameters"]
    assert set(values) == {spec.name for spec in PARAMETERS}
    lines = text.splitlines()
    for spec in PARAMETERS:
        assert values[spec.name] == spec.default and type(values[spec.name]) is type(spec.default), spec.name
        index = next(i for i, line in enumerate(lines) if line.strip().startswith(spec.name + ":"))
        tag = next(line for line in reversed(lines[:index]) if "# [" in line)
        assert ("[read-only]" if spec.read_only else "[runtime]") in tag, spec.name


# ---------------------------------------------------------------------------- children

def test_children_run_niced_with_their_threads_capped(tmp_path):
    log = tmp_path / "child.log"
    command = [sys.executable, "-c", "import os; print('nice', os.nice(0), 'omp', os.environ['OMP_NUM_THREADS'])"]
    status, why = run_child(command, log, threads=2, nice=7, timeout_s=60, stop=threading.Event())
    assert (status, why) == (0, "")
    parent = os.nice(0)
    assert f"nice {min(parent + 7, 19)} omp 2" in log.read_text()


def test_a_child_past_its_time_limit_or_stopped_is_killed(tmp_path):
    # The child would sleep two minutes and then say so; the limit is ten minutes on a clock
    # that moves 100 s a reading, so it runs out after a few polls whatever the machine's load.
    sleeper = [sys.executable, "-c", "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); "
               "time.sleep(120); print('slept ' + 'in full')"]
    for name, clock, timeout_s, stop, expected in [
            ("limit", FakeClock(tick=100.0), 600.0, threading.Event(), "it ran past its time limit (10.0 min)"),
            ("stop", time.monotonic, 3600.0, threading.Event(), "the adapter is stopping")]:
        pid_file = tmp_path / f"{name}.pid"
        if name == "stop":
            _set_when_written(pid_file, stop)
        status, why = run_child(sleeper + [str(pid_file)], tmp_path / f"{name}.log", 1, 0, timeout_s=timeout_s,
                                stop=stop, clock=clock)
        assert (status, why) == (None, expected)
        assert "slept in full" not in (tmp_path / f"{name}.log").read_text()  # killed, not run to its end
        if pid_file.exists() and pid_file.read_text():
            assert not Path(f"/proc/{pid_file.read_text()}").exists()  # and reaped


def _set_when_written(path, event):
    """Sets `event` once `path` holds the child's pid (from a thread of its own)."""
    def watch():
        deadline = time.monotonic() + 120
        while not (path.exists() and path.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        event.set()
    threading.Thread(target=watch, daemon=True).start()


PARENT_SCRIPT = textwrap.dedent("""
    import sys, threading
    from pathlib import Path
    from bootstap_ros_training.adapter.adaptation import run_child
    code = "import os, time; open(%r, 'w').write(str(os.getpid())); time.sleep(300)" % sys.argv[2]
    run_child([sys.executable, "-c", code], Path(sys.argv[3]), 1, 0, 600, threading.Event())
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_dies_with_its_killed_parent(tmp_path):
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", PARENT_SCRIPT, str(REPO), str(pid_file),
                               str(tmp_path / "child.log")])
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text()):
            assert time.monotonic() < deadline and parent.poll() is None, "the child did not start"
            time.sleep(0.05)
        child = int(pid_file.read_text())
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{child}").exists() and "Z" not in _state(child):
            assert time.monotonic() < deadline, "the child outlived its SIGKILLed parent"
            time.sleep(0.05)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def _state(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


# ---------------------------------------------------------------------------- real rounds


@pytest.fixture(scope="module")
def filled_store(tmp_path_factory):
    """A store of 8 clips (6 frames of 64x64) recorded from a panning stream."""
    folder = tmp_path_factory.mktemp("store")
    store = ClipStore(folder, max_bytes=1 << 30)
    recorder = ClipRecorder(store, TOPIC, frames=6, interval_s=0.0)
    frames = np.concatenate([panning(12, seed=s, speed=3) for s in range(4)])
    feed(recorder, stream(frames, [START_NS + i * PERIOD_NS for i in range(len(frames))]))
    assert len(store.clips) == 8
    return folder


def test_a_round_trains_scores_and_adopts_or_keeps(tmp_path, filled_store, checkpoint):
    import shutil

    from bootstap_ros_training.validate import main as validate_main

    folder = tmp_path / "store"
    shutil.copytree(filled_store, folder)
    store = ClipStore(folder, max_bytes=1 << 30)
    adaptation = Adaptation(store, folder, RoundConfig(minutes=5, nice=0, holdout_clips=3, min_train_clips=5,
                                                       margin=-1.0, settings=FAST, score_points=16))
    assert adaptation.waiting_for() is None
    started = []
    report = adaptation.run_round(checkpoint, True, threading.Event(), started=started.append)
    assert report.decision == "adopted", (report.reason, (Path(report.folder) / "train.log").read_text()[-3000:])
    assert [r.round for r in started] == [1] and report.steps == 1
    assert (report.train_clips, report.held_out_clips, report.held_out) == (5, 3, (6, 8))
    assert Path(report.candidate).name == "final.pt"  # holdout=0: the run scored nothing itself
    # The scoring child's figures, against bootstap-validate's on the same held-out bags.
    arguments = []
    for clip in store.clips[-3:]:
        arguments += ["--data", str(clip.path)]
    validate_main(arguments + ["--checkpoint", checkpoint, report.candidate, "--frames", "6", "--points", "16",
                               "--output", str(tmp_path / "v.json")])
    expected = json.loads((tmp_path / "v.json").read_text())
    assert report.score_in_use == pytest.approx(expected[0]["cycle_score"], abs=1e-6)
    assert report.score_candidate == pytest.approx(expected[1]["cycle_score"], abs=1e-6)
    kept = adaptation.adopt(report)
    assert kept == folder / "models" / "round_0001.pt" and kept.is_file()
    adaptation.finish(report)
    run = Path(report.folder) / "run"
    assert not (run / "clips").exists() and not (run / "final.pt").exists()  # cleaned up
    assert not any((run / name).exists() for name in ("start.pt", "final_student.pt", "best_student.pt"))
    logged = [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()]
    assert logged[-1]["decision"] == "adopted" and logged[-1]["checkpoint"] == str(kept)
    # From the adopted model, a margin no round can beat: kept, nothing adopted.
    adaptation.config = RoundConfig(minutes=5, nice=0, holdout_clips=3, min_train_clips=5, margin=1.0,
                                    settings=FAST, score_points=16)
    report = adaptation.run_round(str(kept), True, threading.Event())
    assert report.round == 2 and report.decision == "kept" and "not more than margin 1" in report.reason
    assert report.in_use == str(kept)
    adaptation.finish(report)
    assert sorted(p.name for p in (folder / "models").glob("*.pt")) == ["round_0001.pt"]


def test_a_failed_round_changes_nothing(tmp_path, filled_store, checkpoint):
    import shutil

    folder = tmp_path / "store"
    shutil.copytree(filled_store, folder)
    store = ClipStore(folder, max_bytes=1 << 30)
    adaptation = Adaptation(store, folder, RoundConfig(minutes=5, nice=0, holdout_clips=3, min_train_clips=5,
                                                       margin=-1.0, settings=FAST + ("no_such_setting=1",)))
    report = adaptation.run_round(checkpoint, True, threading.Event())
    # an unknown setting is a bad argument: exit status 2 (docs/training.md)
    assert report.decision == "failed" and "training exited with status 2" in report.reason
    assert "no_such_setting" in report.reason
    # A checkpoint in use that cannot be read: the training cannot start from it.
    adaptation.config = RoundConfig(minutes=5, nice=0, holdout_clips=3, min_train_clips=5, margin=-1.0, settings=FAST)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    report = adaptation.run_round(str(broken), True, threading.Event())
    assert report.decision == "failed" and str(broken) in report.reason
    adaptation.finish(report)
    assert not (folder / "models").exists() or not any((folder / "models").glob("*.pt"))
    assert [c.number for c in store.clips] == list(range(1, 9))  # the clips are all there


def test_a_stopped_round_fails_at_once(tmp_path, filled_store, checkpoint):
    import shutil

    folder = tmp_path / "store"
    shutil.copytree(filled_store, folder)
    adaptation = Adaptation(ClipStore(folder, max_bytes=1 << 30), folder,
                            RoundConfig(minutes=5, nice=0, holdout_clips=3, min_train_clips=5))
    stop = threading.Event()
    threading.Timer(2.0, stop.set).start()
    report = adaptation.run_round(checkpoint, True, stop)
    # The training child was killed: a five-minute run that had ended by itself would have
    # written its final model.
    assert report.decision == "failed" and report.reason == "training stopped: the adapter is stopping"
    run = Path(report.folder) / "run"
    assert not (run / "final.pt").exists() and not (run / "best.pt").exists()
    assert report.score_in_use is None and report.candidate == ""



def test_a_round_past_its_time_limit_is_killed_and_changes_nothing(tmp_path, filled_store, checkpoint):
    # A one-minute round may overrun by 5 min (OVERRUN_MIN_S): its limit is 6 min. The
    # round's clock moves 60 s a reading, so the limit passes a few polls into the
    # training, which (no step limit) would otherwise run its full minute.
    import shutil

    folder = tmp_path / "store"
    shutil.copytree(filled_store, folder)
    settings = tuple(s for s in FAST if s != "steps=1")
    adaptation = Adaptation(ClipStore(folder, max_bytes=1 << 30), folder,
                            RoundConfig(minutes=1, nice=0, holdout_clips=3, min_train_clips=5, margin=-1.0,
                                        settings=settings), clock=FakeClock(tick=60.0))
    report = adaptation.run_round(checkpoint, True, threading.Event())
    assert report.decision == "failed", report.reason
    assert report.reason == "training stopped: it ran past its time limit (6.0 min)"
    assert report.candidate == "" and report.score_candidate is None
    run = Path(report.folder) / "run"
    assert not (run / "final.pt").exists()
    # Its process (and anything it started) is gone.
    for process in Path("/proc").glob("[0-9]*"):
        try:
            assert str(run).encode() not in (process / "cmdline").read_bytes(), "the training child lives on"
        except OSError:
            pass
    adaptation.finish(report)
    assert not (folder / "models").exists() or not any((folder / "models").glob("*.pt"))


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """The embedded model's architecture with random weights, saved: it tracks nothing."""
    import torch

    from bootstap_ros.model import build_model, load_checkpoint, save_checkpoint
    from bootstap_ros.model.checkpoint import EMBEDDED_CHECKPOINT

    torch.manual_seed(0)
    model = build_model(load_checkpoint(EMBEDDED_CHECKPOINT).model.config)
    path = tmp_path_factory.mktemp("random") / "random.pt"
    save_checkpoint(path, model)
    return str(path)


def test_real_scores_keep_a_worse_model_and_adopt_a_better_one_at_the_default_margin(
        tmp_path, filled_store, random_weights):
    """The scoring child and the decision of a round on the held-out clips, with models that
    differ for real: the embedded model tracks the panning clips, random weights do not."""
    from bootstap_ros.model.checkpoint import EMBEDDED_CHECKPOINT
    from bootstap_ros_training.adapter.clip_store import ClipStore as Store
    from bootstap_ros_training.validate import main as validate_main

    config = RoundConfig(nice=0, holdout_clips=2, min_train_clips=6, score_points=16)
    assert config.margin == 0.01  # the default
    store = Store(filled_store, max_bytes=1 << 30)
    adaptation = Adaptation(store, tmp_path / "adapter", config)
    _, held_out = split_clips(store.clips, config.holdout_clips, config.min_train_clips)
    # In use: the embedded model (''); the round's result: random weights.
    worse = RoundReport(round=1, in_use="", candidate=random_weights, margin=config.margin)
    adaptation._score(worse, tmp_path / "round_1", held_out, True, threading.Event())
    assert worse.decision == "kept", worse.reason
    assert worse.score_in_use > worse.score_candidate + config.margin
    # In use: random weights; the round's result: the embedded model.
    better = RoundReport(round=2, in_use=random_weights, candidate=str(EMBEDDED_CHECKPOINT), margin=config.margin)
    adaptation._score(better, tmp_path / "round_2", held_out, True, threading.Event())
    assert better.decision == "adopted", better.reason
    assert (better.score_in_use, better.score_candidate) == (worse.score_candidate, worse.score_in_use)
    # bootstap-validate on the same bags gives the same figures, and the embedded model's is not 0.
    arguments = []
    for clip in held_out:
        arguments += ["--data", str(clip.path)]
    assert validate_main(arguments + ["--checkpoint", "embedded", random_weights, "--frames", "6", "--points", "16",
                                      "--output", str(tmp_path / "v.json")]) == 0
    expected = json.loads((tmp_path / "v.json").read_text())
    assert expected[0]["cycle_score"] > 0.1 and expected[0]["clips"] == 2
    assert worse.score_in_use == pytest.approx(expected[0]["cycle_score"], abs=1e-6)
    assert worse.score_candidate == pytest.approx(expected[1]["cycle_score"], abs=1e-6)
