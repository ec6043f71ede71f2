"""The entry-point life cycle shared by the package's nodes: start, init, spin, clean shutdown.

The console scripts (`ros2 run bootstap_ros tracker_node`, and what `ros2 launch` starts)
call `tracker_node()`, `video_source()` or `bootstap_adapter()` here, which import the
node's module and call its `main`, which calls `run_node`. Stop signals (SIGINT, SIGTERM)
are handled from the first line to the last, in three stages:

1. start: importing the node's module (rclpy, torch, the model code) takes seconds, more
   on a busy machine. Nothing is open yet, so a stop signal ends the process at once with
   status 0. (Python's own handler raised KeyboardInterrupt inside the imports: a
   traceback and exit -2, "process has died" in `ros2 launch`'s log.)
2. run: from just before `rclpy.init`, the first stop signal is noted and every later one
   ignored; nothing is raised. rclpy's handler (installed by init, it calls ours) shuts the
   context down, which ends the spin, or the node's creation where it next uses ROS; a
   model still loading finishes first. (A KeyboardInterrupt raised wherever the main
   thread was, inside torch's imports or a model being built, can leave half-made state
   behind; a segmentation fault at exit was seen once in 50 SIGINTs under `ros2 launch`
   while the tracker started.)
3. stop: the node is destroyed, its worker waited for, rclpy shut down, with SIGINT and
   SIGTERM ignored throughout.

Only the standard library is imported at module level, so that stage 1 begins before
anything slow.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Callable, Optional, Tuple, Type

if TYPE_CHECKING:
    from rclpy.node import Node

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


# ------------------------------------------------------------------ console scripts
def tracker_node() -> int:
    """Console script `tracker_node`."""
    return _start("bootstap_ros.ros.tracker_node")


def video_source() -> int:
    """Console script `video_source`."""
    return _start("bootstap_ros.ros.video_source")


def bootstap_adapter() -> int:
    """Console script `bootstap_adapter` (the training package's adapter node)."""
    return _start("bootstap_ros_training.adapter.node")


def _start(module: str) -> int:
    """Stage 1 (see the module docstring), then `module.main()`."""
    _handle_stop_signals(_exit_before_start)
    return importlib.import_module(module).main()


def _exit_before_start(signum, frame) -> None:
    """A stop signal while the node's code is still being imported: nothing to close yet."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    # Not sys.exit: SystemExit raised inside an import can be caught or half-done there.
    os._exit(0)


class _Stop:
    """Whether a stop signal has come since `run_node` began (stage 2)."""

    requested = False


def _stop_node(signum, frame) -> None:
    """Stage 2: the first stop signal. rclpy's handler has shut the context down already
    (when init has run); the next signals (a terminal's Ctrl-C under `ros2 launch` arrives
    twice, launch may add SIGTERM) are ignored."""
    _Stop.requested = True
    _ignore_stop_signals()


def _handle_stop_signals(handler) -> None:
    """SIGINT and SIGTERM to `handler`, unless ignored (a process started with nohup, or a
    background job's SIGINT, keeps them ignored, as Python itself does)."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal.signal works in the main thread only (a node run by a test)
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, handler)


# ------------------------------------------------------------------ run and stop
def run_node(name: str, make_node: Callable[[], "Node"], startup_errors: Tuple[Type[Exception], ...],
             spin: Optional[Callable[["Node"], None]] = None, args=None) -> int:
    """Create the node and spin it (`rclpy.spin` unless `spin` is given); returns the exit
    status (1 when it cannot start).

    A start-up error is logged as one fatal line that says what to do, never a
    traceback; Ctrl-C, SIGTERM and an external shutdown end the node cleanly.
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException

    node = None
    status = 0
    initialised = False
    _Stop.requested = False
    try:
        # rclpy.init installs rclpy's handlers, which call this one after shutting the context down.
        _handle_stop_signals(_stop_node)
        rclpy.init(args=args)
        initialised = True
        if not _Stop.requested:  # a signal before init left the context running
            node = make_node()
        if not _Stop.requested:
            (spin or rclpy.spin)(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # KeyboardInterrupt: a node run where these handlers are not installed (a test thread)
    except Exception as error:
        # A node stopped while it starts fails where it next uses the shut-down context (a
        # subscription, a parameter): a stop, not a failure.
        if _Stop.requested or (initialised and not rclpy.ok()):
            pass
        elif isinstance(error, startup_errors):
            rclpy.logging.get_logger(name).fatal(f"cannot start: {error}")
            status = 1
        else:
            raise
    finally:
        _shut_down(node, name, status)
    return status


def _ignore_stop_signals() -> None:
    """From here on SIGINT and SIGTERM are ignored: the node is already stopping.

    Ctrl-C in a terminal under `ros2 launch` delivers SIGINT twice (the terminal's and
    launch's own), and launch may follow with SIGTERM. Another signal during clean-up
    used to interrupt the wait for the worker thread, so the process exited while that
    thread was still inside the network's C++ code: `terminate called without an active
    exception` (exit -6). Or it came during interpreter finalisation, which has already
    reset the handlers to the default, and killed the process (exit -2). SIG_IGN, unlike
    a Python handler, stays in force through finalisation.
    """
    if threading.current_thread() is not threading.main_thread():
        return  # signal.signal works in the main thread only (a node run by a test)
    if sys.unraisablehook is not _quiet_signal_race:
        _quiet_signal_race.previous = sys.unraisablehook
        sys.unraisablehook = _quiet_signal_race
    for signum in STOP_SIGNALS:
        while True:
            try:
                signal.signal(signum, signal.SIG_IGN)
                break
            except KeyboardInterrupt:  # the second Ctrl-C came just now: ignore it too
                continue


def _quiet_signal_race(unraisable) -> None:
    """A stop signal that arrived just before SIG_IGN took effect (SIGINT and SIGTERM back
    to back) is reported by Python, with a traceback, as "Signal N ignored due to race
    condition": it was meant to be ignored, so it is not reported."""
    error = unraisable.exc_value
    if isinstance(error, OSError) and "ignored due to race condition" in str(error):
        return
    _quiet_signal_race.previous(unraisable)


_quiet_signal_race.previous = sys.unraisablehook


def _shut_down(node, name: str, status: int) -> None:
    import rclpy

    _ignore_stop_signals()
    if node is not None:
        node.destroy_node()
    rclpy.try_shutdown()
    # rclpy restores the handlers it replaced at init (Python's): ignore again.
    _ignore_stop_signals()
    if getattr(node, "worker_alive", False):
        # Its frame, or a model loading for a swap, takes too long (e.g. a first TensorRT
        # engine build). Python would stop the thread at exit wherever it is, and inside the
        # network's C++ code that aborts the process; leave without the interpreter's clean-up.
        rclpy.logging.get_logger(name).error(
            "the worker did not finish its frame in time (or a model still loads): exiting "
            "without waiting for it")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status or 1)
