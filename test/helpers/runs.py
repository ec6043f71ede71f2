"""Reading a training run's logs as it goes."""

import csv

def logged_steps(path):
    """The steps of a run's train_log.csv so far ([] before it exists)."""
    if not path.exists():
        return []
    with open(path) as file:
        return [int(row["step"]) for row in csv.DictReader(file)]


class FakeClock:
    """A monotonic clock for time budgets that moves `tick` seconds each time it is read: a
    run's pace on it is a function of the code's path, not of how loaded the machine is."""

    def __init__(self, tick: float, start: float = 1000.0):
        self.tick, self.now = tick, start

    def __call__(self) -> float:
        self.now += self.tick
        return self.now
