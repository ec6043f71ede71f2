"""Bootstrapping rounds on a robot's own recent clips, and the decision to use their result.

The adapter node (`bootstap_ros_training.adapter.node`) owns the ROS side; this module owns
what a round is, without ROS:

1. **Clips.** The store's (`bootstap_ros_training.adapter.clip_store`) most recent `holdout_clips` clips
   are held out; every older clip is training data. Held-out clips are always newer
   than anything an earlier round trained on (each round trains only on clips older
   than its own held-out ones, and the held-out window only moves forward), so
   neither the model in use nor the round's result has seen them. The round pins
   its clips: the store does not delete them while it reads them.
2. **Training** runs ``bootstap-train-bootstrap`` (`bootstap_ros_training.bootstrap`) in a child
   process, from the checkpoint the tracker uses, with the recipe's defaults plus
   the round's time budget, device and `settings`; the child runs under ``nice``,
   with OMP_NUM_THREADS = `threads` and, on a CPU, no data-loader workers, so that it
   takes at most `threads` cores and yields them to the tracker. Its result is the
   run's ``best.pt`` (its best label-free score on its own held-out share of the
   training clips, possibly the starting weights) or, without one, ``final.pt``.
3. **Scoring** (`python -m bootstap_ros_training.adapter.adaptation score`, another child) runs the
   label-free cycle-consistency score (`bootstap_ros_training.validate.cycle_score`) of the model
   in use and of the result on the held-out clips, with the same queries for both.
4. **Decision**: the result is adopted when its score exceeds the model in use's by
   more than `margin`; else the model in use is kept. A round that fails anywhere
   (the child exits with an error, runs past its time limit, writes no model, the
   scoring fails) is reported as failed and changes nothing.

Adopted models are kept in ``models/round_<n>.pt`` (the last `keep_checkpoints`), with
``models/history.json``: the adoptions in order, each with the checkpoint in use
before it, so that `ModelHistory.rollback` can go back one adoption at a time. Every
round is logged in ``rounds/round_<n>/`` (the children's output, the training run's
``report.json`` and logs; its decoded clips and resumable state are deleted when the
round ends, the folders of the last `KEEP_ROUND_FOLDERS` rounds are kept) and appended
to ``rounds.jsonl``.

A child is killed with its parent (Linux PR_SET_PDEATHSIG, set for the thread that
starts it, which must outlive it): a killed adapter leaves no training behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .clip_store import ClipStore, StoredClip

#: The package this module runs the training and scoring children from.
PACKAGE = "bootstap_ros_training"
ROUNDS = "rounds"
MODELS = "models"
HISTORY = "history.json"
ROUND_LOG = "rounds.jsonl"
KEEP_ROUND_FOLDERS = 20
#: A round's training child may run this long past its budget (start-up, decoding the
#: clips, the final scoring) before it is stopped: max(minimum, share x budget).
OVERRUN_MIN_S, OVERRUN_SHARE = 300.0, 0.5


def now_text() -> str:
    """Wall-clock time, UTC, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class RoundConfig:
    """What a round does; `bootstap_ros_training.adapter.settings` names each as a parameter."""

    minutes: float = 15.0          # the training run's time budget
    device: str = "cpu"            # cpu | cuda | auto, for training and scoring
    threads: int = 1               # OMP_NUM_THREADS of the children
    nice: int = 19                 # their niceness (0..19)
    holdout_clips: int = 8         # the most recent clips, held out for the decision
    min_train_clips: int = 16      # a round starts once there are this many older clips
    margin: float = 0.01           # adopt when the score improves by more than this
    keep_checkpoints: int = 5      # adopted models kept in models/
    settings: Tuple[str, ...] = ()  # key=value settings of the recipe (bootstap-train-bootstrap)
    score_points: int = 64         # queries per held-out clip for the score

    def __post_init__(self):
        problems = []
        if not self.minutes > 0:
            problems.append(f"round minutes must be positive, got {self.minutes}")
        if self.device not in ("cpu", "cuda", "auto"):
            problems.append(f"device must be cpu, cuda or auto, got {self.device!r}")
        if self.threads < 1:
            problems.append(f"threads must be at least 1, got {self.threads}")
        if not 0 <= self.nice <= 19:
            problems.append(f"nice must lie in 0..19, got {self.nice}")
        if self.holdout_clips < 1 or self.min_train_clips < 1:
            problems.append("holdout_clips and min_train_clips must be at least 1")
        if self.keep_checkpoints < 1:
            problems.append(f"keep_checkpoints must be at least 1, got {self.keep_checkpoints}")
        for pair in self.settings:
            if "=" not in pair or not pair.partition("=")[0].strip():
                problems.append(f"round settings are key=value pairs, got {pair!r}")
        if problems:
            raise ValueError("invalid round settings: " + "; ".join(problems))


