"""SIGINT soak of a real `ros2 launch`: the video source and the tracker, stopped again and again.

Each run starts `ros2 launch bootstap_ros tracker.launch.py video:=CLIP` (a short clip this
tool writes), sends SIGINT after a random delay (seeded, uniform over --delay, by default
0.5..8 s: the nodes' start-up, model loading and steady tracking, the network's step
included) and waits for the launch to exit within --deadline seconds. The delay counts from
launch's first log line, when launch has taken over SIGINT: before it, a Ctrl-C stops the
`ros2` command itself while it imports (a traceback from ros2cli, not from this package).
A run is clean when

- `ros2 launch` exits in time with status 0,
- no process of the launch's process group, and none of the processes it had started, is
  left running,
- every node that launch reports started has "finished cleanly", and the output has no
  Traceback, no "process has died", no escalation to SIGTERM or SIGKILL by launch, no
  `terminate called` and no [ERROR] or [FATAL] line.

It prints one line per run (the delay, how far the launch had got, the result) and a
summary, writes every run's log and OUT/sigint_soak.json, and exits with 1 when a run was
unclean. It installs nothing: `ros2 launch bootstap_ros ...` must work where it runs (ROS
sourced, this package built into the sourced workspace). Linux only (reads /proc).

    python tools/sigint_soak.py [--runs 100] [--seed 0] [--to launch|group] [--out DIR] \
        [--ros2 "ros2"] [NAME:=VALUE ...]          # extra launch arguments

`--to launch` (the default) signals the launch process only, as `kill -INT` does; launch,
whose stdin is not a terminal here, passes SIGINT on to the nodes. `--to group` signals the
whole process group, as Ctrl-C in a terminal does (the nodes then get SIGINT twice).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from bootstap_ros.bench.processes import local_ros_environment
from bootstap_ros.video import VideoWriter

# launch's first line, logged once its own SIGINT handling is in place.
LAUNCH_RUNNING = re.compile(r"\[launch\]: All log files can be found below")
LAUNCH_START_TIMEOUT_S = 120.0
# Output that makes a run unclean, each with the name it is reported by.
PROBLEMS = (
    ("traceback", re.compile(r"Traceback \(most recent call last\)")),
    ("process died", re.compile(r"process has died \[pid \d+, exit code -?\d+")),
    ("escalation", re.compile(r"escalating to '(SIGTERM|SIGKILL)'|sending signal '(SIGTERM|SIGKILL)'")),
    ("abort", re.compile(r"terminate called|Segmentation fault|core dumped")),
    # SIGINT while a node's Python interpreter itself starts, before any code of this package
    # runs: only launch could avoid it (it signals a process it started a moment ago).
    ("interpreter start-up", re.compile(r"Fatal Python error: init_import_site")),
    ("error line", re.compile(r"\[(ERROR|FATAL)\]")),
)
STARTED = re.compile(r"\[([\w.-]+)\]: process started with pid \[(\d+)\]")
FINISHED = re.compile(r"process has finished cleanly \[pid (\d+)\]")
TRACKING = re.compile(r"\[(\d+\.\d+)\] \[tracker_node\]: tracking ")


def write_clip(path: Path, frames: int = 60, size=(120, 160)) -> Path:
    """A short clip of a textured image sliding sideways (tracks move, as on a camera)."""
    rng = np.random.default_rng(0)
    texture = (rng.random((size[0] // 4, size[1] // 4, 3)) * 255).astype(np.uint8)
    image = np.repeat(np.repeat(texture, 4, axis=0), 4, axis=1)
    with VideoWriter(path, fps=30) as writer:
        for t in range(frames):
            writer.write(np.roll(image, 2 * t, axis=1))
    return path


def _stat(pid: int):
    """(state, process group, start time) of a process from /proc, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[2]), int(fields[19])


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def group_members(pgid: int) -> List[int]:
    """Live (not zombie) processes of process group `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[1] == pgid and stat[0] != "Z":
                members.append(int(entry.name))
    return members


def descendants(pid: int) -> Dict[int, int]:
    """Processes below `pid`: pid -> start time (to tell a reused pid from the same process)."""
    found, queue = {}, [pid]
    while queue:
        parent = queue.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            for child in children:
                stat = _stat(child)
                if stat is not None and child not in found:
                    found[child] = stat[2]
                    queue.append(child)
    return found


def still_running(pgid: int, started: Dict[int, int], grace: float = 2.0) -> List[int]:
    """What is left of the group and of the processes seen started, after up to `grace` s for
    the last ones to be reaped."""
    deadline = time.monotonic() + grace
    while True:
        left = set(group_members(pgid))
        for pid, start in started.items():
            stat = _stat(pid)
            if stat is not None and stat[2] == start and stat[0] != "Z":
                left.add(pid)
        if not left or time.monotonic() >= deadline:
            return sorted(left)
        time.sleep(0.05)


def phase(text: str) -> str:
    """How far the launch had got, from its output."""
    if TRACKING.search(text):
        return "tracking"
    if STARTED.search(text):
        return "nodes starting"  # importing, the tracker loading its model
    return "launch starting"


def judge(text: str, status: Optional[int], left: List[int]) -> List[str]:
    """The reasons a run is unclean (none: clean)."""
    reasons = []
    if status is None:
        reasons.append("no exit within the deadline")
    elif status != 0:
        reasons.append(f"exit status {status}")
    if left:
        reasons.append(f"{len(left)} process(es) left: {left}")
    for name, pattern in PROBLEMS:
        match = pattern.search(text)
        if match:
            line = text[text.rfind("\n", 0, match.start()) + 1:text.find("\n", match.end())]
            reasons.append(f"{name}: {line.strip()[:200]}")
    finished = set(FINISHED.findall(text))
    for name, pid in STARTED.findall(text):
        if pid not in finished:
            reasons.append(f"{name} (pid {pid}) did not finish cleanly")
    return reasons


def run_once(index: int, delay: float, args, clip: Path, env) -> dict:
    log_path = args.out / f"run_{index:03d}.log"
    command = [*shlex.split(args.ros2), "launch", "bootstap_ros", "tracker.launch.py",
               f"video:={clip}", *args.launch_arguments]
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
            # A background job may inherit SIGINT ignored; launch must see it as a terminal would.
            preexec_fn=lambda: (signal.signal(signal.SIGINT, signal.SIG_DFL),
                                signal.signal(signal.SIGTERM, signal.SIG_DFL)))
        try:
            return _stop_and_judge(index, delay, args, process, log_path)
        except BaseException:  # this tool interrupted: leave nothing of the launch behind
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=30)
            raise


def _stop_and_judge(index: int, delay: float, args, process, log_path: Path) -> dict:
    """Wait for launch, signal it after `delay`, wait for the exit; the run's result."""
    seen: Dict[int, int] = {}
    early = None
    deadline = time.monotonic() + LAUNCH_START_TIMEOUT_S
    while not LAUNCH_RUNNING.search(log_path.read_text(errors="replace")):
        early = process.poll()
        if early is not None or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    started, wall = time.monotonic(), time.time()
    while early is None and time.monotonic() < started + delay:  # the experiment, not a wait
        seen.update(descendants(process.pid))
        early = process.poll()
        if early is not None:
            break
        time.sleep(min(0.05, max(0.0, started + delay - time.monotonic())))
    reached = phase(log_path.read_text(errors="replace"))
    status = early
    if early is None:
        seen.update(descendants(process.pid))
        if args.to == "group":
            os.killpg(process.pid, signal.SIGINT)
        else:
            os.kill(process.pid, signal.SIGINT)
        signalled = time.monotonic()
        try:
            status = process.wait(timeout=args.deadline)
        except subprocess.TimeoutExpired:
            status = None
        stop_s = time.monotonic() - signalled
    else:
        stop_s = 0.0
    left = still_running(process.pid, seen)
    if status is None or left:  # clean up after an unclean run, then go on
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)
    text = log_path.read_text(errors="replace")
    reasons = judge(text, status, left)
    if early is not None:
        reasons.insert(0, f"the launch ended by itself before SIGINT (status {early})")
    elif not LAUNCH_RUNNING.search(text):
        reasons.insert(0, f"launch did not start within {LAUNCH_START_TIMEOUT_S:.0f} s")
    ready = TRACKING.search(text)  # its ROS log stamp: wall-clock seconds
    return {"run": index, "delay_s": round(delay, 3), "phase": reached, "status": status,
            "stop_s": round(stop_s, 3),
            "tracking_after_s": round(float(ready.group(1)) - wall, 3) if ready else None,
            "clean": not reasons, "reasons": reasons,
            "log": str(log_path)}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="sigint_soak", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("launch_arguments", nargs="*", metavar="NAME:=VALUE",
                        help="further tracker.launch.py arguments, e.g. checkpoint:=model.pt")
    parser.add_argument("--runs", type=int, default=100, help="launches to stop (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the delays (default 0)")
    parser.add_argument("--delay", type=float, nargs=2, default=(0.5, 8.0), metavar=("MIN", "MAX"),
                        help="SIGINT this many seconds after launch's first log line, uniform "
                             "(default 0.5 8)")
    parser.add_argument("--deadline", type=float, default=30.0,
                        help="seconds the launch has to exit after SIGINT (default 30; launch "
                             "itself escalates to SIGTERM after 5 s and SIGKILL after 10 s)")
    parser.add_argument("--to", choices=("launch", "group"), default="launch",
                        help="signal the launch process (default) or its whole process group")
    parser.add_argument("--ros2", default="ros2", help="the ros2 command (default: ros2)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the clip, the logs and sigint_soak.json (default: a new "
                             "temporary folder)")
    args = parser.parse_args(argv)
    if args.runs < 1 or not 0 <= args.delay[0] <= args.delay[1] or args.deadline <= 0:
        parser.error("--runs must be positive, --delay MIN MAX with 0 <= MIN <= MAX, "
                     "--deadline positive")
    if any(":=" not in a for a in args.launch_arguments):
        parser.error("launch arguments are NAME:=VALUE, e.g. checkpoint:=model.pt")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stops the run in hand (run_once)
    if not sys.platform.startswith("linux"):
        print("sigint_soak: reads /proc: Linux only", file=sys.stderr)
        return 2
    args.out = Path(args.out or tempfile.mkdtemp(prefix="sigint_soak_")).resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    clip = write_clip(args.out / "clip.mp4")
    env = local_ros_environment(dict(os.environ))
    rng = random.Random(args.seed)
    delays = [rng.uniform(*args.delay) for _ in range(args.runs)]
    print(f"sigint_soak: {args.runs} runs, seed {args.seed}, SIGINT to the {args.to} after "
          f"{args.delay[0]:g}..{args.delay[1]:g} s, deadline {args.deadline:g} s, ROS_DOMAIN_ID "
          f"{env['ROS_DOMAIN_ID']}, output in {args.out}", flush=True)
    results = []
    for index, delay in enumerate(delays):
        result = run_once(index, delay, args, clip, env)
        results.append(result)
        verdict = "clean" if result["clean"] else "UNCLEAN: " + "; ".join(result["reasons"])
        print(f"run {index:3d}  SIGINT at {delay:5.2f} s ({result['phase']:15s})  status "
              f"{result['status']}  stopped in {result['stop_s']:5.2f} s  {verdict}", flush=True)
    unclean = [r for r in results if not r["clean"]]
    by_phase: Dict[str, List[int]] = {}
    for result in results:
        counts = by_phase.setdefault(result["phase"], [0, 0])
        counts[0] += result["clean"]
        counts[1] += 1
    summary = {
        "command": ["ros2", "launch", "bootstap_ros", "tracker.launch.py", "video:=CLIP",
                    *args.launch_arguments],
        "runs": len(results), "clean": len(results) - len(unclean), "seed": args.seed,
        "delay_s": list(args.delay), "deadline_s": args.deadline, "signal_to": args.to,
        "by_phase": {name: {"clean": c, "runs": n} for name, (c, n) in by_phase.items()},
        "stop_s_max": max(r["stop_s"] for r in results),
        # When the tracker said it was tracking (model loaded), from launch's first line, in
        # the runs that got that far.
        "tracking_after_s": sorted(r["tracking_after_s"] for r in results
                                   if r["tracking_after_s"] is not None),
        "load_average": os.getloadavg(), "host": platform.node(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "results": results,
    }
    (args.out / "sigint_soak.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"sigint_soak: {summary['clean']}/{summary['runs']} clean ("
          + ", ".join(f"{name} {c}/{n}" for name, (c, n) in by_phase.items())
          + f"); slowest stop {summary['stop_s_max']:.2f} s; tracking "
          + (f"from {np.median(summary['tracking_after_s']):.1f} s (median)"
             if summary["tracking_after_s"] else "never reached: widen --delay")
          + f"; {args.out / 'sigint_soak.json'}")
    for result in unclean:
        print(f"  unclean run {result['run']}: {'; '.join(result['reasons'])} ({result['log']})")
    return 1 if unclean else 0


if __name__ == "__main__":
    sys.exit(main())
