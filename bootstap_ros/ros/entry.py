"""The entry-point life cycle shared by the package's nodes: init, spin, clean shutdown."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable, Tuple, Type

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node


def run_node(name: str, make_node: Callable[[], Node], startup_errors: Tuple[Type[Exception], ...],
             spin: Callable[[Node], None] = rclpy.spin, args=None) -> int:
    """Create the node and spin it; returns the exit status (1 when it cannot start).

    A start-up error is logged as one fatal line that says what to do, never a
    traceback; Ctrl-C and an external shutdown end the node cleanly.
    """
    rclpy.init(args=args)
    node = None
    status = 0
    try:
        node = make_node()
        spin(node)
    except startup_errors as error:
        rclpy.logging.get_logger(name).fatal(f"cannot start: {error}")
        status = 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:
        # rclpy's signal handler shuts the context down, then Python raises KeyboardInterrupt
        # wherever the main thread is. When that is inside rclpy's C++ taking a message,
        # pybind11 reports it as "Unable to convert call argument '0' to Python object"
        # (seen once in 5 SIGINTs under load). A stop, not a failure, once the context is down.
        if rclpy.ok():
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
    for signum in (signal.SIGINT, signal.SIGTERM):
        while True:
            try:
                signal.signal(signum, signal.SIG_IGN)
                break
            except KeyboardInterrupt:  # the second Ctrl-C came just now: ignore it too
                continue


def _shut_down(node, name: str, status: int) -> None:
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
