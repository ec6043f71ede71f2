"""Nodes started as child processes (by the benchmarks, tools/adapter_demo.py and the tests):
the environment that keeps their ROS traffic on this machine, and a stop for their process
groups. No ROS import here."""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Iterable, MutableMapping


def local_ros_environment(env: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """`env` (os.environ or a child's copy), with DDS discovery kept on this machine and a
    domain of this process's own, unless the caller has set them; returned for chaining."""
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("ROS_LOCALHOST_ONLY", "1")
    env.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 101))  # Fast DDS: 0..101, 0 the default
    return env


def stop_process_groups(processes: Iterable[subprocess.Popen], grace: float = 60.0) -> None:
    """Stops processes started with `start_new_session=True` and all they started: SIGINT to
    every group first (a clean shutdown, side by side), then SIGKILL to a group whose leader
    has not exited `grace` seconds later."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGINT)
            except ProcessLookupError:  # exited meanwhile
                pass
    for process in processes:
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