@dataclass
class RoundReport:
    """One round, as the adapter reports it (topic, /diagnostics, rounds.jsonl)."""

    round: int
    state: str = "started"           # started | finished
    started: str = ""                # wall clock, UTC ISO 8601
    seconds: float = 0.0             # the round's duration so far
    in_use: str = ""                 # the tracker's checkpoint when the round started ('' = embedded)
    train_clips: int = 0
    held_out_clips: int = 0
    held_out: Tuple[int, int] = (0, 0)  # clip numbers, first and last
    candidate: str = ""              # the round's result (a file in the round's folder)
    steps: int = 0                   # training steps done
    training_scores: Dict = field(default_factory=dict)  # the run's own report: before, after, best
    score_in_use: Optional[float] = None
    score_candidate: Optional[float] = None
    margin: float = 0.0
    decision: str = ""               # adopted | kept | failed | held | stale | refused
    reason: str = ""
    checkpoint: str = ""             # the adopted model's file (models/round_<n>.pt)
    folder: str = ""

    def to_dict(self) -> Dict:
        values = dataclasses.asdict(self)
        values["held_out"] = list(self.held_out)
        return values

    @property
    def gain(self) -> Optional[float]:
        if self.score_in_use is None or self.score_candidate is None:
            return None
        return self.score_candidate - self.score_in_use


def decide(score_in_use: float, score_candidate: float, margin: float) -> Tuple[bool, str]:
    """(adopt?, why): adopt when the candidate's score exceeds the model in use's by more
    than `margin`."""
    gain = score_candidate - score_in_use
    if gain > margin:
        return True, f"score {score_in_use:.4f} -> {score_candidate:.4f} ({gain:+.4f} > margin {margin:g})"
    return False, (f"score {score_in_use:.4f} -> {score_candidate:.4f} ({gain:+.4f}, not more than "
                   f"margin {margin:g})")


def split_clips(clips: Sequence[StoredClip], holdout: int, min_train: int
                ) -> Tuple[List[StoredClip], List[StoredClip]]:
    """(training clips, held-out clips): the newest `holdout` are held out. Raises
    ValueError when fewer than `min_train` older clips are left."""
    ordered = sorted(clips, key=lambda clip: clip.number)
    if len(ordered) < holdout + min_train:
        raise ValueError(f"{len(ordered)} clips stored; a round needs {holdout} held out and "
                         f"{min_train} to train on")
    return ordered[:-holdout], ordered[-holdout:]


# ---------------------------------------------------------------------------- children

def _child_setup(nice: int, parent: int) -> Callable[[], None]:
    def setup() -> None:  # runs in the child, between fork and exec
        if sys.platform.startswith("linux"):
            import ctypes

            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(1)
        if nice:
            os.nice(nice)
    return setup


def child_environment(threads: int) -> Dict[str, str]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_child(command: Sequence[str], log: Path, threads: int, nice: int, timeout_s: float,
              stop: threading.Event, clock: Callable[[], float] = time.monotonic) -> Tuple[Optional[int], str]:
    """Runs `command` to its end in a session of its own, output to `log`. Returns
    (exit status, '') or (None, why) when it was stopped: `stop` was set, or it ran past
    `timeout_s` on `clock` (seconds, monotonic); it is then killed."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as output:
        output.write((" ".join(command) + "\n").encode())
        output.flush()
        process = subprocess.Popen(list(command), stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=child_environment(threads),
                                   start_new_session=True, preexec_fn=_child_setup(nice, os.getpid()))
        deadline = clock() + timeout_s
        why = ""
        while process.poll() is None:
            if stop.wait(0.5):
                why = "the adapter is stopping"
            elif clock() > deadline:
                why = f"it ran past its time limit ({timeout_s / 60:.1f} min)"
            if why:
                _terminate(process)
                return None, why
        return process.returncode, ""


def _terminate(process: subprocess.Popen) -> None:
    """SIGKILL to the child's whole session (its data-loader workers too): a stopped round is
    abandoned, nothing it would save on SIGTERM is used."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def log_tail(log: Path, lines: int = 6) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    # tqdm redraws its bar with carriage returns: keep what the line finally showed.
    return " | ".join(line.rsplit("\r", 1)[-1].strip() for line in text[-lines:])


