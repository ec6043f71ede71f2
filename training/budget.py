"""A run's time budget: how many steps fit in the minutes given, and when to stop.

`TimeBudget` watches the loop (`bootstap_ros_training.loop.run_loop`): after a few calibration
steps it fits the step count, and so the learning-rate schedule, to the time left;
afterwards it refits whenever the pace changes (a loaded machine, evaluations that cost
more than a step), and it stops the run before the deadline if it falls behind anyway.
Time spent outside the steps (evaluations, checkpoints, validation) is counted per
step and so set aside too. Everything before the loop (decoding logs, labelling clips)
already counts: the budget starts when the command starts.
"""

from __future__ import annotations

import statistics
import time
from typing import List, Optional

#: Steps timed before the first fit. The first step of a run pays one-off costs (memory
#: allocation, oneDNN's kernel selection), so it is not used for the pace.
CALIBRATION_STEPS = 4
#: A refit changes the schedule only when the fitted length moves by more than this share.
REFIT_TOLERANCE = 0.03


class TimeBudget:
    """Fits the number of steps to `minutes` of wall time counted from `started`
    (a `time.monotonic()` value), keeping `reserve_s` seconds free at the end."""

    def __init__(self, minutes: float, started: float, reserve_s: float = 0.0,
                 max_steps: Optional[int] = None, clock=time.monotonic):
        if not minutes > 0:
            raise ValueError(f"the time budget must be positive, got {minutes} minutes")
        self.deadline = started + 60.0 * minutes
        self.reserve_s = reserve_s
        self.max_steps = max_steps
        self.clock = clock
        self.step_seconds: List[float] = []
        self.other_seconds = 0.0  # time in the loop outside the steps (evaluations, checkpoints)
        self.steps: Optional[int] = None  # the fitted length, once calibrated

    @property
    def calibrated(self) -> bool:
        return self.steps is not None

    def pace(self) -> float:
        """Seconds a step costs, with its share of the time between steps."""
        recent = self.step_seconds[1:][-50:] or self.step_seconds
        return statistics.median(recent) + self.other_seconds / max(1, len(self.step_seconds))

    def record_step(self, seconds: float) -> None:
        """A training step's wall time (its batch's loading included)."""
        self.step_seconds.append(seconds)

    def record_other(self, seconds: float) -> None:
        """Time between steps: logs, checkpoints, evaluations."""
        self.other_seconds += seconds

    def fit(self, step: int) -> Optional[int]:
        """After `step` steps: the schedule length that uses the time left (None before
        calibration). It never goes below step + 1, nor above `max_steps`."""
        if len(self.step_seconds) < CALIBRATION_STEPS:
            return None
        left = self.deadline - self.reserve_s - self.clock()
        fitted = step + max(1, int(left / self.pace()))
        if self.max_steps is not None:
            fitted = min(fitted, self.max_steps)
        fitted = max(fitted, step + 1)
        if self.steps is None or abs(fitted - self.steps) > REFIT_TOLERANCE * self.steps:
            self.steps = fitted
        return self.steps

    def out_of_time(self) -> bool:
        """Whether another step would end past the deadline (less the reserve)."""
        if not self.step_seconds:
            return False
        return self.clock() + self.pace() > self.deadline - self.reserve_s

    def seconds_left(self) -> float:
        return self.deadline - self.clock()


def describe_plan(steps: int, seconds_per_step: float, given_steps: bool) -> str:
    """The line a run without a budget prints once its pace is known."""
    minutes = steps * seconds_per_step / 60
    source = "" if given_steps else " (the default; --steps N to change)"
    return (f"plan: {steps} steps{source} at about {seconds_per_step:.1f} s a step on this machine: "
            f"about {minutes:.0f} min; --time-budget MINUTES fits the run to a budget instead")