# ---------------------------------------------------------------------------- history

class ModelHistory:
    """The adopted models, in order, each with the checkpoint in use before it
    (``models/history.json``, rewritten atomically at every change)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / HISTORY
        self.lock = threading.Lock()
        self.adopted: List[Dict] = []
        if self.path.is_file():
            try:
                self.adopted = list(json.loads(self.path.read_text())["adopted"])
            except (OSError, ValueError, KeyError, TypeError):
                self.adopted = []  # unreadable: start a new history, the files stay

    def _save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps({"adopted": self.adopted}, indent=1) + "\n")
        os.replace(temporary, self.path)

    def adopt(self, candidate: Path, report: RoundReport, keep: int) -> Path:
        """Moves the round's result into models/ and records it; older models beyond the
        last `keep` are deleted (not the one in use before this adoption)."""
        with self.lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            kept = self.folder / f"round_{report.round:04d}.pt"
            shutil.move(str(candidate), kept)
            self.adopted.append({"round": report.round, "checkpoint": str(kept), "previous": report.in_use,
                                 "at": now_text(), "score_in_use": report.score_in_use,
                                 "score": report.score_candidate})
            self._prune(keep, protect={str(kept), report.in_use})
            self._save()
            return kept

    def undo(self, checkpoint: Path) -> None:
        """Forget an adoption the tracker refused (its file goes too)."""
        with self.lock:
            self.adopted = [entry for entry in self.adopted if entry["checkpoint"] != str(checkpoint)]
            Path(checkpoint).unlink(missing_ok=True)
            self._save()

    def rollback(self) -> Tuple[str, Dict]:
        """(checkpoint to go back to, the adoption undone). Raises ValueError when there is
        nothing to go back to, or its file is no longer kept."""
        with self.lock:
            if not self.adopted:
                raise ValueError("no adoption to roll back: the tracker runs the model it started with")
            entry = self.adopted[-1]
            target = entry["previous"]
            if target and not Path(target).is_file():
                raise ValueError(f"the checkpoint before round {entry['round']} ({target}) is no longer "
                                 "kept (keep_checkpoints)")
            self.adopted.pop()
            self._save()
            return target, entry

    def _prune(self, keep: int, protect: set) -> None:
        files = sorted(self.folder.glob("round_*.pt"))
        for old in files[:-keep]:
            if str(old) not in protect:
                old.unlink(missing_ok=True)

    @property
    def latest(self) -> Optional[Dict]:
        with self.lock:
            return dict(self.adopted[-1]) if self.adopted else None


# ---------------------------------------------------------------------------- rounds

class Adaptation:
    """Rounds on the clips of `store`, logged under `folder` (see the module docstring).
    `clock` (seconds, monotonic) times the children's limits."""

    def __init__(self, store: ClipStore, folder, config: RoundConfig,
                 clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.clock = clock
        self.folder = Path(folder).expanduser()
        self.config = config
        self.rounds_folder = self.folder / ROUNDS
        self.history = ModelHistory(self.folder / MODELS)
        self.rounds_folder.mkdir(parents=True, exist_ok=True)
        numbers = [int(p.name.split("_")[1]) for p in self.rounds_folder.glob("round_*")
                   if p.name.split("_")[1].isdigit()]
        self.last_round = max(numbers + [self._logged_rounds()])

    def _logged_rounds(self) -> int:
        try:
            lines = (self.folder / ROUND_LOG).read_text().splitlines()
            return max((json.loads(line)["round"] for line in lines if line.strip()), default=0)
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def waiting_for(self) -> Optional[str]:
        """Why a round cannot start now (too few clips), or None."""
        try:
            split_clips(self.store.clips, self.config.holdout_clips, self.config.min_train_clips)
        except ValueError as error:
            return str(error)
        return None

    def run_round(self, in_use: str, causal: bool, stop: threading.Event,
                  started: Callable[[RoundReport], None] = lambda report: None) -> RoundReport:
        """Trains and scores one round from checkpoint `in_use` ('' = the embedded model);
        the report says adopt (decision 'adopted', not yet done: `adopt`), 'kept' or
        'failed'. Never raises for a failure of the round itself."""
        config = self.config
        self.last_round += 1
        report = RoundReport(round=self.last_round, started=now_text(), in_use=in_use, margin=config.margin)
        folder = self.rounds_folder / f"round_{report.round:04d}"
        report.folder = str(folder)
        began = time.monotonic()
        try:
            train, held_out = split_clips(self.store.clips, config.holdout_clips, config.min_train_clips)
        except ValueError as error:
            return self._failed(report, str(error), began)
        report.train_clips, report.held_out_clips = len(train), len(held_out)
        report.held_out = (held_out[0].number, held_out[-1].number)
        started(report)
        try:
            with self.store.pinned(train + held_out):
                self._train(report, folder, train, causal, stop)
                if report.decision != "failed":
                    self._score(report, folder, held_out, causal, stop)
        except Exception as error:  # noqa: BLE001 - a round must never take the adapter down
            self._failed(report, f"{type(error).__name__}: {error}", began)
        report.seconds = round(time.monotonic() - began, 1)
        report.state = "finished"
        return report

    def _failed(self, report: RoundReport, why: str, began: float) -> RoundReport:
        report.decision, report.reason = "failed", why
        report.seconds, report.state = round(time.monotonic() - began, 1), "finished"
        return report

    def _train(self, report: RoundReport, folder: Path, train: List[StoredClip], causal: bool,
               stop: threading.Event) -> None:
        config = self.config
        folder.mkdir(parents=True, exist_ok=True)
        inputs = folder / "inputs.yaml"
        inputs.write_text(json.dumps({"data": [str(clip.path) for clip in train]}, indent=1) + "\n")
        output = folder / "run"
        command = [sys.executable, "-m", f"{PACKAGE}.bootstrap", "--config", str(inputs),
                   "--output", str(output), "--time-budget", f"{config.minutes:g}",
                   "--device", config.device, f"causal={str(bool(causal)).lower()}"]
        if report.in_use:
            command += ["--init", report.in_use]
        if config.device == "cpu":
            command.append("num_workers=0")  # loader workers would take cores beyond `threads`
        command += list(config.settings)  # later settings win
        limit = config.minutes * 60 + max(OVERRUN_MIN_S, OVERRUN_SHARE * config.minutes * 60)
        log = folder / "train.log"
        status, why = run_child(command, log, config.threads, config.nice, limit, stop, self.clock)
        if status is None or status != 0:
            report.decision = "failed"
            report.reason = (f"training stopped: {why}" if status is None else
                             f"training exited with status {status}: {log_tail(log)}")
            return
        report.steps = _steps_done(output)
        run_report = output / "report.json"
        if run_report.is_file():
            try:
                values = json.loads(run_report.read_text())
                report.training_scores = {key: values[key]["cycle_score"] for key in ("before", "after", "best")
                                          if isinstance(values.get(key), dict)}
                report.training_scores["best_step"] = values["best"]["step"]
            except (OSError, ValueError, KeyError, TypeError):
                pass
        for name in ("best.pt", "final.pt"):
            if (output / name).is_file():
                report.candidate = str(output / name)
                return
        report.decision, report.reason = "failed", f"the training run wrote no model ({log_tail(log)})"

    def _score(self, report: RoundReport, folder: Path, held_out: List[StoredClip], causal: bool,
               stop: threading.Event) -> None:
        config = self.config
        scores = folder / "scores.json"
        command = [sys.executable, "-m", f"{PACKAGE}.adapter.adaptation", "score", "--output", str(scores),
                   "--checkpoint", report.in_use or "embedded", "--checkpoint", report.candidate,
                   "--causal", str(bool(causal)).lower(), "--points", str(config.score_points),
                   "--device", config.device]
        for clip in held_out:
            command += ["--data", str(clip.path)]
        log = folder / "score.log"
        # Scoring is two passes per clip and model: a few minutes at most on a CPU.
        status, why = run_child(command, log, config.threads, config.nice, 1800.0, stop, self.clock)
        if status != 0:
            report.decision = "failed"
            report.reason = (f"scoring stopped: {why}" if status is None else
                             f"scoring exited with status {status}: {log_tail(log)}")
            return
        results = json.loads(scores.read_text())
        report.score_in_use = results[0]["cycle_score"]
        report.score_candidate = results[1]["cycle_score"]
        adopt, report.reason = decide(report.score_in_use, report.score_candidate, config.margin)
        report.decision = "adopted" if adopt else "kept"

    def adopt(self, report: RoundReport) -> Path:
        """Moves the round's result into models/ and records the adoption; its path."""
        kept = self.history.adopt(Path(report.candidate), report, self.config.keep_checkpoints)
        report.checkpoint = str(kept)
        return kept

    def finish(self, report: RoundReport) -> None:
        """Logs the round (rounds.jsonl, round.json) and deletes what it no longer needs."""
        folder = Path(report.folder)
        if folder.is_dir():
            (folder / "round.json").write_text(json.dumps(report.to_dict(), indent=1) + "\n")
            run = folder / "run"
            for leftover in ("clips", "teacher_labels", "checkpoint.pt", "best.pt", "final.pt", "checkpoints",
                             "start.pt", "best_student.pt", "final_student.pt"):
                path = run / leftover
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        with open(self.folder / ROUND_LOG, "a") as log:
            log.write(json.dumps(report.to_dict()) + "\n")
        folders = sorted(self.rounds_folder.glob("round_*"))
        for old in folders[:-KEEP_ROUND_FOLDERS]:
            shutil.rmtree(old, ignore_errors=True)


def _steps_done(run: Path) -> int:
    try:
        rows = (run / "train_log.csv").read_text().strip().splitlines()
        return int(float(rows[-1].split(",")[0])) if len(rows) > 1 else 0
    except (OSError, ValueError, IndexError):
        return 0


# ---------------------------------------------------------------------------- scoring child

def score_checkpoints(data: Sequence[str], checkpoints: Sequence[str], causal: bool, points: int,
                      device: str, seed: int = 0) -> List[Dict]:
    """The label-free score (`bootstap_ros_training.validate.cycle_score`) of each checkpoint ('embedded'
    = the embedded model) on the clips of the bags `data`, each cut as one clip of its own
    length, the same queries for every model."""
    import numpy as np
    import torch

    from bootstap_ros.model import load_checkpoint
    from bootstap_ros.model.checkpoint import resolve_checkpoint

    from ..clips import ClipConfig
    from ..logs import LogClips, prepare_logs
    from ..validate import cycle_score

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    models = []
    for name in checkpoints:
        path = resolve_checkpoint(None if name == "embedded" else name)
        models.append((name, load_checkpoint(path, causal=causal, official_default_causal=causal).model))
    frames = min(_frames_of_bag(Path(path)) for path in data)
    results = []
    with tempfile.TemporaryDirectory(prefix="bootstap_adapter_score_") as scratch:
        for name, model in models:
            size = model.config.resolution[0]
            # The store's clips passed the recorder's filters already; cutting them again at
            # the model's size could see a cut or a gap the recorder did not, and lose a clip.
            unfiltered = ClipConfig(frames=frames, size=size, static_threshold=1e-9, cut_min=math.inf,
                                    cut_threshold=math.inf, gap_factor=math.inf, max_gap_s=None)
            clips = LogClips(prepare_logs(list(data), Path(scratch) / f"size_{size}", unfiltered))
            if not len(clips):
                raise ValueError(f"the held-out bags gave no clip of {frames} frames")
            videos = [clips[i]["video"] for i in range(len(clips))]
            score = cycle_score(model.to(torch.device(device)), videos, torch.device(device), points, seed)
            results.append({"checkpoint": name, **{k: (float(v) if isinstance(v, (float, np.floating)) else v)
                                                   for k, v in score.items()}})
    return results


def _frames_of_bag(path: Path) -> int:
    from .clip_store import _frames_of

    frames = _frames_of(path)
    if frames < 2:
        raise ValueError(f"{path}: not a clip bag of the adapter's store (no message count)")
    return frames


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {PACKAGE}.adapter.adaptation",
                                     description="The adapter's scoring child (see the module docstring).")
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser("score", help="label-free scores of checkpoints on clip bags, as JSON")
    score.add_argument("--data", action="append", required=True, help="a clip bag; repeat")
    score.add_argument("--checkpoint", action="append", required=True, help="a checkpoint or 'embedded'; repeat")
    score.add_argument("--causal", choices=("true", "false"), default="true")
    score.add_argument("--points", type=int, default=64)
    score.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    score.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    from bootstap_ros.cli.common import run_command

    results: List[Dict] = []
    status = run_command("score", lambda: results.extend(score_checkpoints(
        args.data, args.checkpoint, args.causal == "true", args.points, args.device)))
    if status:
        return status
    Path(args.output).write_text(json.dumps(results, indent=1) + "\n")
    for result in results:
        print(f"{result['checkpoint']}: {result['cycle_score']:.4f} on {result['clips']} clips")
    return 0


if __name__ == "__main__":
    sys.exit(main())
